"""Parameter sensitivity (paper section 2, eq. 2): how much the loss changes when one element of
a weight matrix is set to zero, to first order |theta * dL/dtheta|, and the statistics the paper
reads from it (the spread of contributions, Figures 2-5).

    S(theta_j) = |theta_j * dL/dtheta_j|                                        (eq. 2)

averaged here over training batches as the mean of the per-batch values, with dropout off.
"""

from __future__ import annotations

import fnmatch
import math
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn
from tqdm import tqdm

CHUNK = 1 << 22  # elements per float64 pass in `summarize`: bounds its extra memory


def counted_parameters(
    model: nn.Module, include: Sequence[str] = ("*",), exclude: Sequence[str] = ()
) -> dict[str, nn.Parameter]:
    """Parameters whose sensitivity counts: every tensor with >= 2 dimensions (weight matrices
    and embeddings; biases and LayerNorm are 1-D and left out) whose name matches an `include`
    fnmatch pattern and no `exclude` pattern. Tied tensors count once (named_parameters already
    dedups).

    Patterns are matched case-sensitively against names such as
    `encoder_layers.0.self_attn.q_proj.weight`; a single string counts as one pattern.
    """
    include = (include,) if isinstance(include, str) else tuple(include)
    exclude = (exclude,) if isinstance(exclude, str) else tuple(exclude)
    counted = {
        name: p
        for name, p in model.named_parameters()
        if p.dim() >= 2
        and any(fnmatch.fnmatchcase(name, pat) for pat in include)
        and not any(fnmatch.fnmatchcase(name, pat) for pat in exclude)
    }
    if not counted:
        names = [name for name, p in model.named_parameters() if p.dim() >= 2]
        raise ValueError(
            f"no parameter with >= 2 dimensions matches include={list(include)} "
            f"exclude={list(exclude)}; fix analysis.include/exclude (names look like "
            f"{names[:3] or 'nothing: the model has no weight matrix'})"
        )
    return counted


def sensitivity(
    model: nn.Module,
    batches: Iterable,
    loss_fn: Callable[[nn.Module, Any], Tensor],
    params: dict[str, nn.Parameter] | None = None,
    *,
    progress: bool = False,
) -> dict[str, Tensor]:
    """Mean over `batches` of |theta * dL/dtheta| per element (eq. 2), for every parameter of
    `params` (default: `counted_parameters(model)`).

    loss_fn(model, batch) -> the scalar task loss of one batch (the caller normalizes it, e.g.
    per target token). S = (1/N) sum_b |theta * dL_b/dtheta|: the mean of per-batch absolute
    values, not the absolute value of the mean gradient. Dropout is off (`model.eval()`), so
    no random numbers are drawn; every module's training mode, every parameter's
    `requires_grad` and `.grad` are as before afterwards, also on an error (the gradients are
    taken with `torch.autograd.grad`, which never writes `.grad`). Pass the bare model, not a
    DistributedDataParallel wrapper. Elements the loss does not reach get 0.

    Returns {name: float32 tensor shaped like the parameter, on its device, detached}.
    Raises ValueError when `batches` is empty or a loss is not a finite scalar.
    """
    params = counted_parameters(model) if params is None else params
    names, tensors = list(params), list(params.values())
    modes = [(m, m.training) for m in model.modules()]
    frozen = [p for p in tensors if not p.requires_grad]
    totals = [torch.zeros_like(p, dtype=torch.float32) for p in tensors]  # [*p.shape] each
    count = 0
    try:
        model.eval()
        for p in frozen:
            p.requires_grad_(True)
        for batch in tqdm(batches, desc="sensitivity", disable=not progress, leave=False):
            with torch.enable_grad():
                loss = loss_fn(model, batch)
                _check_loss(loss, count)
                grads = torch.autograd.grad(loss, tensors, allow_unused=True)
            with torch.no_grad():
                for total, p, g in zip(totals, tensors, grads, strict=True):
                    if g is not None:
                        total.add_((p.float() * g.float()).abs_())
            count += 1
    finally:
        for p in frozen:
            p.requires_grad_(False)
        for module, training in modes:
            module.training = training
    if count == 0:
        raise ValueError("sensitivity needs at least one batch (got an empty `batches`)")
    return {name: total.div_(count) for name, total in zip(names, totals, strict=True)}


def _check_loss(loss: Tensor, index: int) -> None:
    """A scalar, finite loss with a gradient, or ValueError naming batch `index`."""
    if not isinstance(loss, Tensor) or loss.dim() != 0:
        shape = tuple(loss.shape) if isinstance(loss, Tensor) else type(loss).__name__
        raise ValueError(f"loss_fn must return a scalar tensor (got {shape} on batch {index})")
    if not loss.requires_grad:
        raise ValueError(
            f"loss_fn returned a loss without a gradient on batch {index}: compute it from the "
            "model's output, not under torch.no_grad() or from detached tensors"
        )
    if not torch.isfinite(loss.detach()).item():
        raise ValueError(
            f"loss_fn returned a non-finite loss ({loss.item()}) on batch {index}; the "
            "sensitivity would be NaN (check the batch or run the loss in float32)"
        )


