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


def remove_stale_temporaries(save_dir: Path) -> list[Path]:
    """Delete the half-written checkpoints (`*.tmp`, each as large as a checkpoint) that a
    killed atomic_save or write_meta left in `save_dir`; call it before the run writes there."""
    stale = sorted(save_dir.glob("checkpoint_*.tmp"))
    for path in stale:
        path.unlink(missing_ok=True)
    return stale


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


def find_resumable(roots: list[Path], config_hashes: list[str]) -> Path | None:
    """Newest unfinished checkpoint directory under `roots` whose run had one of these config
    hashes (the current one, and the legacy one of runs made by earlier versions)."""
    found = []
    for root in roots:
        if not root.is_dir():
            continue
        for meta_file in root.rglob(META):
            meta = read_meta(meta_file.parent)
            resumable = meta and meta.get("config_hash") in config_hashes
            resumable = resumable and not meta.get("finished")
            if resumable and (meta_file.parent / LAST).is_file():
                found.append((meta_file.stat().st_mtime, meta_file.parent))
    return max(found)[1] if found else None


def save_last(
    save_dir: Path,
    *,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    scaler: torch.amp.GradScaler | None,
    rng: dict,
    state: dict[str, Any],
    settings: dict[str, Any],
    meta: dict[str, Any],
) -> None:
    """The one checkpoint schema of every task: weights, optimizer, loss scaler, random state,
    the loop's state (update, epoch, batch_pos, best, ...) and the run's settings; then its meta
    (config hash, update, run id, finished), which `find_resumable` reads."""
    ckpt = {
        "model": model.state_dict(),
        "optimizer": optimizer.state_dict(),
        "scaler": scaler.state_dict() if scaler is not None else None,
        "rng": rng,
        "settings": settings,
        **state,
    }
    atomic_save(ckpt, save_dir / LAST)
    write_meta(save_dir, {**meta, "update": state["update"]})


def save_best(
    save_dir: Path,
    *,
    model: torch.nn.Module,
    update: int,
    metric: str,
    score: float,
    settings: dict[str, Any],
) -> None:
    """The best checkpoint: the weights, where and by what they were selected, the settings."""
    ckpt = {"model": model.state_dict(), "update": update, "metric": metric, "score": score}
    atomic_save({**ckpt, "settings": settings}, save_dir / BEST)


def load(path: Path, device: torch.device | str = "cpu") -> dict[str, Any]:
    """A checkpoint of ours, onto `device`."""
    return torch.load(path, map_location=device, weights_only=True)
