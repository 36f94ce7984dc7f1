"""Run tracking: MLflow, or nothing. A tracking failure is logged and never stops training."""

from __future__ import annotations

import logging
import os
import subprocess
import time
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

PARENT_RUN_FILE = "mlflow_parent_run_id"  # in a sweep's directory: the sweep's parent run


class NullTracker:
    """Tracks nothing; the loop calls it like a real tracker and never asks whether one is on."""

    run_id: str | None = None

    def log_params(self, params: dict[str, Any]) -> None:
        pass

    def log_metrics(self, metrics: dict[str, float], step: int) -> None:
        pass

    def set_tags(self, tags: dict[str, str]) -> None:
        pass

    def log_artifact(self, path: Path, artifact_path: str | None = None) -> None:
        pass

    def log_artifacts(self, path: Path, artifact_path: str | None = None) -> None:
        pass

    def finish(self, status: str = "FINISHED") -> None:
        pass


def _quiet_http_retries() -> None:
    # MLflow's HTTP client retries for minutes by default; a dead server must not stall training.
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "2")
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR", "1")
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "20")


def client(uri: str):
    """An MlflowClient for `uri` (imported lazily: `import mlflow` costs over a second)."""
    _quiet_http_retries()
    from mlflow.tracking import MlflowClient

    return MlflowClient(tracking_uri=uri)


def ensure_experiment(mlflow_client, name: str) -> str:
    """The id of experiment `name`, created if missing (also creates a fresh SQLite store)."""
    exp = mlflow_client.get_experiment_by_name(name)
    if exp is not None:
        return exp.experiment_id
    try:
        return mlflow_client.create_experiment(name)
    except Exception:  # another process created it first
        return mlflow_client.get_experiment_by_name(name).experiment_id


def git_commit() -> str | None:
    """The commit of the idistill source tree, when it is a git checkout."""
    src = Path(__file__).resolve().parent.parent
    try:
        out = subprocess.run(
            ["git", "-C", str(src), "rev-parse", "HEAD"],
            capture_output=True,
            text=True,
            timeout=5,
            check=True,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None


def flatten(d: dict[str, Any], prefix: str = "") -> dict[str, str]:
    """{"a": {"b": 1}} -> {"a.b": "1"}: the resolved config as MLflow params."""
    out: dict[str, str] = {}
    for key, value in d.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            out.update(flatten(value, name + "."))
        else:
            out[name] = str(value)[:6000]  # MLflow's limit on a param value
    return out


class MlflowTracker:
    """One MLflow run, driven through MlflowClient (no global state shared by sweep jobs)."""

    def __init__(
        self,
        uri: str,
        experiment: str,
        run_name: str | None = None,
        parent_run_id: str | None = None,
        run_id: str | None = None,
        tags: dict[str, str] | None = None,
    ):
        """Start a new run (child of `parent_run_id` if given), or reopen `run_id` to resume."""
        self.uri = uri
        self.client = client(uri)
        if run_id is not None:
            self.client.update_run(run_id, status="RUNNING")
            self.run_id = run_id
            return
        all_tags = dict(tags or {})
        if run_name:
            all_tags["mlflow.runName"] = run_name
        if parent_run_id:
            all_tags["mlflow.parentRunId"] = parent_run_id
        commit = git_commit()
        if commit:
            all_tags["mlflow.source.git.commit"] = commit
        exp_id = ensure_experiment(self.client, experiment)
        self.run_id = self.client.create_run(exp_id, tags=all_tags, run_name=run_name).info.run_id

    def _safe(self, what: str, fn, *args, **kwargs) -> None:
        try:
            fn(*args, **kwargs)
        except Exception as e:  # tracking must never stop training
            log.warning("MLflow %s failed (%s: %s); training goes on", what, type(e).__name__, e)

    def log_params(self, params: dict[str, Any]) -> None:
        from mlflow.entities import Param

        items = [Param(k, v) for k, v in flatten(params).items()]
        for i in range(0, len(items), 100):  # MLflow takes at most 100 params a batch
            self._safe("log_params", self.client.log_batch, self.run_id, params=items[i : i + 100])

    def log_metrics(self, metrics: dict[str, float], step: int) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        items = [Metric(k, float(v), now, step) for k, v in metrics.items()]
        self._safe("log_metrics", self.client.log_batch, self.run_id, metrics=items)

    def set_tags(self, tags: dict[str, str]) -> None:
        from mlflow.entities import RunTag

        items = [RunTag(k, str(v)) for k, v in tags.items()]
        self._safe("set_tags", self.client.log_batch, self.run_id, tags=items)

    def log_artifact(self, path: Path, artifact_path: str | None = None) -> None:
        self._safe("log_artifact", self.client.log_artifact, self.run_id, str(path), artifact_path)

    def log_artifacts(self, path: Path, artifact_path: str | None = None) -> None:
        self._safe(
            "log_artifacts", self.client.log_artifacts, self.run_id, str(path), artifact_path
        )

    def finish(self, status: str = "FINISHED") -> None:
        """End the run as FINISHED, FAILED or KILLED."""
        self._safe("set_terminated", self.client.set_terminated, self.run_id, status)


def make_tracker(backend: str, uri: str | None, experiment: str, **kwargs) -> Any:
    """MlflowTracker for backend "mlflow"; NullTracker for "none" or when MLflow is unreachable."""
    if backend == "none":
        return NullTracker()
    try:
        return MlflowTracker(uri, experiment, **kwargs)
    except Exception as e:
        log.warning(
            "MLflow at %s unavailable (%s: %s); this run is not tracked", uri, type(e).__name__, e
        )
        return NullTracker()
