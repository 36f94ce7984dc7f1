import math

import pytest
import torch
import torch.nn.functional as F

from idistill import losses
from idistill.losses import (
    CLASSIFICATION_DIVERGENCES,
    DIVERGENCES,
    divergence,
    fused,
    label_smoothed_nll_loss,
    reference,
)


def logits_of(probs: list[float]) -> torch.Tensor:
    """Logits whose softmax is exactly `probs` (up to float rounding)."""
    return torch.tensor([math.log(p) for p in probs])


def kl(p: list[float], q: list[float]) -> float:
    return sum(a * math.log(a / b) for a, b in zip(p, q, strict=True))


P1, P2 = [0.8, 0.2], [0.4, 0.6]
PBAR = [0.6, 0.4]


def test_x_matches_hand_computation_k2_v2():
    expected = 0.5 * (kl(P1, PBAR) + kl(PBAR, P1) + kl(P2, PBAR) + kl(PBAR, P2))
    got = divergence("x", [logits_of(P1), logits_of(P2)])
    assert got.item() == pytest.approx(expected, rel=1e-5)


def test_js_matches_hand_computation_k2_v2():
    expected = 0.5 * (kl(P1, PBAR) + kl(P2, PBAR))
    got = divergence("js", [logits_of(P1), logits_of(P2)])
    assert got.item() == pytest.approx(expected, rel=1e-5)


def test_jeffrey_k2_is_rdrop_half_symmetric_kl_by_hand():
    expected = 0.5 * (kl(P1, P2) + kl(P2, P1))
    got = divergence("jeffrey", [logits_of(P1), logits_of(P2)])
    assert got.item() == pytest.approx(expected, rel=1e-5)


def test_mse_matches_hand_computation():
    a, b, c = torch.tensor([1.0, 0.0]), torch.tensor([3.0, 0.0]), torch.tensor([2.0, 3.0])
    # position 0: values 1, 3, 2 -> mean 2 -> (1 + 1 + 0) / 3; position 1: 0, 0, 3 -> mean 1
    # -> (1 + 1 + 4) / 3
    expected = 2 / 3 + 6 / 3
    assert divergence("mse", [a, b, c]).item() == pytest.approx(expected, rel=1e-6)


