"""`idistill`: compose the config with Hydra, check it, then train, evaluate and log one run."""

from __future__ import annotations

import logging
from dataclasses import replace
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
    from idistill.config import settings_from_dict
    from idistill.data.tasks import check_task

    settings = settings_from_dict(OmegaConf.to_container(cfg, resolve=True))
    if _is_nlu(settings):
        from idistill.data.nlu import nlu_module

        nlu_module(settings.task).check(settings.task)
    else:
        check_task(settings.task, settings.lang)
    hydra_out, sweep_dir, run_name = _hydra_runtime()
    out_dir = output_dir or hydra_out or Path.cwd()
    if settings.method.name == "self_distill":
        return _run_chain(settings, out_dir, run_name or out_dir.name, sweep_dir, progress)
    cell = {"cell": settings.cell_hash()}  # idistill-report finds a table cell's runs by it
    return _run_one(settings, out_dir, run_name or out_dir.name, sweep_dir, progress, cell)[0]


def _is_nlu(settings) -> bool:
    """GLUE, NER, TyDiQA: fine-tuning a pretrained encoder (idistill.finetune)."""
    return settings.task.get("type") == "nlu"


def _run_chain(settings, out_dir: Path, run_name: str, sweep_dir: Path | None, progress: bool):
    """Self-distillation (Table 1): a baseline teacher unless method.teacher names one, then
    method.rounds students, each taught by the previous run's best checkpoint; one MLflow run
    each, linked by the tags round, teacher and chain (the first run's id).

    trainer.resume=<the chain's run directory> continues a killed chain: finished rounds are
    kept and the unfinished one continues from its last checkpoint.
    """
    from idistill.checkpoint import BEST, LAST, read_meta
    from idistill.config import ConfigError
    from idistill.distill import teacher_checkpoint

    m, t = settings.method, settings.trainer
    cell = settings.cell_hash()  # the chain's rounds share the cell of the composed config
    teacher = teacher_checkpoint(m.teacher, settings.tracking.uri) if m.teacher else None
    if teacher is not None and m.rounds == 1:  # one student: an ordinary run
        with_teacher = replace(settings, method=replace(m, teacher=str(teacher)))
        return _run_one(with_teacher, out_dir, run_name, sweep_dir, progress, {"cell": cell})[0]
    resuming = t.resume not in (False, None, "false")
    if resuming:
        if not Path(str(t.resume)).expanduser().is_dir():
            raise ConfigError(
                f"trainer.resume={t.resume}: a self-distillation chain continues from its run "
                f"directory (the one holding round0/, round1/, ...): trainer.resume=<that dir>"
            )
        out_dir = Path(str(t.resume)).expanduser()
    chain: dict[str, str] = {}
    result = None
    for r in range(0 if teacher is None else 1, m.rounds + 1):
        ckpts = (
            Path(t.save_dir) / f"round{r}" if t.save_dir else out_dir / f"round{r}" / "checkpoints"
        )
        if r == 0:  # the teacher: plain training
            method = replace(m, name="baseline", k=1, alpha=0.0, schedule="constant", teacher=None)
        else:
            method = replace(m, teacher=str(teacher))
        meta = read_meta(ckpts) if resuming else None
        if meta and meta.get("finished"):  # finished before the chain was stopped
            log.info("round %d already finished in %s", r, ckpts)
            run_id = meta.get("run_id")
        else:
            resume = str(ckpts) if resuming and (ckpts / LAST).is_file() else False
            trainer = replace(t, save_dir=str(ckpts), resume=resume)
            result, run_id = _run_one(
                replace(settings, method=method, trainer=trainer),
                out_dir / f"round{r}",
                f"{run_name}/round{r}",
                sweep_dir,
                progress,
                {"round": str(r), "teacher": str(teacher or ""), "cell": cell, **chain},
            )
        chain.setdefault("chain", run_id or "")
        teacher = ckpts / BEST
    return result


def _run_one(
    settings,
    out_dir: Path,
    run_name: str,
    sweep_dir: Path | None,
    progress: bool,
    tags: dict[str, str] | None = None,
):
    """Train, evaluate and track one run; returns (RunResult, MLflow run id or None)."""
    from idistill import finetune, train
    from idistill.checkpoint import read_meta
    from idistill.tracking import PARENT_RUN_FILE, make_tracker

    out_dir.mkdir(parents=True, exist_ok=True)
    roots = [Path.cwd() / "outputs", Path.cwd() / "multirun", out_dir.parent]
    resume = resume_dir(settings.trainer.resume, settings.config_hash(), roots)

    parent = None
    if sweep_dir is not None and (sweep_dir / PARENT_RUN_FILE).is_file():
        parent = (sweep_dir / PARENT_RUN_FILE).read_text().strip()
    meta = read_meta(resume) if resume else None
    from idistill import distributed

    tracker = make_tracker(  # under torchrun only rank 0 logs
        settings.tracking.backend if distributed.from_env().main else "none",
        settings.tracking.uri,
        settings.experiment_name,
        run_name=run_name,
        parent_run_id=parent,
        run_id=meta.get("run_id") if meta else None,
        tags={
            "task": settings.task["name"],
            "lang": str(settings.lang),
            "method": settings.method.name,
            "config_hash": settings.config_hash(),
            **(tags or {}),
        },
    )
    if resume is None:
        tracker.log_params(settings.to_dict())
    hydra_files = next(
        (d / ".hydra" for d in (out_dir, out_dir.parent) if (d / ".hydra").is_dir()), None
    )
    if hydra_files is not None:
        tracker.log_artifacts(hydra_files, "hydra")
    try:
        loop = finetune if _is_nlu(settings) else train  # NLU: pretrained encoder + head
        result = loop.run(settings, out_dir, tracker, resume_dir=resume, progress=progress)
    except KeyboardInterrupt:
        tracker.finish("KILLED")
        raise
    except BaseException:
        tracker.finish("FAILED")
        raise
    tracker.finish("FINISHED")
    return result, tracker.run_id


@hydra.main(version_base="1.3", config_path="pkg://idistill.conf", config_name="config")
def _main(cfg: DictConfig) -> float | None:
    from idistill import distributed
    from idistill.config import ConfigError

    if not distributed.from_env().main:  # torchrun: rank 0 speaks for all
        logging.getLogger().setLevel(logging.WARNING)

    try:
        result = run(cfg)
    except ConfigError as e:
        if HydraConfig.get().mode == RunMode.MULTIRUN:
            raise  # Hydra marks this job failed; the sweep's parent run is marked FAILED
        raise SystemExit(f"idistill: {e}") from None
    if result is None:  # a chain had nothing left to train
        return None
    return getattr(result, "objective", result.test_bleu)  # NLU: the task's test (or dev) metric


def main() -> None:
    """Console script `idistill`."""
    _main()


if __name__ == "__main__":
    main()
