"""Divergences between K passes (paper eq. 8-9, 14) and fairseq's label-smoothed cross-entropy.

Two implementations of the same formulas, tested against each other:
  reference.py  plain autograd, one short function per formula: read this one against the paper
  fused.py      chunked, optionally torch.compile'd, with a closed-form backward that keeps no
                [K, ..., V] log-probabilities: what training runs
This module is the stable entry point: `divergence`, `label_smoothed_nll_loss`,
`LabelSmoothedCE` and `intra_output_loss`.
"""

from dataclasses import dataclass

import torch
from torch import Tensor

from idistill.losses import fused, reference
from idistill.losses.fused import intra_output_loss
from idistill.losses.reference import (
    CLASSIFICATION_DIVERGENCES,
    DIVERGENCES,
    label_smoothed_nll_loss,
)

__all__ = [
    "CLASSIFICATION_DIVERGENCES",
    "DIVERGENCES",
    "LabelSmoothedCE",
    "divergence",
    "intra_output_loss",
    "label_smoothed_nll_loss",
]


def divergence(
    name: str, outputs: list[Tensor], mask: Tensor | None = None, *, compiled: bool = False
) -> Tensor:
    """Divergence between K outputs, summed over the positions where `mask` is True.

    outputs: K tensors [..., V] of logits ("x", "js", "jeffrey"; softmax is taken here) or
    [...] real values ("mse"). mask: bool [...], True where a position counts; None = all.
    With p_bar = mean_i p_i, per position:
      x       = (1/K) sum_i [KL(p_i||p_bar) + KL(p_bar||p_i)]        (paper eq. 8)
      js      = (1/K) sum_i KL(p_i||p_bar)
      jeffrey = (1/K^2) sum_i sum_j [KL(p_i||p_j) + KL(p_j||p_i)]     (eq. 14 / K^2; R-Drop at K=2)
      mse     = (1/K) sum_i (p_i - p_bar)^2                            (paper eq. 9)
    Returns a float32 scalar; 0 when K == 1. The value of `reference.FORMULAS[name]`; logits
    go through the fused kernel (`fused.logits_divergence`), which keeps two [K, M] vectors
    for the backward pass instead of about ten [K, M, V] tensors. compiled: its
    torch.compile'd chunk kernels.
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

    if len(outputs) == 1:
        return torch.zeros((), dtype=torch.float32, device=outputs[0].device)
    if name == "mse":
        return reference.mse(outputs, mask)
    logits = torch.stack(outputs)  # [K, ..., V], our own copy: its memory takes the gradient
    return fused.logits_divergence(logits, name, mask, compiled, reuse=True)


@dataclass(frozen=True)
class LabelSmoothedCE:
    """Task loss of translation: fairseq's label-smoothed cross-entropy against batch[key],
    summed over the positions whose target is not `ignore_index`.

    A plain callable `(logits, batch) -> loss` for `intra.intra_distill_loss`;
    `intra.fused_intra_distill_loss` takes it to compute the CE of every pass together with
    the divergence in one fused pass (`intra_output_loss`).
    """

    epsilon: float
    ignore_index: int | None
    key: str = "target"

    def __call__(self, logits: Tensor, batch: dict[str, Tensor]) -> Tensor:
        return label_smoothed_nll_loss(logits, batch[self.key], self.epsilon, self.ignore_index)[0]
