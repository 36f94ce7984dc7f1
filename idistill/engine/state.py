"""The loop's state: where training is, the best validation so far, and early stopping. The
checkpoint saves it as it is, so a resumed run continues exactly where the killed one was."""

from __future__ import annotations

import logging
import math
from dataclasses import asdict, dataclass, fields

from idistill.config import require

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Selection:
    """What picks the best checkpoint: a validation metric and its direction."""

    metric: str  # e.g. valid/loss, dev/accuracy
    higher_is_better: bool

    def better(self, score: float, best: float | None) -> bool:
        """Whether `score` beats `best` (None: nothing validated yet)."""
        if math.isnan(score):
            return False
        if best is None:
            return True
        return score > best if self.higher_is_better else score < best


@dataclass
class TrainState:
    """Everything about the loop's position that a checkpoint must restore."""

    update: int = 0  # optimizer updates done
    epoch: int = 1  # the epoch in progress (1-based)
    batch_pos: int = 0  # batches of this epoch already trained on
    best: float | None = None  # the best validation score so far
    best_update: int = 0  # ... and the update that reached it
    stale: int = 0  # validations since the best one (trainer.patience counts these)
    stopped_early: bool = False  # trainer.patience ended the run
    seconds: float | None = 0.0  # training wall time up to here, summed over resumes (None:
    # resumed from a checkpoint written before idistill counted it)

    def record(self, score: float, selection: Selection, patience: int) -> bool:
        """Count one validation; returns whether it is the new best. patience > 0 stops the
        run after that many validations in a row without a better score."""
        improved = selection.better(score, self.best)
        if improved:
            self.best, self.best_update, self.stale = score, self.update, 0
        else:
            self.stale += 1
        self.stopped_early = patience > 0 and self.stale >= patience
        return improved

    def to_dict(self) -> dict:
        """Plain values for the checkpoint."""
        return asdict(self)

    @classmethod
    def from_checkpoint(cls, ckpt: dict) -> TrainState:
        """The state saved in `ckpt` (a last checkpoint); also reads checkpoints written before
        early stopping existed (translation's best_valid_loss, fine-tuning's best = -inf)."""
        state = cls(**{f.name: ckpt[f.name] for f in fields(cls) if f.name in ckpt})
        legacy = ckpt.get("best_valid_loss")
        if legacy is not None and "best_update" not in ckpt:
            state.best = legacy
        if state.best is not None and math.isinf(state.best):
            state.best = None  # nothing validated yet
        if "seconds" not in ckpt and state.update:
            state.seconds = None  # the time before this checkpoint is unknown
        return state


def check_patience(patience, max_updates: int, validate_every: int) -> None:
    """trainer.patience: a whole number >= 0; a warning when the run cannot validate that often."""
    require(
        isinstance(patience, int) and not isinstance(patience, bool) and patience >= 0,
        f"trainer.patience must be a whole number >= 0 (0: off) (got {patience!r})",
    )
    if patience and validate_every and max_updates // validate_every <= patience:
        log.warning(
            "trainer.patience=%d can never stop the run: trainer.max_updates=%d allows only %d "
            "validations every %d updates",
            patience, max_updates, max_updates // validate_every, validate_every,
        )  # fmt: skip
