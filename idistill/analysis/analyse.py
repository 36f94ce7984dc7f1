"""The analyses of a training run: on the best checkpoint after training (analysis=sensitivity,
analysis=pruning) and during training (analysis.track_every). The loops hand over the model,
fixed training batches, the plain task loss and the task's evaluation; results go to the
run's tracker as metrics and to `<run dir>/analysis/` as files, logged as artifacts."""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
from torch import Tensor, nn

from idistill.analysis import plots
from idistill.analysis.pruning import pruning_curve
from idistill.analysis.sensitivity import (
    SensitivityStats,
    counted_parameters,
    sensitivity,
    summarize,
    violin_sample,
)
from idistill.config import AnalysisSettings

log = logging.getLogger(__name__)

FOLDER = "analysis"  # in the run directory, and the artifact path in MLflow
SAMPLE_FILE = "sensitivity_sample.npy"  # the violin's values; idistill-report draws several runs
PRUNING_FILE = "pruning.json"

LossFn = Callable[[nn.Module, Any], Tensor]


def analyse_checkpoint(
    model: nn.Module,
    a: AnalysisSettings,
    *,
    batches: Sequence[Any],
    loss_fn: LossFn,
    evaluate: Callable[[], float],
    metric: str,
    tracker,
    out_dir: Path,
    step: int,
    label: str = "this run",
    progress: bool = False,
) -> SensitivityStats:
    """Sensitivity of every counted element of `model` over `batches` (eq. 2): its statistics as
    metrics `sensitivity/*`, a violin plot, and with a.pruning the pruning curve of `metric`
    (`prune/<metric>` with step = the pruned percentage) and its plot."""
    folder = out_dir / FOLDER
    folder.mkdir(parents=True, exist_ok=True)
    params = counted_parameters(model, a.include, a.exclude)
    sens = sensitivity(model, batches, loss_fn, params, progress=progress)
    stats = summarize(sens)
    tracker.log_metrics(stats.as_metrics(), step=step)
    log.info(
        "sensitivity of %d elements in %d tensors over %d batches: std %.3e, top-20%% mean "
        "%.3e, bottom-80%% mean %.3e",
        stats.count,
        len(params),
        len(batches),
        stats.std,
        stats.top20_mean,
        stats.bottom80_mean,
    )
    sample = violin_sample(sens, drop_top=a.drop_top, fraction=a.sample)
    np.save(folder / SAMPLE_FILE, sample)
    record = {
        **asdict(stats),
        "batches": len(batches),
        "include": list(a.include),
        "exclude": list(a.exclude),
        "drop_top": a.drop_top,
        "sample": a.sample,
        "tensors": {name: p.numel() for name, p in params.items()},  # what was counted
    }
    (folder / "sensitivity.json").write_text(json.dumps(record, indent=1))
    plots.sensitivity_violins({label: sample}, folder / "sensitivity.png", std={label: stats.std})

    if a.pruning:
        ratios = sorted({0.0, *a.ratios})  # the unpruned model is the reference
        curve = pruning_curve(params, sens, ratios, evaluate, progress=progress)
        for ratio, value in curve:
            tracker.log_metrics({f"prune/{metric}": value}, step=round(ratio * 100))
        log.info(
            "pruning: %s", ", ".join(f"{ratio:.0%} {metric} {value:.2f}" for ratio, value in curve)
        )
        (folder / PRUNING_FILE).write_text(json.dumps({"metric": metric, "curve": curve}))
        plots.pruning_curves({label: curve}, folder / "pruning.png", metric=metric)
    tracker.log_artifacts(folder, FOLDER)
    return stats


class SensitivityTracking:
    """analysis.track_every=N: every N updates, the std and the top-20% / bottom-80% means of
    the sensitivity over the same `a.track_batches` training batches, logged as
    `train/sensitivity_*` (paper Figure 2). Dropout is off while it is measured and no random
    numbers are drawn, so tracking does not change the training run."""

    def __init__(self, model: nn.Module, a: AnalysisSettings, batches: Sequence[Any], loss_fn):
        self.model, self.every, self.batches, self.loss_fn = model, a.track_every, batches, loss_fn
        self.params = counted_parameters(model, a.include, a.exclude) if a.track_every else {}

    def __call__(self, update: int, tracker) -> None:
        """Measure and log after `update` when it is due."""
        if not self.every or update % self.every:
            return
        sens = sensitivity(self.model, self.batches, self.loss_fn, self.params)
        tracker.log_metrics(summarize(sens).as_metrics("train/sensitivity_"), step=update)
