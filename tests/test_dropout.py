"""The CPU's cheaper dropout masks: nn.Dropout's distribution, gradient and modes."""

from __future__ import annotations

import pytest
import torch

from idistill.bench import build
from idistill.models.dropout import Dropout


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_drops_with_probability_p_and_scales_the_rest_rounding_once(dtype):
    torch.manual_seed(0)
    x = torch.randn(400, 1000).to(dtype)
    out = Dropout(0.3).train()(x)
    assert out.dtype == dtype
    kept = out != 0
    assert abs(kept.float().mean().item() - 0.7) < 0.005  # 400K draws: std 0.0007
    # each kept element is x / 0.7 rounded once to dtype (fp32: one ulp more, its scale being an
    # fp32 number); a scale rounded to bf16 first (1.4297) would be off by 8e-4 and fail this
    exact = (x.double() / 0.7).to(dtype)
    torch.testing.assert_close(out[kept], exact[kept], rtol=2.5e-7, atol=0)


def test_gradient_is_the_mask_times_the_scale():
    torch.manual_seed(0)
    x = torch.randn(50, 60, requires_grad=True)
    out = Dropout(0.25).train()(x)
    out.sum().backward()
    kept = (out != 0).float()
    torch.testing.assert_close(x.grad, kept / 0.75)
    torch.testing.assert_close(out, x.detach() * kept / 0.75)


def test_masks_differ_between_calls_and_follow_the_seed():
    drop = Dropout(0.5).train()
    x = torch.ones(1000)
    torch.manual_seed(1)
    a, b = drop(x), drop(x)
    assert not torch.equal(a, b)  # K passes: K different masks
    torch.manual_seed(1)
    assert torch.equal(drop(x), a)  # resume restores the RNG state: the same masks


def test_eval_mode_p_zero_and_p_one():
    x = torch.randn(10, 10)
    assert torch.equal(Dropout(0.3).eval()(x), x)
    assert torch.equal(Dropout(0.0).train()(x), x)
    assert torch.count_nonzero(Dropout(1.0).train()(x)) == 0


def test_every_dropout_of_the_transformer_is_this_one():
    model = build("transformer_tiny", 100, torch.device("cpu"))
    drops = [m for m in model.modules() if isinstance(m, torch.nn.Dropout)]  # a drop-in
    assert drops and all(type(m) is Dropout for m in drops)