def test_jeffrey_k2_equals_kl_div_both_directions():
    torch.manual_seed(0)
    a, b = torch.randn(5, 11), torch.randn(5, 11)
    la, lb = a.log_softmax(-1), b.log_softmax(-1)
    kl_ab = F.kl_div(lb, la, log_target=True, reduction="sum")  # KL(p_a || p_b)
    kl_ba = F.kl_div(la, lb, log_target=True, reduction="sum")
    got = divergence("jeffrey", [a, b])
    torch.testing.assert_close(got, 0.5 * (kl_ab + kl_ba), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("k", [3, 4])
def test_jeffrey_equals_explicit_pairwise_sum_over_k_squared(k):
    torch.manual_seed(k)
    outs = [torch.randn(4, 9, dtype=torch.float64) for _ in range(k)]
    lp = [o.log_softmax(-1) for o in outs]
    pairs = sum(
        ((lp[i].exp() - lp[j].exp()) * (lp[i] - lp[j])).sum() for i in range(k) for j in range(k)
    )
    torch.testing.assert_close(
        divergence("jeffrey", outs).double(), pairs / k**2, rtol=1e-5, atol=0
    )


@pytest.mark.parametrize("name", DIVERGENCES)
def test_zero_when_all_outputs_equal(name):
    torch.manual_seed(0)
    o = torch.randn(3, 4, 7)
    assert divergence(name, [o, o.clone(), o.clone()]).item() == pytest.approx(0.0, abs=1e-6)


@pytest.mark.parametrize("name", DIVERGENCES)
def test_single_output_gives_float32_zero(name):
    got = divergence(name, [torch.randn(2, 5, dtype=torch.bfloat16)])
    assert got.dtype == torch.float32 and got.item() == 0.0 and got.dim() == 0


@pytest.mark.parametrize("name", DIVERGENCES)
def test_masked_positions_are_ignored(name):
    torch.manual_seed(0)
    shape = (2, 3) if name == "mse" else (2, 3, 5)  # mse compares values, not distributions
    outs = [torch.randn(shape) for _ in range(3)]
    mask = torch.tensor([[True, False, True], [False, True, True]])
    before = divergence(name, outs, mask)
    changed = [o.clone() for o in outs]
    for o in changed:
        o[~mask] = torch.randn_like(o[~mask]) * 50
    changed[0][0, 1] = float("nan")  # even garbage at a masked position does not leak
    torch.testing.assert_close(divergence(name, changed, mask), before)


@pytest.mark.parametrize("name", DIVERGENCES)
def test_value_is_summed_over_positions(name):
    torch.manual_seed(1)
    outs = [torch.randn(2, 6) for _ in range(3)]
    both = divergence(name, outs)
    first = divergence(name, [o[:1] for o in outs])
    second = divergence(name, [o[1:] for o in outs])
    torch.testing.assert_close(both, first + second)


@pytest.mark.parametrize("k", [2, 3, 5])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_js_le_x_le_jeffrey_theorem_c1(k, seed):
    torch.manual_seed(seed)
    outs = [torch.randn(8, 13) * 3 for _ in range(k)]
    js, x, jeffrey = (divergence(n, outs).item() for n in ("js", "x", "jeffrey"))
    assert 0 <= js <= x + 1e-6
    assert x <= jeffrey + 1e-6


@pytest.mark.parametrize("name", CLASSIFICATION_DIVERGENCES)
def test_finite_value_and_gradients_for_logits_of_magnitude_100(name):
    torch.manual_seed(0)
    outs = [(torch.randn(4, 10) * 100).requires_grad_() for _ in range(3)]
    value = divergence(name, outs)
    value.backward()
    assert torch.isfinite(value)
    assert all(torch.isfinite(o.grad).all() for o in outs)


@pytest.mark.parametrize("name", DIVERGENCES)
def test_bf16_inputs_give_finite_float32_value_and_gradients(name):
    torch.manual_seed(0)
    outs = [(torch.randn(4, 10) * 30).bfloat16().requires_grad_() for _ in range(3)]
    value = divergence(name, outs)
    value.backward()
    assert value.dtype == torch.float32 and torch.isfinite(value)
    assert all(o.grad.dtype == torch.bfloat16 and torch.isfinite(o.grad).all() for o in outs)


def test_unknown_name_lists_valid_names():
    with pytest.raises(ValueError, match="x, js, jeffrey, mse"):
        divergence("kl", [torch.randn(2, 3), torch.randn(2, 3)])


def test_shape_mismatch_names_the_shapes():
    with pytest.raises(ValueError, match=r"\(2, 3\).*\(2, 4\)"):
        divergence("x", [torch.randn(2, 3), torch.randn(2, 4)])


def test_mask_shape_mismatch_is_refused():
    with pytest.raises(ValueError, match=r"mask shape \(3,\)"):
        divergence("x", [torch.randn(2, 3), torch.randn(2, 3)], torch.ones(3, dtype=torch.bool))


def test_label_smoothed_nll_matches_hand_computation():
    logits = torch.tensor([[1.0, 2.0, 0.5], [0.0, 0.0, 3.0], [5.0, 1.0, 1.0]])
    target = torch.tensor([1, 2, -100])
    eps = 0.1
    eps_i = eps / 2
    loss_sum = nll_sum = 0.0
    for row, t in zip(logits.tolist()[:2], target.tolist()[:2], strict=True):
        log_z = math.log(sum(math.exp(v) for v in row))
        lprobs = [v - log_z for v in row]
        nll = -lprobs[t]
        loss_sum += (1 - eps - eps_i) * nll + eps_i * -sum(lprobs)
        nll_sum += nll
    loss, nll = label_smoothed_nll_loss(logits, target, eps, ignore_index=-100)
    assert loss.item() == pytest.approx(loss_sum, rel=1e-6)
    assert nll.item() == pytest.approx(nll_sum, rel=1e-6)


def test_label_smoothing_zero_equals_cross_entropy_sum_with_ignore_index():
    torch.manual_seed(0)
    logits = torch.randn(3, 5, 7)
    target = torch.randint(0, 7, (3, 5))
    target[0, :2] = 1  # the padding index
    loss, nll = label_smoothed_nll_loss(logits, target, 0.0, ignore_index=1)
    expected = F.cross_entropy(logits.view(-1, 7), target.view(-1), reduction="sum", ignore_index=1)
    torch.testing.assert_close(loss, expected)
    torch.testing.assert_close(nll, expected)


def test_label_smoothed_nll_is_float32_for_bf16_logits():
    logits = torch.randn(4, 6).bfloat16()
    loss, nll = label_smoothed_nll_loss(logits, torch.tensor([0, 1, 2, 3]), 0.1, None)
    assert loss.dtype == nll.dtype == torch.float32


# ---- the reference formulas against the paper's definitions, in Python floats

# K = 3 distributions over V = 3 classes at two positions; a third position is masked out
REF_PROBS = [
    [[0.7, 0.2, 0.1], [0.2, 0.5, 0.3], [0.1, 0.1, 0.8]],  # p_1, p_2, p_3 at position 0
    [[0.3, 0.3, 0.4], [0.6, 0.3, 0.1], [0.25, 0.5, 0.25]],  # at position 1
]


def _reference_inputs() -> tuple[list[torch.Tensor], torch.Tensor]:
    """K logit tensors [3 positions, V] whose softmax is REF_PROBS, NaN at the masked one."""
    outputs = [
        torch.stack([logits_of(pos[i]) for pos in REF_PROBS] + [torch.full((3,), math.nan)])
        for i in range(3)
    ]
    return outputs, torch.tensor([True, True, False])


def _by_definition(name: str) -> float:
    """The divergence `name` summed over REF_PROBS' positions, from KL sums in Python floats."""
    total = 0.0
    for ps in REF_PROBS:
        k = len(ps)
        pbar = [sum(col) / k for col in zip(*ps, strict=True)]
        if name == "x":  # eq. 8
            total += sum(kl(p, pbar) + kl(pbar, p) for p in ps) / k
        elif name == "js":
            total += sum(kl(p, pbar) for p in ps) / k
        else:  # jeffrey: eq. 14 / K^2
            total += sum(kl(p, q) + kl(q, p) for p in ps for q in ps) / k**2
    return total


@pytest.mark.parametrize("name", CLASSIFICATION_DIVERGENCES)
def test_reference_divergence_equals_kl_sums_of_the_definition(name):
    outputs, mask = _reference_inputs()
    got = reference.FORMULAS[name](outputs, mask)
    assert got.dtype == torch.float32
    assert got.item() == pytest.approx(_by_definition(name), rel=1e-6)


def test_reference_mse_equals_the_definition():
    values = [
        torch.tensor([1.0, 0.0, 9.0]),
        torch.tensor([3.0, 0.0, 9.0]),
        torch.tensor([2.0, 3.0, 0.0]),
    ]
    # position 0: 1, 3, 2 -> mean 2 -> (1 + 1 + 0) / 3; position 1: 0, 0, 3 -> mean 1 -> 6 / 3
    got = reference.mse(values, torch.tensor([True, True, False]))
    assert got.item() == pytest.approx(2 / 3 + 6 / 3, rel=1e-6)


def test_reference_x_is_at_most_jeffrey_theorem_c1_and_js_at_most_x():
    outputs, mask = _reference_inputs()
    js, x, jeffrey = (reference.FORMULAS[n](outputs, mask).item() for n in ("js", "x", "jeffrey"))
    assert 0 < js <= x <= jeffrey


@pytest.mark.parametrize("k", [2, 3, 5])
def test_reference_jeffrey_is_twice_x(k):
    """sum_i (p_i - p_bar) = 0 turns eq. 8 into (1/K^2) sum_ij KL(p_i || p_j), half of eq. 14 /
    K^2; the fused kernel computes jeffrey this way, the reference by the pairwise sum."""
    torch.manual_seed(k)
    outputs = [3 * torch.randn(4, 9) for _ in range(k)]
    torch.testing.assert_close(reference.jeffrey(outputs), 2 * reference.x(outputs))


@pytest.mark.parametrize("name", DIVERGENCES)
def test_reference_is_finite_for_bf16_logits_of_magnitude_100(name):
    torch.manual_seed(0)
    shape = (4,) if name == "mse" else (4, 10)
    outs = [(torch.randn(shape) * 100).bfloat16().requires_grad_() for _ in range(3)]
    value = reference.FORMULAS[name](outs)
    value.backward()
    assert value.dtype == torch.float32 and torch.isfinite(value)
    assert all(torch.isfinite(o.grad).all() for o in outs)


# ---- the fused kernels against the reference


def _by_autograd(name: str, logits: torch.Tensor) -> torch.Tensor:
    """X or JS through plain autograd in float64: the reference for the fused ones."""
    logp = torch.log_softmax(logits.double(), dim=-1)
    log_pbar = torch.logsumexp(logp, dim=0) - math.log(logits.shape[0])
    weight = logp.exp() if name == "js" else logp.exp() - log_pbar.exp()
    return (weight * (logp - log_pbar)).sum() / logits.shape[0]


@pytest.mark.parametrize("name", ["x", "js"])
@pytest.mark.parametrize("chunk_elements", [1, 7, 1 << 21])
@pytest.mark.parametrize("k", [2, 3])
def test_fused_value_and_gradient_match_autograd_across_chunks(
    monkeypatch, name, chunk_elements, k
):
    monkeypatch.setattr(fused, "CHUNK_ELEMENTS", chunk_elements)
    torch.manual_seed(k)
    logits = (3 * torch.randn(k, 2, 5, 11)).requires_grad_()
    mask = torch.tensor([[True, True, False, True, True], [True, False, True, True, False]])
    value = divergence(name, list(logits), mask)
    value.backward(torch.tensor(0.7))
    ref_logits = logits.detach().clone().requires_grad_()
    ref = _by_autograd(name, ref_logits[:, mask])
    (0.7 * ref).backward()
    assert value.item() == pytest.approx(ref.item(), rel=1e-5)
    torch.testing.assert_close(logits.grad, ref_logits.grad.float(), rtol=1e-4, atol=1e-6)
    assert logits.grad[:, ~mask].abs().max() == 0  # masked positions get no gradient


def _generic_output_loss(logits, target, epsilon, pad, name, mask):
    """Mean over passes of the reference CE, and the reference divergence: what the fused loss
    must equal."""
    ce = torch.stack(
        [reference.label_smoothed_nll_loss(o, target, epsilon, pad)[0] for o in logits]
    )
    return ce.mean(), reference.FORMULAS[name](list(logits), mask)


@pytest.mark.parametrize("name", CLASSIFICATION_DIVERGENCES)
@pytest.mark.parametrize("chunk_elements", [1, 50, 1 << 21])
@pytest.mark.parametrize("k", [1, 2, 3])
@pytest.mark.parametrize("reuse", [False, True])
@pytest.mark.parametrize("own_mask", [False, True])
def test_fused_ce_and_divergence_match_the_reference(
    monkeypatch, name, chunk_elements, k, reuse, own_mask
):
    """Several chunks (1 and 50 elements per chunk), one chunk (1 << 21); the divergence over
    the non-pad positions (mask None) or over a mask of its own (pad included, some not)."""
    monkeypatch.setattr(fused, "CHUNK_ELEMENTS", chunk_elements)
    torch.manual_seed(10 + k)
    pad = 0
    target = torch.randint(1, 7, (2, 5))
    target[0, 3:] = pad
    target[1, 4] = pad
    mask = target != pad
    if own_mask:
        mask = torch.tensor([[True, False, True, True, False], [True, True, False, True, True]])
    logits = (3 * torch.randn(k, 2, 5, 7, dtype=torch.float64)).requires_grad_()
    produced = logits * 1.0  # a model's output, whose memory `reuse` turns into its gradient
    ce, div = losses.intra_output_loss(
        produced, target, 0.1, pad, name, mask if own_mask else None, reuse=reuse
    )
    (0.7 * ce + 1.9 * div).backward()
    if reuse:
        torch.testing.assert_close(produced.detach(), logits.grad)
    ref_logits = logits.detach().clone().requires_grad_()
    ref_ce, ref_div = _generic_output_loss(ref_logits, target, 0.1, pad, name, mask)
    (0.7 * ref_ce + 1.9 * ref_div).backward()
    assert ce.dtype == div.dtype == torch.float32
    assert ce.item() == pytest.approx(ref_ce.item(), rel=1e-6)
    assert div.item() == pytest.approx(ref_div.item(), rel=1e-5, abs=1e-7)
    torch.testing.assert_close(logits.grad, ref_logits.grad, rtol=1e-5, atol=1e-7)
    # padding outside the divergence mask gets no gradient
    assert logits.grad[:, ~mask & (target == pad)].abs().max() == 0


def test_fused_loss_counts_ce_and_divergence_positions_separately():
    """A divergence mask other than the non-pad targets: each term keeps its own positions."""
    torch.manual_seed(3)
    target = torch.tensor([[2, 4, 1, 0], [3, 0, 0, 0]])
    mask = torch.tensor([[True, False, True, True], [False, False, True, False]])
    logits = torch.randn(3, 2, 4, 6, dtype=torch.float64, requires_grad=True)
    ce, div = losses.intra_output_loss(logits, target, 0.2, 0, "x", mask)
    (ce + div).backward()
    ref_logits = logits.detach().clone().requires_grad_()
    ref_ce, ref_div = _generic_output_loss(ref_logits, target, 0.2, 0, "x", mask)
    (ref_ce + ref_div).backward()
    assert (ce.item(), div.item()) == pytest.approx((ref_ce.item(), ref_div.item()), rel=1e-5)
    torch.testing.assert_close(logits.grad, ref_logits.grad, rtol=1e-4, atol=1e-6)


def test_fused_loss_keeps_the_bf16_dtype_of_the_logits_for_their_gradient():
    logits = (20 * torch.randn(3, 4, 50)).bfloat16().requires_grad_()
    target = torch.randint(1, 50, (4,))
    ce, div = losses.intra_output_loss(logits, target, 0.1, 0, "x")
    (ce + div).backward()
    assert ce.dtype == torch.float32 and torch.isfinite(ce) and torch.isfinite(div)
    assert logits.grad.dtype == torch.bfloat16 and torch.isfinite(logits.grad).all()


def test_fused_loss_refuses_a_target_of_the_wrong_shape():
    with pytest.raises(ValueError, match=r"target shape \(3,\)"):
        losses.intra_output_loss(
            torch.randn(2, 4, 5), torch.zeros(3, dtype=torch.long), 0.1, 0, "x"
        )
