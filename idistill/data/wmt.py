"""WMT'17 English->German (the paper's high-resource run): train, a held-out valid, newstest2014.

Online, through the `datasets` library (`pip install datasets`, or `pip install 'idistill[wmt]'`):

    train  wmt/wmt17, config de-en, split "train": Europarl v7, Common Crawl, News Commentary
           v12 and Rapid 2016 (5.9M rows before cleaning)
    test   wmt/wmt14, config de-en, split "test": newstest2014 (3,003 pairs). WMT'17's own
           "validation" and "test" splits are newstest2016 and newstest2017, not the paper's.

Offline: `task.source=<folder>` holding train.en and train.de (plus valid.* and test.* when you
have them), and `task.test_source=<folder with newstest2014.{en,de} or test.{en,de}, or a path
prefix such as /data/newstest2014>` for the test set.

Training pairs are cleaned like Moses' clean-corpus-n.perl (which fairseq's WMT scripts run):
a pair goes when either side has fewer than 1 or more than `filter_max_tokens` tokens, or one
side has more than `filter_ratio` times the tokens of the other. Tokens are words and single
punctuation marks (regex `\\w+|[^\\w\\s]`), an approximation of Moses' tokenizer, so the filter
runs before sentencepiece exists. Then `valid_size` pairs are held out at random (seeded, not the
last ones: the corpora are concatenated, so the tail would be all Rapid). Test is kept whole.
The result is cached as plain text under `data_dir/<task name>-raw/`, so later runs read files.
"""

from __future__ import annotations

import importlib.util
import json
import logging
import re
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import numpy as np

from idistill.config import ConfigError
from idistill.data.cache import cached, file_sha256
from idistill.data.parallel_text import DataSourceError, read_text, split_lines

log = logging.getLogger(__name__)

HF_TRAIN = {"path": "wmt/wmt17", "name": "de-en", "split": "train"}
# Only the test file of wmt14's de-en config: the whole config would also fetch its 4.5M pairs.
HF_TEST = {"path": "wmt/wmt14", "data_files": {"test": "de-en/test-*.parquet"}, "split": "test"}
TEST_STEMS = ("newstest2014", "test")  # file stems looked for in a test_source folder
FORMAT = 1  # bump when the cached files change
_TOKEN = re.compile(r"\w+|[^\w\s]")


def _has_datasets() -> bool:
    return importlib.util.find_spec("datasets") is not None


def _load_hf(**kwargs: Any):
    """datasets.load_dataset(**kwargs); a seam the tests replace (no network here)."""
    import datasets

    return datasets.load_dataset(**kwargs)


def normalize(text: str) -> str:
    """One line of text: every run of whitespace (line breaks, tabs, U+2028) becomes a space."""
    return " ".join(text.split())


def count_tokens(text: str) -> int:
    """Words and punctuation marks in `text`, roughly as Moses' tokenizer would split them."""
    return len(_TOKEN.findall(text))


def _read_lines(path: Path, normalized: bool) -> list[str]:
    # newline="\n": only \n ends a line; a stray \r or U+2028 inside a sentence must not split it
    try:
        with open(path, encoding="utf-8", newline="\n") as f:
            if not normalized:
                return [normalize(line) for line in f]
            return split_lines(f.read())  # our own cache: one line per sentence already
    except UnicodeDecodeError:
        read_text(path)  # reads it again, only to name the line that is not UTF-8
        raise


def read_pairs(src_path: Path, tgt_path: Path, normalized: bool = False) -> list[tuple[str, str]]:
    """Line-aligned (source, target) pairs from two files, whitespace-normalized unless it is
    known to be already (`normalized`, our cached files: 4.5M pairs read in seconds)."""
    src, tgt = _read_lines(src_path, normalized), _read_lines(tgt_path, normalized)
    if len(src) != len(tgt):
        raise DataSourceError(
            f"{src_path} has {len(src)} lines but {tgt_path} has {len(tgt)}: the two sides "
            "must align line by line"
        )
    return list(zip(src, tgt, strict=True))


def _translations(rows) -> Iterator[dict[str, str]]:
    """The {"de": ..., "en": ...} dicts of a datasets.Dataset (read in batches) or of plain rows."""
    if hasattr(rows, "iter"):  # a datasets.Dataset: batches are far faster than single rows
        for batch in rows.iter(batch_size=10_000):
            yield from batch["translation"]
    else:
        for row in rows:
            yield row["translation"]


