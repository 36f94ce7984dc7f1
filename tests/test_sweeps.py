"""The table a sweep prints when it ends: one row per job, from the jobs' result.json."""

from __future__ import annotations

import json
from pathlib import Path

from idistill.cli.callbacks import summarize
from idistill.engine.loop import FitResult
from idistill.runs import read_result, write_result
from idistill.sweeps import summary_table


def _result(bleu: float, best: float, updates: int, stopped: bool) -> FitResult:
    return FitResult(updates, best, {"test/bleu": bleu}, bleu, Path("."), stopped, updates - 50)


def test_a_run_writes_its_result_and_the_table_shows_every_job(tmp_path):
    write_result(tmp_path, _result(41.92, 1.076, 1500, False), seconds=181.0)
    assert read_result(tmp_path)["metrics"] == {"test/bleu": 41.92}
    assert read_result(tmp_path / "missing") is None
    table = summary_table(
        [("method=baseline", read_result(tmp_path)), ("method=intra_distill", None)]
    )
    header, rule, baseline, failed = table.splitlines()
    assert header.split() == ["job", "test/bleu", "best", "valid", "at", "update", "updates",
                              "stopped", "early", "time"]  # fmt: skip
    assert baseline.split() == ["method=baseline", "41.92", "1.076", "1450", "1500", "no", "3",
                                "min", "01", "s"]  # fmt: skip
    assert failed.startswith("method=intra_distill") and failed.endswith("did not finish")


def test_the_sweep_summary_labels_jobs_by_the_overrides_that_differ(tmp_path, capsys):
    for n, (method, bleu) in enumerate((("baseline", 35.2), ("intra_distill", 40.1))):
        job = tmp_path / str(n)
        (job / ".hydra").mkdir(parents=True)
        overrides = ["experiment=demo", f"method={method}", "seed=1"]
        (job / ".hydra" / "overrides.yaml").write_text(json.dumps(overrides))
        write_result(job, _result(bleu, 2.0, 600, n == 1), seconds=60.0 * (n + 1))
    summarize(tmp_path, parent="abc123")
    out = capsys.readouterr().out
    rows = {line.split()[0]: line for line in out.splitlines() if line.startswith("method=")}
    assert set(rows) == {"method=baseline", "method=intra_distill"}
    assert "35.20" in rows["method=baseline"] and "40.10" in rows["method=intra_distill"]
    assert " yes " in rows["method=intra_distill"] and " no " in rows["method=baseline"]
    assert f"sweep folder: {tmp_path}" in out and "MLflow parent run: abc123" in out


def test_the_parent_run_gets_the_table_and_the_best_jobs_metrics(tmp_path, capsys):
    from idistill.tracking import client

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    mlflow = client(uri)
    parent = mlflow.create_run(mlflow.create_experiment("sweep")).info.run_id
    sweep = tmp_path / "sweep"
    for n, (method, bleu) in enumerate((("baseline", 35.2), ("intra_distill", 40.1))):
        job = sweep / str(n)
        (job / ".hydra").mkdir(parents=True)
        (job / ".hydra" / "overrides.yaml").write_text(json.dumps([f"method={method}"]))
        write_result(job, _result(bleu, 2.0, 600, False), seconds=60.0)
    summarize(sweep, parent=parent, mlflow_client=mlflow)
    assert f"idistill-report plot=loss runs={sweep}" in capsys.readouterr().out
    run = mlflow.get_run(parent)
    assert run.data.metrics == {"best_job/test/bleu": 40.1}
    assert run.data.tags["best_job"] == "method=intra_distill"
    (artifact,) = mlflow.list_artifacts(parent)
    assert artifact.path == "sweep_summary.txt"
    assert "40.10" in (sweep / "sweep_summary.txt").read_text()


def test_the_best_job_is_the_highest_objective_and_none_without_one():
    from idistill.sweeps import best_job

    results = [{"objective": 30.0}, None, {"objective": 0.0}, {"objective": 31.5}]
    assert best_job(results) == (3, {"objective": 31.5})
    assert best_job([{"objective": None}, None]) is None
