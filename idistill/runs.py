"""A run as a user starts one, without Hydra: check the data, find the run to resume, open the
MLflow run, train through the engine, close the run with its status; and the
self-distillation chain (Table 1), whose rounds are such runs.

    from idistill.config import settings_from_dict
    from idistill.runs import launch
    launch(settings_from_dict(cfg), Path("outputs/my-run"))
"""

from __future__ import annotations

import contextlib
import json
import logging
import signal
import threading
import time
from dataclasses import fields, replace
from pathlib import Path
from typing import Any

from idistill.checkpoint import (
    BEST,
    LAST,
    META,
    earlier_result,
    find_resumable,
    latest_run,
    read_meta,
    work_left,
    write_meta,
)
from idistill.config import ConfigError, RunSettings
from idistill.engine.loop import FitResult

log = logging.getLogger(__name__)


def check_data(settings: RunSettings) -> None:
    """The task's data can be had (a local source, a download, the cache), before any work."""
    if settings.task.get("type") == "nlu":
        from idistill.data.nlu import nlu_module

        nlu_module(settings.task).check(settings.task)
    else:
        from idistill.data.tasks import check_task

        check_task(settings.task, settings.lang)


def resume_dir(
    resume: Any, config_hashes: list[str], roots: list[Path], test: bool = True
) -> Path | None:
    """The checkpoint directory to continue from: trainer.resume=true finds the newest run of
    the same config under `roots` with work left (unfinished, or untested where `test` wants
    the test); a path names a run, checkpoint dir or checkpoint."""
    if resume in (False, None, "false"):
        return None
    if resume in (True, "true"):
        found = find_resumable(roots, config_hashes, test)
        if found is None:
            log.info("trainer.resume=true: no unfinished run of this config; starting afresh")
        return found
    path = Path(str(resume)).expanduser()
    for candidate in (path, path / "checkpoints", path.parent):
        if (candidate / LAST).is_file() or (candidate / META).is_file():
            return candidate
    raise FileNotFoundError(f"trainer.resume={resume}: no {LAST} there")


def launch(
    settings: RunSettings,
    out_dir: Path,
    *,
    run_name: str | None = None,
    sweep_dir: Path | None = None,
    progress: bool = True,
) -> FitResult | None:
    """Check the data, then train, test and track one configuration (a chain of runs for
    method=self_distill). out_dir: the run's folder; sweep_dir: the folder of the sweep it
    belongs to (its MLflow parent run). None when a resumed chain had nothing left to train."""
    from idistill import distributed
    from idistill.preflight import preflight

    check_data(settings)
    preflight(settings, out_dir)  # the data itself and the folders, before any run or training
    started = time.perf_counter()
    run_name = run_name or settings.run_name
    if settings.method.name == "self_distill":
        result = run_chain(settings, out_dir, run_name, sweep_dir, progress)
    else:
        cell = {"cell": settings.cell_hash()}  # idistill-report finds a table cell's runs by it
        result = run_one(settings, out_dir, run_name, sweep_dir, progress, cell)[0]
    # (a resumed chain writes into its own folder, not out_dir)
    if result is not None and distributed.from_env().main and out_dir.is_dir():
        write_result(out_dir, result, time.perf_counter() - started)
    return result


