"""The analyses of a training run: on the best checkpoint after training (analysis=sensitivity,
analysis=pruning) and during training (analysis.track_every). A loop builds one `RunAnalysis`
right after its model, handing over the model, the plain task loss and a source of fixed
training batches; results go to the run's tracker as metrics and to `<run dir>/analysis/` as
files, logged as artifacts."""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import torch
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
from idistill.config import AnalysisSettings, ConfigError, require

log = logging.getLogger(__name__)

FOLDER = "analysis"  # in the run directory, and the artifact path in MLflow
SAMPLE_FILE = "sensitivity_sample.npy"  # the violin's values; idistill-report draws several runs
PRUNING_FILE = "pruning.json"

LossFn = Callable[[nn.Module, Any], Tensor]
TRACKED = ("std", "top20_mean", "bottom80_mean")  # during training: train/sensitivity_<name>


def sensitivity_autocast(device_type: str, amp: torch.dtype | None):
    """The autocast the sensitivity loss runs under: the training dtype when it is bf16, no
    autocast (fp32) for fp16, whose small gradients underflow without the loss scaling that
    training has and the sensitivity has not."""
    dtype = None if amp == torch.float16 else amp
    return torch.autocast(device_type, dtype=dtype, enabled=dtype is not None)


class RunAnalysis:
    """The analyses of one run, built right after its model so that a bad analysis.include /
    exclude stops the run before training.

    batches(n) -> n fixed training batches (the same ones every time it is asked); loss_fn(model,
    batch) -> the plain task loss the sensitivity (eq. 2) differentiates. main=False (the other
    ranks of a torchrun job) turns tracking off.
    """

    def __init__(
        self,
        model: nn.Module,
        settings: AnalysisSettings,
        loss_fn: LossFn,
        batches: Callable[[int], list],
        main: bool = True,
    ):
        self.model, self.settings, self.loss_fn, self.batches = model, settings, loss_fn, batches
        self.params = self._counted() if settings.after_training or settings.track_every else {}
        self.every = settings.track_every if main else 0
        self.tracked = batches(settings.track_batches) if self.every else []

    def _counted(self) -> dict[str, nn.Parameter]:
        a = self.settings
        try:
            return counted_parameters(self.model, a.include, a.exclude)
        except ValueError as e:
            raise ConfigError(f"analysis.include/exclude: {e}") from None

    def during(self, update: int, tracker) -> None:
        """analysis.track_every=N: after every N-th update, the std and the top-20% / bottom-80%
        means of the sensitivity over the same `track_batches` batches as `train/sensitivity_*`
        (paper Figure 2). Dropout is off while it is measured and no random numbers are drawn,
        so tracking does not change the training run."""
        if not self.every or update % self.every:
            return
        stats = summarize(sensitivity(self.model, self.tracked, self.loss_fn, self.params))
        metrics = {f"train/sensitivity_{k}": getattr(stats, k) for k in TRACKED}
        tracker.log_metrics(metrics, step=update)

    def after(
        self,
        *,
        evaluate: Callable[[], float],
        metric: str,
        tracker,
        out_dir: Path,
        step: int,
        label: str = "this run",
        progress: bool = False,
    ) -> SensitivityStats | None:
        """analysis=sensitivity / pruning, on the model as it is now (the best checkpoint):
        the sensitivity of every counted element over `analysis.batches` batches (eq. 2), its
        statistics as metrics `sensitivity/*` and a violin plot; with pruning, `evaluate()` of
        the model with the least sensitive `ratios` pruned as `prune/<metric>` (step = the
        pruned percentage) and its plot. None when neither analysis is on."""
        a = self.settings
        if not a.after_training:
            return None
        folder = out_dir / FOLDER
        folder.mkdir(parents=True, exist_ok=True)
        batches = self.batches(a.batches)
        sens = sensitivity(self.model, batches, self.loss_fn, self.params, progress=progress)
        stats = summarize(sens)
        tracker.log_metrics(stats.as_metrics(), step=step, again=True)  # a new measurement
        log.info(
            "sensitivity of %d elements in %d tensors over %d batches: std %.3e, top-20%% mean "
            "%.3e, bottom-80%% mean %.3e",
            stats.count,
            len(self.params),
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
            "tensors": {name: p.numel() for name, p in self.params.items()},  # what was counted
        }
        (folder / "sensitivity.json").write_text(json.dumps(record, indent=1))
        plots.sensitivity_violins(
            {label: sample}, folder / "sensitivity.png", std={label: stats.std}
        )

        if a.pruning:
            ratios = sorted({0.0, *a.ratios})  # the unpruned model is the reference
            curve = pruning_curve(self.params, sens, ratios, evaluate, progress=progress)
            for ratio, value in curve:  # whole percents (config.py checks)
                tracker.log_metrics({f"prune/{metric}": value}, step=round(ratio * 100), again=True)
            log.info(
                "pruning: %s",
                ", ".join(f"{ratio:.0%} {metric} {value:.2f}" for ratio, value in curve),
            )
            (folder / PRUNING_FILE).write_text(json.dumps({"metric": metric, "curve": curve}))
            plots.pruning_curves({label: curve}, folder / "pruning.png", metric=metric)
        tracker.log_artifacts(folder, FOLDER)
        return stats


def check_analysis(a: AnalysisSettings) -> None:
    """Refuse analysis settings that cannot work, naming the key."""
    require(a.track_every >= 0, f"analysis.track_every must be >= 0 (got {a.track_every})")
    require(a.batches >= 1, f"analysis.batches must be >= 1 (got {a.batches})")
    require(a.track_batches >= 1, f"analysis.track_batches must be >= 1 (got {a.track_batches})")
    require(
        isinstance(a.ratios, (list, tuple)),
        f"analysis.ratios must be a list, e.g. [0,0.3] (got {a.ratios})",
    )
    require(
        a.ratios and all(0 <= r < 1 for r in a.ratios),
        f"analysis.ratios must be fractions in [0, 1), e.g. [0,0.1,0.2] (got {a.ratios})",
    )
    for r in a.ratios:  # prune/<metric> is logged at step round(100 * ratio)
        require(
            abs(100 * r - round(100 * r)) < 1e-6,
            "analysis.ratios are logged with step = the percentage: use whole percents such as "
            f"0.1, 0.25 (got {r})",
        )
    require(0 <= a.drop_top < 1, f"analysis.drop_top must be in [0, 1) (got {a.drop_top})")
    require(0 < a.sample <= 1, f"analysis.sample must be in (0, 1] (got {a.sample})")
