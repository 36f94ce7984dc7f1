"""The engine end to end with the translation recipe on the synthetic task: metrics,
checkpoints, resume, NaN stop, fp16, early stopping."""

from __future__ import annotations

import dataclasses
import json
import math

import pytest
import torch

import idistill.recipes.translation as translation_mod
from idistill.checkpoint import BEST, LAST, read_meta
from idistill.cli.main import run
from idistill.engine.device import loss_scaler
from idistill.engine.step import NonFiniteLoss, step
from idistill.losses import LabelSmoothedCE
from idistill.recipes.translation import seq2seq_loss
from idistill.runs import read_result
from idistill.tracking import client

from conftest import SMALL_RUN, killed_after_checkpoint, script_validation


def test_small_run_logs_metrics_params_and_bleu(make_cfg, tmp_path):
    cfg = make_cfg(SMALL_RUN, tracking=True)
    result = run(cfg, output_dir=tmp_path / "run", progress=False)
    assert result.updates == 6 and 0.0 <= result.test_bleu <= 100.0
    assert result.bleu_signature.startswith("nrefs:1")
    assert (result.save_dir / LAST).is_file() and (result.save_dir / BEST).is_file()
    assert read_meta(result.save_dir)["finished"] is True

    mlflow = client(f"sqlite:///{tmp_path / 'mlflow.db'}")
    [exp] = [e for e in mlflow.search_experiments() if e.name == "synthetic"]
    [r] = mlflow.search_runs([exp.experiment_id])
    assert r.info.status == "FINISHED"
    assert r.data.params["method.k"] == "3" and r.data.params["method.divergence"] == "x"
    assert r.data.tags["method"] == "intra_distill" and r.data.tags["precision"] == "fp32"
    assert r.data.tags["sacrebleu.signature"] == result.bleu_signature
    for name in (
        "train/loss",
        "train/ce",
        "train/id_loss",
        "train/alpha",
        "train/lr",
        "train/tokens_per_s",
        "valid/loss",
        "test/bleu",
    ):
        assert name in r.data.metrics, name
    alphas = mlflow.get_metric_history(r.info.run_id, "train/alpha")
    assert [a.step for a in alphas] == [2, 4, 6]
    assert alphas[0].value < alphas[-1].value  # the adaptive schedule rises
    valid = mlflow.get_metric_history(r.info.run_id, "valid/loss")
    assert [v.step for v in valid] == [3, 6]
    clock = mlflow.get_metric_history(r.info.run_id, "train/seconds")  # with each validation
    assert [c.step for c in clock] == [3, 6] and 0 < clock[0].value < clock[1].value
    assert clock[1].value == result.train_seconds == read_result(tmp_path / "run")["train_seconds"]
    # the machine's load with every train/* log: the run's System metrics tab in MLflow
    cpu = mlflow.get_metric_history(r.info.run_id, "system/cpu_utilization_percentage")
    assert [c.step for c in cpu] == [2, 4, 6] and all(0 <= c.value <= 100 for c in cpu)
    rss = r.data.metrics["system/process_memory_rss_megabytes"]
    assert 50 < rss < r.data.metrics["system/system_memory_usage_megabytes"]
    assert (tmp_path / "run" / "test.hyp.txt").read_text().count("\n") == 20
    assert read_result(tmp_path / "run")["metrics"] == result.metrics
    assert set(result.metrics) == {"test/bleu", "test/chrf"} and result.metrics["test/chrf"] > 0
    assert r.data.metrics["test/chrf"] == result.metrics["test/chrf"]
    artifacts = {a.path for a in mlflow.list_artifacts(r.info.run_id)}
    assert {"test.hyp.txt", "test.ref.txt", "training_curves.png"} <= artifacts
    png = (tmp_path / "run" / "training_curves.png").read_bytes()
    assert png.startswith(b"\x89PNG") and len(png) > 10_000  # two panels of curves


def _final_weights(save_dir):
    return torch.load(save_dir / LAST, weights_only=False)["model"]


