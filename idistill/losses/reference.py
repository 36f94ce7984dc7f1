"""The paper's formulas in plain autograd, to be checked against the paper in minutes: the
divergences between K passes (eq. 8, 9, 14) and fairseq's label-smoothed cross-entropy.

`fused.py` computes the same values and gradients with less memory and is tested against
this module. Everything here works from log_softmax in float32, never log(softmax(x)), so that
a probability that underflows still gives a finite loss and finite gradients under
bf16/fp16; every loss is summed over the positions that count.
"""

import math

import torch
import torch.nn.functional as F
from torch import Tensor


def kl(logp: Tensor, logq: Tensor) -> Tensor:
    """KL(p || q) = sum_v p_v (log p_v - log q_v) per position, from log-probabilities [..., V]."""
    return (logp.exp() * (logp - logq)).sum(-1)


def _log_probs(outputs: list[Tensor], mask: Tensor | None) -> Tensor:
    """log p_i of K logit tensors [..., V] at the positions `mask` counts: [K, M, V] float32."""
    logits = torch.stack(outputs)  # [K, ..., V]
    if mask is not None:
        logits = logits[:, mask]  # [K, M, V]: masked positions never reach the maths
    return F.log_softmax(logits.float(), dim=-1)


def _log_mean(logp: Tensor) -> Tensor:
    """log p_bar = log((1/K) sum_i p_i) [M, V] from log p_i [K, M, V], without exp then log."""
    return torch.logsumexp(logp, dim=0) - math.log(logp.shape[0])


def x(outputs: list[Tensor], mask: Tensor | None = None) -> Tensor:
    """The X divergence (paper eq. 8) between K logit tensors [..., V], summed over positions:
    (1/K) sum_i [KL(p_i || p_bar) + KL(p_bar || p_i)], p_bar = (1/K) sum_i p_i.
    """
    logp = _log_probs(outputs, mask)
    log_pbar = _log_mean(logp)
    return sum(kl(lp, log_pbar) + kl(log_pbar, lp) for lp in logp).sum() / len(outputs)


def js(outputs: list[Tensor], mask: Tensor | None = None) -> Tensor:
    """The generalized Jensen-Shannon divergence between K logit tensors [..., V], summed over
    positions: (1/K) sum_i KL(p_i || p_bar).
    """
    logp = _log_probs(outputs, mask)
    log_pbar = _log_mean(logp)
    return sum(kl(lp, log_pbar) for lp in logp).sum() / len(outputs)


def jeffrey(outputs: list[Tensor], mask: Tensor | None = None) -> Tensor:
    """The Jeffrey divergence (paper eq. 14, divided by K^2) between K logit tensors [..., V],
    summed over positions: (1/K^2) sum_i sum_j [KL(p_i || p_j) + KL(p_j || p_i)].
    At K = 2 this is R-Drop's (1/2) [KL(p_1 || p_2) + KL(p_2 || p_1)].
    """
    logp = _log_probs(outputs, mask)
    k = len(outputs)
    pairs = (kl(logp[i], logp[j]) + kl(logp[j], logp[i]) for i in range(k) for j in range(k))
    return sum(pairs).sum() / k**2


def mse(outputs: list[Tensor], mask: Tensor | None = None) -> Tensor:
    """The regression divergence (paper eq. 9) between K real-valued tensors [...], summed over
    positions: (1/K) sum_i (p_i - p_bar)^2, p_bar = (1/K) sum_i p_i.
    """
    values = torch.stack(outputs).float()  # [K, ...]
    if mask is not None:
        values = values[:, mask]  # [K, M]: masked values never reach the maths, not even NaN * 0
    return (values - values.mean(0)).pow(2).sum() / len(outputs)


FORMULAS = {"x": x, "js": js, "jeffrey": jeffrey, "mse": mse}  # divergence.name -> formula
DIVERGENCES = tuple(FORMULAS)
CLASSIFICATION_DIVERGENCES = ("x", "js", "jeffrey")  # between distributions; mse: real values


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
