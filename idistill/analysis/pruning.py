"""Sensitivity-guided pruning (paper Figures 6, 10): zero the least sensitive elements of the
counted weight matrices, measure the model, put the values back.

Unstructured and global: one threshold over all counted tensors, so a tensor whose elements
matter little loses more of them. Only memory is changed; the checkpoint on disk never is.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager

import torch
from torch import Tensor, nn
from tqdm import tqdm


def _check_ratio(ratio: float) -> None:
    """ValueError unless 0 <= ratio < 1."""
    if not 0 <= ratio < 1:  # also rejects NaN
        raise ValueError(
            f"pruning ratio must be in [0, 1), e.g. 0.3 to zero 30% (got {ratio}); "
            "fix analysis.ratios"
        )


def _lowest_masks(
    model_params: dict[str, nn.Parameter], sens: dict[str, Tensor], k: int
) -> dict[str, Tensor]:
    """Bool masks (on each parameter's device) of the k elements of lowest sensitivity, global
    over the tensors; ties at the threshold go to the earliest elements in the order of
    `model_params`, row-major within a tensor. Tensors with nothing selected are left out."""
    scores = [sens[name].detach() for name in model_params]
    dtype = torch.float64 if any(s.dtype == torch.float64 for s in scores) else torch.float32
    values = torch.cat([s.reshape(-1).to(dtype).cpu() for s in scores]).numpy()  # [n], a copy
    values.partition(k - 1)  # in place: values[k - 1] is the k-th smallest
    threshold = torch.tensor(values[k - 1], dtype=dtype)  # []
    del values
    below = [s.to(threshold.dtype) < threshold.to(s.device) for s in scores]
    ties_left = k - sum(int(b.sum()) for b in below)  # how many elements == threshold to take
    masks = {}
    for (name, p), s, mask in zip(model_params.items(), scores, below, strict=True):
        if ties_left > 0:
            equal = s.to(threshold.dtype) == threshold.to(s.device)
            order = equal.reshape(-1).cumsum(0).reshape(equal.shape)  # rank among the ties
            take = equal & (order <= ties_left)
            ties_left -= int(take.sum())
            mask = mask | take
        if mask.any():
            masks[name] = mask.to(p.device)
    return masks


@contextmanager
def pruned(
    model_params: dict[str, nn.Parameter], sens: dict[str, Tensor], ratio: float
) -> Iterator[int]:
    """Zero the `ratio` fraction of counted elements with the lowest sensitivity (global across
    tensors, ties broken deterministically so exactly floor(ratio * n) elements are zeroed);
    yields the number zeroed; restores the original values on exit, also on an exception.

    n = the elements of all `model_params` together; ties at the threshold are zeroed in the
    order of `model_params`, row-major within a tensor. Only the zeroed elements' values and a
    bool mask per touched tensor are kept, not a second copy of the model. `sens` must have
    the same keys and shapes as `model_params` (e.g. from `sensitivity(model, ..., params)`).
    """
    _check_ratio(ratio)
    if set(sens) != set(model_params):
        missing = sorted(set(model_params) - set(sens))
        extra = sorted(set(sens) - set(model_params))
        raise ValueError(
            f"sens and model_params must have the same keys (missing in sens: {missing}, not in "
            f"model_params: {extra}); compute sens with the same params"
        )
    for name, p in model_params.items():
        if tuple(sens[name].shape) != tuple(p.shape):
            raise ValueError(
                f"sens[{name!r}] has shape {tuple(sens[name].shape)} but the parameter "
                f"{tuple(p.shape)}; compute sens from this model"
            )
        if torch.isnan(sens[name]).any():
            raise ValueError(f"sens[{name!r}] holds NaN; recompute it from finite losses")
    n = sum(p.numel() for p in model_params.values())
    k = math.floor(ratio * n)
    saved: list[tuple[nn.Parameter, Tensor, Tensor]] = []  # (param, mask, original values)
    try:
        with torch.no_grad():
            masks = _lowest_masks(model_params, sens, k) if k else {}
            for name, mask in masks.items():
                p = model_params[name]
                saved.append((p, mask, p[mask]))  # indexing copies: [zeroed in p]
                p.masked_fill_(mask, 0)
        yield k
    finally:
        with torch.no_grad():
            for p, mask, values in saved:
                p.masked_scatter_(mask, values)


def pruning_curve(
    params: dict[str, nn.Parameter],
    sens: dict[str, Tensor],
    ratios: Sequence[float],
    evaluate: Callable[[], float],
    *,
    progress: bool = False,
) -> list[tuple[float, float]]:
    """[(ratio, metric)] for each ratio: prune, call evaluate(), restore.

    Each ratio prunes the original model (`pruned`), so the order of `ratios` does not matter;
    all ratios are checked before the first evaluation.
    """
    for ratio in ratios:
        _check_ratio(ratio)
    curve = []
    for ratio in tqdm(ratios, desc="pruning", disable=not progress, leave=False):
        with pruned(params, sens, ratio):
            curve.append((float(ratio), float(evaluate())))
    return curve
