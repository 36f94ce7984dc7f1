"""Run tracking that never stalls training. A tracked run writes every call first to its journal
(`tracking.jsonl` in its checkpoint folder) and a background thread delivers the journal to
MLflow in order. When MLflow fails (a dead or hung server, a locked SQLite file) the thread
stops trying for a while (a circuit breaker) and delivers what waited once MLflow answers again;
what is still undelivered when the run ends stays in the journal for `idistill-sync <run dir>`.
A resumed run continues its journal: its MLflow run, and no metric point logged twice."""

from __future__ import annotations

import fcntl
import json
import logging
import os
import subprocess
import threading
import time
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

PARENT_RUN_FILE = "mlflow_parent_run_id"  # in a sweep's directory: the sweep's parent run
JOURNAL, DELIVERED = "tracking.jsonl", "tracking.delivered.json"
FLUSH_S = 30.0  # at the end of a run, how long undelivered events may take to go out
RETRY_S = (15.0, 300.0)  # circuit breaker: first wait after a failure, longest wait


class NullTracker:
    """Tracks nothing; the loop calls it like a real tracker and never asks whether one is on."""

    run_id: str | None = None

    def log_params(self, params: dict[str, Any]) -> None:
        pass

    def history(self, metric: str) -> list[tuple[int, float]]:
        return []

    def log_metrics(self, metrics: dict[str, float], step: int, again: bool = False) -> None:
        pass

    def set_tags(self, tags: dict[str, str]) -> None:
        pass

    def log_artifact(self, path: Path, artifact_path: str | None = None) -> None:
        pass

    def log_artifacts(self, path: Path, artifact_path: str | None = None) -> None:
        pass

    def finish(self, status: str = "FINISHED") -> None:
        pass


def _short_http_timeouts() -> None:
    # MLflow's HTTP client retries for minutes by default; the journal and the circuit breaker
    # retry instead, so one call gives up after a few seconds.
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "5")


_prepared: set[str] = set()  # SQLite stores this process has opened once under the lock


def client(uri: str):
    """An MlflowClient for `uri` (imported lazily: `import mlflow` costs over a second). The
    first client of a SQLite store in a process opens it under a file lock beside it: two
    processes that open a fresh store at once otherwise race on MLflow's schema migration."""
    _short_http_timeouts()
    from mlflow.tracking import MlflowClient

    if not uri.startswith("sqlite:///") or uri in _prepared:
        return MlflowClient(tracking_uri=uri)
    db = Path(uri.removeprefix("sqlite:///"))
    db.parent.mkdir(parents=True, exist_ok=True)
    with open(db.with_name(db.name + ".lock"), "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file closes
        mlflow_client = MlflowClient(tracking_uri=uri)
        mlflow_client.search_experiments(max_results=1)  # creates or migrates the store
    _prepared.add(uri)
    return mlflow_client


# the MLflow UI (3.x) shows an experiment of this kind as model training (runs table, charts),
# not as a GenAI app (traces), which is what it assumes of an experiment without the tag
KIND_TAG, TRAINING_KIND = "mlflow.experimentKind", "custom_model_development"


def ensure_experiment(mlflow_client, name: str) -> str:
    """The id of experiment `name`, created if missing, tagged as model training."""
    exp = mlflow_client.get_experiment_by_name(name)
    if exp is None:
        try:
            return mlflow_client.create_experiment(name, tags={KIND_TAG: TRAINING_KIND})
        except Exception:  # another process created it first (else: that error)
            exp = mlflow_client.get_experiment_by_name(name)
            if exp is None:
                raise
    if KIND_TAG not in exp.tags:  # made by an earlier idistill (a user's own choice is kept)
        try:
            mlflow_client.set_experiment_tag(exp.experiment_id, KIND_TAG, TRAINING_KIND)
        except Exception as e:  # a tag for the UI is never worth a run's tracking
            log.debug("experiment %s not tagged as model training: %s", name, e)
    return exp.experiment_id


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


class Journal:
    """A run's tracking calls, one JSON event a line, and how many of them MLflow has (with the
    run's id once MLflow gave one). Without a folder it lives in memory only."""

    def __init__(self, folder: Path | None):
        self.path = folder / JOURNAL if folder else None
        self.delivered_path = folder / DELIVERED if folder else None
        self.torn = False
        self.events: list[dict] = self._read()
        state = self._read_delivered()
        self.run_id: str | None = state.get("run_id")
        self.delivered: int = min(state.get("delivered", 0), len(self.events))

    def _read(self) -> list[dict]:
        if self.path is None or not self.path.is_file():
            return []
        text = self.path.read_text()
        self.torn = bool(text) and not text.endswith("\n")  # killed while writing a line
        events = []
        for line in text.splitlines():
            try:
                events.append(json.loads(line))
            except ValueError:  # the torn last line of a killed run
                continue
        return events

    def _read_delivered(self) -> dict:
        try:
            return json.loads(self.delivered_path.read_text()) if self.delivered_path else {}
        except (OSError, ValueError):
            return {}

    def append(self, event: dict) -> None:
        self.events.append(event)
        if self.path is None:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.path, "a") as f:
            f.write(("\n" if self.torn else "") + json.dumps(event) + "\n")
        self.torn = False

    def mark_delivered(self, count: int, run_id: str | None) -> None:
        self.delivered, self.run_id = count, run_id
        if self.delivered_path is None:
            return
        tmp = self.delivered_path.with_suffix(".tmp")
        tmp.write_text(json.dumps({"run_id": run_id, "delivered": count}))
        os.replace(tmp, self.delivered_path)

    def logged_steps(self) -> dict[str, int]:
        """The highest step journaled for each metric."""
        steps: dict[str, int] = {}
        for e in self.events:
            if e["op"] == "metrics":
                for key in e["metrics"]:
                    steps[key] = max(steps.get(key, e["step"]), e["step"])
        return steps


