"""SAGE optimizers: hand-computed updates, the plain groups, the parameter split, checkpoints."""

from __future__ import annotations

import io
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf
from torch import nn

from idistill.recipes.translation import build_model
from idistill.sage import SageAdamax, SageAdamW, make_optimizer, sage_param_groups

TINY = OmegaConf.to_container(
    OmegaConf.load(Path(__file__).parents[1] / "conf" / "model" / "transformer_tiny.yaml")
)
MINI = {**TINY, "embed_dim": 16, "ffn_dim": 32, "heads": 2}  # cheap forward/backward
HALVES = dict(lr=0.1, betas=(0.5, 0.5), beta3=0.5, eps=1e-8)


def _step(opt, params, grads):
    for p, g in zip(params, grads, strict=True):
        p.grad = g.clone()
    opt.step()


def _tiny_model(seed: int = 0, cfg: dict = TINY):
    torch.manual_seed(seed)
    return build_model(cfg, vocab_size=50, pad_id=0)


def _backward(model, seed: int) -> None:
    gen = torch.Generator().manual_seed(seed)
    src = torch.randint(1, 50, (2, 5), generator=gen)  # [B, S]
    tgt = torch.randint(1, 50, (2, 4), generator=gen)  # [B, T]
    model.eval()  # no dropout: both copies see the same gradients
    model.zero_grad(set_to_none=True)
    model(src, tgt).logsumexp(-1).mean().backward()


def test_sage_adamw_two_updates_match_hand_computation():
    # b1 = b2 = b3 = 1/2, lr = 0.1, no decay. theta = [1, 0.5, 0], g1 = [1, 5, 3], g2 = [11, 1, 2].
    # Update 1: the bias-corrected Ibar_1 equals I_1, so |I - Ibar| = 0: nothing moves.
    # Update 2 (theta unchanged): m_hat = (g1 + 2 g2) / 3, v_hat = (g1^2 + 2 g2^2) / 3,
    #   element 0: m_hat = 23/3, sqrt(v_hat) = 9; I = 1, 11; Ibar_hat = 23/3; ratio = 10/23
    #              -> theta = 1 - 0.1 * 10/23 * 23/27 = 26/27
    #   element 1: m_hat = 7/3, sqrt(v_hat) = 3; I = 2.5, 0.5; Ibar_hat = 7/6; ratio = 4/7
    #              -> theta = 0.5 - 0.1 * 4/7 * 7/9 = 41/90
    #   element 2: theta = 0, so I = 0 and the ratio 0 / eps^2 = 0: it stays at 0.
    theta = torch.tensor([1.0, 0.5, 0.0], dtype=torch.float64, requires_grad=True)
    opt = SageAdamW([theta], weight_decay=0.0, **HALVES)
    _step(opt, [theta], [torch.tensor([1.0, 5.0, 3.0], dtype=torch.float64)])
    assert theta.tolist() == [1.0, 0.5, 0.0]
    _step(opt, [theta], [torch.tensor([11.0, 1.0, 2.0], dtype=torch.float64)])
    expected = torch.tensor([26 / 27, 41 / 90, 0.0], dtype=torch.float64)
    torch.testing.assert_close(theta.detach(), expected, rtol=1e-7, atol=0)


def test_sage_adamax_one_update_matches_hand_computation():
    # b1 = b2 = b3 = 1/2, lr = 0.1, wd = 0.1. theta = [1, -2, 0], g = [0.5, 1, 3].
    # m = g/2, u = |g| (+eps), so m / u = 1/2; step s = 1/2 + 0.1 * theta = [0.6, 0.3, 0.5].
    # I = [0.5, 2, 0], Ibar = I/2 (no bias correction), ratio = (I/2) / (I/2) = [1, 1, 0].
    # theta - 0.1 * ratio * s = [0.94, -2.03, 0]; the plain group takes ratio 1: [.., -0.05].
    for sage, last in ((True, 0.0), (False, -0.05)):
        theta = torch.tensor([1.0, -2.0, 0.0], requires_grad=True)
        opt = SageAdamax([{"params": [theta], "sage": sage}], weight_decay=0.1, **HALVES)
        _step(opt, [theta], [torch.tensor([0.5, 1.0, 3.0])])
        torch.testing.assert_close(theta.detach(), torch.tensor([0.94, -2.03, last]))


@pytest.mark.parametrize("cls", [SageAdamW, SageAdamax])
def test_ibar_equal_to_i_freezes_a_sage_parameter(cls):
    # beta3 = 0 makes Ibar = I (bias correction 1 - 0^t = 1): |I - Ibar| = 0, a zero step,
    # while the plain group of the same optimizer keeps moving.
    torch.manual_seed(0)
    masked, plain = torch.randn(3, 2, requires_grad=True), torch.randn(3, requires_grad=True)
    start_masked, start_plain = masked.detach().clone(), plain.detach().clone()
    groups = [{"params": [masked], "sage": True}, {"params": [plain], "sage": False}]
    opt = cls(groups, lr=0.1, beta3=0.0, weight_decay=0.0)
    for _ in range(3):
        _step(opt, [masked, plain], [torch.randn(3, 2), torch.randn(3)])
    assert torch.equal(masked.detach(), start_masked)
    assert not torch.equal(plain.detach(), start_plain)


