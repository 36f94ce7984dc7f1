"""Divergences between K passes (paper eq. 8-9, 14) and fairseq's label-smoothed cross-entropy.

Everything is computed from log-probabilities in float32, never log(softmax(x)), so that a
probability that underflows still gives a finite loss and finite gradients under bf16/fp16.
"""

import math

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.autograd.function import once_differentiable

DIVERGENCES = ("x", "js", "jeffrey", "mse")
CLASSIFICATION_DIVERGENCES = ("x", "js", "jeffrey")


def divergence(name: str, outputs: list[Tensor], mask: Tensor | None = None) -> Tensor:
    """Divergence between K outputs, summed over the positions where `mask` is True.

    outputs: K tensors [..., V] of logits ("x", "js", "jeffrey"; softmax is taken here) or
    [...] real values ("mse"). mask: bool [...], True where a position counts; None = all.
    With p_bar = mean_i p_i, per position:
      x       = (1/K) sum_i [KL(p_i||p_bar) + KL(p_bar||p_i)]        (paper eq. 8)
      js      = (1/K) sum_i KL(p_i||p_bar)
      jeffrey = (1/K^2) sum_i sum_j [KL(p_i||p_j) + KL(p_j||p_i)]     (eq. 14 / K^2; R-Drop at K=2)
      mse     = (1/K) sum_i (p_i - p_bar)^2                            (paper eq. 9)
    Returns a float32 scalar; 0 when K == 1.
    """
    if name not in DIVERGENCES:
        raise ValueError(
            f"unknown divergence {name!r}: divergence.name must be one of {', '.join(DIVERGENCES)}"
        )
    if len(outputs) == 0:
        raise ValueError("divergence needs at least one output (got an empty list)")
    shapes = [tuple(o.shape) for o in outputs]
    if len(set(shapes)) > 1:
        raise ValueError(f"divergence outputs must all have the same shape (got {shapes})")
    if name != "mse" and outputs[0].dim() == 0:
        raise ValueError(f"divergence {name!r} needs logits [..., V] (got a scalar)")
    positions = shapes[0] if name == "mse" else shapes[0][:-1]
    if mask is not None:
        if mask.dtype != torch.bool:
            raise ValueError(f"divergence mask must be a bool tensor (got dtype {mask.dtype})")
        if tuple(mask.shape) != positions:
            raise ValueError(
                f"divergence mask shape {tuple(mask.shape)} must equal the outputs' "
                f"position shape {positions} (outputs {shapes[0]})"
            )

    k = len(outputs)
    if k == 1:
        return torch.zeros((), dtype=torch.float32, device=outputs[0].device)

    # Keep only the counted positions, so masked (e.g. padding) logits never reach the maths,
    # not even through NaN * 0 in the backward pass.
    if mask is not None:
        outputs = [o[mask] for o in outputs]  # [M, V] or [M]
    stacked = torch.stack(outputs)  # [K, ..., V] or [K, ...], in the outputs' dtype

    if name == "mse":
        stacked = stacked.float()
        return (stacked - stacked.mean(0)).pow(2).sum() / k

    value = _FusedDivergence.apply(stacked.reshape(k, -1, stacked.shape[-1]), name == "js")
    # Since sum_i (p_i - p_bar) = 0, x = (1/K) sum_i sum_v (p_i - p_bar) log p_i
    # = (1/K^2) sum_ij KL(p_i||p_j), so the symmetric pairwise sum is exactly twice x.
    # This avoids a [K, K, ..., V] tensor; tests check it against the explicit pairwise sum.
    return 2.0 * value if name == "jeffrey" else value


CHUNK_ELEMENTS = 1 << 21  # CPU: ~8 MB of float32 per temporary, cache-sized, no page faults
CUDA_CHUNK_ELEMENTS = 1 << 26  # GPU: 256 MB per temporary, few kernel launches


