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

from idistill import tracking
from idistill.cli.sync import main as sync_main
from idistill.tracking import MlflowTracker, NullTracker, client, flatten, journals, make_tracker


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
    again.finish("FINISHED")
    assert again.run_id == first.run_id
    assert client(uri).get_run(first.run_id).data.metrics["train/loss"] == 1.0
    assert len(client(uri).search_runs([client(uri).get_run(first.run_id).info.experiment_id])) == 1


def test_a_resumed_run_logs_each_metric_point_once(tmp_path):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    first = MlflowTracker(uri, "synthetic", journal_dir=tmp_path / "ckpt")
    for step in range(1, 6):  # killed after step 5; its checkpoint was at step 2
        first.log_metrics({"train/loss": 10.0 - step}, step=step)
    first.delivery.drain(10)  # (a kill -9 would leave them to the journal alone)
    again = MlflowTracker(uri, "synthetic", journal_dir=tmp_path / "ckpt", resuming=True)
    for step in range(3, 8):  # the resumed run retrains from step 3
        again.log_metrics({"train/loss": 10.0 - step, "train/new": 1.0}, step=step)
    again.finish()
    history = client(uri).get_metric_history(first.run_id, "train/loss")
    assert sorted(m.step for m in history) == [1, 2, 3, 4, 5, 6, 7]
    assert len(client(uri).get_metric_history(first.run_id, "train/new")) == 5
    assert again.run_id == first.run_id


def test_a_measurement_taken_again_is_logged_at_a_step_logged_before(tmp_path):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    first = MlflowTracker(uri, "synthetic", journal_dir=tmp_path / "ckpt")
    first.log_metrics({"test/bleu": 30.0}, step=8)
    first.finish()
    again = MlflowTracker(uri, "synthetic", journal_dir=tmp_path / "ckpt", resuming=True)
    again.log_metrics({"test/bleu": 31.0}, step=8)  # a replayed point: skipped
    again.log_metrics({"test/bleu": 32.0}, step=8, again=True)  # the checkpoint tested anew
    again.finish()
    history = client(uri).get_metric_history(first.run_id, "test/bleu")
    assert [(m.step, m.value) for m in history] == [(8, 30.0), (8, 32.0)]
    assert client(uri).get_run(first.run_id).data.metrics["test/bleu"] == 32.0


def test_a_new_run_in_an_old_runs_folder_gets_its_own_mlflow_run(tmp_path):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    first = MlflowTracker(uri, "synthetic", journal_dir=tmp_path / "ckpt")
    first.finish()
    second = MlflowTracker(uri, "synthetic", journal_dir=tmp_path / "ckpt")
    second.finish()
    assert second.run_id != first.run_id
    assert journals(tmp_path) == [tmp_path / "ckpt", *(tmp_path / "ckpt").glob("replaced-*")]


def test_none_backend_gives_the_null_tracker():
    tracker = make_tracker("none", None, "synthetic")
    assert isinstance(tracker, NullTracker)
    tracker.log_metrics({"x": 1.0}, step=1)  # accepts the same calls, does nothing


def _kill(proc: subprocess.Popen) -> None:
    # the server runs worker processes of its own: end the whole process group
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()


def _mlflow_server(tmp_path: Path, port: int) -> subprocess.Popen:
    """A real `mlflow server` on 127.0.0.1:port over a SQLite store in tmp_path."""
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
            return proc
        except OSError:
            time.sleep(0.3)
    _kill(proc)
    pytest.fail("mlflow server did not start within 60 s")


@pytest.fixture
def quick_retries(monkeypatch):
    """A circuit breaker that tries again within a second, and short final flushes."""
    monkeypatch.setattr(tracking, "RETRY_S", (0.2, 1.0))
    monkeypatch.setattr(tracking, "FLUSH_S", 5.0)


def _wait_until(condition, seconds: float = 30) -> bool:
    deadline = time.time() + seconds
    while time.time() < deadline:
        if condition():
            return True
        time.sleep(0.1)
    return False


def test_a_server_outage_costs_nothing_and_mlflow_gets_everything_when_it_returns(
    tmp_path, quick_retries, caplog
):
    port = _free_port()
    server = _mlflow_server(tmp_path, port)
    uri = f"http://127.0.0.1:{port}"
    tracker = MlflowTracker(uri, "synthetic", journal_dir=tmp_path / "ckpt")
    tracker.log_metrics({"train/loss": 3.0}, step=1)
    assert _wait_until(lambda: tracker.delivery.pending() == 0)
    _kill(server)
    started = time.perf_counter()
    for step in range(2, 52):
        tracker.log_metrics({"train/loss": 3.0 - step / 100}, step=step)
    assert time.perf_counter() - started < 2.0  # not 50 HTTP timeouts
    for step in range(52, 72):  # points logged while the breaker is open do not cut its wait
        tracker.log_metrics({"train/loss": 2.0}, step=step)
        time.sleep(0.05)
    assert tracker.delivery.failures < 10  # waits of 0.2, 0.4, 0.8 s: not a try per point
    assert _wait_until(lambda: "failed" in caplog.text)
    server = _mlflow_server(tmp_path, port)  # back, with the same store
    try:
        tracker.finish("FINISHED")
        history = client(uri).get_metric_history(tracker.run_id, "train/loss")
        assert sorted(m.step for m in history) == list(range(1, 72))
        assert client(uri).get_run(tracker.run_id).info.status == "FINISHED"
    finally:
        _kill(server)


