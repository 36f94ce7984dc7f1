"""Task registry: a task's settings in, a ready data set out."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from idistill.data.synthetic import make_corpus
from idistill.data.translation import TranslationData, prepare_translation

AVAILABLE = ("synthetic",)  # tasks whose data module exists in this version


def check_available(task: dict[str, Any]) -> None:
    """Refuse a task whose data module is not here yet, before any work starts."""
    if task["name"] not in AVAILABLE:
        raise ValueError(
            f"task={task['name']} has its configuration but no data module in this version of "
            f"idistill yet; available: {', '.join(AVAILABLE)}"
        )


def load_task(task: dict[str, Any], lang: str | None, data_dir: Path) -> TranslationData:
    """Build (or reuse from `data_dir`) the tokenized splits of `task`."""
    check_available(task)
    settings = {k: v for k, v in task.items() if k != "langs"}
    raw = make_corpus(task["data_seed"], task["n_train"], task["n_valid"], task["n_test"])
    return prepare_translation(
        raw,
        data_dir=data_dir,
        name=task["name"],
        settings=settings,
        vocab_size=task["vocab_size"],
        character_coverage=task.get("character_coverage", 1.0),
        max_len=task.get("max_len"),
    )
