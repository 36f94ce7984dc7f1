"""Checkpoints written atomically, and the search for the run to resume."""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

import torch

LAST, BEST, META = "checkpoint_last.pt", "checkpoint_best.pt", "checkpoint_last.json"


def atomic_save(obj: Any, path: Path) -> None:
    """torch.save to a temp file beside `path`, then rename: a kill never leaves half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=path.name + ".", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_meta(save_dir: Path, meta: dict[str, Any]) -> None:
    """A small JSON beside the last checkpoint, so resume can find runs without loading them."""
    tmp = save_dir / (META + ".tmp")
    tmp.write_text(json.dumps(meta, indent=1))
    os.replace(tmp, save_dir / META)


def read_meta(save_dir: Path) -> dict[str, Any] | None:
    """The meta of the last checkpoint in `save_dir`, or None."""
    try:
        return json.loads((save_dir / META).read_text())
    except (OSError, ValueError):
        return None


def find_resumable(roots: list[Path], config_hash: str) -> Path | None:
    """Newest unfinished checkpoint directory under `roots` whose run had this config hash."""
    found = []
    for root in roots:
        if not root.is_dir():
            continue
        for meta_file in root.rglob(META):
            meta = read_meta(meta_file.parent)
            resumable = meta and meta.get("config_hash") == config_hash
            resumable = resumable and not meta.get("finished")
            if resumable and (meta_file.parent / LAST).is_file():
                found.append((meta_file.stat().st_mtime, meta_file.parent))
    return max(found)[1] if found else None
