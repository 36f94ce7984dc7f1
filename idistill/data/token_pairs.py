"""Tokenized sentence pairs stored flat in numpy arrays, memory-mapped from disk.

A list of 4.5M Python lists of ints costs ~10 GB and minutes of JSON parsing; the same pairs as
two flat uint16 arrays plus offsets are ~0.6 GB, load in milliseconds (memory-mapped) and are
shared through the page cache by every process that reads them.

    <prefix>.src.npy        [sum of source lengths]   token ids, pairs one after the other
    <prefix>.tgt.npy        [sum of target lengths]
    <prefix>.offsets.npy    [N + 1, 2] int64          pair i is src[o[i, 0]:o[i + 1, 0]], ...
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path

import numpy as np


def id_dtype(vocab_size: int) -> np.dtype:
    """uint16 when every id below `vocab_size` fits in it (half the bytes), else int32."""
    return np.dtype(np.uint16 if vocab_size <= 1 << 16 else np.int32)


def _gather(flat: np.ndarray, starts: np.ndarray, lens: np.ndarray) -> np.ndarray:
    """flat[starts[0]:starts[0] + lens[0]] + flat[starts[1]:...] + ..., without a Python loop."""
    ends = np.cumsum(lens)  # [K]
    # position j of the output comes from starts[k] + (j - first output position of k)
    shift = np.repeat(starts - (ends - lens), lens)  # [sum(lens)]
    return flat[np.arange(int(ends[-1]) if len(ends) else 0) + shift]


class TokenPairs(Sequence):
    """(source ids, target ids) pairs, ids without bos / eos; pair i is two numpy views.

    `pairs[i]` -> (src [S], tgt [T]); `pairs[a:b]` -> a TokenPairs sharing the arrays;
    `pairs[[i, j, ...]]` or `pairs[bool mask]` -> a TokenPairs with copies of those pairs.
    """

    def __init__(self, src: np.ndarray, tgt: np.ndarray, offsets: np.ndarray):
        if offsets.ndim != 2 or offsets.shape[1] != 2 or len(offsets) < 1:
            raise ValueError(f"offsets must be [N + 1, 2] (got shape {offsets.shape})")
        self.src, self.tgt, self.offsets = src, tgt, offsets  # offsets [N + 1, 2]

    @classmethod
    def from_lists(
        cls, pairs: Iterable[tuple[Sequence[int], Sequence[int]]], dtype=np.int32
    ) -> TokenPairs:
        """From (source ids, target ids) lists; for small data and tests."""
        pairs = list(pairs)
        src_lens = np.fromiter((len(s) for s, _ in pairs), np.int64, len(pairs))
        tgt_lens = np.fromiter((len(t) for _, t in pairs), np.int64, len(pairs))
        src = np.fromiter((i for s, _ in pairs for i in s), dtype, int(src_lens.sum()))
        tgt = np.fromiter((i for _, t in pairs for i in t), dtype, int(tgt_lens.sum()))
        return cls.from_lengths(src, tgt, src_lens, tgt_lens)

    @classmethod
    def from_lengths(
        cls, src: np.ndarray, tgt: np.ndarray, src_lens: np.ndarray, tgt_lens: np.ndarray
    ) -> TokenPairs:
        """From flat id arrays and the length of each sentence in them."""
        offsets = np.zeros((len(src_lens) + 1, 2), dtype=np.int64)  # [N + 1, 2]
        np.cumsum(src_lens, out=offsets[1:, 0])
        np.cumsum(tgt_lens, out=offsets[1:, 1])
        if offsets[-1, 0] != len(src) or offsets[-1, 1] != len(tgt):
            raise ValueError(
                f"lengths add up to ({offsets[-1, 0]}, {offsets[-1, 1]}) ids but the arrays hold "
                f"({len(src)}, {len(tgt)})"
            )
        return cls(src, tgt, offsets)

    @classmethod
    def load(cls, prefix: Path, mmap: bool = True) -> TokenPairs:
        """Read the files written by `save`; memory-mapped (read-only) unless mmap=False."""
        mode = "r" if mmap else None
        return cls(
            np.load(f"{prefix}.src.npy", mmap_mode=mode),
            np.load(f"{prefix}.tgt.npy", mmap_mode=mode),
            np.load(f"{prefix}.offsets.npy"),
        )

    def save(self, prefix: Path) -> None:
        """Write `<prefix>.src.npy`, `<prefix>.tgt.npy` and `<prefix>.offsets.npy`."""
        src, tgt, offsets = self._used()
        np.save(f"{prefix}.src.npy", np.ascontiguousarray(src))
        np.save(f"{prefix}.tgt.npy", np.ascontiguousarray(tgt))
        np.save(f"{prefix}.offsets.npy", offsets)

    def _used(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """The ids of these pairs only (a slice shares bigger arrays) and offsets from 0."""
        (s0, t0), (s1, t1) = self.offsets[0], self.offsets[-1]
        return self.src[s0:s1], self.tgt[t0:t1], self.offsets - self.offsets[0]

    @property
    def src_lens(self) -> np.ndarray:
        """Source lengths [N] (int64), without eos."""
        return np.diff(self.offsets[:, 0])

    @property
    def tgt_lens(self) -> np.ndarray:
        """Target lengths [N] (int64), without bos / eos."""
        return np.diff(self.offsets[:, 1])

    def __len__(self) -> int:
        return len(self.offsets) - 1

    def __getitem__(self, index):
        if isinstance(index, (int, np.integer)):
            n = len(self)
            if not -n <= index < n:
                raise IndexError(f"pair {index} of {n}")
            i = int(index) % n
            (s0, t0), (s1, t1) = self.offsets[i], self.offsets[i + 1]
            return self.src[s0:s1], self.tgt[t0:t1]
        if isinstance(index, slice) and index.step in (None, 1):
            start, stop, _ = index.indices(len(self))
            return TokenPairs(self.src, self.tgt, self.offsets[start : max(start, stop) + 1])
        src_lens, tgt_lens = self.src_lens, self.tgt_lens
        if isinstance(index, np.ndarray) and index.dtype == bool:  # a filter: no index arrays
            if len(index) != len(self):
                raise IndexError(f"mask of {len(index)} for {len(self)} pairs")
            src, tgt, _ = self._used()
            return TokenPairs.from_lengths(
                src[np.repeat(index, src_lens)],
                tgt[np.repeat(index, tgt_lens)],
                src_lens[index],
                tgt_lens[index],
            )
        idx = np.arange(len(self))[index]  # a slice with a step, a list or an index array
        return TokenPairs.from_lengths(
            _gather(self.src, self.offsets[idx, 0], src_lens[idx]),
            _gather(self.tgt, self.offsets[idx, 1], tgt_lens[idx]),
            src_lens[idx],
            tgt_lens[idx],
        )

    def __iter__(self) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        off = self.offsets.tolist()
        for (s0, t0), (s1, t1) in zip(off, off[1:], strict=False):
            yield self.src[s0:s1], self.tgt[t0:t1]

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, TokenPairs):
            return NotImplemented
        return all(np.array_equal(a, b) for a, b in zip(self._used(), other._used(), strict=True))

    __hash__ = None  # mutable arrays inside

    def tolist(self) -> list[tuple[list[int], list[int]]]:
        """The pairs as Python lists (small data only)."""
        return [(s.tolist(), t.tolist()) for s, t in self]

    def __repr__(self) -> str:
        return f"TokenPairs({len(self)} pairs, {self.src_lens.sum()} + {self.tgt_lens.sum()} ids)"
