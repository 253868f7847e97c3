from __future__ import annotations

import torch
from torch import nn

from mt.attention import AdditiveAttention, StepValues


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


def test_step_values_give_the_gradients_of_weighing_at_every_step() -> None:
    """Teacher forcing sums the values' gradient over the steps once, in StepValues; it must be the
    gradient autograd gives for a bmm per step, also when a step is left out of the loss and when the
    graph is walked backward twice."""
    torch.manual_seed(0)
    values = torch.randn(3, 4, 5, dtype=torch.float64, requires_grad=True)
    weights = [torch.softmax(torch.randn(3, 2, 4, dtype=torch.float64), -1).requires_grad_() for _ in range(3)]
    scales = [torch.randn(6, 5, dtype=torch.float64) for _ in range(3)]

    def loss(contexts: list[torch.Tensor]) -> torch.Tensor:  # the second step's context is not used
        return (contexts[0] * scales[0]).sum() + (contexts[2] * scales[2]).sum()

    inputs = [values, weights[0], weights[2]]
    expected = torch.autograd.grad(loss([torch.bmm(w, values).flatten(0, 1) for w in weights]), inputs)
    step_values = StepValues(values)
    total = loss([step_values.weigh(w, step) for step, w in enumerate(weights)])
    for _ in range(2):  # again through the same graph: each step counted once
        grads = torch.autograd.grad(total, inputs, retain_graph=True)
        assert all(torch.allclose(g, e) for g, e in zip(grads, expected, strict=True))


def test_step_values_under_bf16_autocast_multiply_in_bf16_and_return_fp32_gradients() -> None:
    torch.manual_seed(0)
    values = torch.randn(3, 4, 5, requires_grad=True)
    weights = torch.softmax(torch.randn(3, 1, 4), -1).requires_grad_()
    (expected,) = torch.autograd.grad(torch.bmm(weights, values).square().sum(), [values])
    with torch.autocast("cpu", dtype=torch.bfloat16):
        context = StepValues(values).weigh(weights, 0)
    assert context.dtype == torch.bfloat16
    (grad,) = torch.autograd.grad(context.float().square().sum(), [values])
    assert grad.dtype == torch.float32
    assert torch.allclose(grad, expected, rtol=0.05, atol=0.05)
