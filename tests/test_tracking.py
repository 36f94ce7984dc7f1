"""MLflow tracking on the real stores: SQLite by default, a real `mlflow server` for outages."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from idistill.tracking import MlflowTracker, NullTracker, client, flatten, make_tracker


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_flatten_gives_dotted_param_names():
    assert flatten({"a": {"b": 1, "c": {"d": None}}, "e": [1, 2]}) == {
        "a.b": "1",
        "a.c.d": "None",
        "e": "[1, 2]",
    }


def test_sqlite_run_records_params_metrics_tags_and_status(tmp_path):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    tracker = MlflowTracker(uri, "synthetic", run_name="r1", tags={"task": "synthetic"})
    tracker.log_params({"method": {"k": 3, "alpha": 5.0}, **{f"p{i}": i for i in range(150)}})
    tracker.log_metrics({"train/loss": 2.5, "train/alpha": 0.1}, step=10)
    tracker.log_metrics({"train/loss": 2.0}, step=20)
    tracker.set_tags({"sacrebleu.signature": "nrefs:1|case:mixed"})
    artifact = tmp_path / "test.hyp"
    artifact.write_text("a hypothesis\n")
    tracker.log_artifact(artifact)
    tracker.finish("FINISHED")

    run = client(uri).get_run(tracker.run_id)
    assert run.info.status == "FINISHED"
    assert run.data.params["method.k"] == "3" and run.data.params["p149"] == "149"
    assert run.data.tags["task"] == "synthetic" and run.data.tags["mlflow.runName"] == "r1"
    history = client(uri).get_metric_history(tracker.run_id, "train/loss")
    assert [(m.step, m.value) for m in history] == [(10, 2.5), (20, 2.0)]
    assert [f.path for f in client(uri).list_artifacts(tracker.run_id)] == ["test.hyp"]


def test_resumed_tracker_continues_the_same_run(tmp_path):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    first = MlflowTracker(uri, "synthetic")
    first.finish("KILLED")
    again = MlflowTracker(uri, "synthetic", run_id=first.run_id)
    again.log_metrics({"train/loss": 1.0}, step=5)
    assert again.run_id == first.run_id
    assert client(uri).get_run(first.run_id).info.status == "RUNNING"


def test_none_backend_gives_the_null_tracker():
    tracker = make_tracker("none", None, "synthetic")
    assert isinstance(tracker, NullTracker)
    tracker.log_metrics({"x": 1.0}, step=1)  # accepts the same calls, does nothing


def _kill(proc: subprocess.Popen) -> None:
    # the server runs worker processes of its own: end the whole process group
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()


@pytest.fixture
def mlflow_server(tmp_path):
    port = _free_port()
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "mlflow",
            "server",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--backend-store-uri",
            f"sqlite:///{tmp_path / 'server.db'}",
            "--default-artifact-root",
            str(tmp_path / "artifacts"),
            "--workers",
            "1",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    deadline = time.time() + 60
    while time.time() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            break
        except OSError:
            time.sleep(0.3)
    else:
        _kill(proc)
        pytest.fail("mlflow server did not start within 60 s")
    yield f"http://127.0.0.1:{port}", proc
    _kill(proc)


def test_tracking_outage_is_logged_and_training_goes_on(mlflow_server, caplog, monkeypatch):
    uri, proc = mlflow_server
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    tracker = MlflowTracker(uri, "synthetic")
    tracker.log_metrics({"train/loss": 3.0}, step=1)
    _kill(proc)
    tracker.log_metrics({"train/loss": 2.0}, step=2)  # must not raise
    tracker.finish("FINISHED")
    assert "MLflow log_metrics failed" in caplog.text


def test_unreachable_server_at_start_runs_untracked(monkeypatch):
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    tracker = make_tracker("mlflow", f"http://127.0.0.1:{_free_port()}", "synthetic")
    assert isinstance(tracker, NullTracker)


def test_git_commit_tag_is_set_in_a_checkout(tmp_path):
    tracker = MlflowTracker(f"sqlite:///{tmp_path / 'm.db'}", "synthetic")
    tags = client(f"sqlite:///{tmp_path / 'm.db'}").get_run(tracker.run_id).data.tags
    if (Path(__file__).resolve().parents[1] / ".git").exists():
        assert len(tags["mlflow.source.git.commit"]) == 40
