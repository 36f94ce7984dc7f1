"""Raw parallel text in, a cached, tokenized translation data set out.

The cache directory holds:

    spm.model, spm.vocab          the joint sentencepiece model (both sides)
    <split>.src.txt               raw source sentences, one a line (hypotheses files line up)
    <split>.ref.txt               raw target sentences: the references sacreBLEU scores against
    <split>.{src,tgt,offsets}.npy the ids without bos / eos, flat (see token_pairs.py)
    stats.json                    sizes, vocabulary and how many training pairs were dropped

Everything is built to scale to WMT (4.5M pairs, 9M sentences): sentences are encoded in
chunks straight into numpy arrays, the ids are memory-mapped when loaded, and the raw text of a
split is only read when asked for (training needs the test references, not 9M sentences).
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from itertools import chain
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from idistill.data.cache import cached
from idistill.data.parallel_text import DataSourceError, read_lines
from idistill.data.token_pairs import TokenPairs, id_dtype
from idistill.data.tokenizer import Tokenizer, check_spm_settings, train_sentencepiece

log = logging.getLogger(__name__)

SPLITS = ("train", "valid", "test")
SPM_TRAIN_ON = ("train", "all")  # the text sentencepiece learns from
FORMAT = 2  # bump when the files written here change, so old caches are not reused
CHUNK = 100_000  # sentences encoded (and digested) at a time


class SplitText(Mapping):
    """split -> raw sentences of one side, read from `<split>.<suffix>` on first access."""

    def __init__(self, path: Path, suffix: str, sizes: dict[str, int]):
        self._path, self._suffix, self._sizes = Path(path), suffix, sizes
        self._loaded: dict[str, list[str]] = {}

    def __getitem__(self, split: str) -> list[str]:
        if split not in self._sizes:
            raise KeyError(split)
        if split not in self._loaded:
            lines = read_lines(self._path / f"{split}.{self._suffix}")
            if len(lines) != self._sizes[split]:
                raise ValueError(
                    f"{self._path}: {split}.{self._suffix} has {len(lines)} lines for "
                    f"{self._sizes[split]} tokenized pairs; delete {self._path} to rebuild it"
                )
            self._loaded[split] = lines
        return self._loaded[split]

    def __iter__(self) -> Iterator[str]:
        return iter(self._sizes)

    def __len__(self) -> int:
        return len(self._sizes)


@dataclass
class TranslationData:
    """A tokenized parallel corpus and its raw text, loaded from its cache directory."""

    tokenizer: Tokenizer
    splits: dict[str, TokenPairs]  # split -> (src ids, tgt ids) pairs, no bos/eos
    sources: Mapping[str, list[str]]  # split -> raw source sentences (read when first asked)
    references: Mapping[str, list[str]]  # split -> raw target sentences (sacreBLEU references)
    path: Path  # the cache directory


def _raw_digest(raw: dict[str, list[tuple[str, str]]]) -> str:
    """sha256 of the raw corpus, so a changed generator or source never reuses a stale cache."""
    digest = hashlib.sha256()
    for split in SPLITS:
        pairs = raw[split]
        for start in range(0, len(pairs), CHUNK):  # one update per chunk: 4.5M pairs in seconds
            chunk = pairs[start : start + CHUNK]
            digest.update("".join(f"{split}\t{s}\t{t}\n" for s, t in chunk).encode())
    return digest.hexdigest()


def _check_raw(raw: dict[str, list[tuple[str, str]]]) -> None:
    missing = [s for s in SPLITS if s not in raw]
    if missing:
        raise ValueError(f"raw data lacks split(s) {missing} (has {sorted(raw)})")
    if not raw["train"]:
        raise DataSourceError(
            "the train split is empty: nothing to train the tokenizer and model on"
        )
    for split in SPLITS:
        for i, pair in enumerate(raw[split]):
            if any("\n" in side or "\r" in side for side in pair):
                raise ValueError(f"{split} pair {i} contains a line break: {pair!r}")


def _write_lines(path: Path, lines) -> None:
    with open(path, "w", encoding="utf-8", newline="\n") as f:
        f.writelines(line + "\n" for line in lines)


def _encode(tok: Tokenizer, pairs: list[tuple[str, str]], desc: str) -> TokenPairs:
    """Encode both sides CHUNK pairs at a time straight into flat arrays (never 9M id lists)."""
    dtype = id_dtype(tok.vocab_size)
    parts: dict[str, list[np.ndarray]] = {"src": [], "tgt": [], "src_lens": [], "tgt_lens": []}
    small = len(pairs) <= CHUNK  # no progress bar for data that encodes in a second
    with tqdm(total=len(pairs), desc=desc, unit="pair", leave=False, disable=small) as bar:
        for start in range(0, len(pairs), CHUNK):
            chunk = pairs[start : start + CHUNK]
            for side, i in (("src", 0), ("tgt", 1)):
                ids = tok.encode_batch([pair[i] for pair in chunk])
                lens = np.fromiter(map(len, ids), np.int64, len(ids))  # [chunk]
                parts[side].append(np.fromiter(chain.from_iterable(ids), dtype, int(lens.sum())))
                parts[f"{side}_lens"].append(lens)
            bar.update(len(chunk))
    flat = {k: np.concatenate(v) if v else np.zeros(0, np.int64) for k, v in parts.items()}
    return TokenPairs.from_lengths(
        flat["src"].astype(dtype, copy=False),
        flat["tgt"].astype(dtype, copy=False),
        flat["src_lens"],
        flat["tgt_lens"],
    )


def _build(
    out: Path,
    raw: dict[str, list[tuple[str, str]]],
    vocab_size: int,
    character_coverage: float,
    max_len: int | None,
    seed: int,
    spm_train_on: str,
    spm_max_sentences: int | None,
) -> None:
    """Train the joint sentencepiece model, encode every split and write the files into `out`."""
    text_splits = ("train",) if spm_train_on == "train" else SPLITS
    model = train_sentencepiece(
        (side for split in text_splits for pair in raw[split] for side in pair),
        out / "spm",
        vocab_size,
        character_coverage=character_coverage,
        seed=seed,
        input_sentence_size=spm_max_sentences,
    )
    tok = Tokenizer(model)
    stats: dict[str, Any] = {"vocab_size": tok.vocab_size, "max_len": max_len}
    for split in SPLITS:
        pairs = raw[split]
        ids = _encode(tok, pairs, f"encode {split}")
        keep = np.arange(len(pairs))
        if split == "train":
            src_lens, tgt_lens = ids.src_lens, ids.tgt_lens
            ok = (src_lens > 0) & (tgt_lens > 0)
            if max_len is not None:
                ok &= np.maximum(src_lens, tgt_lens) <= max_len
            keep = np.flatnonzero(ok)
            stats["train_dropped"] = len(pairs) - len(keep)
            if not len(keep):
                raise DataSourceError(
                    f"all {len(pairs)} training pairs are empty or longer than task.max_len="
                    f"{max_len} pieces; raise task.max_len"
                )
            if len(keep) < len(pairs):
                ids = ids[ok]
        _write_lines(out / f"{split}.src.txt", (pairs[i][0] for i in keep.tolist()))
        _write_lines(out / f"{split}.ref.txt", (pairs[i][1] for i in keep.tolist()))
        ids.save(out / split)
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
    """Load a directory written by prepare_translation (ids memory-mapped, text lazily)."""
    path = Path(path)
    splits = {split: TokenPairs.load(path / split) for split in SPLITS}
    sizes = {split: len(pairs) for split, pairs in splits.items()}
    return TranslationData(
        Tokenizer(path / "spm.model"),
        splits,
        SplitText(path, "src.txt", sizes),
        SplitText(path, "ref.txt", sizes),
        path,
    )


def check_settings(
    vocab_size: int,
    character_coverage: float,
    max_len: int | None,
    spm_train_on: str,
    spm_max_sentences: int | None,
) -> None:
    """Raise ValueError, naming the task key, for settings prepare_translation cannot use."""
    check_spm_settings(vocab_size, character_coverage, spm_max_sentences)
    if max_len is not None and max_len < 1:
        raise ValueError(f"task.max_len must be >= 1 or null (got {max_len})")
    if spm_train_on not in SPM_TRAIN_ON:
        raise ValueError(
            f"task.spm_train_on must be one of {SPM_TRAIN_ON} (got {spm_train_on!r}): "
            "train (sentencepiece sees the training text only) or all (every split's text)"
        )


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
    spm_train_on: str = "train",
    spm_max_sentences: int | None = None,
) -> TranslationData:
    """Tokenize `raw` {"train", "valid", "test": [(source, target), ...]}, cached under data_dir.

    One sentencepiece model is trained on both sides of the training text (spm_train_on="train",
    which keeps valid/test unseen) or of every split ("all": what the paper's IWSLT script did),
    on a seeded sample of at most `spm_max_sentences` sentences when set. Training pairs with an
    empty side or more than `max_len` pieces on either side are dropped; valid and test are kept
    whole, never truncated, so every reference is scored. The cache key is `settings` plus the
    tokenizer arguments plus a digest of `raw`, so the second call with the same inputs loads
    the files and trains nothing.
    """
    _check_raw(raw)
    check_settings(vocab_size, character_coverage, max_len, spm_train_on, spm_max_sentences)
    key = {
        **settings,
        "vocab_size": vocab_size,
        "character_coverage": character_coverage,
        "max_len": max_len,
        "spm_seed": seed,
        "spm_train_on": spm_train_on,
        "spm_max_sentences": spm_max_sentences,
        "raw_sha256": _raw_digest(raw),
        "format": FORMAT,
    }
    path = cached(
        Path(data_dir),
        name,
        key,
        lambda out: _build(
            out,
            raw,
            vocab_size,
            character_coverage,
            max_len,
            seed,
            spm_train_on,
            spm_max_sentences,
        ),
    )
    return load_translation(path)