def run_chain(
    settings: RunSettings, out_dir: Path, run_name: str, sweep_dir: Path | None, progress: bool
) -> FitResult | None:
    """Self-distillation (Table 1): a baseline teacher unless method.teacher names one, then
    method.rounds students, each taught by the previous run's best checkpoint; one MLflow run
    each, linked by the tags round, teacher and chain (the first run's id).

    trainer.resume=<the chain's run directory> continues a killed chain: finished rounds are
    kept and the unfinished one continues from its last checkpoint.
    """
    from idistill.distill import teacher_checkpoint

    m, t = settings.method, settings.trainer
    cell = settings.cell_hash()  # the chain's rounds share the cell of the composed config
    teacher = teacher_checkpoint(m.teacher, settings.tracking.uri) if m.teacher else None
    if teacher is not None and m.rounds == 1:  # one student: an ordinary run
        with_teacher = replace(settings, method=replace(m, teacher=str(teacher)))
        return run_one(with_teacher, out_dir, run_name, sweep_dir, progress, {"cell": cell})[0]
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
            result, run_id = run_one(
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


def run_one(
    settings: RunSettings,
    out_dir: Path,
    run_name: str,
    sweep_dir: Path | None,
    progress: bool,
    tags: dict[str, str] | None = None,
) -> tuple[FitResult, str | None]:
    """Train, evaluate and track one run; returns (its result, its MLflow run id or None)."""
    from idistill import distributed
    from idistill.engine.loop import fit
    from idistill.engine.run import checkpoint_dir
    from idistill.recipes import recipe_for
    from idistill.tracking import PARENT_RUN_FILE, make_tracker

    out_dir.mkdir(parents=True, exist_ok=True)
    roots = [Path.cwd() / "outputs", Path.cwd() / "multirun", out_dir.parent]
    t = settings.trainer
    if t.resume in (True, "true"):  # re-running a sweep completes it: what finished stays
        done = finished_run(settings, roots)
        if done is not None:
            return finished_result(done, t.test), (read_meta(done) or {}).get("run_id")
    resume = resume_dir(t.resume, settings.hashes(), roots, t.test)
    parent = None
    if sweep_dir is not None and (sweep_dir / PARENT_RUN_FILE).is_file():
        parent = (sweep_dir / PARENT_RUN_FILE).read_text().strip()
    meta = read_meta(resume) if resume else None
    tracker = make_tracker(  # under torchrun only rank 0 logs
        settings.tracking.backend if distributed.from_env().main else "none",
        settings.tracking.uri,
        settings.experiment_name,
        run_name=run_name,
        parent_run_id=parent,
        run_id=meta.get("run_id") if meta else None,
        journal_dir=checkpoint_dir(settings, out_dir, resume),  # the journal: the checkpoints'
        resuming=resume is not None,
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
    config_files = next(  # the config a Hydra job saved beside its run folder
        (d / ".hydra" for d in (out_dir, out_dir.parent) if (d / ".hydra").is_dir()), None
    )
    if config_files is not None:
        tracker.log_artifacts(config_files, "hydra")
    try:
        with _sigterm_interrupts():
            result = fit(
                recipe_for(settings),
                settings,
                out_dir,
                tracker,
                resume_dir=resume,
                progress=progress,
            )
    except KeyboardInterrupt:  # Ctrl-C or SIGTERM
        tracker.finish("KILLED")
        raise
    except BaseException:
        tracker.finish("FAILED")
        raise
    log_curves(tracker, out_dir)
    tracker.finish("FINISHED")
    if distributed.from_env().main:  # finished: only now, so a run stopped before is resumed
        meta = read_meta(result.save_dir) or {}
        write_meta(result.save_dir, {**meta, "finished": True, "done_with": done_with(settings)})
    return result, tracker.run_id


def done_with(settings: RunSettings) -> dict:
    """What a finished run did besides training that the config hash leaves out: its analyses
    and where it was tracked. trainer.resume=true reuses a finished run only where they match."""
    tr = settings.tracking
    return {"analysis": settings.to_dict()["analysis"],
            "tracking": [tr.backend, tr.uri, settings.experiment_name]}  # fmt: skip


def finished_run(settings: RunSettings, roots: list[Path]) -> Path | None:
    """The checkpoint directory of this config's newest run if there is nothing left to do:
    finished, tested (unless trainer.test=false), with the same analyses and tracking."""
    latest = latest_run(roots, settings.hashes())
    if latest is None:
        return None
    save_dir, meta = latest
    if work_left(save_dir, meta, settings.trainer.test):
        return None
    now = done_with(settings)
    if meta.get("done_with", now) != now:  # (runs of earlier versions have no record)
        log.info("trainer.resume=true: %s finished with other analyses or tracking; "
                 "this run trains afresh", save_dir)  # fmt: skip
        return None
    return save_dir


def finished_result(save_dir: Path, test: bool) -> FitResult:
    """What a finished run scored, from its meta (or, for runs of earlier versions, the
    result.json beside its checkpoints), for trainer.resume=true to report without training;
    without test metrics where the test is not wanted (tuning on validation)."""
    meta = read_meta(save_dir) or {}
    record = earlier_result(save_dir, meta)
    log.info("trainer.resume=true: this config finished in %s; nothing to train (its run: %s)",
             save_dir, meta.get("run_id"))  # fmt: skip
    known = {f.name for f in fields(FitResult)} - {"save_dir"}
    defaults = {"updates": meta.get("update", 0), "best": None, "metrics": {}, "objective": None}
    kept = {k: v for k, v in record.items() if k in known}  # (result.json adds "seconds")
    return FitResult(**{**defaults, **kept}, save_dir=save_dir).seen(test)


CURVES = ("train/loss", "valid/loss", "train/alpha")  # the PNG every tracked run logs


def log_curves(tracker, out_dir: Path) -> None:
    """<run dir>/training_curves.png (loss, validation loss, alpha against updates, from the
    run's journal) as an artifact of its MLflow run; nothing when the run tracked nothing."""
    from idistill.analysis.plots import run_curves

    series = {name: tracker.history(name) for name in CURVES}
    if not any(series.values()):
        return
    try:
        tracker.log_artifact(run_curves(series, out_dir / "training_curves.png"))
    except (OSError, ValueError) as e:  # a plot is never worth the run
        log.warning("training curves not plotted (%s)", e)


class Terminated(KeyboardInterrupt):
    """SIGTERM (a scheduler's or `kill`'s stop), handled as Ctrl-C: the run ends KILLED."""


@contextlib.contextmanager
def _sigterm_interrupts():
    """While training in the main thread, SIGTERM raises `Terminated` instead of killing the
    process outright, so the MLflow run ends KILLED rather than RUNNING for ever."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def interrupt(signum, frame):
        raise Terminated(f"signal {signum}")

    previous = signal.signal(signal.SIGTERM, interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


RESULT_FILE = "result.json"  # beside a run's outputs: what it scored, for sweep summaries


def write_result(out_dir: Path, result: FitResult, seconds: float) -> None:
    """<run dir>/result.json: the run's headline numbers (read by the sweep summary); for a
    self-distillation chain, its last round's."""
    record = {
        "updates": result.updates,
        "best": result.best,
        "best_update": result.best_update,
        "stopped_early": result.stopped_early,
        "metrics": result.metrics,
        "objective": result.objective,
        "seconds": round(seconds, 1),  # this invocation's wall time (training and test)
        "train_seconds": result.train_seconds,  # training's, over all its invocations
    }
    (out_dir / RESULT_FILE).write_text(json.dumps(record, indent=1))


def read_result(out_dir: Path) -> dict | None:
    """What `write_result` wrote in `out_dir`, or None."""
    try:
        return json.loads((out_dir / RESULT_FILE).read_text())
    except (OSError, ValueError):
        return None
