"""Sweeps beyond one process: Hydra's joblib (several CPU jobs) and submitit (SLURM) launchers."""

from __future__ import annotations

import pytest
from hydra import compose, initialize_config_module
from test_cli import _run

from idistill.engine.device import thread_share
from idistill.tracking import client

from conftest import SMALL_RUN

pytest.importorskip("hydra_plugins.hydra_joblib_launcher", reason="pip install 'idistill[cluster]'")
pytest.importorskip(
    "hydra_plugins.hydra_submitit_launcher", reason="pip install 'idistill[cluster]'"
)


def _launcher(*overrides: str):
    with initialize_config_module("idistill.conf", version_base="1.3"):
        return compose("config", overrides=list(overrides), return_hydra_config=True).hydra.launcher


def test_slurm_gpu_preset_composes_on_the_submitit_launcher():
    launcher = _launcher("hydra/launcher=slurm_gpu", "hydra.launcher.partition=gpu")
    assert launcher._target_.endswith("submitit_launcher.SlurmLauncher")
    assert (launcher.gpus_per_node, launcher.tasks_per_node, launcher.partition) == (1, 1, "gpu")
    assert launcher.timeout_min == 1440


def test_joblib_launcher_composes_with_a_job_count():
    launcher = _launcher("hydra/launcher=joblib", "hydra.launcher.n_jobs=2")
    assert launcher._target_.endswith("joblib_launcher.JoblibLauncher") and launcher.n_jobs == 2


@pytest.mark.slow
def test_joblib_sweep_runs_jobs_in_parallel_processes_into_one_parent_run(tmp_path):
    db = tmp_path / "mlflow.db"
    args = [
        "-m",
        "hydra/launcher=joblib",
        "hydra.launcher.n_jobs=2",
        *SMALL_RUN,
        "method.alpha=0,1",
        f"data_dir={tmp_path / 'data'}",
        f"tracking.uri=sqlite:///{db}",
    ]
    out = _run(args, tmp_path)  # no OMP_NUM_THREADS: each job takes its share by itself
    assert out.returncode == 0, out.stderr[-3000:]
    mlflow = client(f"sqlite:///{db}")
    runs = mlflow.search_runs([mlflow.get_experiment_by_name("synthetic").experiment_id])
    children = [r for r in runs if "mlflow.parentRunId" in r.data.tags]
    assert len(runs) == 3 and len(children) == 2
    assert all(r.info.status == "FINISHED" for r in runs)
    assert sorted(r.data.params["method.alpha"] for r in children) == ["0.0", "1.0"]
    share = str(thread_share(2))  # the cores split between the two jobs
    assert [r.data.params["trainer.num_threads"] for r in children] == [share, share]