METRICS_PER_BATCH = 1000  # MLflow's limit on the metrics of one log_batch


def batch(events: list[dict], start: int) -> list[dict]:
    """The events to send in one call from `start`: a run of metric events (one log_batch,
    so a replay of a long run takes few calls), or the one event there."""
    end, count = start, 0
    while end < len(events) and events[end]["op"] == "metrics":
        count += len(events[end]["metrics"])
        if count > METRICS_PER_BATCH and end > start:
            break
        end += 1
    return events[start : max(end, start + 1)]


def deliver(mlflow_client, run_id: str | None, events: list[dict]) -> str | None:
    """Send a `batch` of journal events to MLflow; returns the run's id (new after a
    "start")."""
    from mlflow.entities import Metric, Param, RunTag

    event, op = events[0], events[0]["op"]
    if op == "start":
        exp_id = ensure_experiment(mlflow_client, event["experiment"])
        tags, name = event["tags"], event["tags"].get("mlflow.runName")
        return mlflow_client.create_run(exp_id, tags=tags, run_name=name).info.run_id
    if run_id is None:
        raise RuntimeError(f"journal event {op!r} before the run was created")
    if op == "reopen":
        mlflow_client.update_run(run_id, status="RUNNING")
    elif op == "params":
        items = [Param(k, v) for k, v in event["params"].items()]
        for i in range(0, len(items), 100):  # MLflow takes at most 100 params a batch
            mlflow_client.log_batch(run_id, params=items[i : i + 100])
    elif op == "metrics":
        ms = [Metric(k, v, e["time"], e["step"]) for e in events for k, v in e["metrics"].items()]
        mlflow_client.log_batch(run_id, metrics=ms)
    elif op == "tags":
        mlflow_client.log_batch(run_id, tags=[RunTag(k, v) for k, v in event["tags"].items()])
    elif op == "artifact":
        mlflow_client.log_artifact(run_id, event["path"], event["artifact_path"])
    elif op == "artifacts":
        mlflow_client.log_artifacts(run_id, event["path"], event["artifact_path"])
    elif op == "finish":
        mlflow_client.set_terminated(run_id, event["status"])
    else:
        raise ValueError(f"unknown journal event {op!r}")
    return run_id


def deliver_journal(mlflow_client, j: Journal) -> int:
    """Send the journal's undelivered events in order, marking each delivered; an event MLflow
    refuses is skipped with a warning. Returns how many were sent; raises when MLflow does not
    answer (the rest waits)."""
    before = j.delivered
    while j.delivered < len(j.events):
        events, run_id = batch(j.events, j.delivered), j.run_id
        try:
            run_id = deliver(mlflow_client, run_id, events)
        except Exception as e:
            if not rejected(e):
                raise
            log.warning(
                "MLflow refused %d %s event(s) (%s); skipped", len(events), events[0]["op"], e
            )
        j.mark_delivered(j.delivered + len(events), run_id)
    return j.delivered - before