@dataclass
class SensitivityStats:
    """Summary of the counted sensitivities (paper Figures 2-4)."""

    std: float  # population std of all elements: the contribution balance, lower = more balanced
    mean: float
    top20_mean: float  # mean of the 20% most sensitive elements
    bottom80_mean: float  # mean of the other 80%
    count: int  # elements counted

    def as_metrics(self, prefix: str = "sensitivity/") -> dict[str, float]:
        """{prefix + field: value}, e.g. {"sensitivity/std": ..., "sensitivity/count": ...}."""
        return {
            f"{prefix}std": self.std,
            f"{prefix}mean": self.mean,
            f"{prefix}top20_mean": self.top20_mean,
            f"{prefix}bottom80_mean": self.bottom80_mean,
            f"{prefix}count": float(self.count),
        }


def summarize(sens: dict[str, Tensor]) -> SensitivityStats:
    """Std, mean and top-20% / bottom-80% means over all elements of all tensors of `sens`.

    std = sqrt((1/n) sum_j (S_j - mean)^2) (population std); the top 20% are the k = ceil(n/5)
    largest elements (of equal values at the boundary, exactly as many as make k), the bottom
    80% the other n - k (bottom80_mean is NaN when n == 1). Sums run in float64 over chunks;
    the extra memory is one float32 copy of all elements on the CPU, partitioned in place.
    """
    values = _flat_copy(sens, "summarize")  # [n]
    n = values.size
    k = (n + 4) // 5  # ceil(n / 5), exact in integers
    values.partition(n - k)  # in place: values[n - k:] are the k largest
    flat = torch.from_numpy(values)  # [n], shares memory
    top, bottom = _sum64(flat[n - k :]), _sum64(flat[: n - k])
    mean = (top + bottom) / n
    squares = sum(float(((c.double() - mean) ** 2).sum()) for c in flat.split(CHUNK))
    return SensitivityStats(
        std=math.sqrt(squares / n),
        mean=mean,
        top20_mean=top / k,
        bottom80_mean=bottom / (n - k) if n > k else math.nan,
        count=n,
    )


def _flat_copy(sens: dict[str, Tensor], caller: str) -> np.ndarray:
    """All elements of `sens` in one new float32 CPU array [n], free to reorder."""
    if not sens:
        raise ValueError(f"{caller} needs at least one tensor (got an empty dict)")
    for name, s in sens.items():
        if torch.isnan(s).any():
            raise ValueError(f"sensitivity of {name!r} holds NaN; recompute it from finite losses")
    flat = torch.cat([s.detach().reshape(-1).float().cpu() for s in sens.values()])  # a copy
    if flat.numel() == 0:
        raise ValueError(f"{caller} got tensors without elements ({list(sens)})")
    return flat.numpy()


def _sum64(x: Tensor) -> float:
    """Sum of a 1-D tensor in float64, converting a chunk at a time."""
    return float(sum(torch.sum(c, dtype=torch.float64) for c in x.split(CHUNK)))


def violin_sample(
    sens: dict[str, Tensor],
    *,
    drop_top: float = 0.01,
    fraction: float = 0.1,
    max_size: int = 2_000_000,
    seed: int = 0,
) -> np.ndarray:
    """The values a violin plot shows (paper Appendix B): the top `drop_top` fraction removed,
    then a uniform random `fraction` sample (at most max_size elements), float32, seeded.

    Of n elements the round(drop_top * n) largest are removed; of the m left, min(max_size,
    round(fraction * m)) are drawn without replacement, in random order. Runs on the CPU with
    its own generator: the global random state is untouched and the result does not depend on
    the device.
    """
    if not 0 <= drop_top < 1:
        raise ValueError(f"drop_top must be in [0, 1) (got {drop_top})")
    if not 0 < fraction <= 1:
        raise ValueError(f"fraction must be in (0, 1] (got {fraction})")
    if max_size < 1:
        raise ValueError(f"max_size must be >= 1 (got {max_size})")
    values = _flat_copy(sens, "violin_sample")  # [n]
    n = values.size
    m = n - round(drop_top * n)
    if m <= 0:
        return np.zeros(0, dtype=np.float32)
    if m < n:
        values.partition(m - 1)  # in place: values[:m] are the m smallest
    size = min(max_size, round(fraction * m))
    generator = torch.Generator().manual_seed(seed)
    pick = torch.randperm(m, generator=generator, dtype=torch.int32)[:size]  # [size]
    return values[pick.numpy()]