def test_a_hung_server_does_not_stall_training(tmp_path, quick_retries):
    with socket.socket() as hung:  # accepts connections, never answers
        hung.bind(("127.0.0.1", 0))
        hung.listen(64)
        uri = f"http://127.0.0.1:{hung.getsockname()[1]}"
        started = time.perf_counter()
        tracker = MlflowTracker(uri, "synthetic", journal_dir=tmp_path / "ckpt")
        for step in range(100):
            tracker.log_metrics({"train/loss": 1.0}, step=step)
        tracker.finish("FINISHED")
        # the old tracker blocked ~63 s a call; now: nothing until one final try
        assert time.perf_counter() - started < tracking.FLUSH_S + 3
    assert tracker.run_id is None
    assert len(tracking.Journal(tmp_path / "ckpt").events) == 102  # start, 100 points, finish


def test_idistill_sync_delivers_a_run_journaled_while_mlflow_was_down(tmp_path, quick_retries):
    port = _free_port()
    uri = f"http://127.0.0.1:{port}"
    tracker = MlflowTracker(uri, "synthetic", run_name="offline", journal_dir=tmp_path / "run")
    tracker.log_params({"method": {"k": 3}})
    tracker.log_metrics({"train/loss": 2.0}, step=10)
    (tmp_path / "test.hyp").write_text("a hypothesis\n")
    tracker.log_artifact(tmp_path / "test.hyp")
    tracker.finish("FINISHED")
    assert tracker.run_id is None  # nothing reached a server
    server = _mlflow_server(tmp_path, port)
    try:
        assert sync_main([str(tmp_path), "--uri", uri]) == 0
        assert sync_main([str(tmp_path), "--uri", uri]) == 0  # a second sync sends nothing new
        (run,) = client(uri).search_runs(
            [client(uri).get_experiment_by_name("synthetic").experiment_id]
        )
        assert run.info.status == "FINISHED" and run.data.tags["mlflow.runName"] == "offline"
        assert run.data.params["method.k"] == "3"
        assert len(client(uri).get_metric_history(run.info.run_id, "train/loss")) == 1
        assert [f.path for f in client(uri).list_artifacts(run.info.run_id)] == ["test.hyp"]
    finally:
        _kill(server)


def test_a_torn_journal_line_is_skipped_and_the_journal_goes_on(tmp_path):
    journal = tracking.Journal(tmp_path)
    journal.append({"op": "metrics", "metrics": {"a": 1.0}, "step": 1, "time": 0})
    with open(tmp_path / tracking.JOURNAL, "a") as f:
        f.write('{"op": "metr')  # killed mid-write
    again = tracking.Journal(tmp_path)
    again.append({"op": "metrics", "metrics": {"a": 2.0}, "step": 2, "time": 0})
    assert [e["step"] for e in tracking.Journal(tmp_path).events] == [1, 2]


RACE = """
import sys
from idistill.tracking import client, ensure_experiment
c = client(sys.argv[1])
print(ensure_experiment(c, "race"))
"""


def test_two_processes_opening_a_fresh_sqlite_store_at_once_both_succeed(tmp_path):
    uri = f"sqlite:///{tmp_path / 'fresh.db'}"
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", RACE, uri], stdout=subprocess.PIPE, stderr=subprocess.PIPE
        )
        for _ in range(2)
    ]
    outs = [p.communicate(timeout=120) for p in procs]
    for p, (_, err) in zip(procs, outs, strict=True):
        assert p.returncode == 0, err.decode()[-2000:]
    assert outs[0][0] == outs[1][0]  # one experiment, the same id for both


def test_git_commit_tag_is_set_in_a_checkout(tmp_path):
    tracker = MlflowTracker(f"sqlite:///{tmp_path / 'm.db'}", "synthetic")
    tracker.finish()
    tags = client(f"sqlite:///{tmp_path / 'm.db'}").get_run(tracker.run_id).data.tags
    if (Path(__file__).resolve().parents[1] / ".git").exists():
        assert len(tags["mlflow.source.git.commit"]) == 40


def test_consecutive_metric_events_go_out_in_batches_of_at_most_1000_metrics():
    def metrics(n):
        return {"op": "metrics", "metrics": {f"m{i}": 1.0 for i in range(n)}, "step": 1, "time": 0}

    events = [metrics(400), metrics(400), metrics(400), {"op": "tags", "tags": {}}, metrics(1)]
    assert len(tracking.batch(events, 0)) == 2  # 800 metrics; a third event would pass 1000
    assert len(tracking.batch(events, 2)) == 1  # then the third alone
    assert tracking.batch(events, 3) == [events[3]]  # other events go one at a time
    assert tracking.batch([metrics(1500)], 0) == [metrics(1500)]  # never an empty batch


def test_experiments_are_tagged_as_model_training_for_the_mlflow_ui(tmp_path):
    uri = f"sqlite:///{tmp_path / 'm.db'}"
    c = client(uri)
    kind = tracking.KIND_TAG
    assert (
        c.get_experiment(tracking.ensure_experiment(c, "new")).tags[kind] == tracking.TRAINING_KIND
    )
    old = c.create_experiment("made-by-an-earlier-idistill")  # no tag: the UI shows GenAI
    assert tracking.ensure_experiment(c, "made-by-an-earlier-idistill") == old
    assert c.get_experiment(old).tags[kind] == tracking.TRAINING_KIND
    chosen = c.create_experiment("chosen", tags={kind: "genai_development"})
    tracking.ensure_experiment(c, "chosen")
    assert c.get_experiment(chosen).tags[kind] == "genai_development"  # the user's choice stays
