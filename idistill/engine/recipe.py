"""What a task family plugs into the engine: data, model, the K-pass loss, metrics and the test.

A recipe has no loop of its own; `idistill.engine.fit` calls these methods in this order:
setup -> (epoch_batches -> collate -> units / loss)* with validate every so often -> test.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from idistill.config import RunSettings
from idistill.engine.state import Selection
from idistill.intra import IntraLoss


@dataclass
class TestResult:
    """What the test of the best checkpoint reports."""

    metrics: dict[str, float]  # logged as they are, e.g. test/bleu, dev/f1, test/avg/f1
    objective: float | None  # what a sweep optimises (the headline number)
    info: dict[str, Any] = field(default_factory=dict)  # e.g. the sacreBLEU signature


class Recipe:
    """The parts of a training run that differ between task families."""

    name = "train"  # the progress bar's label
    unit = "tokens"  # what the loss is summed over, logged as train/<unit>_per_s
    selection = Selection("valid/loss", higher_is_better=False)  # picks the best checkpoint

    def __init__(self, s: RunSettings):
        self.s = s

    def setup(self, device: torch.device, amp: torch.dtype | None, tracker) -> tuple:
        """Load the data, build the model on `device` and its optimizer; log what the data and
        model are. Returns (model, optimizer)."""
        raise NotImplementedError

    def updates_per_epoch(self) -> int | None:
        """Optimizer updates in one epoch where the run's length is counted in epochs (None:
        trainer.max_updates alone bounds the run)."""
        return None

    def epoch_batches(self, epoch: int) -> list[Sequence[int]]:
        """The training examples of each batch of `epoch`, in order (seeded, so that a resumed
        run sees the same batches)."""
        raise NotImplementedError

    def collate(self, indices: Sequence[int]) -> dict:
        """One training batch as CPU tensors."""
        raise NotImplementedError

    def units(self, batch: dict) -> int:
        """What the batch's loss is summed over (target tokens, examples, ...), on the CPU."""
        raise NotImplementedError

    def loss(self, model: torch.nn.Module, batch: dict, alpha: float, units: int) -> IntraLoss:
        """The K-pass loss of `idistill.intra` on a batch on the device, summed over its units,
        with the recipe's extra terms."""
        raise NotImplementedError

    def task_loss(self, model: torch.nn.Module, batch: dict) -> torch.Tensor:
        """The plain task loss of one pass (no consistency term), summed over the units: what
        the sensitivity (eq. 2) differentiates."""
        raise NotImplementedError

    def train_metrics(self, alpha: float, units: int, batches: int) -> dict[str, float]:
        """Extra train/* metrics of a logging window of `batches` batches."""
        return {}

    def validate(self, model: torch.nn.Module) -> dict[str, float]:
        """Validation metrics (dropout off), including `selection.metric`."""
        raise NotImplementedError

    def analysis_batches(self, n: int) -> list[dict]:
        """`n` fixed training batches for the sensitivity analysis (the same every call)."""
        raise NotImplementedError

    def test(self, model: torch.nn.Module, out_dir: Path, tracker, progress: bool) -> TestResult:
        """Score the best checkpoint (already loaded into `model`) and write its outputs."""
        raise NotImplementedError

    def score_valid(self, model: torch.nn.Module, out_dir: Path, progress: bool) -> TestResult:
        """Score the best checkpoint on validation where the test set stays unseen
        (trainer.test=false, tuning): what the task measures beyond the validation loss."""
        return TestResult({}, None)

    def pruning_metric(self, model: torch.nn.Module) -> tuple[str, Callable[[], float]]:
        """(name, evaluate) of the metric the pruning curve plots."""
        raise NotImplementedError

    def label(self) -> str:
        """How plots name this run."""
        return f"{self.s.method.name} K={self.s.method.effective_k}"
