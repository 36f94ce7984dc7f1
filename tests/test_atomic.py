"""Files and folders written through a temporary name get the umask's permissions, not
tempfile's private 0600 / 0700: a cache or run folder shared with other users stays readable."""

from __future__ import annotations

import gzip
import hashlib
import os
import stat

import pytest

from idistill.atomic import temp_copy, temp_dir, temp_file
from idistill.checkpoint import BEST, LAST, PREV, atomic_save
from idistill.data import parallel_text
from idistill.data.cache import cached
from idistill.data.parallel_text import download_multi30k


@pytest.fixture
def umask_022():
    old = os.umask(0o022)
    try:
        yield
    finally:
        os.umask(old)


def _mode(path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_temporaries_are_created_with_the_umask_mode(tmp_path, umask_022):
    path, f = temp_file(tmp_path, "x.")
    f.close()
    assert _mode(path) == 0o644 and path.name.startswith("x.") and path.suffix == ".tmp"
    assert _mode(temp_dir(tmp_path, ".d.tmp-")) == 0o755
    assert _mode(temp_copy(path, tmp_path, "y.")) == 0o644


def test_checkpoints_are_readable_by_others_under_umask_022(tmp_path, umask_022):
    for name in (LAST, LAST, BEST):  # the second save keeps the first as PREV
        atomic_save({"update": 1}, tmp_path / name, keep=tmp_path / PREV)
    assert {p.name: _mode(p) for p in tmp_path.iterdir()} == {
        LAST: 0o644,
        PREV: 0o644,
        BEST: 0o644,
    }


def test_cache_folders_are_readable_by_others_under_umask_022(tmp_path, umask_022):
    def build(out):
        (out / "sub").mkdir()
        (out / "sub" / "ids.bin").write_bytes(b"\x00")

    final = cached(tmp_path / "root", "task", {"n": 1}, build)
    assert _mode(final) == 0o755 and _mode(final / "sub") == 0o755
    assert _mode(final / "sub" / "ids.bin") == 0o644 and _mode(final.parent) == 0o755


def test_downloaded_files_are_readable_by_others_under_umask_022(tmp_path, umask_022, monkeypatch):
    served = tmp_path / "served"
    served.mkdir()
    for name in ("train.de", "train.en"):
        (served / f"{name}.gz").write_bytes(gzip.compress(b"ein Satz\n"))
    monkeypatch.setattr(parallel_text, "MULTI30K_URL", served.as_uri() + "/{name}.gz")
    digest = hashlib.sha256(b"ein Satz\n").hexdigest()
    monkeypatch.setattr(parallel_text, "MULTI30K_SHA256", {"train.de": digest, "train.en": digest})
    dest = download_multi30k(tmp_path / "dl", "de", "en", {"train": "train"})
    assert {p.name: _mode(p) for p in dest.iterdir()} == {"train.de": 0o644, "train.en": 0o644}
