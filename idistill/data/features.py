"""Tokenized NLU features on disk: ragged integer columns in one .npz, keyed by the tokenizer.

A column is a list of integer sequences of varying length (one per sentence or window). It is
stored as two arrays, `<name>.values` (all sequences one after the other) and `<name>.lengths`,
so 400K tokenized sentences load in well under a second, where JSON takes tens of seconds.
"""

from __future__ import annotations

import hashlib
import itertools
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np


def save_columns(path: Path, columns: dict[str, Sequence[Sequence[int]]]) -> None:
    """Write ragged int columns to `path` (.npz, uncompressed)."""
    arrays = {}
    for name, seqs in columns.items():
        lengths = np.fromiter((len(s) for s in seqs), np.int64, len(seqs))
        values = np.fromiter(itertools.chain.from_iterable(seqs), np.int64, int(lengths.sum()))
        arrays[f"{name}.values"] = values
        arrays[f"{name}.lengths"] = lengths
    with open(path, "wb") as f:
        np.savez(f, **arrays)


def load_columns(path: Path) -> dict[str, list[list[int]]]:
    """The columns written by `save_columns`, as lists of Python int lists."""
    with np.load(path) as data:
        names = sorted({key.rsplit(".", 1)[0] for key in data.files})
        out = {}
        for name in names:
            flat = data[f"{name}.values"].tolist()
            ends = np.cumsum(data[f"{name}.lengths"]).tolist()
            out[name] = [flat[a:b] for a, b in zip([0, *ends[:-1]], ends, strict=True)]
    return out


def tokenizer_key(tokenizer: Any) -> dict[str, Any]:
    """What a tokenization depends on: class, name or path, and a hash of the whole tokenizer.

    The hash (of the fast tokenizer's JSON: vocabulary, normalizer, pre-tokenizer, special
    tokens) tells two local folders with the same name apart, or a folder whose files changed.
    Its truncation and padding state is left out: calling the tokenizer changes it.
    """
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None:
        spec = json.loads(backend.to_str())
        spec.pop("truncation", None)
        spec.pop("padding", None)
        text = json.dumps(spec, sort_keys=True)
    else:
        text = repr(sorted(tokenizer.get_vocab().items()))
    return {
        "class": type(tokenizer).__name__,
        "name_or_path": str(getattr(tokenizer, "name_or_path", "")),
        "sha256": hashlib.sha256(text.encode()).hexdigest()[:16],
    }


def require_fast(tokenizer: Any, task: str) -> None:
    """Word ids and character offsets need a fast (Rust) tokenizer."""
    if not getattr(tokenizer, "is_fast", False):
        raise ValueError(
            f"task={task} maps sub-tokens back to words and characters, which needs a fast "
            f"tokenizer (got {type(tokenizer).__name__}); load it with "
            f"AutoTokenizer.from_pretrained(..., use_fast=True) or install `tokenizers`"
        )