REFUSALS = {"INVALID_PARAMETER_VALUE", "RESOURCE_ALREADY_EXISTS", "RESOURCE_DOES_NOT_EXIST"}


def rejected(e: Exception) -> bool:
    """Whether MLflow answered and refused the event (trying again would fail again: skip it),
    rather than not answering (try again later). A missing artifact file is a refusal too."""
    return isinstance(e, FileNotFoundError) or getattr(e, "error_code", None) in REFUSALS


class _Delivery(threading.Thread):
    """Delivers a journal's undelivered events in order; after a failure it waits before trying
    again (15 s, doubling up to 5 min), so a dead server costs training nothing."""

    def __init__(self, uri: str, journal: Journal):
        super().__init__(name="mlflow-delivery", daemon=True)
        self.uri, self.journal = uri, journal
        self.wake = threading.Condition()
        self.closing = False
        self.failures = 0

    def notify(self) -> None:
        with self.wake:
            self.wake.notify()

    def pending(self) -> int:
        return len(self.journal.events) - self.journal.delivered

    def run(self) -> None:
        mlflow_client = None
        while True:
            with self.wake:
                while not self.pending() and not self.closing:
                    self.wake.wait()
                if not self.pending():
                    return
            try:
                mlflow_client = mlflow_client or client(self.uri)
                self._deliver_pending(mlflow_client)
            except Exception as e:
                if not self._back_off(e):
                    return

    def _deliver_pending(self, mlflow_client) -> None:
        deliver_journal(mlflow_client, self.journal)
        if self.failures:
            log.info("MLflow at %s answers again: the run's journal is delivered", self.uri)
            self.failures = 0

    def _back_off(self, e: Exception) -> bool:
        """Log the failure and wait; False when the run has ended (what is left is for
        idistill-sync)."""
        wait = min(RETRY_S[0] * 2**self.failures, RETRY_S[1])
        self.failures += 1
        with self.wake:
            if self.closing:
                return False
            log.warning(
                "MLflow at %s failed (%s: %s); training goes on, %d events wait in the "
                "journal (next try in %.0f s)",
                self.uri,
                type(e).__name__,
                str(e).splitlines()[0][:200] if str(e) else "",
                self.pending(),
                wait,
            )
            deadline = time.monotonic() + wait  # new events do not cut the wait short;
            while not self.closing and time.monotonic() < deadline:  # drain() does, for a
                self.wake.wait(deadline - time.monotonic())  # last try
            return True

    def drain(self, timeout: float) -> bool:
        """Stop after delivering what is pending, waiting at most `timeout` seconds; True when
        everything was delivered."""
        with self.wake:
            self.closing = True
            self.wake.notify()
        self.join(timeout)
        return not self.pending()


