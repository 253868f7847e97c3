from __future__ import annotations

import torch
from torch import nn

from mt.attention import AdditiveAttention


def make(seed: int = 0) -> tuple[AdditiveAttention, torch.Tensor, torch.Tensor, torch.Tensor]:
    torch.manual_seed(seed)
    attention = AdditiveAttention(query_size=6, key_size=4, attn_size=5)
    values = torch.randn(2, 7, 4)
    mask = torch.tensor([[True] * 7, [True] * 3 + [False] * 4])
    return attention, torch.randn(2, 6), values, mask


def test_weights_are_a_distribution_over_real_tokens_only() -> None:
    attention, query, values, mask = make()
    _, weights = attention(query, attention.project_keys(values), values, mask)
    assert torch.allclose(weights.sum(-1), torch.ones(2))
    assert torch.all(weights[1, 3:] == 0)


def test_padded_positions_change_nothing() -> None:
    attention, query, values, mask = make()
    context, weights = attention(query, attention.project_keys(values), values, mask)
    garbage = values.clone()
    garbage[1, 3:] = 1e3 * torch.randn(4, 4)
    context2, weights2 = attention(query, attention.project_keys(garbage), garbage, mask)
    assert torch.equal(weights, weights2)
    assert torch.allclose(context, context2)


def test_context_is_the_weighted_sum_of_values() -> None:
    attention, query, values, mask = make()
    context, weights = attention(query, attention.project_keys(values), values, mask)
    assert torch.allclose(context, torch.einsum("bs,bsk->bk", weights, values), atol=1e-6)


def test_attention_weights_are_the_softmax_of_bahdanau_energies() -> None:
    """The energies are computed through sigmoid, not tanh; the weights must be the textbook ones."""
    torch.manual_seed(0)
    attention = AdditiveAttention(query_size=6, key_size=5, attn_size=7)
    nn.init.normal_(attention.energy_layer.weight, std=2.0)  # energies large enough to differ a lot
    values, query = torch.randn(3, 4, 5), torch.randn(3 * 2, 6)  # 3 sentences of 4 positions, 2 rows each
    mask = torch.tensor([[True] * 4, [True, True, True, False], [True, False, False, False]])
    context, weights = attention(query, attention.project_keys(values), values, mask)

    keys = attention.key_layer(values).repeat_interleave(2, dim=0)  # (6, 4, 7)
    energies = torch.tanh(keys + attention.query_layer(query).unsqueeze(1)) @ attention.energy_layer.weight[0]
    expected = torch.softmax(energies.masked_fill(~mask.repeat_interleave(2, dim=0), float("-inf")), dim=-1)
    assert torch.allclose(weights, expected, atol=1e-6)
    expected_context = torch.bmm(expected.unsqueeze(1), values.repeat_interleave(2, dim=0)).squeeze(1)
    assert torch.allclose(context, expected_context, atol=1e-6)