def test_killed_run_resumes_to_the_same_weights(make_cfg, tmp_path, monkeypatch):
    straight = run(make_cfg(SMALL_RUN), output_dir=tmp_path / "straight", progress=False)

    with killed_after_checkpoint(monkeypatch, update=3):
        run(make_cfg(SMALL_RUN), output_dir=tmp_path / "killed", progress=False)
    assert read_meta(tmp_path / "killed" / "checkpoints")["update"] == 3
    before = torch.load(tmp_path / "killed" / "checkpoints" / LAST, weights_only=False)["seconds"]

    resumed = run(
        make_cfg([*SMALL_RUN, f"trainer.resume={tmp_path / 'killed'}"]),
        output_dir=tmp_path / "resumed",
        progress=False,
    )
    assert resumed.updates == 6 and resumed.save_dir == tmp_path / "killed" / "checkpoints"
    a, b = _final_weights(straight.save_dir), _final_weights(resumed.save_dir)
    assert a.keys() == b.keys()
    for name in a:
        torch.testing.assert_close(a[name], b[name], rtol=0, atol=0, msg=name)
    assert resumed.test_bleu == straight.test_bleu
    # the training time adds up over the kill: the part before it is in the checkpoint
    assert 0 < before < resumed.train_seconds


def test_resume_true_tests_an_untested_run_then_finds_nothing_left_to_do(
    make_cfg, tmp_path, monkeypatch
):
    # alpha and K chosen on validation alone: the chosen run is then a final run, tested by
    # re-running the final sweep with trainer.resume=true, which skips what has finished
    monkeypatch.chdir(tmp_path)
    outputs = tmp_path / "outputs"
    untested = run(
        make_cfg([*SMALL_RUN, "trainer.test=false"], tracking=True), outputs / "a", progress=False
    )
    assert untested.test_bleu is None and set(untested.metrics) == {"dev/bleu", "dev/chrf"}
    tested = run(make_cfg([*SMALL_RUN, "trainer.resume=true"], tracking=True), outputs / "b",
                 progress=False)  # fmt: skip
    assert tested.save_dir == outputs / "a" / "checkpoints"  # no update trained again
    assert tested.updates == 6 and tested.test_bleu is not None
    assert tested.metrics["dev/bleu"] == untested.metrics["dev/bleu"]  # what it had, kept
    again = run(make_cfg([*SMALL_RUN, "trainer.resume=true"], tracking=True), outputs / "c",
                progress=False)  # fmt: skip
    assert (again.test_bleu, again.best, again.updates) == (tested.test_bleu, tested.best, 6)
    assert again.bleu_signature == tested.bleu_signature
    assert not (outputs / "c" / "checkpoints").exists()  # nothing trained or tested
    assert read_result(outputs / "c")["metrics"] == tested.metrics  # for the sweep summary

    mlflow = client(f"sqlite:///{tmp_path / 'mlflow.db'}")
    [r] = mlflow.search_runs([mlflow.get_experiment_by_name("synthetic").experiment_id])
    assert r.data.metrics["test/bleu"] == tested.test_bleu  # one MLflow run, now tested
    steps = [p.step for p in mlflow.get_metric_history(r.info.run_id, "train/loss")]
    assert steps and len(steps) == len(set(steps))  # nothing logged twice
    # tuning on validation reuses the finished run but never sees its test
    tuning = run(make_cfg([*SMALL_RUN, "trainer.resume=true", "trainer.test=false"],
                          tracking=True), outputs / "d", progress=False)  # fmt: skip
    assert (tuning.updates, tuning.metrics, tuning.objective) == (6, untested.metrics, None)
    assert not (outputs / "d" / "checkpoints").exists()
    # tracked elsewhere (or with other analyses): not what finished, so trained afresh
    elsewhere = [*SMALL_RUN, "trainer.resume=true", "tracking.experiment=elsewhere"]
    run(make_cfg(elsewhere, tracking=True), outputs / "e", progress=False)
    assert (outputs / "e" / "checkpoints" / LAST).is_file()
    assert mlflow.search_runs([mlflow.get_experiment_by_name("elsewhere").experiment_id])


