"""The `idistill` command as a user runs it: help, resolved config, refusals, sweeps, the wheel."""

from __future__ import annotations

import importlib.util
import logging
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
from hydra import compose, initialize_config_module
from hydra.core.global_hydra import GlobalHydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import OmegaConf

from idistill import runs
from idistill.cli.main import main, run_name
from idistill.config import settings_from_dict
from idistill.tracking import client

from conftest import SMALL_RUN

ROOT = Path(__file__).resolve().parents[1]
_SCRIPT = Path(sys.executable).parent / "idistill"  # the console script pip installed
IDISTILL = [str(_SCRIPT)] if _SCRIPT.exists() else [sys.executable, "-m", "idistill.cli.main"]


def _run(args, cwd, env=None, timeout=600):
    return subprocess.run(
        [*IDISTILL, *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, **(env or {})},
    )


def test_help_lists_the_config_groups(tmp_path):
    out = _run(["--help"], tmp_path)
    assert out.returncode == 0
    for group in (
        "task:",
        "model:",
        "method:",
        "divergence:",
        "schedule:",
        "trainer:",
        "tracking:",
        "experiment:",
    ):
        assert group in out.stdout, group


def test_cfg_job_prints_the_resolved_config_from_any_directory(tmp_path):
    out = _run(["--cfg", "job", "task=iwslt14", "lang=de"], tmp_path)
    assert out.returncode == 0, out.stderr
    assert "name: iwslt14" in out.stdout and "lang: de" in out.stdout
    assert "k: 3" in out.stdout and "name: adaptive" in out.stdout


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["method.k=0"], "method.k must be >= 1 (got 0)"),
        (["alpah=5"], "idistill: unknown key alpah (the top level has: "),
        (["task=nope"], "idistill: no task named 'nope' (options: glue, iwslt14"),
        (["schedule.p=20"], "schedule.p must be < schedule.q"),
        (["task=iwslt14", "lang=xx"], "task=iwslt14 needs lang=<one of ar, de"),
    ],
)
def test_bad_input_is_refused_before_any_work(tmp_path, args, message):
    out = _run([*args, "tracking=none", f"data_dir={tmp_path / 'data'}"], tmp_path, timeout=120)
    assert out.returncode != 0
    assert message in out.stderr + out.stdout
    assert not (tmp_path / "data").exists()  # no data was touched


@pytest.fixture
def idistill(monkeypatch, tmp_path):
    """idistill(*args): the console script in this process, started in tmp_path; what it
    exited with (None when it returned)."""
    monkeypatch.chdir(tmp_path)
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level

    def _main(*args):
        monkeypatch.setattr(sys, "argv", ["idistill", *args])
        try:
            main()
        except SystemExit as e:
            return e.code
        finally:
            GlobalHydra.instance().clear()
            for h in set(root.handlers) - set(handlers):  # Hydra's console and log file
                h.close()
                root.removeHandler(h)
            root.setLevel(level)
        return None

    return _main


def _no_training(*args, **kwargs):
    raise AssertionError("a run was launched")


def test_a_bare_idistill_prints_the_usage_and_trains_nothing(
    idistill, tmp_path, capsys, monkeypatch
):
    monkeypatch.setattr(runs, "launch", _no_training)
    assert idistill() == 2
    err = capsys.readouterr().err
    assert err.startswith("usage: idistill [-m] key=value ...")
    assert "idistill experiment=demo" in err and "idistill task=iwslt14 lang=de" in err
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    ("args", "lines"),
    [
        (
            ["method.k=0", "trainer.lr=0"],
            ["method.k must be >= 1 (got 0)", "trainer.lr must be > 0 (got 0.0)"],
        ),
        (["trainer.max_updates=-5"], ["trainer.max_updates must be > 0 (got -5)"]),
        (["metod.alpha=1"], ["unknown key metod.alpha (did you mean method.alpha?)"]),
        (
            ["task=parallel_text", "task.source=/nonexistent"],
            [
                "task=parallel_text needs lang=<source language> (got None)",
                "task.source=/nonexistent does not exist (a folder or archive of the task's data)",
            ],
        ),
    ],
)
def test_a_refused_run_says_why_in_one_line_each_and_leaves_nothing(
    idistill, tmp_path, args, lines
):
    db = tmp_path / "mlflow.db"
    code = idistill(*args, f"data_dir={tmp_path / 'data'}", f"tracking.uri=sqlite:///{db}")
    assert code == "\n".join(f"idistill: {line}" for line in lines)
    assert sorted(p.name for p in tmp_path.iterdir()) == []  # no outputs/, data or mlflow.db


def test_a_refusal_keeps_a_run_folder_the_user_named(idistill, tmp_path):
    named = tmp_path / "runs" / "mine"
    assert idistill("method.k=0", "tracking=none", f"hydra.run.dir={named}") is not None
    assert (named / ".hydra").is_dir()


def test_a_missing_optional_dependency_names_the_extra(idistill, tmp_path, monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util,
        "find_spec",
        lambda name, *a: None if name == "transformers" else real(name, *a),
    )
    code = idistill("experiment=glue_cpu", "tracking=none", f"data_dir={tmp_path / 'data'}")
    assert code == (
        "idistill: task=glue needs transformers, which is not installed: "
        "pip install 'idistill[nlu]'"
    )
    assert list(tmp_path.iterdir()) == []


