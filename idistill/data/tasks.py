"""Task registry: a task's settings in, a ready data set out."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from idistill.config import ConfigError
from idistill.data import parallel_text
from idistill.data.synthetic import make_corpus
from idistill.data.translation import TranslationData, prepare_translation

LOADERS = ("synthetic", "parallel_text")  # data modules that exist in this version


def check_task(task: dict[str, Any]) -> None:
    """Refuse a task that cannot load, before any work starts."""
    loader = task.get("loader", task["name"])
    if loader not in LOADERS:
        raise ConfigError(
            f"task={task['name']} has its configuration but no data module in this version of "
            f"idistill yet; available: synthetic, multi30k, parallel_text"
        )
    if loader == "parallel_text":
        if not task.get("src_lang"):
            raise ConfigError(f"task={task['name']} needs lang=<source language> (got None)")
        if task["name"] != "multi30k" and not task.get("source"):
            raise ConfigError(
                f"task={task['name']} needs task.source=<folder of {{split}}.{{lang}} files>"
            )
        if task.get("source") and not Path(task["source"]).expanduser().is_dir():
            raise ConfigError(f"task.source={task['source']} is not a directory")


def _raw(task: dict[str, Any], data_dir: Path) -> dict[str, list[tuple[str, str]]]:
    loader = task.get("loader", task["name"])
    if loader == "synthetic":
        return make_corpus(task["data_seed"], task["n_train"], task["n_valid"], task["n_test"])
    src, tgt, splits = task["src_lang"], task["tgt_lang"], dict(task["splits"])
    if task.get("source"):
        folder = Path(task["source"])
    else:  # only multi30k knows where to fetch its files
        folder = parallel_text.download_multi30k(
            data_dir / "downloads" / "multi30k", src, tgt, splits
        )
    checksums = parallel_text.MULTI30K_SHA256 if task["name"] == "multi30k" else None
    return parallel_text.read_parallel(folder, src, tgt, splits, checksums)


def load_task(task: dict[str, Any], lang: str | None, data_dir: Path) -> TranslationData:
    """Build (or reuse from `data_dir`) the tokenized splits of `task`."""
    check_task(task)
    settings = {k: v for k, v in task.items() if k not in ("langs", "source")}
    return prepare_translation(
        _raw(task, data_dir),
        data_dir=data_dir,
        name=task["name"],
        settings=settings,
        vocab_size=task["vocab_size"],
        character_coverage=task.get("character_coverage", 1.0),
        max_len=task.get("max_len"),
    )
