"""The last checks before a run trains, after those of its settings and data source: the
teacher, the data itself (every split there, decodable, within the model) and the folders the
run writes. A refusal is one ConfigError, before any MLflow run, output folder or training."""

from __future__ import annotations

import tempfile
from pathlib import Path

from idistill.config import ConfigError, RunSettings
from idistill.distill import teacher_checkpoint
from idistill.recipes import check_data


def preflight(settings: RunSettings, out_dir: Path) -> None:
    """Refuse what would fail after training started: a teacher that is not there, data the run
    could not validate or test on (loaded here once; the recipe takes it over), a folder it
    could not write."""
    if settings.method.teacher:  # before any data work
        teacher_checkpoint(settings.method.teacher, settings.tracking.uri)
    check_data(settings)
    check_writable(out_dir, "the run directory")  # its checkpoints/ unless trainer.save_dir
    if settings.trainer.save_dir:
        check_writable(Path(settings.trainer.save_dir), "trainer.save_dir")
    resume = settings.trainer.resume
    if resume not in (False, None, "false", True, "true"):  # a run, checkpoint dir or file
        path = Path(str(resume)).expanduser()
        check_writable(path if path.is_dir() else path.parent, "trainer.resume")


def check_writable(path: Path, what: str) -> None:
    """Refuse a folder the run could not create or write in, creating nothing: the nearest
    folder on its path that exists must take a new file."""
    path = Path(path).expanduser().absolute()
    existing = next(p for p in (path, *path.parents) if p.exists())
    if not existing.is_dir():
        raise ConfigError(f"{what} {path} cannot be created: {existing} is a file")
    try:
        tempfile.TemporaryFile(dir=existing).close()
    except OSError as e:
        raise ConfigError(
            f"{what} {path} is not writable ({e.strerror}: {existing}); choose another folder "
            "or give this user write permission there"
        ) from None
