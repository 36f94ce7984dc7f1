"""Temporary files and folders beside their final path, which one rename then puts in place.

They are created as ordinary files and folders are (mode 0666 / 0777 less the umask), not as
`tempfile.mkstemp` / `mkdtemp` create theirs (0600 / 0700): the rename keeps the mode, and a
data cache or run folder shared through `IDISTILL_DATA` or group permissions must stay readable
to the other users.
"""

from __future__ import annotations

import os
import secrets
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO


def _unique(parent: Path, prefix: str, suffix: str, create: Callable[[Path], object]):
    """create(path) for the first free random name parent/<prefix><hex><suffix>."""
    for _ in range(100):
        path = Path(parent) / f"{prefix}{secrets.token_hex(4)}{suffix}"
        try:
            return path, create(path)
        except FileExistsError:
            continue
    raise FileExistsError(f"no free temporary name {prefix}*{suffix} in {parent}")


def temp_file(parent: Path, prefix: str, suffix: str = ".tmp") -> tuple[Path, BinaryIO]:
    """(path, file open for binary writing): a new file in `parent` that nobody else opened."""
    return _unique(parent, prefix, suffix, lambda path: open(path, "xb"))  # noqa: SIM115


def temp_dir(parent: Path, prefix: str) -> Path:
    """A new, empty folder in `parent`."""
    return _unique(parent, prefix, "", os.mkdir)[0]


def temp_copy(src: Path, parent: Path, prefix: str, suffix: str = ".tmp") -> Path:
    """A new name in `parent` for the content of `src`: a hard link, or a copy where the file
    system has none."""
    try:
        return _unique(parent, prefix, suffix, lambda path: os.link(src, path))[0]
    except FileExistsError:
        raise
    except OSError:  # no hard links here (some network and FUSE file systems)
        pass
    path, f = temp_file(parent, prefix, suffix)
    try:
        with f, open(src, "rb") as source:
            shutil.copyfileobj(source, f)
    except BaseException:
        path.unlink(missing_ok=True)
        raise
    return path