def test_a_finished_run_tested_again_logs_its_new_test_to_its_mlflow_run(
    make_cfg, tmp_path, monkeypatch
):
    # a tested run whose meta says untested (as an earlier version could leave it) is tested
    # and analysed again by trainer.resume=true: its new hypotheses and analysis files replace
    # the old ones, so must its scores
    monkeypatch.chdir(tmp_path)
    analysed = [*SMALL_RUN, "analysis=sensitivity", "analysis.batches=2"]
    first = run(make_cfg(analysed, tracking=True), tmp_path / "outputs" / "a", progress=False)
    meta = read_meta(first.save_dir)
    (first.save_dir / "checkpoint_last.json").write_text(json.dumps({**meta, "tested": False}))
    again = run(make_cfg([*analysed, "trainer.resume=true"], tracking=True),
                tmp_path / "outputs" / "b", progress=False)  # fmt: skip
    assert again.save_dir == first.save_dir and again.test_bleu is not None

    mlflow = client(f"sqlite:///{tmp_path / 'mlflow.db'}")
    [r] = mlflow.search_runs([mlflow.get_experiment_by_name("synthetic").experiment_id])
    for key in ("test/bleu", "test/chrf", "sensitivity/std"):
        assert [p.step for p in mlflow.get_metric_history(r.info.run_id, key)] == [6, 6], key
    assert r.data.metrics["test/bleu"] == again.test_bleu
    steps = [p.step for p in mlflow.get_metric_history(r.info.run_id, "train/loss")]
    assert len(steps) == len(set(steps))  # training's points still once each


def test_a_tuning_run_scores_its_best_checkpoint_on_validation_once(
    make_cfg, tmp_path, monkeypatch
):
    # trainer.test=false: valid BLEU and chrF2 of the best checkpoint; a tuning run finished
    # before it did so is scored by trainer.resume=true without training, then nothing is left
    monkeypatch.chdir(tmp_path)
    tuning = [*SMALL_RUN, "trainer.test=false"]
    first = run(make_cfg(tuning, tracking=True), tmp_path / "a", progress=False)
    assert 0 <= first.metrics["dev/bleu"] <= 100 and 0 < first.metrics["dev/chrf"] <= 100
    assert len((tmp_path / "a" / "valid.hyp.txt").read_text().splitlines()) == 40  # n_valid
    meta = read_meta(first.save_dir)
    assert meta["scored_valid"] is True and meta["tested"] is False
    del meta["scored_valid"]  # as a run of an earlier version recorded it
    meta["result"]["metrics"] = {}
    (first.save_dir / "checkpoint_last.json").write_text(json.dumps(meta))

    again = run(make_cfg([*tuning, "trainer.resume=true"], tracking=True), tmp_path / "b",
                progress=False)  # fmt: skip
    assert again.save_dir == first.save_dir and again.updates == first.updates
    assert again.metrics == first.metrics  # the same checkpoint scored again
    done = run(make_cfg([*tuning, "trainer.resume=true"], tracking=True), tmp_path / "c",
               progress=False)  # fmt: skip
    assert done.metrics == first.metrics and not (tmp_path / "c" / "checkpoints").exists()
    mlflow = client(f"sqlite:///{tmp_path / 'mlflow.db'}")
    [r] = mlflow.search_runs([mlflow.get_experiment_by_name("synthetic").experiment_id])
    assert r.data.metrics["dev/bleu"] == first.metrics["dev/bleu"]
    assert "test/bleu" not in r.data.metrics

    # tested, then scored on validation by name: it keeps its test, and the other way round
    test = run(make_cfg([*SMALL_RUN, "trainer.resume=true"], tracking=True), tmp_path / "d",
               progress=False)  # fmt: skip
    assert test.save_dir == first.save_dir and test.test_bleu is not None
    meta = read_meta(first.save_dir)
    for key in ("tested", "scored_valid", "result"):  # a tested run of an earlier version:
        del meta[key]  # its result.json beside the checkpoints holds the test
    (first.save_dir / "checkpoint_last.json").write_text(json.dumps(meta))
    earlier = {"updates": 6, "metrics": {"test/bleu": test.test_bleu}, "objective": test.test_bleu}
    (tmp_path / "a" / "result.json").write_text(json.dumps(earlier))
    rescored = [*tuning, f"trainer.resume={tmp_path / 'a'}"]  # by name: scored
    run(make_cfg(rescored, tracking=True), tmp_path / "e", progress=False)
    meta = read_meta(first.save_dir)
    assert meta["tested"] is True and meta["scored_valid"] is True
    assert meta["result"]["metrics"]["test/bleu"] == test.test_bleu
    assert meta["result"]["metrics"]["dev/bleu"] == first.metrics["dev/bleu"]
    final = run(make_cfg([*SMALL_RUN, "trainer.resume=true"], tracking=True), tmp_path / "f",
                progress=False)  # fmt: skip
    assert final.test_bleu == test.test_bleu and not (tmp_path / "f" / "checkpoints").exists()


