"""Plain-file parallel corpora (and Multi30k): reading, checks, and the download's failure mode."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from idistill.config import ConfigError
from idistill.data import parallel_text
from idistill.data.parallel_text import DataSourceError, download_multi30k, read_parallel
from idistill.data.tasks import check_task

MULTI30K = Path(__file__).resolve().parents[2] / "shared" / "data" / "multi30k_de_en" / "raw"
SPLITS = {"train": "train", "valid": "val", "test": "test_2016_flickr"}


def _write(folder: Path, files: dict[str, str]) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for name, text in files.items():
        (folder / name).write_text(text, encoding="utf-8")
    return folder


def test_reads_aligned_pairs_per_split(tmp_path):
    folder = _write(
        tmp_path,
        {
            "train.de": "ein Hund\n Zwei Katzen \n",
            "train.en": "a dog\ntwo cats\n",
            "val.de": "x\n",
            "val.en": "y\n",
        },
    )
    raw = read_parallel(folder, "de", "en", {"train": "train", "valid": "val"})
    assert raw == {
        "train": [("ein Hund", "a dog"), ("Zwei Katzen", "two cats")],
        "valid": [("x", "y")],
    }


def test_misaligned_sides_are_refused(tmp_path):
    folder = _write(tmp_path, {"train.de": "a\nb\n", "train.en": "a\n"})
    with pytest.raises(DataSourceError, match="2 lines but .* has 1"):
        read_parallel(folder, "de", "en", {"train": "train"})


def test_missing_files_are_named(tmp_path):
    folder = _write(tmp_path, {"train.de": "a\n"})
    with pytest.raises(DataSourceError, match="train.en"):
        read_parallel(folder, "de", "en", {"train": "train"})


def test_checksum_mismatch_is_refused(tmp_path):
    folder = _write(tmp_path, {"train.de": "a\n", "train.en": "b\n"})
    good = hashlib.sha256(b"b\n").hexdigest()
    read_parallel(folder, "de", "en", {"train": "train"}, {"train.en": good})
    with pytest.raises(DataSourceError, match="sha256 mismatch"):
        read_parallel(folder, "de", "en", {"train": "train"}, {"train.en": "0" * 64})


def test_offline_download_names_the_file_and_the_override(tmp_path, monkeypatch):
    monkeypatch.setattr(parallel_text, "MULTI30K_URL", "http://127.0.0.1:9/{name}.gz")
    with pytest.raises(DataSourceError, match=r"127.0.0.1:9/train.de.gz.*task.source="):
        download_multi30k(tmp_path / "dl", "de", "en", SPLITS)
    assert not list((tmp_path / "dl").glob("*.de"))


def test_parallel_text_needs_a_source_folder(tmp_path):
    task = {
        "name": "parallel_text",
        "loader": "parallel_text",
        "src_lang": "de",
        "tgt_lang": "en",
        "source": None,
        "vocab_size": 100,
    }
    with pytest.raises(ConfigError, match="needs task.source="):
        check_task(task)
    with pytest.raises(ConfigError, match="is not a directory"):
        check_task({**task, "source": str(tmp_path / "nope")})
    check_task({**task, "source": str(tmp_path)})


@pytest.mark.skipif(not MULTI30K.is_dir(), reason=f"real Multi30k not present at {MULTI30K}")
def test_real_multi30k_has_the_published_split_sizes_and_checksums():
    raw = read_parallel(MULTI30K, "de", "en", SPLITS, parallel_text.MULTI30K_SHA256)
    assert {k: len(v) for k, v in raw.items()} == {"train": 29000, "valid": 1014, "test": 1000}
    assert raw["train"][0][1].startswith("Two young, White males")
