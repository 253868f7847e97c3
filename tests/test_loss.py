from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from mt.loss import label_smoothed_cross_entropy


@pytest.mark.parametrize("smoothing", [0.0, 0.1, 0.3])
def test_loss_and_gradient_equal_torch_cross_entropy(smoothing: float) -> None:
    torch.manual_seed(0)
    logits = torch.randn(50, 37, dtype=torch.float64, requires_grad=True)
    target = torch.randint(0, 37, (50,))
    target[::7] = 0  # padding
    expected = F.cross_entropy(logits, target, ignore_index=0, label_smoothing=smoothing, reduction="sum")
    (expected_grad,) = torch.autograd.grad(expected, logits)
    loss = label_smoothed_cross_entropy(logits, target, smoothing=smoothing, ignore_index=0)
    (grad,) = torch.autograd.grad(loss, logits)
    assert torch.allclose(loss, expected)
    assert torch.allclose(grad, expected_grad)


def test_padding_tokens_get_no_gradient() -> None:
    logits = torch.randn(4, 9, requires_grad=True)
    label_smoothed_cross_entropy(logits, torch.tensor([3, 0, 5, 0]), smoothing=0.1, ignore_index=0).backward()
    assert logits.grad is not None
    assert torch.all(logits.grad[[1, 3]] == 0)
    assert torch.all(logits.grad[[0, 2]] != 0)


def test_peaked_logits_keep_loss_and_gradient_exact() -> None:
    """lse is read off the softmax's largest probability: right however peaked the distribution."""
    torch.manual_seed(1)
    logits = (torch.randn(20, 500) * 200).requires_grad_()  # most probabilities underflow in fp32
    target = torch.randint(1, 500, (20,))
    reference = logits.detach().double().requires_grad_()
    expected = F.cross_entropy(reference, target, label_smoothing=0.1, reduction="sum")
    (expected_grad,) = torch.autograd.grad(expected, reference)
    loss = label_smoothed_cross_entropy(logits, target, smoothing=0.1, ignore_index=0)
    (grad,) = torch.autograd.grad(loss, logits)
    assert torch.allclose(loss.double(), expected, rtol=1e-6)
    assert torch.allclose(grad.double(), expected_grad, atol=1e-6)


def test_a_second_backward_through_the_loss_is_refused() -> None:
    logits = torch.randn(4, 9, requires_grad=True)
    loss = label_smoothed_cross_entropy(logits, torch.tensor([3, 1, 5, 2]), smoothing=0.1, ignore_index=0)
    loss.backward(retain_graph=True)
    with pytest.raises(RuntimeError, match="once per forward"):
        loss.backward()