def test_a_run_is_named_by_what_ran(idistill, tmp_path, monkeypatch):
    launched = {}
    monkeypatch.setattr(runs, "launch", lambda settings, out, **kw: launched.update(kw))
    assert idistill("task=iwslt14", "lang=de", "seed=2", "tracking=none") is None
    assert launched["run_name"] == "iwslt14-de intra_distill K3 a5 s2"


def test_a_sweep_job_is_named_by_its_number_what_ran_and_its_other_overrides(make_cfg):
    overrides = ["experiment=demo", "method.alpha=1", "trainer.lr=0.01", "seed=3"]
    with initialize_config_module("idistill.conf", version_base="1.3"):
        cfg = compose("config", overrides=overrides, return_hydra_config=True)
    cfg.hydra.mode, cfg.hydra.job.num = "MULTIRUN", 4
    cfg.hydra.overrides.task = [*overrides, "data_dir=/tmp/x"]
    settings = settings_from_dict(OmegaConf.to_container(make_cfg(overrides), resolve=True))
    HydraConfig.instance().set_config(cfg)
    try:
        assert run_name(settings) == "4: synthetic intra_distill K3 a1 s3 trainer.lr=0.01"
    finally:
        HydraConfig.instance().cfg = None


@pytest.mark.slow
def test_sweep_makes_a_parent_run_with_a_child_per_job(tmp_path):
    db = tmp_path / "mlflow.db"
    args = [
        "-m",
        *SMALL_RUN,
        "method.alpha=0,1",
        f"data_dir={tmp_path / 'data'}",
        f"tracking.uri=sqlite:///{db}",
    ]
    out = _run(args, tmp_path)
    assert out.returncode == 0, out.stderr[-3000:]
    mlflow = client(f"sqlite:///{db}")
    [exp] = [e for e in mlflow.search_experiments() if e.name == "synthetic"]
    runs = mlflow.search_runs([exp.experiment_id])
    parents = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    children = [r for r in runs if "mlflow.parentRunId" in r.data.tags]
    assert len(parents) == 1 and len(children) == 2
    assert parents[0].info.status == "FINISHED"
    assert {r.data.tags["mlflow.parentRunId"] for r in children} == {parents[0].info.run_id}
    assert sorted(r.data.params["method.alpha"] for r in children) == ["0.0", "1.0"]
    assert all(r.info.status == "FINISHED" and "test/bleu" in r.data.metrics for r in children)
    names = sorted(r.data.tags["mlflow.runName"] for r in children)
    assert names[0].startswith("0: synthetic intra_distill K3 a0 s1 task.n_train=300")
    assert names[1].startswith("1: synthetic intra_distill K3 a1 s1 task.n_train=300")
    assert all(
        any(a.path == "hydra" for a in mlflow.list_artifacts(r.info.run_id)) for r in children
    )


@pytest.mark.slow
def test_failing_job_marks_its_run_and_the_parent_failed(tmp_path):
    db = tmp_path / "mlflow.db"
    # the second job's checkpoint directory is a file: it fails after its run has started
    (tmp_path / "blocker").write_text("")
    args = [
        "-m",
        *SMALL_RUN,
        f"trainer.save_dir={tmp_path / 'ok'},{tmp_path / 'blocker'}",
        f"data_dir={tmp_path / 'data'}",
        f"tracking.uri=sqlite:///{db}",
    ]
    out = _run(args, tmp_path)
    assert out.returncode != 0
    mlflow = client(f"sqlite:///{db}")
    [exp] = [e for e in mlflow.search_experiments() if e.name == "synthetic"]
    runs = mlflow.search_runs([exp.experiment_id])
    statuses = sorted((("mlflow.parentRunId" in r.data.tags), r.info.status) for r in runs)
    assert statuses == [(False, "FAILED"), (True, "FAILED"), (True, "FINISHED")]


@pytest.mark.slow
def test_plain_wheel_composes_configs_from_another_directory(tmp_path):
    target = tmp_path / "site"
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "install",
            "-q",
            "--no-deps",
            "--no-build-isolation",
            "--target",
            str(target),
            str(ROOT),
        ],
        check=True,
        timeout=600,
    )
    env = {**os.environ, "PYTHONPATH": str(target)}
    work = tmp_path / "elsewhere"
    work.mkdir()
    out = subprocess.run(
        [sys.executable, "-c", "import idistill.conf, sys; print(idistill.conf.__file__)"],
        cwd=work,
        env=env,
        capture_output=True,
        text=True,
    )
    assert str(target) in out.stdout
    out = subprocess.run(
        [sys.executable, "-m", "idistill.cli.main", "--cfg", "job", "experiment=demo"],
        cwd=work,
        env=env,
        capture_output=True,
        text=True,
    )
    assert out.returncode == 0, out.stderr
    assert "embed_dim: 128" in out.stdout


@pytest.mark.slow
def test_building_the_wheel_prints_no_packaging_warnings(tmp_path):
    out = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "-w", str(tmp_path), str(ROOT)],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    log = out.stdout + out.stderr
    for warning in ("Package would be ignored", "BuildBackendWarning", "deprecated"):
        assert warning not in log, warning
    [wheel] = tmp_path.glob("idistill-*.whl")

    names = set(zipfile.ZipFile(wheel).namelist())
    configs = {
        f"idistill/conf/{p.relative_to(ROOT / 'conf')}" for p in (ROOT / "conf").rglob("*.yaml")
    }
    assert configs <= names and "idistill/conf/task/glue.yaml" in names