class MlflowTracker:
    """One MLflow run, fed through its journal by a background thread (no global MLflow state
    shared by sweep jobs). `journal_dir`: where the journal lives (the run's checkpoint folder);
    None keeps it in memory (short jobs such as a report)."""

    def __init__(
        self,
        uri: str,
        experiment: str,
        run_name: str | None = None,
        parent_run_id: str | None = None,
        run_id: str | None = None,
        tags: dict[str, str] | None = None,
        journal_dir: Path | None = None,
        resuming: bool = False,
    ):
        """Start a new run (child of `parent_run_id` if given); to resume, continue the run of
        the journal in `journal_dir`, or reopen `run_id`."""
        self.uri = uri
        if not (resuming or run_id) and journal_dir and (journal_dir / JOURNAL).is_file():
            set_aside(journal_dir)  # a new run in an old run's folder
        self.journal = Journal(journal_dir)
        self.logged_steps = self.journal.logged_steps()  # a resumed run skips what it logged
        if self.journal.events or run_id is not None:
            if not self.journal.events:  # a run journaled nowhere (made by an older idistill)
                self.journal.mark_delivered(0, run_id)
            self.journal.append({"op": "reopen"})
        else:
            all_tags = dict(tags or {})
            if run_name:
                all_tags["mlflow.runName"] = run_name
            if parent_run_id:
                all_tags["mlflow.parentRunId"] = parent_run_id
            commit = git_commit()
            if commit:
                all_tags["mlflow.source.git.commit"] = commit
            self.journal.append({"op": "start", "experiment": experiment, "tags": all_tags})
        self.delivery = _Delivery(uri, self.journal)
        self.delivery.start()  # training does not wait for MLflow, not even for its run id

    @property
    def run_id(self) -> str | None:
        """The MLflow run's id; None until MLflow has answered once."""
        return self.journal.run_id

    def _record(self, event: dict) -> None:
        try:
            self.journal.append(event)
        except OSError as e:  # a full disk must not stop training either
            log.warning("tracking journal not written (%s); training goes on", e)
            return
        self.delivery.notify()

    def log_params(self, params: dict[str, Any]) -> None:
        self._record({"op": "params", "params": flatten(params)})

    def history(self, metric: str) -> list[tuple[int, float]]:
        """(step, value) of every point of `metric` this run journaled (also before a resume)."""
        return [
            (e["step"], e["metrics"][metric])
            for e in self.journal.events
            if e["op"] == "metrics" and metric in e["metrics"]
        ]

    def log_metrics(self, metrics: dict[str, float], step: int, again: bool = False) -> None:
        """After a resume, the points up to where the killed run had logged are kept and the
        retrained ones skipped; `again`: a new measurement (a finished run tested again, whose
        hypotheses replace the earlier ones) is logged even at a step logged before."""
        new = {
            k: float(v) for k, v in metrics.items() if again or self.logged_steps.get(k, -1) < step
        }
        if new:
            self._record({"op": "metrics", "metrics": new, "step": step, "time": _now_ms()})

    def set_tags(self, tags: dict[str, str]) -> None:
        self._record({"op": "tags", "tags": {k: str(v) for k, v in tags.items()}})

    def log_artifact(self, path: Path, artifact_path: str | None = None) -> None:
        self._record(
            {"op": "artifact", "path": str(Path(path).resolve()), "artifact_path": artifact_path}
        )

    def log_artifacts(self, path: Path, artifact_path: str | None = None) -> None:
        self._record(
            {"op": "artifacts", "path": str(Path(path).resolve()), "artifact_path": artifact_path}
        )

    def finish(self, status: str = "FINISHED") -> None:
        """End the run as FINISHED, FAILED or KILLED, after delivering what waits (at most
        FLUSH_S seconds, 5 when killed; what is left stays in the journal for idistill-sync)."""
        self._record({"op": "finish", "status": status})
        if not self.delivery.drain(min(5.0, FLUSH_S) if status == "KILLED" else FLUSH_S):
            where = self.journal.path.parent if self.journal.path else "memory"
            log.warning(
                "MLflow at %s did not take %d tracking events; they are in %s: "
                "`idistill-sync %s` delivers them",
                self.uri,
                self.delivery.pending(),
                where,
                where,
            )


def set_aside(folder: Path) -> None:
    """Move the journal in `folder` out of the way of a new run's, into a subfolder where
    idistill-sync still finds it."""
    keep = folder / f"replaced-{time.strftime('%Y%m%d-%H%M%S')}"
    keep.mkdir()
    for name in (JOURNAL, DELIVERED):
        if (folder / name).is_file():
            os.replace(folder / name, keep / name)
    log.warning("%s held another run's tracking journal: moved to %s", folder, keep)


def _now_ms() -> int:
    return int(time.time() * 1000)


def sync(folder: Path, uri: str) -> tuple[int, str | None]:
    """Deliver the undelivered events of the journal in `folder` to MLflow at `uri`; returns
    (how many were delivered, the run's id). Raises what MLflow raises."""
    journal = Journal(folder)
    if not journal.events:
        raise FileNotFoundError(f"{folder}: no {JOURNAL} there")
    return deliver_journal(client(uri), journal), journal.run_id


def journals(path: Path) -> list[Path]:
    """The folders holding a tracking journal at or under `path` (a run directory, a sweep, a
    checkpoint folder)."""
    return sorted({j.parent for j in Path(path).rglob(JOURNAL)})


def make_tracker(backend: str, uri: str | None, experiment: str, **kwargs) -> Any:
    """MlflowTracker for backend "mlflow"; NullTracker for "none"."""
    if backend == "none":
        return NullTracker()
    return MlflowTracker(uri, experiment, **kwargs)
