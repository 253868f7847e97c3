"""Recurrent decoder with additive attention and a deep output layer (Bahdanau et al. 2015,
appendix A.2.2; deep output as in Pascanu et al. 2014).

At target step i, with s_{i-1} the top decoder state and y_{i-1} the previous target piece:
    c_i = attention(s_{i-1}, h_1..h_n) = sum_j a_ij h_j      (context)
    s_i = RNN([E y_{i-1}; c_i], s_{i-1})                      (stacked GRU or LSTM cells)
    t_i = tanh(W_o [s_i; c_i; E y_{i-1}])                      (readout)
    p(y_i | ...) = softmax(W_out t_i)                         (W_out may share the target embedding E)

The context reaches the first cell's gates and the readout only through a linear map W_c, so
W_c c_i = sum_j a_ij (W_c h_j). Search computes W_c h_j once per sentence (`init_state`), and a step
weighs them by its attention: src_len multiply-adds per output instead of enc_size, a third of the
work of a beam search step. Teacher forcing (`forward`) instead projects each step's context, since
its backward would otherwise add up a full (batch, src_len, terms) gradient at every step, and sums the
gradient of the h_j it weighs once for all steps (`StepValues`); there the embedding's share of the
gates and readout is one matrix product for all target steps. A model loaded
to translate holds that share for every piece of the vocabulary (`tabulate_embedded_terms`), and a
search step looks up its previous pieces' rows. Search drives the decoder one `step()` at a time and
reorders its state with `DecoderState.select()`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mt.attention import AdditiveAttention, StepValues
from mt.cells import gru_cell, lstm_cell
from mt.config import Cell, ModelConfig
from mt.dropout import Dropout
from mt.tokenizer import BOS, PAD


@dataclass
class DecoderState:
    """Rows are hypotheses, in groups of equal size per sentence (a sentence's beams); what only
    depends on the source is held once per sentence, so reordering beams never copies it."""

    hidden: tuple[Tensor, ...]  # per layer (rows, dec_hidden); tuples, not one tensor, keep backward cheap
    cell: tuple[Tensor, ...] | None  # per layer (rows, dec_hidden) for an LSTM, else None
    keys: Tensor  # (sentences, src_len, attn_size): 2 U h_j (`project_keys`), once per sentence
    values: Tensor  # (sentences, src_len, ...): what attention weighs; in search W_c h_j, once per sentence
    mask: Tensor  # (sentences, src_len): True at real source tokens

    def select(self, index: Tensor) -> DecoderState:
        """The state of rows `index`: reorders beams and drops finished sentences. `index` keeps the
        group size, each group taken from one sentence, sentences in their order."""
        group = self.hidden[0].size(0) // self.keys.size(0)
        sentences = index.size(0) // group
        keys, values, mask = self.keys, self.values, self.mask
        if sentences != keys.size(0):  # some sentences are done: their source leaves too
            kept = index[::group] // group
            keys, values, mask = keys.index_select(0, kept), values.index_select(0, kept), mask.index_select(0, kept)
        return DecoderState(
            hidden=tuple(h.index_select(0, index) for h in self.hidden),
            cell=None if self.cell is None else tuple(c.index_select(0, index) for c in self.cell),
            keys=keys,
            values=values,
            mask=mask,
        )

    def repeat(self, times: int) -> DecoderState:
        """Each row `times` times, side by side: the beams of beam search, before they diverge."""
        return DecoderState(
            hidden=tuple(h.repeat_interleave(times, dim=0) for h in self.hidden),
            cell=None if self.cell is None else tuple(c.repeat_interleave(times, dim=0) for c in self.cell),
            keys=self.keys,
            values=self.values,
            mask=self.mask,
        )


class Decoder(nn.Module):
    def __init__(
        self,
        *,
        vocab_size: int,
        cell: Cell,
        emb_size: int,
        enc_size: int,
        hidden_size: int,
        num_layers: int,
        attn_size: int,
        dropout: float,
        emb_dropout: float,
        tie_embeddings: bool,
    ) -> None:
        super().__init__()
        self.num_layers = num_layers
        self.hidden_size = hidden_size
        self.is_lstm = cell == "lstm"
        self.gates_size = (4 if self.is_lstm else 3) * hidden_size  # GRU: r, z, n; LSTM: i, f, g, o
        self.readout_size = emb_size if tie_embeddings else hidden_size
        terms = self.gates_size + self.readout_size  # what E y_{i-1} and c_i add to the first cell and the readout
        self.embedding = nn.Embedding(vocab_size, emb_size, padding_idx=PAD)
        self.bridge = nn.Linear(enc_size, num_layers * hidden_size)
        self.attention = AdditiveAttention(query_size=hidden_size, key_size=enc_size, attn_size=attn_size)
        self.embedded_proj = nn.Linear(emb_size, terms)  # [W_e; O_e] E y_{i-1}, and both biases
        self.context_proj = nn.Linear(enc_size, terms, bias=False)  # [W_c; O_c] h_j
        self.hidden_proj = nn.Linear(hidden_size, self.gates_size)  # U s_{i-1}: the first cell's recurrence
        cell_type = nn.LSTMCell if self.is_lstm else nn.GRUCell
        self.upper_cells = nn.ModuleList(cell_type(hidden_size, hidden_size) for _ in range(1, num_layers))
        self.readout_proj = nn.Linear(hidden_size, self.readout_size, bias=False)  # O_s s_i
        self.output = nn.Linear(self.readout_size, vocab_size, bias=False)
        if tie_embeddings:
            self.output.weight = self.embedding.weight
        self.emb_dropout = Dropout(emb_dropout)
        self.dropout = Dropout(dropout)
        self._init_split_layers()
        self.embedded_table: Tensor | None  # (vocab, terms) from `tabulate_embedded_terms`; not saved
        self.register_buffer("embedded_table", None, persistent=False)

    def _init_split_layers(self) -> None:
        """The distributions of the layers these are parts of: a GRU or LSTM cell draws its weights and
        biases from U(+-1/sqrt(hidden)), and a linear readout layer over [s_i; c_i; E y_{i-1}] from
        U(+-1/sqrt(its inputs))."""
        cell_bound = 1 / math.sqrt(self.hidden_size)
        fan_in = self.hidden_size + self.context_proj.in_features + self.embedded_proj.in_features
        readout_bound = 1 / math.sqrt(fan_in)
        gates = self.gates_size
        with torch.no_grad():
            for parameter in (self.embedded_proj.weight, self.embedded_proj.bias, self.context_proj.weight):
                parameter[:gates].uniform_(-cell_bound, cell_bound)
                parameter[gates:].uniform_(-readout_bound, readout_bound)
            for parameter in (self.hidden_proj.weight, self.hidden_proj.bias):
                parameter.uniform_(-cell_bound, cell_bound)
            self.readout_proj.weight.uniform_(-readout_bound, readout_bound)

    @classmethod
    def from_config(cls, config: ModelConfig, vocab_size: int, enc_size: int) -> Decoder:
        return cls(
            vocab_size=vocab_size,
            cell=config.cell,
            emb_size=config.emb_size,
            enc_size=enc_size,
            hidden_size=config.dec_hidden,
            num_layers=config.dec_layers,
            attn_size=config.attn_size,
            dropout=config.dropout,
            emb_dropout=config.emb_dropout,
            tie_embeddings=config.tie_embeddings,
        )

    def init_state(self, annotations: Tensor, summary: Tensor, mask: Tensor, *, project: bool = True) -> DecoderState:
        """s_0 = tanh(W_s summary) (Bahdanau et al. 2015, A.2.2), one slice per decoder layer, and the
        source's attention keys and values: W_c h_j for search, h_j itself if not `project`.

        annotations: (batch, src_len, enc_size); summary: (batch, enc_size); mask: (batch, src_len)
        """
        batch = summary.size(0)
        hidden = torch.tanh(self.bridge(summary)).view(batch, self.num_layers, self.hidden_size).unbind(1)
        if project:  # at real positions only: in a batch of random lengths, half the positions can be padding
            real = annotations[mask]  # (tokens, enc_size)
            keys, values = _at(mask, self.attention.project_keys(real)), _at(mask, self.context_proj(real))
        else:
            keys, values = self.attention.project_keys(annotations), annotations
        return DecoderState(hidden=hidden, cell=hidden if self.is_lstm else None, keys=keys, values=values, mask=mask)

    def embedded_terms(self, tokens: Tensor) -> Tensor:
        """[W_e; O_e] E y + b, the previous pieces' share of the first cell's gates and the readout:
        (...) piece ids -> (..., gates + readout). Read from the table of `tabulate_embedded_terms`
        where there is one and neither training nor gradients could change the weights under it."""
        if self.embedded_table is not None and not self.training and not torch.is_grad_enabled():
            return self.embedded_table[tokens]
        embedded_terms: Tensor = self.embedded_proj(self.emb_dropout(self.embedding(tokens)))
        return embedded_terms

    @torch.no_grad()
    def tabulate_embedded_terms(self) -> None:
        """Compute `embedded_terms` once for every piece of the target vocabulary, for a model that only
        translates: a search step then reads one row per hypothesis (7 KB at this model's size) instead of
        multiplying by the 256 x 1792 `embedded_proj`. On models/de-en (AMD EPYC, 2 cores, beam 5) that
        product was a tenth of a step: Multi30k test in random batches of 32 ran at 154 sentences/s
        against 140, one sentence took 20 ms against 23, and the translations were the same. The table
        (vocab x terms floats, 43 MB for models/de-en) does not follow later changes to the weights, so
        `embedded_terms` ignores it in training mode and wherever gradients are on."""
        self.embedded_table = self.embedded_proj(self.embedding.weight)

    def _advance(
        self, terms: Tensor, state: DecoderState, recurrent: Tensor | None = None
    ) -> tuple[Tensor, DecoderState]:
        """One recurrence step from the terms of E y_{i-1} and c_i (rows, gates + readout), and U s_{i-1} + b
        if the caller has it; returns the readout's share of the terms (rows, readout) and the new state."""
        gates, readout_terms = terms.split([self.gates_size, self.readout_size], dim=-1)
        if recurrent is None:
            recurrent = self.hidden_proj(state.hidden[0])
        if state.cell is not None:
            hidden, cell = lstm_cell(gates + recurrent, state.cell[0])
            hiddens, cells = [hidden], [cell]
        else:
            hiddens, cells = [gru_cell(gates, recurrent, state.hidden[0])], []
        for layer, upper_cell in enumerate(self.upper_cells, start=1):
            layer_input = self.dropout(hiddens[-1])
            if state.cell is not None:
                hidden, cell = upper_cell(layer_input, (state.hidden[layer], state.cell[layer]))
                cells.append(cell)
            else:
                hidden = upper_cell(layer_input, state.hidden[layer])
            hiddens.append(hidden)
        new_state = DecoderState(
            hidden=tuple(hiddens),
            cell=tuple(cells) if cells else None,
            keys=state.keys,
            values=state.values,
            mask=state.mask,
        )
        return readout_terms, new_state

    def _logits(self, hidden: Tensor, readout_terms: Tensor) -> Tensor:
        """Deep output: (..., hidden), the readout's terms of c_i and E y_{i-1} (..., readout) -> (..., vocab)."""
        readout = torch.tanh(self.readout_proj(self.dropout(hidden)) + readout_terms)
        logits: Tensor = self.output(self.dropout(readout))
        return logits

    def forward(self, tgt_in: Tensor, annotations: Tensor, summary: Tensor, mask: Tensor) -> Tensor:
        """Teacher forcing. tgt_in: (batch, tgt_len) starting with <s>; the encoder's annotations (batch,
        src_len, enc_size) and summary (batch, enc_size); mask (batch, src_len) -> logits (batch, tgt_len, vocab)."""
        state = self.init_state(annotations, summary, mask, project=False)
        embedded_terms = self.embedded_terms(tgt_in)  # every step at once
        attention = self.attention
        if self.num_layers == 1:  # s_{i-1} is the query and the recurrence's input: one product for both
            query_layer, hidden_proj = attention.query_layer, self.hidden_proj
            weight = torch.cat([query_layer.weight, hidden_proj.weight])
            bias = torch.cat([query_layer.bias, hidden_proj.bias])
            split = [query_layer.out_features, hidden_proj.out_features]
        values, context_weight = StepValues(state.values), self.context_proj.weight.t()
        hiddens, readout_terms = [], []
        # unbind: slicing out each step would cost a full-size backward per step
        for step, embedded_t in enumerate(embedded_terms.unbind(1)):
            if self.num_layers == 1:
                query, recurrent = F.linear(state.hidden[0], weight, bias).split(split, dim=-1)
            else:
                query, recurrent = attention.query_layer(state.hidden[-1]), None
            context = values.weigh(attention.align(query, state.keys, state.mask), step)
            terms = torch.addmm(embedded_t, context, context_weight)  # E y_{i-1} and c_i terms in one product
            terms, state = self._advance(terms, state, recurrent)
            hiddens.append(state.hidden[-1])
            readout_terms.append(terms)
        return self._logits(torch.stack(hiddens, dim=1), torch.stack(readout_terms, dim=1))

    def step(self, prev: Tensor, state: DecoderState) -> tuple[Tensor, Tensor, DecoderState]:
        """One search step, from a state of `init_state`. prev: (batch,) previous pieces -> log-probs
        (batch, vocab), attention (batch, src_len)."""
        context_terms, weights = self.attention(state.hidden[-1], state.keys, state.values, state.mask)
        readout_terms, state = self._advance(self.embedded_terms(prev) + context_terms, state)
        logits = self._logits(state.hidden[-1], readout_terms).float()
        logits[:, [PAD, BOS]] = float("-inf")  # never outputs
        log_probs = torch.log_softmax(logits, dim=-1)
        return log_probs, weights, state


def _at(mask: Tensor, rows: Tensor) -> Tensor:
    """(tokens, size) rows -> (batch, src_len, size): the rows at the True positions of `mask`, in
    order, and zeros at the others."""
    padded = rows.new_zeros(*mask.shape, rows.size(-1))
    padded[mask] = rows
    return padded


def upgrade_weights(weights: dict[str, Tensor]) -> dict[str, Tensor]:
    """A model's weights in this decoder's layout, from either layout.

    Models written before the first layer was split (both shipped models among them) hold the first
    cell as `decoder.cells.0` (an `nn.GRUCell` or `nn.LSTMCell` over [E y; c]) and the readout as one
    layer over [s; c; E y]; their columns are the parts of `embedded_proj`, `context_proj`,
    `hidden_proj` and `readout_proj`, and their outputs are unchanged.
    """
    if "decoder.cells.0.weight_ih" not in weights or "decoder.readout.weight" not in weights:
        return weights
    weights = dict(weights)
    pop = weights.pop
    input_weight, hidden_weight = pop("decoder.cells.0.weight_ih"), pop("decoder.cells.0.weight_hh")
    readout_weight, readout_bias = pop("decoder.readout.weight"), pop("decoder.readout.bias")
    emb_size, hidden_size = weights["decoder.embedding.weight"].size(1), hidden_weight.size(1)
    enc_size = input_weight.size(1) - emb_size
    input_embedded, input_context = input_weight.split([emb_size, enc_size], dim=1)
    readout_state, readout_context, readout_embedded = readout_weight.split([hidden_size, enc_size, emb_size], dim=1)
    weights["decoder.embedded_proj.weight"] = torch.cat([input_embedded, readout_embedded])
    weights["decoder.embedded_proj.bias"] = torch.cat([pop("decoder.cells.0.bias_ih"), readout_bias])
    weights["decoder.context_proj.weight"] = torch.cat([input_context, readout_context])
    weights["decoder.hidden_proj.weight"] = hidden_weight
    weights["decoder.hidden_proj.bias"] = pop("decoder.cells.0.bias_hh")
    weights["decoder.readout_proj.weight"] = readout_state.contiguous()
    for name in [name for name in weights if name.startswith("decoder.cells.")]:
        layer, rest = name.removeprefix("decoder.cells.").split(".", 1)
        weights[f"decoder.upper_cells.{int(layer) - 1}.{rest}"] = pop(name)
    return weights
