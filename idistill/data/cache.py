"""Processed data built once per settings and shared by parallel jobs.

    root/name/<hash of settings>/        the finished data, with manifest.json
    root/name/<hash>.lock                taken (fcntl.flock) while building
    root/name/.<hash>.tmp-*/             a build in progress; renamed into place when done

A directory only appears once it is complete (a rename is atomic), so a job killed mid-build
leaves at most a temp directory, which the next builder removes.
"""

from __future__ import annotations

import contextlib
import fcntl
import functools
import hashlib
import json
import logging
import os
import shutil
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

from idistill.atomic import temp_dir

log = logging.getLogger(__name__)

MANIFEST = "manifest.json"


class CacheError(RuntimeError):
    """A cached directory whose files no longer match its manifest."""


def settings_hash(settings: dict[str, Any]) -> str:
    """Short, stable hash of JSON-able settings (key order does not matter)."""
    text = json.dumps(settings, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:12]


def file_sha256(path: Path) -> str:
    """sha256 hex digest of a file, read in chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("idistill")
    except PackageNotFoundError:
        return "unknown"


def _files(directory: Path) -> list[Path]:
    return sorted(p for p in directory.rglob("*") if p.is_file() and p.name != MANIFEST)


def _complete(path: Path) -> bool:
    """True when `path` has a readable manifest and every file it lists has its listed size."""
    try:
        manifest = json.loads((path / MANIFEST).read_text())
        return all(
            (path / rel).stat().st_size == entry["size"] for rel, entry in manifest["files"].items()
        )
    except (OSError, ValueError, KeyError, TypeError):
        return False


@contextlib.contextmanager
def _locked(lock_file: Path) -> Iterator[None]:
    with open(lock_file, "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)  # blocks until the builder before us is done
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def cached(root: Path, name: str, settings: dict[str, Any], build: Callable[[Path], None]) -> Path:
    """The directory of `name` built with `settings`; `build(tmp_dir)` runs only if none exists.

    Parallel callers with the same settings wait for one build and share its result.
    The manifest records the settings, each file's size and sha256, the creation time and
    the idistill version.
    """
    key = settings_hash(settings)
    parent = Path(root).expanduser() / name
    final = parent / key
    if _complete(final):
        return final
    parent.mkdir(parents=True, exist_ok=True)
    with _locked(parent / f"{key}.lock"):
        if _complete(final):  # another job built it while we waited
            return final
        # We hold the lock, so anything half-made for this key is from a dead builder.
        for stale in parent.glob(f".{key}.tmp-*"):
            shutil.rmtree(stale, ignore_errors=True)
        if final.exists():
            shutil.rmtree(final)
        tmp = temp_dir(parent, prefix=f".{key}.tmp-")  # the umask's mode, not mkdtemp's 0700
        try:
            log.info("building %s data in %s", name, final)
            build(tmp)
            manifest = {
                "name": name,
                "settings": settings,
                "files": {
                    str(p.relative_to(tmp)): {"size": p.stat().st_size, "sha256": file_sha256(p)}
                    for p in _files(tmp)
                },
                "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                "created_unix": time.time(),
                "idistill_version": _version(),
            }
            (tmp / MANIFEST).write_text(json.dumps(manifest, indent=1, default=str))
            os.replace(tmp, final)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
    return final


def read_manifest(path: Path) -> dict[str, Any]:
    """The manifest of a cached directory."""
    try:
        return json.loads((Path(path) / MANIFEST).read_text())
    except (OSError, ValueError) as e:
        raise CacheError(f"{path} has no readable {MANIFEST} ({e}); delete it to rebuild") from e


def verify(path: Path) -> None:
    """Recompute every file's sha256 and raise CacheError on any mismatch or missing file."""
    path = Path(path)
    manifest = read_manifest(path)
    for rel, entry in manifest["files"].items():
        f = path / rel
        if not f.is_file():
            raise CacheError(f"{f} is listed in {path / MANIFEST} but missing; delete {path}")
        actual = file_sha256(f)
        if actual != entry["sha256"]:
            raise CacheError(
                f"{f} has sha256 {actual}, the manifest says {entry['sha256']}: the cached data "
                f"changed after it was built; delete {path} to rebuild it"
            )


T = TypeVar("T")


def handed_over(load: Callable[..., T]) -> Callable[..., T]:
    """`load`, whose result the next call with the same (JSON-able) arguments takes instead of
    loading again: the preflight loads a run's data, the recipe that trains it takes it over.
    One result is kept, for one call: any other call loads afresh (the files may have changed)."""
    kept: dict[str, T] = {}

    @functools.wraps(load)
    def load_or_take(*args, **kwargs):
        key = json.dumps([args, kwargs], sort_keys=True, default=str)
        if key in kept:
            return kept.pop(key)
        kept.clear()
        kept[key] = result = load(*args, **kwargs)
        return result

    return load_or_take