def pairs_from_rows(rows: Iterable, src: str, tgt: str) -> list[tuple[str, str]]:
    """(source, target) pairs from rows {"translation": {src: ..., tgt: ...}} (datasets' WMT)."""
    return [(normalize(t[src]), normalize(t[tgt])) for t in _translations(rows)]


def clean(pairs: list[tuple[str, str]], ratio: float, max_tokens: int) -> list[tuple[str, str]]:
    """Pairs with 1..max_tokens tokens a side and a length ratio of at most `ratio` both ways."""
    kept = []
    for pair in pairs:
        n, m = count_tokens(pair[0]), count_tokens(pair[1])
        if 1 <= n <= max_tokens and 1 <= m <= max_tokens and n <= ratio * m and m <= ratio * n:
            kept.append(pair)
    return kept


def hold_out(
    pairs: list[tuple[str, str]], size: int, seed: int
) -> tuple[list[tuple[str, str]], list[tuple[str, str]]]:
    """(rest, held out): `size` pairs drawn at random with `seed`, both in corpus order."""
    if size >= len(pairs):
        raise ConfigError(
            f"task.valid_size={size} leaves nothing to train on: only {len(pairs)} training "
            "pairs are left after cleaning; lower task.valid_size"
        )
    picked = np.zeros(len(pairs), dtype=bool)
    picked[np.random.default_rng(seed).choice(len(pairs), size=size, replace=False)] = True
    rest = [p for p, out in zip(pairs, picked.tolist(), strict=True) if not out]
    return rest, [pairs[i] for i in np.flatnonzero(picked).tolist()]


def _pair_files(folder: Path, stem: str, src: str, tgt: str) -> tuple[Path, Path] | None:
    files = (folder / f"{stem}.{src}", folder / f"{stem}.{tgt}")
    return files if all(f.is_file() for f in files) else None


def _test_files(task: dict[str, Any]) -> tuple[Path, Path] | None:
    """The (source, target) files of the test set, or None: download it."""
    src, tgt = task["src_lang"], task["tgt_lang"]
    if task.get("test_source"):
        where = Path(task["test_source"]).expanduser()
        if where.is_dir():
            found = [_pair_files(where, stem, src, tgt) for stem in TEST_STEMS]
            files = next((f for f in found if f), None)
        else:  # a prefix: /data/newstest2014 -> /data/newstest2014.en, /data/newstest2014.de
            files = _pair_files(where.parent, where.name, src, tgt)
        if files is None:
            stems = " or ".join(f"{s}.{{{src},{tgt}}}" for s in TEST_STEMS)
            raise ConfigError(
                f"task.test_source={task['test_source']} holds no test set: pass a folder with "
                f"{stems}, or a path prefix P with files P.{src} and P.{tgt}"
            )
        return files
    if task.get("source"):
        return _pair_files(Path(task["source"]).expanduser(), "test", src, tgt)
    return None


def check(task: dict[str, Any], lang: str | None) -> None:
    """Refuse settings that cannot load, before any work starts (touches no data)."""
    name, src, tgt = task["name"], task["src_lang"], task["tgt_lang"]
    if lang not in (None, src):
        raise ConfigError(f"task={name} translates {src}->{tgt} only: drop lang= (got lang={lang})")
    for key, low in (("valid_size", 1), ("filter_max_tokens", 1), ("filter_ratio", 1.0)):
        if task[key] < low:
            raise ConfigError(f"task.{key} must be >= {low} (got {task[key]})")
    if task.get("source"):
        folder = Path(task["source"]).expanduser()
        if not folder.is_dir():
            raise ConfigError(f"task.source={task['source']} is not a directory")
        for stem in ("train", "valid", "test"):  # train needed; valid, test optional but whole
            missing = [f"{stem}.{x}" for x in (src, tgt) if not (folder / f"{stem}.{x}").is_file()]
            if missing and (stem == "train" or len(missing) == 1):
                raise ConfigError(
                    f"task.source={task['source']} lacks {' and '.join(missing)}: it needs "
                    f"train.{src} and train.{tgt}, and valid.* or test.* only as pairs of files"
                )
    test_files = _test_files(task)  # raises for a test_source without a test set
    if _has_datasets():
        return
    install = "pip install datasets (or pip install 'idistill[wmt]')"
    if not task.get("source"):
        raise ConfigError(
            f"task={name} downloads WMT'17 with the `datasets` library, which is not installed: "
            f"{install}, or pass task.source=<folder with train.{src} and train.{tgt}> "
            f"and task.test_source=<folder with newstest2014.{src} and newstest2014.{tgt}>"
        )
    if test_files is None:
        raise ConfigError(
            f"task.source={task['source']} has no test.{src}/test.{tgt} and task.test_source is "
            f"not set, so newstest2014 would be downloaded with `datasets`, which is not "
            f"installed: pass task.test_source=<folder with newstest2014.{src} and "
            f"newstest2014.{tgt}>, or {install}"
        )


