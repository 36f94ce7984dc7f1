"""An unreadable last checkpoint: named in an error or a warning, and resume falls back to the
previous last one (or the best one) instead of failing; the meta follows the checkpoint resumed."""

from __future__ import annotations

import logging

import pytest
import torch

from idistill.checkpoint import (
    BEST,
    CORRUPT,
    LAST,
    PREV,
    CheckpointError,
    atomic_save,
    load,
    load_for_resume,
    read_meta,
    write_meta,
)
from idistill.cli.main import run

from conftest import SMALL_RUN, killed_after_checkpoint


def _truncate(path):
    path.write_bytes(path.read_bytes()[:1000])


def test_an_unreadable_checkpoint_is_named_in_the_error(tmp_path):
    atomic_save({"update": 1, "w": torch.ones(1000)}, tmp_path / LAST)
    _truncate(tmp_path / LAST)
    with pytest.raises(CheckpointError, match=f"{tmp_path / LAST} cannot be read") as e:
        load(tmp_path / LAST)
    assert "\n" not in str(e.value)
    (tmp_path / "empty.pt").write_bytes(b"")
    with pytest.raises(CheckpointError, match="empty.pt cannot be read.*empty or cut short"):
        load(tmp_path / "empty.pt")


def test_replacing_the_last_checkpoint_keeps_the_one_before(tmp_path):
    atomic_save({"update": 1}, tmp_path / LAST, keep=tmp_path / PREV)
    assert not (tmp_path / PREV).exists()
    atomic_save({"update": 2}, tmp_path / LAST, keep=tmp_path / PREV)
    atomic_save({"update": 3}, tmp_path / LAST, keep=tmp_path / PREV)
    assert load(tmp_path / LAST)["update"] == 3 and load(tmp_path / PREV)["update"] == 2
    assert sorted(p.name for p in tmp_path.iterdir()) == [LAST, PREV]  # no temporaries left


def test_resume_falls_back_to_the_previous_checkpoint_and_the_meta_follows(tmp_path, caplog):
    atomic_save({"update": 3, "epoch": 1, "model": {}}, tmp_path / LAST, keep=tmp_path / PREV)
    atomic_save({"update": 6, "epoch": 2, "model": {}}, tmp_path / LAST, keep=tmp_path / PREV)
    write_meta(tmp_path, {"config_hash": "h", "run_id": "r", "update": 6, "finished": False})
    _truncate(tmp_path / LAST)
    with caplog.at_level(logging.WARNING):
        ckpt, path = load_for_resume(tmp_path)
    assert ckpt["update"] == 3 and path == tmp_path / PREV
    assert f"{tmp_path / LAST} cannot be read" in caplog.text
    assert read_meta(tmp_path) == {
        "config_hash": "h",
        "run_id": "r",
        "update": 3,
        "finished": False,
    }
    assert load(tmp_path / LAST)["update"] == 3  # the last checkpoint is the one resumed
    assert (tmp_path / (LAST + CORRUPT)).is_file()  # kept aside, never rotated into PREV
    again, path = load_for_resume(tmp_path)
    assert again["update"] == 3 and path == tmp_path / LAST


def test_nothing_readable_to_resume_is_one_named_error(tmp_path):
    (tmp_path / LAST).write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match=f"no checkpoint to resume in {tmp_path}"):
        load_for_resume(tmp_path, repair=False)
    assert (tmp_path / LAST).is_file()  # repair=False (ranks > 0) touches nothing


def test_a_truncated_last_checkpoint_resumes_from_the_previous_one_in_the_same_run(
    make_cfg, tmp_path, monkeypatch, caplog
):
    """Checkpoints at updates 3 and 6; killed after 6, its file truncated: the run continues
    from update 3 (the exact state of then, as any resume) instead of failing."""
    with killed_after_checkpoint(monkeypatch, update=6):
        run(make_cfg(SMALL_RUN), output_dir=tmp_path / "killed", progress=False)
    save_dir = tmp_path / "killed" / "checkpoints"
    assert load(save_dir / PREV)["update"] == 3
    _truncate(save_dir / LAST)

    resume = [*SMALL_RUN, f"trainer.resume={tmp_path / 'killed'}"]
    with caplog.at_level(logging.WARNING):
        resumed = run(make_cfg(resume), output_dir=tmp_path / "r", progress=False)
    assert f"{save_dir / LAST} cannot be read" in caplog.text
    assert f"resuming from {save_dir / PREV} (update 3)" in caplog.text
    assert resumed.updates == 6 and read_meta(save_dir)["finished"] is True
    assert load(save_dir / LAST)["update"] == 6 and load(save_dir / PREV)["update"] == 3


def test_with_only_the_best_checkpoint_readable_the_run_continues_from_it(
    make_cfg, tmp_path, monkeypatch, caplog
):
    with killed_after_checkpoint(monkeypatch, update=3):  # the first checkpoint: no previous
        run(make_cfg(SMALL_RUN), output_dir=tmp_path / "killed", progress=False)
    save_dir = tmp_path / "killed" / "checkpoints"
    assert not (save_dir / PREV).exists() and load(save_dir / BEST)["epoch"] >= 1
    _truncate(save_dir / LAST)
    resume = [*SMALL_RUN, f"trainer.resume={tmp_path / 'killed'}"]
    with caplog.at_level(logging.WARNING):
        resumed = run(make_cfg(resume), output_dir=tmp_path / "r", progress=False)
    assert f"resuming from {save_dir / BEST} (update 3)" in caplog.text
    assert "holds no optimizer state" in caplog.text
    assert resumed.updates == 6 and 0 <= resumed.test_bleu <= 100