def _chunk(logits: Tensor) -> int:
    """Positions per chunk of a [K, M, V] computation on `logits`' device."""
    k, _, vocab = logits.shape
    elements = CUDA_CHUNK_ELEMENTS if logits.is_cuda else CHUNK_ELEMENTS
    return max(1, elements // (k * vocab))


class _FusedDivergence(torch.autograd.Function):
    """X (eq. 8) or JS divergence of logits [K, M, V], summed over M, in chunks of positions.

    Autograd through the plain formulas keeps about ten [K, M, V] float32 tensors alive for
    the backward pass; here the forward keeps only the logits and the backward recomputes
    each chunk and applies the closed-form gradient. With l_i = log p_i, p_bar = mean_i p_i:
      X:  with L = (1/K) sum_i l_i, S_i = sum_v p_i (l_i - L):
          dX/dz_i  = (1/K) [p_i (l_i - L - S_i + 1) - p_bar]
      JS: with l_bar = log p_bar, KL_i = sum_v p_i (l_i - l_bar):
          dJS/dz_i = (1/K) p_i (l_i - l_bar - KL_i)
    """

    @staticmethod
    def forward(ctx, logits: Tensor, js: bool) -> Tensor:
        k, m, _ = logits.shape
        total = logits.new_zeros((), dtype=torch.float32)
        step = _chunk(logits)
        for lo in range(0, m, step):
            logp = F.log_softmax(logits[:, lo : lo + step].float(), dim=-1)  # [K, c, V]
            log_pbar = torch.logsumexp(logp, dim=0) - math.log(k)  # [c, V]
            weight = logp.exp() if js else logp.exp() - log_pbar.exp()  # p_i or p_i - p_bar
            total += (weight * (logp - log_pbar)).sum()
        ctx.save_for_backward(logits)
        ctx.js = js
        return total / k

    @staticmethod
    @once_differentiable  # the closed form is not itself differentiable (in-place below)
    def backward(ctx, grad_out: Tensor) -> tuple[Tensor, None]:
        (logits,) = ctx.saved_tensors
        k, m, _ = logits.shape
        grad = torch.empty_like(logits)  # [K, M, V]
        scale = grad_out.float() / k
        step = _chunk(logits)
        for lo in range(0, m, step):
            hi = lo + step
            logp = F.log_softmax(logits[:, lo:hi].float(), dim=-1)  # [K, c, V]
            p = logp.exp()
            if ctx.js:
                logp -= torch.logsumexp(logp, dim=0) - math.log(k)  # l_i - l_bar, in place
                g = p * (logp - (p * logp).sum(-1, keepdim=True))
            else:
                logp -= logp.mean(0)  # l_i - L, in place
                g = p * (logp - (p * logp).sum(-1, keepdim=True) + 1.0) - p.mean(0)
            grad[:, lo:hi] = g * scale
        return grad, None


def label_smoothed_nll_loss(
    logits: Tensor, target: Tensor, epsilon: float, ignore_index: int | None
) -> tuple[Tensor, Tensor]:
    """fairseq's label-smoothed cross-entropy, summed: returns (loss_sum, nll_sum) in float32.

    With eps_i = epsilon / (V - 1): loss = (1 - epsilon - eps_i) * nll + eps_i * sum_v -log p_v.
    logits [..., V], target [...]; positions with target == ignore_index count 0.
    """
    vocab = logits.shape[-1]
    if vocab < 2:
        raise ValueError(f"label smoothing needs at least 2 classes (got V={vocab})")
    if tuple(target.shape) != tuple(logits.shape[:-1]):
        raise ValueError(
            f"target shape {tuple(target.shape)} must equal logits shape without the class "
            f"dim {tuple(logits.shape[:-1])}"
        )
    lprobs = F.log_softmax(logits.float(), dim=-1)  # [..., V]
    keep = (
        torch.ones_like(target, dtype=torch.bool)
        if ignore_index is None
        else target != ignore_index
    )
    safe_target = target.masked_fill(~keep, 0)  # ignore_index may be negative: not gatherable
    nll = -lprobs.gather(-1, safe_target.unsqueeze(-1)).squeeze(-1)  # [...]
    smooth = -lprobs.sum(-1)  # [...]
    zero = lprobs.new_zeros(())
    nll = torch.where(keep, nll, zero)
    smooth = torch.where(keep, smooth, zero)
    eps_i = epsilon / (vocab - 1)
    loss = (1.0 - epsilon - eps_i) * nll + eps_i * smooth
    return loss.sum(), nll.sum()