def _fingerprint(files: Iterable[Path]) -> dict[str, str]:
    return {str(f.resolve()): file_sha256(f) for f in files}


def _cache_key(task: dict[str, Any]) -> dict[str, Any]:
    """What the cleaned text depends on: the inputs (file hashes or dataset ids) and settings."""
    src, tgt = task["src_lang"], task["tgt_lang"]
    inputs: dict[str, Any] = {}
    if task.get("source"):
        folder = Path(task["source"]).expanduser()
        stems = [s for s in ("train", "valid") if _pair_files(folder, s, src, tgt)]
        inputs["source"] = _fingerprint(f for s in stems for f in _pair_files(folder, s, src, tgt))
    else:
        inputs["source"] = HF_TRAIN
    test_files = _test_files(task)
    inputs["test"] = _fingerprint(test_files) if test_files else HF_TEST
    settings = ("filter_ratio", "filter_max_tokens", "valid_size", "valid_seed")
    return {
        "src_lang": src,
        "tgt_lang": tgt,
        **inputs,
        **{k: task[k] for k in settings},
        "format": FORMAT,
    }


def _build(out: Path, task: dict[str, Any]) -> None:
    """Read, clean and split the corpus; write `<split>.<lang>` files and stats.json into `out`."""
    src, tgt = task["src_lang"], task["tgt_lang"]
    folder = Path(task["source"]).expanduser() if task.get("source") else None
    if folder:
        train = read_pairs(*_pair_files(folder, "train", src, tgt))
    else:
        log.info("reading %s (downloaded by `datasets` on first use)", HF_TRAIN)
        train = pairs_from_rows(_load_hf(**HF_TRAIN), src, tgt)
    stats: dict[str, Any] = {"train_read": len(train)}
    ratio, max_tokens = task["filter_ratio"], task["filter_max_tokens"]
    train = clean(train, ratio, max_tokens)
    stats["train_cleaned"] = len(train)
    valid_files = _pair_files(folder, "valid", src, tgt) if folder else None
    if valid_files:
        valid = clean(read_pairs(*valid_files), ratio, max_tokens)
    else:
        train, valid = hold_out(train, task["valid_size"], task["valid_seed"])
    test_files = _test_files(task)
    test = read_pairs(*test_files) if test_files else pairs_from_rows(_load_hf(**HF_TEST), src, tgt)
    for split, pairs in (("train", train), ("valid", valid), ("test", test)):
        for lang, side in ((src, 0), (tgt, 1)):
            with open(out / f"{split}.{lang}", "w", encoding="utf-8", newline="\n") as f:
                f.writelines(pair[side] + "\n" for pair in pairs)
        stats[f"{split}_pairs"] = len(pairs)
    (out / "stats.json").write_text(json.dumps(stats, indent=1))
    log.info(
        "%s: %d training pairs read, %d after cleaning (ratio %s, 1..%d tokens); "
        "%d train, %d valid, %d test",
        task["name"],
        stats["train_read"],
        stats["train_cleaned"],
        ratio,
        max_tokens,
        len(train),
        len(valid),
        len(test),
    )


def raw(task: dict[str, Any], lang: str | None, data_dir: Path) -> dict[str, list[tuple[str, str]]]:
    """{"train", "valid", "test": [(English, German), ...]}, cleaned and split, cached as text."""
    check(task, lang)
    path = cached(
        Path(data_dir), f"{task['name']}-raw", _cache_key(task), lambda out: _build(out, task)
    )
    src, tgt = task["src_lang"], task["tgt_lang"]
    return {
        split: read_pairs(path / f"{split}.{src}", path / f"{split}.{tgt}", normalized=True)
        for split in ("train", "valid", "test")
    }
