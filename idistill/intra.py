"""The K-pass intra-distillation step (paper eq. 10): mean_i task(p_i) + alpha * divergence.

Two steps with the same values and gradients; the caller picks one:
  intra_distill_loss        any task loss, called on each pass, plus `losses.divergence`
  fused_intra_distill_loss  label-smoothed CE (`losses.LabelSmoothedCE`): the CE of every pass
                            and the divergence in one fused pass over the logits, which keeps
                            no log-probabilities and writes the logits' gradient into the
                            logits' own memory
"""

from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import Tensor

from idistill import losses

PASSES = ("concat", "loop")

Batch = dict[str, Tensor]
Extra = Callable[[list[Tensor], Batch], dict[str, Tensor]]


@dataclass
class IntraLoss:
    """What one K-pass step produced; `loss` is what to backward (a sum, caller normalizes)."""

    loss: Tensor  # mean_i task_i + alpha * id_loss + the sum of the extras
    task: Tensor  # mean over passes of the task loss (detached)
    id_loss: Tensor  # the divergence (detached); 0 when k == 1
    alpha: float
    outputs: list[Tensor] = field(default_factory=list)  # the K outputs; [] from the fused step
    extras: dict[str, Tensor] = field(default_factory=dict)  # the `extra` hook's terms (detached)


def _check(k: int, alpha: float, passes: str, divergence: str) -> None:
    if k < 1:
        raise ValueError(f"method.k must be >= 1 (got {k})")
    if alpha < 0:
        raise ValueError(f"method.alpha must be >= 0 (got {alpha:g})")
    if passes not in PASSES:
        raise ValueError(f"method.passes must be one of {', '.join(PASSES)} (got {passes!r})")
    if divergence not in losses.DIVERGENCES:
        raise ValueError(
            f"divergence.name must be one of {', '.join(losses.DIVERGENCES)} (got {divergence!r})"
        )


def _repeat(batch: Batch, k: int) -> Batch:
    """Every tensor repeated k times along dim 0; other values pass through unchanged."""
    return {
        key: torch.cat([v] * k) if isinstance(v, Tensor) and v.dim() > 0 else v
        for key, v in batch.items()
    }


def _concat_forward(forward: Callable[[Batch], Tensor], batch: Batch, k: int) -> Tensor:
    """One forward over the batch repeated k times (each copy draws its own dropout mask;
    paper footnote 9), as a view [K, B, ...] of the output, no copy."""
    stacked = forward(_repeat(batch, k) if k > 1 else batch)  # [K*B, ...]
    if stacked.shape[0] % k:
        raise ValueError(f"forward returned {stacked.shape[0]} rows for a batch repeated {k} times")
    return stacked.view(k, -1, *stacked.shape[1:])


def _with_extras(
    loss: Tensor, extra: Extra | None, outputs: list[Tensor], batch: Batch
) -> tuple[Tensor, dict[str, Tensor]]:
    """loss + the sum of extra(outputs, batch)'s terms, and those terms detached."""
    terms = extra(outputs, batch) if extra is not None else {}
    for value in terms.values():
        loss = loss + value
    return loss, {name: value.detach() for name, value in terms.items()}


def intra_distill_loss(
    forward: Callable[[Batch], Tensor],
    batch: Batch,
    task_loss: Callable[[Tensor, Batch], Tensor],
    *,
    k: int,
    alpha: float,
    divergence: str = "x",
    passes: str = "concat",
    mask: Tensor | None = None,
    extra: Extra | None = None,
) -> IntraLoss:
    """Run the model K times on `batch` and combine: mean_i task(p_i) + alpha * L_id (eq. 10).

    forward(batch) -> [B, ..., V] logits or [B, ...] values; task_loss(output, batch) -> a
    summed scalar. passes="concat" runs one forward over the batch repeated K times (each
    copy draws its own dropout mask; paper footnote 9), "loop" runs K forwards. mask: bool
    [B, ...], positions counted by the divergence (None: all). k == 1 is exactly plain
    training. extra(outputs, batch) -> {name: summed scalar}: further loss terms of the K
    outputs (e.g. a routing loss, a teacher's KL), added to `loss` and reported in `extras`.
    The returned `outputs` are ordinary autograd tensors.
    """
    _check(k, alpha, passes, divergence)
    if passes == "concat" or k == 1:
        outputs = list(_concat_forward(forward, batch, k).unbind(0))  # K x [B, ...]
    else:
        outputs = [forward(batch) for _ in range(k)]

    if k == 1:  # exactly plain training
        task = loss = task_loss(outputs[0], batch)
        id_loss = torch.zeros((), dtype=torch.float32, device=task.device)
    else:
        task = torch.stack([task_loss(o, batch) for o in outputs]).mean()
        id_loss = losses.divergence(divergence, outputs, mask)  # float32
        loss = task + alpha * id_loss
    loss, extras = _with_extras(loss, extra, outputs, batch)
    return IntraLoss(loss, task.detach(), id_loss.detach(), alpha, outputs, extras)


def fused_intra_distill_loss(
    forward: Callable[[Batch], Tensor],
    batch: Batch,
    ce: losses.LabelSmoothedCE,
    *,
    k: int,
    alpha: float,
    divergence: str = "x",
    passes: str = "concat",
    mask: Tensor | None = None,
    compiled: bool = False,
    extra: Extra | None = None,
) -> IntraLoss:
    """`intra_distill_loss` with label-smoothed CE as the task loss, fused: the CE of every
    pass and the divergence ("x", "js" or "jeffrey") come from one pass over the logits
    [K, B, ..., V] (`losses.intra_output_loss`; compiled: its torch.compile'd kernels) whose
    backward keeps no log-probabilities; the same loss and gradients.

    mask None counts the positions whose target is not ce.ignore_index (the generic step
    counts all). The backward writes the logits' gradient into the logits' own memory, so
    `outputs` is [] here: no returned tensor changes when the loss is backward'ed. `extra`
    sees the K logits before that; its terms' backward runs first (they are built after the
    fused loss), and a term that needs the logits' values later fails with autograd's
    in-place error instead of a wrong gradient.
    """
    _check(k, alpha, passes, divergence)
    if divergence not in losses.CLASSIFICATION_DIVERGENCES:
        names = ", ".join(losses.CLASSIFICATION_DIVERGENCES)
        raise ValueError(
            f"the fused step needs divergence.name in {names} (got {divergence!r}); "
            f"use intra_distill_loss for {divergence!r}"
        )
    if passes == "concat" or k == 1:
        logits = _concat_forward(forward, batch, k)  # [K, B, ..., V], the model's output memory
        outputs = list(logits.unbind(0))
    else:
        outputs = [forward(batch) for _ in range(k)]
        logits = torch.stack(outputs)  # [K, B, ..., V], a copy: the outputs stay untouched
    task, id_loss = losses.intra_output_loss(
        logits,
        batch[ce.key],
        ce.epsilon,
        ce.ignore_index,
        divergence,
        mask,
        compiled=compiled,
        reuse=True,  # the logits' memory takes their gradient
    )
    loss, extras = _with_extras(task + alpha * id_loss, extra, outputs, batch)
    return IntraLoss(loss, task.detach(), id_loss.detach(), alpha, [], extras)
