from __future__ import annotations

import pytest
import torch

from mt.dropout import Dropout


def test_training_zeroes_a_share_p_and_scales_the_rest_by_one_over_one_minus_p() -> None:
    torch.manual_seed(0)
    x = torch.ones(200_000, requires_grad=True)
    y = Dropout(0.3).train()(x)
    kept = y != 0
    assert kept.float().mean().item() == pytest.approx(0.7, abs=0.005)
    assert torch.allclose(y[kept], torch.full_like(y[kept], 1 / 0.7))
    y.sum().backward()
    assert x.grad is not None and torch.equal(x.grad, y.detach())  # the gradient passes where the input did


def test_masks_differ_between_calls_and_follow_the_seed() -> None:
    dropout, x = Dropout(0.5).train(), torch.ones(1000)
    torch.manual_seed(1)
    first, second = dropout(x), dropout(x)
    torch.manual_seed(1)
    assert not torch.equal(first, second)
    assert torch.equal(dropout(x), first)


@pytest.mark.parametrize("p", [0.0, 0.3])
def test_evaluation_and_p_zero_leave_the_input_unchanged(p: float) -> None:
    x = torch.randn(4, 8)
    assert torch.equal(Dropout(p).eval()(x), x)
    assert torch.equal(Dropout(0.0).train()(x), x)
