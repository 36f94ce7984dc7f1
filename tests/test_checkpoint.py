"""Checkpoints: the search for the run to resume."""

from __future__ import annotations

import json

from idistill.checkpoint import LAST, META, find_resumable


def _run(folder, config_hash, finished=False):
    folder.mkdir(parents=True)
    (folder / LAST).write_bytes(b"")
    (folder / META).write_text(json.dumps({"config_hash": config_hash, "finished": finished}))
    return folder


def test_resume_finds_unfinished_runs_of_the_current_or_the_legacy_hash(tmp_path):
    _run(tmp_path / "done", "new", finished=True)
    _run(tmp_path / "other", "else")
    assert find_resumable([tmp_path], ["new"]) is None
    old = _run(tmp_path / "old", "legacy")  # made before the hash changed
    assert find_resumable([tmp_path], ["new"]) is None
    assert find_resumable([tmp_path], ["new", "legacy"]) == old
