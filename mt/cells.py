"""The GRU and LSTM cell equations, from the products a step has already computed: the encoder's
training loop and the decoder call these where `nn.GRUCell`/`nn.LSTMCell` would compute their own
products, so that the input's share can be computed for many steps at once."""

from __future__ import annotations

import torch
from torch import Tensor


def gru_cell(input_gates: Tensor, recurrent_gates: Tensor, hidden: Tensor) -> Tensor:
    """A GRU cell's new state from its two products, W x + b_W and U h + b_U, each (..., 3 hidden) in
    the order r, z, n: the equations of `nn.GRUCell` (Cho et al. 2014), whose weights these are."""
    size = hidden.size(-1)
    input_rz, input_n = input_gates.split([2 * size, size], dim=-1)  # split, not slices: backward is one cat
    recurrent_rz, recurrent_n = recurrent_gates.split([2 * size, size], dim=-1)
    reset, update = torch.sigmoid(input_rz + recurrent_rz).chunk(2, dim=-1)
    candidate = torch.tanh(input_n + reset * recurrent_n)
    return candidate + update * (hidden - candidate)  # (1 - z) n + z h


def lstm_cell(gates: Tensor, cell: Tensor) -> tuple[Tensor, Tensor]:
    """An LSTM cell's new hidden and cell states from W x + U h + b (..., 4 hidden) in the order i, f,
    g, o: the equations of `nn.LSTMCell`, whose weights these are."""
    input_gate, forget_gate, candidate, output_gate = gates.chunk(4, dim=-1)
    cell = torch.sigmoid(forget_gate) * cell + torch.sigmoid(input_gate) * torch.tanh(candidate)
    return torch.sigmoid(output_gate) * torch.tanh(cell), cell
