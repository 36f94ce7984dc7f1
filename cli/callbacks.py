"""Hydra callbacks: a -m sweep is one MLflow parent run with a child run per job."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from hydra.core.utils import JobReturn, JobStatus
from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf

log = logging.getLogger(__name__)

SUMMARY_FILE = "sweep_summary.txt"  # in a sweep's folder and its parent run: what each job scored


def _experiment_name(config: DictConfig) -> str:
    if config.tracking.get("experiment"):
        return config.tracking.experiment
    lang = config.get("lang")
    return f"{config.task.name}-{lang}" if lang else config.task.name


class SweepTracking(Callback):
    """Creates the store, the experiment and the parent run once, before any job starts
    (parallel jobs racing to migrate a fresh SQLite file fail), and ends the parent run."""

    def __init__(self) -> None:
        self.client: Any = None
        self.parent: str | None = None
        self.failed = False

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        from idistill.tracking import PARENT_RUN_FILE, client, ensure_experiment

        if config.tracking.backend != "mlflow":
            return
        sweep_dir = Path(config.hydra.sweep.dir)
        try:
            self.client = client(config.tracking.uri)
            exp_id = ensure_experiment(self.client, _experiment_name(config))
            run = self.client.create_run(
                exp_id,
                run_name=f"sweep {sweep_dir.name}",
                tags={"sweep_dir": str(sweep_dir.resolve())},
            )
        except Exception as e:
            log.warning("MLflow unavailable for the sweep's parent run (%s); jobs still run", e)
            return
        self.parent = run.info.run_id
        sweep_dir.mkdir(parents=True, exist_ok=True)
        (sweep_dir / PARENT_RUN_FILE).write_text(self.parent)
        self.client.log_param(
            self.parent, "overrides", " ".join(config.hydra.overrides.task)[:6000]
        )

    def on_job_end(self, config: DictConfig, job_return: JobReturn, **kwargs: Any) -> None:
        if job_return.status == JobStatus.FAILED and self.parent and not self.failed:
            # Hydra stops the sweep without calling on_multirun_end: end the parent now.
            self.failed = True
            self._terminate("FAILED")

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        summarize(Path(config.hydra.sweep.dir), self.parent, self.client)
        if self.parent and not self.failed:
            self._terminate("FINISHED")

    def _terminate(self, status: str) -> None:
        try:
            self.client.set_terminated(self.parent, status)
        except Exception as e:
            log.warning("could not end the sweep's parent run %s (%s)", self.parent, e)


def summarize(sweep_dir: Path, parent: str | None, mlflow_client=None) -> None:
    """Print what each job of the sweep scored (read from the jobs' folders, so it works with
    every launcher), the sweep's folder and parent run, and how to make a report of it; the
    parent run gets the table (`sweep_summary.txt`) and the metrics of its best job."""
    from idistill.runs import read_result
    from idistill.sweeps import best_job, summary_table

    jobs = []
    for folder in sorted(sweep_dir.iterdir(), key=lambda p: (len(p.name), p.name)):
        overrides_file = folder / ".hydra" / "overrides.yaml"
        if folder.is_dir() and overrides_file.is_file():
            jobs.append((OmegaConf.load(overrides_file), read_result(folder)))
    if not jobs:
        return
    common = set(jobs[0][0]).intersection(*(set(o) for o, _ in jobs[1:]))
    labels = [" ".join(o for o in overrides if o not in common) or "(all)" for overrides, _ in jobs]
    table = summary_table([(label, r) for label, (_, r) in zip(labels, jobs, strict=True)])
    lines = ["", table, "", f"sweep folder: {sweep_dir}"]
    if parent:
        lines.append(f"MLflow parent run: {parent} (make ui)")
    lines.append(f"report: idistill-report plot=loss runs={sweep_dir}")
    print("\n".join(lines), flush=True)
    if parent and mlflow_client is not None:
        best = best_job([r for _, r in jobs])
        _log_summary(mlflow_client, parent, sweep_dir, table, labels, best)


def _log_summary(mlflow_client, parent: str, sweep_dir: Path, table, labels, best) -> None:
    """The sweep's table as an artifact of its parent run, and its best job's metrics."""
    try:
        (sweep_dir / SUMMARY_FILE).write_text(table + "\n")
        mlflow_client.log_artifact(parent, str(sweep_dir / SUMMARY_FILE))
        if best is not None:
            index, result = best
            for name, value in result["metrics"].items():
                mlflow_client.log_metric(parent, f"best_job/{name}", value)
            mlflow_client.set_tag(parent, "best_job", labels[index])
    except Exception as e:  # the summary is printed already; tracking must not fail the sweep
        log.warning("could not log the sweep summary to MLflow run %s (%s)", parent, e)
