"""Task registry: a task's settings in, a ready data set out."""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import Any

from idistill.config import ConfigError
from idistill.data import parallel_text
from idistill.data.cache import handed_over
from idistill.data.synthetic import make_corpus
from idistill.data.translation import TranslationData, check_settings, prepare_translation

# loader name -> module with check(task, lang) and raw(task, lang, data_dir)
MODULES = {"iwslt14": "idistill.data.iwslt", "wmt17": "idistill.data.wmt"}
LOADERS = ("synthetic", "parallel_text", *MODULES)  # data modules that exist in this version


def _loader(task: dict[str, Any]) -> str:
    return task.get("loader", task["name"])


def check_task(task: dict[str, Any], lang: str | None = None) -> None:
    """Refuse a task that cannot load, before any work starts."""
    loader = _loader(task)
    if loader not in LOADERS:
        raise ConfigError(
            f"task={task['name']} has its configuration but no data module in this version of "
            f"idistill yet; available loaders: {', '.join(LOADERS)}"
        )
    try:
        check_settings(**_tokenizer_settings(task))
    except ValueError as e:
        raise ConfigError(str(e)) from None
    if loader in MODULES:
        importlib.import_module(MODULES[loader]).check(task, lang)
    if loader == "parallel_text":
        if not task.get("src_lang"):
            raise ConfigError(f"task={task['name']} needs lang=<source language> (got None)")
        if task["name"] != "multi30k" and not task.get("source"):
            raise ConfigError(
                f"task={task['name']} needs task.source=<folder of {{split}}.{{lang}} files>"
            )
        if task.get("source") and not Path(task["source"]).expanduser().is_dir():
            raise ConfigError(f"task.source={task['source']} is not a directory")


def _tokenizer_settings(task: dict[str, Any]) -> dict[str, Any]:
    """The keyword arguments of check_settings / prepare_translation that come from `task`."""
    return {
        "vocab_size": task["vocab_size"],
        "character_coverage": task.get("character_coverage", 1.0),
        "max_len": task.get("max_len"),
        "spm_train_on": task.get("spm_train_on", "train"),
        "spm_max_sentences": task.get("spm_max_sentences"),
    }


def _raw(task: dict[str, Any], lang: str | None, data_dir: Path) -> dict[str, list]:
    loader = _loader(task)
    if loader == "synthetic":
        return make_corpus(task["data_seed"], task["n_train"], task["n_valid"], task["n_test"])
    if loader in MODULES:
        return importlib.import_module(MODULES[loader]).raw(task, lang, data_dir)
    src, tgt, splits = task["src_lang"], task["tgt_lang"], dict(task["splits"])
    if task.get("source"):
        folder = Path(task["source"])
    else:  # only multi30k knows where to fetch its files
        folder = parallel_text.download_multi30k(
            data_dir / "downloads" / "multi30k", src, tgt, splits
        )
    checksums = parallel_text.MULTI30K_SHA256 if task["name"] == "multi30k" else None
    return parallel_text.read_parallel(folder, src, tgt, splits, checksums)


@handed_over  # the preflight's load is the recipe's
def load_task(task: dict[str, Any], lang: str | None, data_dir: Path) -> TranslationData:
    """Build (or reuse from `data_dir`) the tokenized splits of `task`."""
    check_task(task, lang)
    settings = {k: v for k, v in task.items() if k not in ("langs", "source")}
    return prepare_translation(
        _raw(task, lang, data_dir),
        data_dir=data_dir,
        name=task["name"] if lang is None else f"{task['name']}-{lang}",
        settings={**settings, "lang": lang},
        **_tokenizer_settings(task),
    )
