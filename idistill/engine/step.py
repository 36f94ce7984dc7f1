"""One optimizer update: the K-pass loss of `idistill.intra` over an update's batches, normalised
by the update's units, then clipping, the fp16 loss scaler and the optimizer step."""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from idistill import distributed
from idistill.engine.device import to_device
from idistill.intra import IntraLoss

# loss_fn(model, batch on the device, alpha, units of the batch) -> the batch's K-pass loss,
# summed over its units (a recipe's `loss`)
LossFn = Callable[[torch.nn.Module, dict, float, int], IntraLoss]


class NonFiniteLoss(RuntimeError):
    """The loss became NaN or inf; the last good checkpoint is kept."""


@dataclass
class StepStats:
    """One update's loss terms, summed over its units (all ranks' under DDP)."""

    loss: float
    ce: float  # the task loss, mean over the K passes
    id_loss: float  # the divergence between the passes
    units: int  # what the sums count: target tokens, examples, labelled positions, ...
    aux: dict[str, float] = field(default_factory=dict)  # extra terms (balance_loss, kd_loss)
    skipped: bool = False  # fp16: the gradients overflowed and the loss scaler skipped the step


def step(
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    batches: list[dict],
    loss_fn: LossFn,
    *,
    alpha: float,
    units: Callable[[dict], int],
    device: torch.device,
    amp: torch.dtype | None = None,
    clip_norm: float = 0.0,
    scaler: torch.amp.GradScaler | None = None,
) -> StepStats:
    """One optimizer update over `batches` (collated, on the CPU; gradient accumulation).

    The gradient is that of the batches' summed losses divided by the update's units
    (`units(batch)` counts them on the CPU, without a device sync), then clipped
    (clip_norm > 0) and applied. With an fp16 `scaler` the loss is scaled and an update
    whose gradients overflow is skipped; without one a non-finite loss raises NonFiniteLoss
    before the weights change.
    """
    counts = [units(b) for b in batches]
    denominator = max(1, sum(counts))
    # Under DDP an update spans every rank's batches and DDP averages the gradients over the
    # ranks: dividing by (all ranks' units / ranks) gives the per-unit gradient.
    if distributed.active():
        total = distributed.all_sum(torch.tensor([float(sum(counts))], device=device))
        denominator = max(1.0, total.item()) / distributed.size()

    optimizer.zero_grad(set_to_none=True)
    sums: dict[str, torch.Tensor] = {}  # on the device: one host sync per update, not per batch

    def add(name: str, value: torch.Tensor) -> None:
        sums[name] = sums.get(name, 0.0) + value.detach().float()

    for i, (c, n_b) in enumerate(zip(batches, counts, strict=True)):
        sync = i == len(batches) - 1 or not hasattr(model, "no_sync")  # DDP: on the last only
        with contextlib.nullcontext() if sync else model.no_sync():
            b = to_device(c, device)
            with torch.autocast(device.type, dtype=amp, enabled=amp is not None):
                res = loss_fn(model, b, alpha, n_b)
            loss = res.loss / denominator  # its gradient: the per-unit loss's of the update
            (scaler.scale(loss) if scaler is not None else loss).backward()
        add("loss", res.loss)
        add("ce", res.task)
        add("id", res.id_loss)
        for name, value in res.extras.items():
            add(name, value)

    names = sorted(sums)
    count = sums["loss"].new_tensor(float(sum(counts)))
    totals = distributed.all_sum(torch.stack([sums[n] for n in names] + [count]))
    values = dict(zip([*names, "units"], totals.tolist(), strict=True))  # one host sync
    if scaler is None and not math.isfinite(values["loss"]):
        raise NonFiniteLoss(f"non-finite loss ({values['loss']})")
    skipped = apply_update(model, optimizer, clip_norm, scaler)
    loss, ce, id_loss = values.pop("loss"), values.pop("ce"), values.pop("id")
    return StepStats(loss, ce, id_loss, int(values.pop("units")), values, skipped)


def apply_update(
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    clip_norm: float,
    scaler: torch.amp.GradScaler | None,
) -> bool:
    """Clip (clip_norm > 0) and apply the accumulated gradients; with an fp16 `scaler`, unscale
    first and skip an update whose gradients overflowed. Returns whether it was skipped."""
    if scaler is not None:
        scaler.unscale_(optimizer)  # clip the true gradients
    if clip_norm > 0:
        torch.nn.utils.clip_grad_norm_(model.parameters(), clip_norm)
    if scaler is None:
        optimizer.step()
        return False
    scale = scaler.get_scale()
    scaler.step(optimizer)  # skipped when a gradient is inf or NaN
    scaler.update()
    return scaler.get_scale() < scale