def test_resume_true_finds_the_unfinished_run_of_the_same_config(make_cfg, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with killed_after_checkpoint(monkeypatch):
        run(make_cfg(SMALL_RUN), output_dir=tmp_path / "outputs" / "a", progress=False)
    resumed = run(
        make_cfg([*SMALL_RUN, "trainer.resume=true"]),
        output_dir=tmp_path / "outputs" / "b",
        progress=False,
    )
    assert resumed.save_dir == tmp_path / "outputs" / "a" / "checkpoints"


def test_a_run_killed_before_its_first_checkpoint_is_continued_by_resume_true(
    make_cfg, tmp_path, monkeypatch
):
    monkeypatch.chdir(tmp_path)
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"

    def killed(self, model):
        raise KeyboardInterrupt  # at the first validation, before its checkpoint

    with monkeypatch.context() as m:
        m.setattr(translation_mod.TranslationRecipe, "validate", killed)
        with pytest.raises(KeyboardInterrupt):
            run(make_cfg(SMALL_RUN, tracking=True), tmp_path / "outputs" / "a", progress=False)
    assert not (tmp_path / "outputs" / "a" / "checkpoints" / LAST).exists()
    resumed = run(
        make_cfg([*SMALL_RUN, "trainer.resume=true"], tracking=True),
        output_dir=tmp_path / "outputs" / "b",
        progress=False,
    )
    assert resumed.save_dir == tmp_path / "outputs" / "a" / "checkpoints"
    assert resumed.updates == 6
    (r,) = client(uri).search_runs([client(uri).get_experiment_by_name("synthetic").experiment_id])
    assert r.info.status == "FINISHED"  # the killed run's MLflow run, continued, not orphaned


def test_non_finite_loss_stops_keeps_last_good_checkpoint_and_fails_the_run(
    make_cfg, tmp_path, monkeypatch
):
    real = translation_mod.fused_intra_distill_loss
    calls = {"n": 0}

    def nan_from_update_5(*args, **kwargs):
        calls["n"] += 1
        res = real(*args, **kwargs)
        if calls["n"] >= 5:
            res.loss = res.loss * math.nan
        return res

    monkeypatch.setattr(translation_mod, "fused_intra_distill_loss", nan_from_update_5)
    with pytest.raises(NonFiniteLoss, match="at update 5"):
        run(make_cfg(SMALL_RUN, tracking=True), output_dir=tmp_path / "run", progress=False)
    meta = read_meta(tmp_path / "run" / "checkpoints")
    assert meta["update"] == 3 and not meta["finished"]
    [r] = client(f"sqlite:///{tmp_path / 'mlflow.db'}").search_runs(
        [
            e.experiment_id
            for e in client(f"sqlite:///{tmp_path / 'mlflow.db'}").search_experiments()
            if e.name == "synthetic"
        ]
    )
    assert r.info.status == "FAILED"


def test_update_freq_accumulates_before_stepping(make_cfg, tmp_path):
    result = run(
        make_cfg(
            [
                *SMALL_RUN,
                "trainer.update_freq=2",
                "trainer.max_updates=3",
                "trainer.validate_every=0",
            ]
        ),
        output_dir=tmp_path / "r",
        progress=False,
    )
    assert result.updates == 3
    assert torch.load(result.save_dir / LAST, weights_only=False)["batch_pos"] in (0, 6)


def test_bf16_autocast_path_trains_with_finite_losses(make_cfg, tmp_path):
    # the CUDA default (bf16 autocast); on CPU the same autocast code path runs
    result = run(
        make_cfg([*SMALL_RUN, "trainer.precision=bf16"]), output_dir=tmp_path / "r", progress=False
    )
    assert result.updates == 6 and math.isfinite(result.best_valid_loss)


def _tiny_step_setup():
    from idistill.bench import build, training_batch
    from idistill.config import MethodSettings
    from idistill.sage import make_optimizer

    model = build("transformer_tiny", 300, torch.device("cpu")).train()
    optimizer = make_optimizer(model, "adamw", 1e-3, (0.9, 0.98), 1e-8, 0.0)
    return model, optimizer, [training_batch(200, 300)], MethodSettings(k=3, alpha=1.0)


def _step(model, optimizer, batches, method, compile_loss=False, **kwargs):
    loss_fn = seq2seq_loss(method, LabelSmoothedCE(0.1, 0), fused=True, compiled=compile_loss)
    return step(
        model, optimizer, batches, loss_fn, alpha=1.0, units=lambda b: int(b["ntokens"]),
        device=torch.device("cpu"), **kwargs,
    )  # fmt: skip


def test_fp16_loss_scaler_skips_an_overflowing_update_and_lowers_the_scale():
    model, optimizer, batches, method = _tiny_step_setup()
    scaler = loss_scaler(torch.float16, torch.device("cpu"))
    scaler._init_scale = 2.0**120  # scaled gradients overflow fp32: the update must be skipped
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    stats = _step(model, optimizer, batches, method, amp=torch.float16, scaler=scaler)
    assert stats.skipped and scaler.get_scale() < 2.0**120
    assert all(torch.equal(p, before[n]) for n, p in model.named_parameters())
    scaler.update(2.0**10)  # a sane scale: the next update applies
    stats = _step(model, optimizer, batches, method, amp=torch.float16, scaler=scaler)
    assert not stats.skipped and math.isfinite(stats.loss)
    assert any(not torch.equal(p, before[n]) for n, p in model.named_parameters())


def test_fp16_run_logs_skipped_steps_and_the_loss_scale(make_cfg, tmp_path):
    result = run(
        make_cfg([*SMALL_RUN, "trainer.precision=fp16"], tracking=True),
        output_dir=tmp_path / "r",
        progress=False,
    )
    mlflow = client(f"sqlite:///{tmp_path / 'mlflow.db'}")
    [r] = mlflow.search_runs([mlflow.get_experiment_by_name("synthetic").experiment_id])
    assert result.updates == 6 and math.isfinite(result.best_valid_loss)
    assert r.data.metrics["train/skipped_steps"] >= 0 and r.data.metrics["train/loss_scale"] > 0
    assert "scaler" in torch.load(result.save_dir / LAST, weights_only=False)


@pytest.mark.slow
def test_compiled_fused_loss_trains_like_the_eager_one(monkeypatch):
    """trainer.compile=loss: full chunks run through torch.compile'd kernels; one update gives
    the eager update's loss and gradients (small chunks here, so both kinds of chunk occur)."""
    from idistill import losses

    monkeypatch.setattr(losses.fused, "CHUNK_ELEMENTS", 3 * 300 * 64)  # 64 positions per chunk
    results = []
    for compiled in (False, True):
        torch.manual_seed(0)
        model, optimizer, batches, method = _tiny_step_setup()
        torch.manual_seed(1)
        stats = _step(model, optimizer, batches, method, compile_loss=compiled)
        results.append((stats, [p.grad.clone() for p in model.parameters()]))
    (eager, eager_g), (fast, fast_g) = results
    assert fast.loss == pytest.approx(eager.loss, rel=1e-5)
    assert fast.id_loss == pytest.approx(eager.id_loss, rel=1e-4)
    for a, b in zip(fast_g, eager_g, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-3, atol=1e-6)


@pytest.mark.slow
@pytest.mark.parametrize("k", [1, 3])  # K = 1: the baseline, whose [1, N] slices kept stride N
def test_compiled_fused_loss_compiles_once_for_batches_of_any_length(monkeypatch, k):
    """Batches hold different numbers of target positions; the compiled chunk kernels see
    chunks of one shape, so they compile once each, not once per batch (a strided slice of
    the per-position vectors once made dynamo recompile for every batch until its limit)."""
    from torch._dynamo.utils import counters

    from idistill import losses
    from idistill.bench import training_batch

    monkeypatch.setattr(losses.fused, "CHUNK_ELEMENTS", 3 * 300 * 32)  # 32 positions per chunk
    torch._dynamo.reset()
    counters.clear()
    model, optimizer, _, method = _tiny_step_setup()
    method = dataclasses.replace(method, k=k)
    for tokens in (200, 150, 250, 180):
        _step(
            model, optimizer, [training_batch(tokens, 300, seed=tokens)], method, compile_loss=True
        )
    assert counters["frames"]["ok"] == 2  # the forward and the backward chunk kernel


def test_patience_stops_n_validations_after_the_best_tests_it_and_resumes(
    make_cfg, tmp_path, monkeypatch
):
    from idistill.recipes.translation import TranslationRecipe

    overrides = [*SMALL_RUN, "trainer.validate_every=1", "trainer.patience=2"]
    script_validation(monkeypatch, TranslationRecipe, "valid/loss", [3.0, 2.0, 2.5, 2.6, 1.0])
    result = run(make_cfg(overrides, tracking=True), output_dir=tmp_path / "r", progress=False)
    assert (result.updates, result.stopped_early, result.best_update) == (4, True, 2)
    assert result.best_valid_loss == 2.0
    assert torch.load(result.save_dir / BEST, weights_only=True)["update"] == 2  # tested
    mlflow = client(f"sqlite:///{tmp_path / 'mlflow.db'}")
    [r] = mlflow.search_runs([mlflow.get_experiment_by_name("synthetic").experiment_id])
    assert r.data.metrics["train/stopped_early"] == 4 and "test/bleu" in r.data.metrics
    assert r.data.metrics["best/valid/loss"] == 2.0

    # killed after the checkpoint of update 3 (one validation without a better loss so far)
    script_validation(monkeypatch, TranslationRecipe, "valid/loss", [3.0, 2.0, 2.5])
    with killed_after_checkpoint(monkeypatch, update=3):
        run(make_cfg(overrides), output_dir=tmp_path / "killed", progress=False)
    script_validation(monkeypatch, TranslationRecipe, "valid/loss", [2.6, 1.0])
    resumed = run(
        make_cfg([*overrides, f"trainer.resume={tmp_path / 'killed'}"]),
        output_dir=tmp_path / "resumed",
        progress=False,
    )
    assert (resumed.updates, resumed.stopped_early, resumed.best_update) == (4, True, 2)


def test_patience_zero_trains_to_the_last_update(make_cfg, tmp_path, monkeypatch):
    from idistill.recipes.translation import TranslationRecipe

    scores = [3.0, 2.0, 2.5, 2.6, 2.7, 2.8]
    script_validation(monkeypatch, TranslationRecipe, "valid/loss", scores)
    overrides = [*SMALL_RUN, "trainer.validate_every=1"]
    result = run(make_cfg(overrides), output_dir=tmp_path / "r", progress=False)
    assert (result.updates, result.stopped_early, result.best_update) == (6, False, 2)


def test_best_metric_bleu_selects_the_checkpoint_with_the_highest_valid_bleu(make_cfg, tmp_path):
    overrides = [*SMALL_RUN, "trainer.best_metric=bleu", "trainer.valid_bleu_sentences=10"]
    result = run(make_cfg(overrides, tracking=True), output_dir=tmp_path / "r", progress=False)
    mlflow = client(f"sqlite:///{tmp_path / 'mlflow.db'}")
    [r] = mlflow.search_runs([mlflow.get_experiment_by_name("synthetic").experiment_id])
    history = {m.step: m.value for m in mlflow.get_metric_history(r.info.run_id, "valid/bleu")}
    assert set(history) == {3, 6} and "valid/loss" in r.data.metrics
    best = max(history, key=lambda step: (history[step], -step))  # the first of equal scores
    assert result.best_update == best and result.best == history[best]
    assert torch.load(result.save_dir / BEST, weights_only=True)["metric"] == "valid/bleu"


def test_best_metric_bleu_picks_the_higher_score(make_cfg, tmp_path, monkeypatch):
    from idistill.recipes.translation import TranslationRecipe

    script_validation(monkeypatch, TranslationRecipe, "valid/bleu", [12.0, 9.0])
    overrides = [*SMALL_RUN, "trainer.best_metric=bleu", "trainer.valid_bleu_sentences=5"]
    result = run(make_cfg(overrides), output_dir=tmp_path / "r", progress=False)
    assert (result.best_update, result.best) == (3, 12.0)


def test_patience_running_out_at_the_last_update_is_no_early_stop(make_cfg, tmp_path, monkeypatch):
    from idistill.recipes.translation import TranslationRecipe

    scores = [3.0, 2.0, 1.5, 1.4, 2.5, 2.6]  # the 2nd validation without a better loss: update 6
    script_validation(monkeypatch, TranslationRecipe, "valid/loss", scores)
    overrides = [*SMALL_RUN, "trainer.validate_every=1", "trainer.patience=2"]
    result = run(make_cfg(overrides), output_dir=tmp_path / "r", progress=False)
    assert (result.updates, result.stopped_early, result.best_update) == (6, False, 4)
