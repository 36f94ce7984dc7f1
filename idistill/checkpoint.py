"""Checkpoints written atomically, the previous last one kept as a fallback, and the search
for the run to resume."""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any

import torch

from idistill.atomic import temp_copy, temp_file

log = logging.getLogger(__name__)

LAST, BEST, META = "checkpoint_last.pt", "checkpoint_best.pt", "checkpoint_last.json"
PREV = "checkpoint_prev.pt"  # the last checkpoint before the current one: resume's fallback
CORRUPT = ".corrupt"  # an unreadable last checkpoint is moved aside to <name>.corrupt


class CheckpointError(RuntimeError):
    """A checkpoint file that torch cannot read (truncated, corrupt, or not ours)."""


def atomic_save(obj: Any, path: Path, keep: Path | None = None) -> None:
    """torch.save to a temp file beside `path`, then rename: a kill never leaves half a file.
    keep: where the file being replaced stays, so that at every moment `path` is whole and
    `keep` the checkpoint before it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp, f = temp_file(path.parent, prefix=path.name + ".")
    try:
        with f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        if keep is not None and path.is_file():
            os.replace(temp_copy(path, keep.parent, prefix=keep.name + "."), keep)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
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


def latest_run(roots: list[Path], config_hashes: list[str]) -> tuple[Path, dict] | None:
    """(checkpoint directory, meta) of the newest run under `roots` whose run had one of these
    config hashes (the current one, and the legacy one of runs made by earlier versions); also
    a run killed before its first checkpoint (`mark_started`)."""
    found = []
    for root in roots:
        if not root.is_dir():
            continue
        for meta_file in root.rglob(META):
            meta = read_meta(meta_file.parent)
            if meta and meta.get("config_hash") in config_hashes:
                found.append((meta_file.stat().st_mtime, meta_file.parent, meta))
    if not found:
        return None
    _, save_dir, meta = max(found, key=lambda f: f[0])
    return save_dir, meta


def was_tested(save_dir: Path, meta: dict) -> bool:
    """Whether a finished run tested its best checkpoint (not with trainer.test=false). Runs of
    earlier versions did not record it: their result.json beside the checkpoints tells, and
    without one the run counts as untested (a resume tests it again rather than never)."""
    if "tested" in meta:
        return bool(meta["tested"])
    return bool(earlier_result(save_dir, meta).get("metrics"))


def earlier_result(save_dir: Path, meta: dict) -> dict:
    """What a finished run's evaluations gave (FitResult's fields): its meta's record, or for
    runs of earlier versions the result.json beside its checkpoints; {} where neither."""
    if meta.get("result"):
        return meta["result"]
    try:
        found = json.loads((save_dir.parent / "result.json").read_text())
    except (OSError, ValueError):
        return {}
    return found if isinstance(found, dict) else {}


def work_left(save_dir: Path, meta: dict, test: bool) -> bool:
    """Whether a run has work left: unfinished, or finished without the evaluation wanted now:
    its test (test), else its best checkpoint's validation scores or its test (tuning)."""
    if not meta.get("finished"):
        return True
    tested = was_tested(save_dir, meta)
    return not tested if test else not (tested or meta.get("scored_valid"))


def find_resumable(roots: list[Path], config_hashes: list[str], test: bool = True) -> Path | None:
    """The newest run of these config hashes if it has `work_left`."""
    latest = latest_run(roots, config_hashes)
    return latest[0] if latest is not None and work_left(*latest, test) else None


def mark_started(save_dir: Path, meta: dict[str, Any]) -> None:
    """The meta of a run that has no checkpoint yet (update 0), so that trainer.resume=true
    finds a run killed before its first checkpoint and continues it in the same folder."""
    write_meta(save_dir, {**meta, "update": 0, "finished": False})


def has_checkpoint(save_dir: Path) -> bool:
    """Whether `save_dir` holds a checkpoint to resume from (last, previous or best)."""
    return any((save_dir / name).is_file() for name in (LAST, PREV, BEST))


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
    atomic_save(ckpt, save_dir / LAST, keep=save_dir / PREV)
    write_meta(save_dir, {**meta, "update": state["update"]})


def save_best(
    save_dir: Path,
    *,
    model: torch.nn.Module,
    metric: str,
    rng: dict,
    state: dict[str, Any],
    settings: dict[str, Any],
) -> None:
    """The best checkpoint: the weights, by what they were selected (metric, score = the
    state's best), the settings, and the loop's and random state of that update, so that a run
    can resume from it when it is the only readable checkpoint (it holds no optimizer state)."""
    ckpt = {"model": model.state_dict(), "metric": metric, "score": state["best"], "rng": rng}
    atomic_save({**ckpt, "settings": settings, **state}, save_dir / BEST)


def load(path: Path, device: torch.device | str = "cpu") -> dict[str, Any]:
    """A checkpoint of ours, onto `device`; CheckpointError, naming the file, when torch cannot
    read it (truncated, corrupt, or holding more than tensors and plain values)."""
    try:
        return torch.load(path, map_location=device, weights_only=True)
    except Exception as e:  # torch raises RuntimeError, EOFError, UnpicklingError, OSError, ...
        raise CheckpointError(f"{path} cannot be read as a checkpoint ({_reason(e)})") from e


def _reason(e: Exception) -> str:
    """torch's error in one line: its first sentence, and the line naming what was refused."""
    lines = [line.strip() for line in str(e).splitlines() if line.strip()]
    if not lines:
        return f"{type(e).__name__}: the file is empty or cut short"
    detail = [line for line in lines[1:] if "nsupported" in line][:1]
    return f"{type(e).__name__}: " + " ".join([lines[0].split(". ")[0], *detail])


def load_for_resume(
    save_dir: Path, device: torch.device | str = "cpu", *, repair: bool = True
) -> tuple[dict[str, Any], Path]:
    """(checkpoint, its file) to resume the run in `save_dir` from: the last checkpoint or, when
    torch cannot read it, the previous last one, else the best one (no optimizer state), with a
    warning naming the file. repair (rank 0): the unreadable last checkpoint is moved aside to
    <name>.corrupt and the one resumed becomes the last one, with a meta that says its update."""
    unreadable = []
    for name in (LAST, PREV, BEST):
        path = save_dir / name
        if not path.is_file():
            continue
        try:
            ckpt = load(path, device)
        except CheckpointError as e:
            log.warning("%s", e)
            unreadable.append(path)
            continue
        if name == BEST and "epoch" not in ckpt:  # written before best held the loop state
            continue
        if unreadable:
            log.warning("resuming from %s (update %d) instead", path, ckpt["update"])
            if repair:
                _make_last(save_dir, path, ckpt["update"], unreadable)
        return ckpt, path
    raise CheckpointError(
        f"no checkpoint to resume in {save_dir}: {', '.join(map(str, unreadable)) or 'none'} "
        f"unreadable, nothing else usable there; start the run afresh (trainer.resume=false)"
    )


def _make_last(save_dir: Path, resumed: Path, update: int, unreadable: list[Path]) -> None:
    """After a fallback: each unreadable checkpoint goes to <name>.corrupt (kept for a look, and
    never rotated into the previous one), `resumed` becomes the last one, the meta its update."""
    for path in unreadable:
        os.replace(path, path.with_name(path.name + CORRUPT))
        log.warning("moved %s to %s%s", path, path.name, CORRUPT)
    last = save_dir / LAST
    os.replace(temp_copy(resumed, save_dir, prefix=LAST + "."), last)
    write_meta(save_dir, {**(read_meta(save_dir) or {}), "update": update, "finished": False})