def test_sage_adamw_decay_is_not_scaled_by_sensitivity():
    # AdamW-SAGE decouples the decay from the SAGE step: with Ibar = I only it remains.
    theta = torch.tensor([1.0, -2.0, 0.5], requires_grad=True)
    opt = SageAdamW([theta], lr=0.1, beta3=0.0, weight_decay=0.5)
    _step(opt, [theta], [torch.tensor([0.3, -1.0, 2.0])])
    torch.testing.assert_close(theta.detach(), torch.tensor([0.95, -1.9, 0.475]))


def test_plain_group_is_exactly_torch_adamw():
    torch.manual_seed(0)
    shapes = [(4, 3), (3,), (2, 2)]
    plain = [torch.randn(s, requires_grad=True) for s in shapes]
    masked = torch.randn(3, 3, requires_grad=True)
    ref = [p.detach().clone().requires_grad_() for p in plain]
    hyper = dict(lr=1e-2, betas=(0.9, 0.98), eps=1e-8, weight_decay=0.01)
    opt = SageAdamW([{"params": [masked]}, {"params": plain, "sage": False}], **hyper)
    ref_opt = torch.optim.AdamW(ref, **hyper)
    for _ in range(5):
        grads = [torch.randn(s) for s in shapes]
        _step(opt, [masked, *plain], [torch.randn(3, 3), *grads])
        _step(ref_opt, ref, grads)
    for p, r in zip(plain, ref, strict=True):
        torch.testing.assert_close(p, r, rtol=0, atol=0)


def test_param_groups_split_the_real_model():
    model = _tiny_model()
    sage, plain = sage_param_groups(model)
    assert sage["sage"] is True and plain["sage"] is False
    ids = [id(p) for p in sage["params"] + plain["params"]]
    assert len(ids) == len(set(ids)) == len(list(model.parameters()))  # each exactly once
    # 6 linears per encoder layer (q, k, v, out, fc1, fc2), 10 per decoder layer: weights only
    assert len(sage["params"]) == 2 * 6 + 2 * 10
    assert all(p.dim() == 2 for p in sage["params"])
    sage_ids = {id(p) for p in sage["params"]}
    assert id(model.encoder_layers[0].self_attn.q_proj.weight) in sage_ids
    assert id(model.decoder_layers[1].ffn.fc2.weight) in sage_ids
    for p in (
        model.decoder_layers[1].ffn.fc2.bias,
        model.encoder_layers[0].final_layer_norm.weight,
        model.encoder_embed.embed_tokens.weight,
        model.output_projection.weight,
    ):
        assert id(p) not in sage_ids


def test_param_groups_need_transformer_blocks():
    with pytest.raises(ValueError, match="use optimizer name 'adamw'"):
        sage_param_groups(nn.Linear(2, 2))


@pytest.mark.parametrize("name", ["sage_adamw", "sage_adamax"])
def test_state_round_trip_gives_the_same_next_update(name):
    hyper = dict(lr=1e-3, betas=(0.9, 0.98), eps=1e-8, weight_decay=0.01)
    model = _tiny_model(cfg=MINI)
    opt = make_optimizer(model, name, **hyper)
    for seed in (1, 2):
        _backward(model, seed)
        opt.step()
    buf = io.BytesIO()
    torch.save({"model": model.state_dict(), "optimizer": opt.state_dict()}, buf)
    buf.seek(0)
    ckpt = torch.load(buf, weights_only=True)
    resumed = _tiny_model(seed=1, cfg=MINI)
    resumed.load_state_dict(ckpt["model"])
    resumed_opt = make_optimizer(resumed, name, **hyper)
    resumed_opt.load_state_dict(ckpt["optimizer"])

    for m, o in ((model, opt), (resumed, resumed_opt)):
        _backward(m, seed=3)
        o.step()
    for (n, p), q in zip(model.named_parameters(), resumed.parameters(), strict=True):
        torch.testing.assert_close(p, q, rtol=0, atol=0, msg=n)


def test_make_optimizer_adamw_is_torch_adamw_over_all_parameters():
    model = _tiny_model()
    opt = make_optimizer(model, "adamw", lr=1e-3, betas=[0.9, 0.98], eps=1e-8, weight_decay=0.0)
    assert type(opt) is torch.optim.AdamW
    assert len(opt.param_groups[0]["params"]) == len(list(model.parameters()))


def test_bad_name_and_bad_beta3_are_named():
    model = nn.Linear(2, 2)
    with pytest.raises(ValueError, match="'adam' .*valid: adamw, sage_adamw, sage_adamax"):
        make_optimizer(model, "adam", lr=1e-3, betas=(0.9, 0.98), eps=1e-8, weight_decay=0.0)
    with pytest.raises(ValueError, match=r"beta3 must be in \[0, 1\) \(got 1.0\)"):
        SageAdamW(model.parameters(), beta3=1.0)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU")
def test_cuda_matches_cpu():
    torch.manual_seed(0)
    params = [torch.randn(5, 4, requires_grad=True), torch.randn(4, requires_grad=True)]
    grads = [[torch.randn(5, 4), torch.randn(4)] for _ in range(3)]
    for cls in (SageAdamW, SageAdamax):
        cpu = [p.detach().clone().requires_grad_() for p in params]
        gpu = [p.detach().cuda().requires_grad_() for p in params]
        opts = [
            cls([{"params": ps[:1]}, {"params": ps[1:], "sage": False}], lr=1e-2)
            for ps in (cpu, gpu)
        ]
        for g in grads:
            _step(opts[0], cpu, g)
            _step(opts[1], gpu, [x.cuda() for x in g])
        for c, d in zip(cpu, gpu, strict=True):
            torch.testing.assert_close(d.cpu(), c)
