"""The loop's state: selection direction, early-stopping counts, and old checkpoints."""

from __future__ import annotations

import math

from idistill.engine.state import Selection, TrainState

LOSS = Selection("valid/loss", higher_is_better=False)
ACCURACY = Selection("dev/accuracy", higher_is_better=True)


def test_selection_follows_its_direction_and_never_picks_nan():
    assert LOSS.better(2.0, None) and LOSS.better(2.0, 3.0) and not LOSS.better(3.0, 2.0)
    assert ACCURACY.better(0.9, 0.8) and not ACCURACY.better(0.8, 0.9)
    assert not LOSS.better(2.0, 2.0)  # a tie is not an improvement
    assert not LOSS.better(math.nan, None) and not LOSS.better(math.nan, 3.0)


def test_patience_counts_validations_since_the_best_one():
    state = TrainState()
    for update, score, improved, stop in (
        (1, 3.0, True, False),
        (2, 2.0, True, False),
        (3, 2.5, False, False),
        (4, 1.9, True, False),  # a new best resets the count
        (5, 2.0, False, False),
        (6, 2.1, False, True),  # 2 validations without a better loss
    ):
        state.update = update
        assert state.record(score, LOSS, patience=2) is improved
        assert state.stopped_early is stop
    assert (state.best, state.best_update, state.stale) == (1.9, 4, 2)


def test_patience_zero_never_stops():
    state = TrainState()
    for score in (1.0, 2.0, 3.0, 4.0, 5.0):
        state.record(score, LOSS, patience=0)
    assert not state.stopped_early and state.stale == 4


def test_state_round_trips_through_a_checkpoint_and_reads_old_ones():
    state = TrainState(update=7, epoch=2, batch_pos=3, best=1.5, best_update=5, stale=1,
                       seconds=12.5)  # fmt: skip
    assert TrainState.from_checkpoint({"model": {}, **state.to_dict()}) == state
    # before the engine: translation saved best_valid_loss, fine-tuning best = -inf at first;
    # before train/seconds, the time a run had trained is unknown
    old_mt = {"update": 4, "epoch": 1, "batch_pos": 4, "best_valid_loss": 2.5}
    assert TrainState.from_checkpoint(old_mt) == TrainState(4, 1, 4, best=2.5, seconds=None)
    old_nlu = {"update": 2, "epoch": 1, "batch_pos": 2, "best": -math.inf}
    assert TrainState.from_checkpoint(old_nlu).best is None
