"""`idistill`: compose the config with Hydra, check it, then train, evaluate and log one run."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf

log = logging.getLogger(__name__)


def _hydra_runtime() -> tuple[Path | None, Path | None, str | None]:
    """(run output dir, sweep dir in a -m sweep, run name) of the current Hydra job, if any."""
    if not HydraConfig.initialized():
        return None, None, None
    hc = HydraConfig.get()
    out = Path(hc.runtime.output_dir)
    if hc.mode != RunMode.MULTIRUN:
        return out, None, out.name
    name = f"{hc.job.num}:{hc.job.override_dirname}"[:250]
    return out, Path(hc.sweep.dir), name


def resume_dir(resume: Any, config_hash: str, roots: list[Path]) -> Path | None:
    """The checkpoint directory to continue from: trainer.resume=true finds the newest unfinished
    run of the same config under `roots`; a path names a run, checkpoint dir or checkpoint."""
    from idistill.checkpoint import LAST, find_resumable

    if resume in (False, None, "false"):
        return None
    if resume in (True, "true"):
        found = find_resumable(roots, config_hash)
        if found is None:
            log.info("trainer.resume=true: no unfinished run of this config; starting afresh")
        return found
    path = Path(str(resume)).expanduser()
    for candidate in (path, path / "checkpoints", path.parent):
        if (candidate / LAST).is_file():
            return candidate
    raise FileNotFoundError(f"trainer.resume={resume}: no {LAST} there")


def run(cfg: DictConfig, output_dir: Path | None = None, progress: bool = True):
    """Run one job from a composed config (the undecorated entry point that tests call)."""
    from idistill import train
    from idistill.checkpoint import read_meta
    from idistill.config import settings_from_dict
    from idistill.data.tasks import check_task
    from idistill.tracking import PARENT_RUN_FILE, make_tracker

    settings = settings_from_dict(OmegaConf.to_container(cfg, resolve=True))
    check_task(settings.task, settings.lang)
    hydra_out, sweep_dir, run_name = _hydra_runtime()
    out_dir = output_dir or hydra_out or Path.cwd()
    out_dir.mkdir(parents=True, exist_ok=True)
    roots = [Path.cwd() / "outputs", Path.cwd() / "multirun", out_dir.parent]
    resume = resume_dir(settings.trainer.resume, settings.config_hash(), roots)

    parent = None
    if sweep_dir is not None and (sweep_dir / PARENT_RUN_FILE).is_file():
        parent = (sweep_dir / PARENT_RUN_FILE).read_text().strip()
    meta = read_meta(resume) if resume else None
    tracker = make_tracker(
        settings.tracking.backend,
        settings.tracking.uri,
        settings.experiment_name,
        run_name=run_name or out_dir.name,
        parent_run_id=parent,
        run_id=meta.get("run_id") if meta else None,
        tags={
            "task": settings.task["name"],
            "lang": str(settings.lang),
            "method": settings.method.name,
            "config_hash": settings.config_hash(),
        },
    )
    if resume is None:
        tracker.log_params(settings.to_dict())
    if (out_dir / ".hydra").is_dir():
        tracker.log_artifacts(out_dir / ".hydra", "hydra")
    try:
        result = train.run(settings, out_dir, tracker, resume_dir=resume, progress=progress)
    except KeyboardInterrupt:
        tracker.finish("KILLED")
        raise
    except BaseException:
        tracker.finish("FAILED")
        raise
    tracker.finish("FINISHED")
    return result


@hydra.main(version_base="1.3", config_path="pkg://idistill.conf", config_name="config")
def _main(cfg: DictConfig) -> float | None:
    from idistill.config import ConfigError

    try:
        result = run(cfg)
    except ConfigError as e:
        if HydraConfig.get().mode == RunMode.MULTIRUN:
            raise  # Hydra marks this job failed; the sweep's parent run is marked FAILED
        raise SystemExit(f"idistill: {e}") from None
    return result.test_bleu


def main() -> None:
    """Console script `idistill`."""
    _main()


if __name__ == "__main__":
    main()
