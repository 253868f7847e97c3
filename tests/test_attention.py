from __future__ import annotations

import torch

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
