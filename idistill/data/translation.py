"""Raw parallel text in, a cached, tokenized translation data set out.

The cache directory holds:

    spm.model, spm.vocab          the joint sentencepiece model (both sides)
    <split>.src.txt               raw source sentences, one a line (hypotheses files line up)
    <split>.ref.txt               raw target sentences: the references sacreBLEU scores against
    <split>.ids.json              [[source ids, target ids], ...] without bos / eos
    stats.json                    sizes, vocabulary and how many training pairs were dropped
"""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from idistill.data.cache import cached
from idistill.data.tokenizer import Tokenizer, train_sentencepiece

log = logging.getLogger(__name__)

SPLITS = ("train", "valid", "test")
FORMAT = 1  # bump when the files written here change, so old caches are not reused


@dataclass
class TranslationData:
    """A tokenized parallel corpus and its raw text, loaded from its cache directory."""

    tokenizer: Tokenizer
    splits: dict[str, list[tuple[list[int], list[int]]]]  # split -> (src ids, tgt ids), no bos/eos
    sources: dict[str, list[str]]  # split -> raw source sentences
    references: dict[str, list[str]]  # split -> raw target sentences (sacreBLEU references)
    path: Path  # the cache directory


def _raw_digest(raw: dict[str, list[tuple[str, str]]]) -> str:
    """sha256 of the raw corpus, so a changed generator or source never reuses a stale cache."""
    digest = hashlib.sha256()
    for split in SPLITS:
        for src, tgt in raw[split]:
            digest.update(f"{split}\t{src}\t{tgt}\n".encode())
    return digest.hexdigest()


def _check_raw(raw: dict[str, list[tuple[str, str]]]) -> None:
    missing = [s for s in SPLITS if s not in raw]
    if missing:
        raise ValueError(f"raw data lacks split(s) {missing} (has {sorted(raw)})")
    if not raw["train"]:
        raise ValueError("the train split is empty: nothing to train the tokenizer and model on")
    for split in SPLITS:
        for i, pair in enumerate(raw[split]):
            if any("\n" in side or "\r" in side for side in pair):
                raise ValueError(f"{split} pair {i} contains a line break: {pair!r}")


def _write_lines(path: Path, lines: list[str]) -> None:
    path.write_text("".join(line + "\n" for line in lines), encoding="utf-8")


def _read_lines(path: Path) -> list[str]:
    text = path.read_text(encoding="utf-8")
    return text.split("\n")[:-1] if text else []


def _build(
    out: Path,
    raw: dict[str, list[tuple[str, str]]],
    vocab_size: int,
    character_coverage: float,
    max_len: int | None,
    seed: int,
) -> None:
    """Train the joint sentencepiece model, encode every split and write the files into `out`."""
    train_text = [side for pair in raw["train"] for side in pair]
    model = train_sentencepiece(
        train_text, out / "spm", vocab_size, character_coverage=character_coverage, seed=seed
    )
    tok = Tokenizer(model)
    stats: dict[str, Any] = {"vocab_size": tok.vocab_size, "max_len": max_len}
    for split in SPLITS:
        pairs = raw[split]
        src_ids = tok.encode_batch([s for s, _ in pairs])
        tgt_ids = tok.encode_batch([t for _, t in pairs])
        keep = range(len(pairs))
        if split == "train":
            keep = [
                i
                for i in keep
                if src_ids[i]
                and tgt_ids[i]
                and (max_len is None or max(len(src_ids[i]), len(tgt_ids[i])) <= max_len)
            ]
            stats["train_dropped"] = len(pairs) - len(keep)
            if not keep:
                raise ValueError(
                    f"all {len(pairs)} training pairs are empty or longer than task.max_len="
                    f"{max_len} pieces; raise task.max_len"
                )
        _write_lines(out / f"{split}.src.txt", [pairs[i][0] for i in keep])
        _write_lines(out / f"{split}.ref.txt", [pairs[i][1] for i in keep])
        ids = [[src_ids[i], tgt_ids[i]] for i in keep]
        (out / f"{split}.ids.json").write_text(json.dumps(ids, separators=(",", ":")))
        stats[f"{split}_pairs"] = len(keep)
    (out / "stats.json").write_text(json.dumps(stats, indent=1))
    if stats["train_dropped"]:
        log.info(
            "dropped %d of %d training pairs (empty or longer than %s pieces)",
            stats["train_dropped"],
            len(raw["train"]),
            max_len,
        )


def load_translation(path: Path) -> TranslationData:
    """Load a directory written by prepare_translation."""
    path = Path(path)
    splits, sources, references = {}, {}, {}
    for split in SPLITS:
        ids = json.loads((path / f"{split}.ids.json").read_text())
        splits[split] = [(src, tgt) for src, tgt in ids]
        sources[split] = _read_lines(path / f"{split}.src.txt")
        references[split] = _read_lines(path / f"{split}.ref.txt")
        if not len(splits[split]) == len(sources[split]) == len(references[split]):
            raise ValueError(f"{path}: {split} ids and text differ in length; delete {path}")
    return TranslationData(Tokenizer(path / "spm.model"), splits, sources, references, path)


def prepare_translation(
    raw: dict[str, list[tuple[str, str]]],
    *,
    data_dir: Path,
    name: str,
    settings: dict[str, Any],
    vocab_size: int,
    character_coverage: float = 1.0,
    max_len: int | None = None,
    seed: int = 0,
) -> TranslationData:
    """Tokenize `raw` {"train", "valid", "test": [(source, target), ...]}, cached under data_dir.

    One sentencepiece model is trained on the training text of both sides. (The paper's
    preprocessing trained it on all the text; training on train only keeps valid/test unseen.)
    Training pairs with an empty side or more than `max_len` pieces on either side are
    dropped; valid and test are kept whole, never truncated, so every reference is scored.
    The cache key is `settings` plus the tokenizer arguments plus a digest of `raw`, so the
    second call with the same inputs loads the files and trains nothing.
    """
    _check_raw(raw)
    if max_len is not None and max_len < 1:
        raise ValueError(f"task.max_len must be >= 1 or null (got {max_len})")
    key = {
        **settings,
        "vocab_size": vocab_size,
        "character_coverage": character_coverage,
        "max_len": max_len,
        "spm_seed": seed,
        "spm_train_on": "train",
        "raw_sha256": _raw_digest(raw),
        "format": FORMAT,
    }
    path = cached(
        Path(data_dir),
        name,
        key,
        lambda out: _build(out, raw, vocab_size, character_coverage, max_len, seed),
    )
    return load_translation(path)
