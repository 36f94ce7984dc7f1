"""What the zero-shot cross-lingual tasks (WikiANN NER, TyDiQA-GoldP) share: the checks of
their languages, limits and source, and where their data comes from (a file or `datasets`)."""

from __future__ import annotations

import importlib.util
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from idistill.config import ConfigError
from idistill.data.cache import file_sha256

LIMITS = ("max_train_examples", "max_eval_examples")


def hf_offline() -> bool:
    """True when Hugging Face downloads are switched off (HF_HUB_OFFLINE / HF_DATASETS_OFFLINE)."""
    flags = (os.environ.get(v, "") for v in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE"))
    return any(flag not in ("", "0") for flag in flags)


def offline_hint(files: str) -> str:
    """How to run without the network: the data folder and the model folder."""
    return f"pass task.source=<folder of {files}> and model.name_or_path=<local model folder>"


def check_source(
    task: dict[str, Any],
    data_name: str,
    files: str,
    missing: Callable[[Path, str, list[str]], list[str]],
) -> None:
    """Refuse bad languages or limits, and a task.source lacking files (`missing(folder,
    train_lang, eval_langs)` names them); without a source, a missing `datasets` or offline
    Hugging Face. `files` describes the source folder's files for the messages."""
    train_lang, langs = task["train_lang"], list(task.get("eval_langs") or [])
    if train_lang not in langs:
        raise ConfigError(
            f"task.eval_langs must include task.train_lang={train_lang}: dev/{train_lang} picks "
            f"the best checkpoint (got {langs})"
        )
    for key in LIMITS:
        if task.get(key) is not None and task[key] < 1:
            raise ConfigError(f"task.{key} must be >= 1 or null (got {task[key]})")
    source = task.get("source")
    if source:
        folder = Path(str(source)).expanduser()
        if not folder.is_dir():
            raise ConfigError(f"task.source={source} is not a directory: {offline_hint(files)}")
        absent = missing(folder, train_lang, langs)
        if absent:
            raise ConfigError(
                f"task.source={source} lacks {', '.join(absent)}; pass a folder of {files}, or "
                f"drop those languages: task.eval_langs=[...]"
            )
        return
    if importlib.util.find_spec("datasets") is None:
        raise ConfigError(
            f"task={task['name']} without task.source downloads {data_name} with `datasets`, "
            f"which is not installed: pip install 'idistill[nlu]', or {offline_hint(files)}"
        )
    if hf_offline():
        raise ConfigError(
            f"task={task['name']}: Hugging Face is set offline and task.source is not set; "
            f"{offline_hint(files)}"
        )


def origin(path: Path | None, hf: dict[str, Any]) -> dict[str, Any]:
    """Where a split comes from, for the cache key: a file and its sha256 (None if the file is
    absent), or the `datasets` coordinates `hf`."""
    if path is None:
        return hf
    return {"file": str(path.resolve()), "sha256": file_sha256(path) if path.is_file() else None}
