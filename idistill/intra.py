"""The K-pass intra-distillation step (paper eq. 10): mean_i task(p_i) + alpha * divergence."""

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

from idistill import losses

PASSES = ("concat", "loop")

Batch = dict[str, Tensor]


@dataclass
class IntraLoss:
    """What one K-pass step produced; `loss` is what to backward (a sum, caller normalizes)."""

    loss: Tensor  # mean_i task_i + alpha * id_loss
    task: Tensor  # mean over passes of the task loss (detached)
    id_loss: Tensor  # the divergence (detached); 0 when k == 1
    alpha: float
    outputs: list[Tensor]  # the K outputs (LabelSmoothedCE: hold their gradient after backward)


def _repeat(batch: Batch, k: int) -> Batch:
    """Every tensor repeated k times along dim 0; other values pass through unchanged."""
    return {
        key: torch.cat([v] * k) if isinstance(v, Tensor) and v.dim() > 0 else v
        for key, v in batch.items()
    }


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
) -> IntraLoss:
    """Run the model K times on `batch` and combine: mean_i task(p_i) + alpha * L_id (eq. 10).

    forward(batch) -> [B, ..., V] logits or [B, ...] values; task_loss(output, batch) -> a
    summed scalar. passes="concat" runs one forward over the batch repeated K times (each
    copy draws its own dropout mask; paper footnote 9), "loop" runs K forwards. mask: bool
    [B, ...], positions counted by the divergence. k == 1 is exactly plain training.
    """
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

    if isinstance(task_loss, losses.LabelSmoothedCE) and divergence != "mse":
        return _fused_step(forward, batch, task_loss, k, alpha, divergence, passes, mask)
    if k == 1:
        output = forward(batch)
        task = task_loss(output, batch)
        zero = torch.zeros((), dtype=torch.float32, device=task.device)
        return IntraLoss(task, task.detach(), zero, alpha, [output])

    if passes == "concat":
        stacked = forward(_repeat(batch, k))  # [K*B, ...]
        if stacked.shape[0] % k:
            raise ValueError(
                f"forward returned {stacked.shape[0]} rows for a batch repeated {k} times"
            )
        outputs = list(stacked.chunk(k))  # K x [B, ...]
    else:
        outputs = [forward(batch) for _ in range(k)]

    task = torch.stack([task_loss(o, batch) for o in outputs]).mean()
    id_loss = losses.divergence(divergence, outputs, mask)  # float32
    loss = task + alpha * id_loss
    return IntraLoss(loss, task.detach(), id_loss.detach(), alpha, outputs)


def _fused_step(forward, batch, task_loss, k, alpha, divergence, passes, mask) -> IntraLoss:
    """intra_distill_loss for label-smoothed CE: the CE of every pass and the divergence come
    from one fused pass over the K outputs (losses.intra_output_loss), whose backward keeps
    no log-probabilities; the same values and gradients as the generic path."""
    if k == 1 or passes == "concat":
        stacked = forward(_repeat(batch, k) if k > 1 else batch)  # [K*B, ...]
        if stacked.shape[0] % k:
            raise ValueError(
                f"forward returned {stacked.shape[0]} rows for a batch repeated {k} times"
            )
        logits = stacked.view(k, -1, *stacked.shape[1:])  # [K, B, ..., V], no copy
    else:
        logits = torch.stack([forward(batch) for _ in range(k)])  # [K, B, ..., V]
    task, id_loss = losses.intra_output_loss(
        logits,
        batch[task_loss.key],
        task_loss.epsilon,
        task_loss.ignore_index,
        divergence,
        mask,
        compiled=task_loss.compiled,
        reuse=True,  # the outputs' memory takes their gradient
    )
    loss = task + alpha * id_loss
    return IntraLoss(loss, task.detach(), id_loss.detach(), alpha, list(logits.unbind(0)))
