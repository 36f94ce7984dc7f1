"""Checkpoints: the search for the run to resume, and loading only tensors and plain values."""

from __future__ import annotations

import json
import os

import pytest
import torch

from idistill.checkpoint import (
    LAST,
    META,
    atomic_save,
    find_resumable,
    latest_run,
    load,
    remove_stale_temporaries,
    was_tested,
)


def _run(folder, config_hash, finished=False):
    folder.mkdir(parents=True)
    (folder / LAST).write_bytes(b"")
    (folder / META).write_text(json.dumps({"config_hash": config_hash, "finished": finished}))
    return folder


def test_resume_finds_unfinished_runs_of_the_current_or_the_legacy_hash(tmp_path):
    done = _run(tmp_path / "done", "new", finished=True)
    (done / META).write_text(json.dumps({"config_hash": "new", "finished": True, "tested": True}))
    _run(tmp_path / "other", "else")
    assert find_resumable([tmp_path], ["new"]) is None
    old = _run(tmp_path / "old", "legacy")  # made before the hash changed
    assert find_resumable([tmp_path], ["new", "legacy"]) == old  # the newest of either hash


def test_the_newest_run_of_a_config_decides_what_resume_continues(tmp_path):
    older = _run(tmp_path / "older", "h")  # unfinished, then a newer run finished
    newer = _run(tmp_path / "newer", "h", finished=True)
    (newer / META).write_text(json.dumps({"config_hash": "h", "finished": True, "tested": True}))
    os.utime(older / META, (1, 1))
    assert latest_run([tmp_path], ["h"])[0] == newer
    assert find_resumable([tmp_path], ["h"]) is None  # the newest has nothing left
    os.utime(newer / META, (0, 0))  # a fresh run after an old finished one, then killed
    assert find_resumable([tmp_path], ["h"]) == older


def test_resume_finds_a_finished_run_left_untested_when_the_test_is_wanted(tmp_path):
    untested = _run(tmp_path / "untested" / "checkpoints", "h", finished=True)
    (tmp_path / "untested" / "result.json").write_text('{"metrics": {}}')  # an earlier version's
    assert find_resumable([tmp_path], ["h"]) == untested
    # tuning wants the best checkpoint's validation scores, which this run has not recorded
    assert find_resumable([tmp_path], ["h"], test=False) == untested
    meta = json.loads((untested / META).read_text())
    (untested / META).write_text(json.dumps({**meta, "scored_valid": True}))
    assert find_resumable([tmp_path], ["h"], test=False) is None
    assert find_resumable([tmp_path], ["h"]) == untested  # the test is still wanted
    assert not was_tested(untested, json.loads((untested / META).read_text()))
    (tmp_path / "untested" / "result.json").unlink()  # no record at all: untested, tested again
    assert find_resumable([tmp_path], ["h"]) == untested
    meta = json.loads((untested / META).read_text())
    (untested / META).write_text(json.dumps({**meta, "tested": True}))  # tested since
    assert find_resumable([tmp_path], ["h"]) is None
    assert find_resumable([tmp_path], ["h"], test=False) is None  # tuning takes a tested run


class _Payload:
    """What a crafted checkpoint could hold: unpickling it runs a command."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_a_checkpoint_that_would_run_code_is_refused(tmp_path):
    marker = tmp_path / "pwned"
    torch.save({"model": _Payload(marker)}, tmp_path / "evil.pt")
    with pytest.raises(Exception, match="Weights only load failed"):
        load(tmp_path / "evil.pt")
    assert not marker.exists()
    torch.save({"model": {"w": torch.ones(2)}, "update": 3}, tmp_path / "ok.pt")
    assert load(tmp_path / "ok.pt")["update"] == 3


def test_half_written_checkpoints_of_a_killed_run_are_removed(tmp_path):
    atomic_save({"update": 1}, tmp_path / LAST)
    stale = [tmp_path / f"{LAST}.k3j2.tmp", tmp_path / f"{META}.tmp"]
    for path in stale:
        path.write_bytes(b"half")
    (tmp_path / "notes.tmp").write_text("not ours")
    assert remove_stale_temporaries(tmp_path) == sorted(stale)
    assert not any(p.exists() for p in stale) and (tmp_path / "notes.tmp").exists()
    assert load(tmp_path / LAST)["update"] == 1
