"""`fit`: the one training loop of every task, top to bottom: device and seeds -> the recipe's
data and model -> resume -> updates, validation, checkpoints, early stopping -> the test of
the best checkpoint -> analyses."""

from __future__ import annotations

import dataclasses
import logging
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from idistill import checkpoint, distributed
from idistill.config import RunSettings
from idistill.engine.device import rng_state
from idistill.engine.eta import Eta
from idistill.engine.recipe import Recipe
from idistill.engine.run import Run, start
from idistill.engine.step import NonFiniteLoss, StepStats, step
from idistill.engine.system import SystemMetrics
from idistill.schedule import alpha_at, learning_rate

log = logging.getLogger(__name__)


@dataclass
class FitResult:
    """What a finished run reports."""

    updates: int
    best: float | None  # the best validation score (selection metric)
    metrics: dict[str, float]  # the test of the best checkpoint
    objective: float | None  # what a sweep optimises
    save_dir: Path
    stopped_early: bool = False
    best_update: int = 0
    info: dict | None = None  # the recipe's extras, e.g. the sacreBLEU signature
    train_seconds: float | None = None  # training's wall time over all resumes (train/seconds)

    @property
    def best_valid_loss(self) -> float | None:
        """Translation's name for `best`."""
        return self.best

    @property
    def best_dev(self) -> float | None:
        """Fine-tuning's name for `best`."""
        return self.best

    @property
    def test_bleu(self) -> float | None:
        return self.metrics.get("test/bleu")

    @property
    def bleu_signature(self) -> str | None:
        return (self.info or {}).get("bleu_signature")

    def seen(self, test: bool) -> FitResult:
        """This result as a run with `test` may see it: without the test scores where the test
        set stays unseen (trainer.test=false, tuning), keeping those on validation (dev/)."""
        if test:
            return self
        dev = {k: v for k, v in self.metrics.items() if k.startswith("dev/")}
        return dataclasses.replace(self, metrics=dev, objective=None, info=None)


def fit(
    recipe: Recipe,
    s: RunSettings,
    out_dir: Path,
    tracker,
    *,
    resume_dir: Path | None = None,
    progress: bool = True,
) -> FitResult:
    """Train, validate, checkpoint and test one run of `recipe`; log everything to `tracker`."""
    run = start(recipe, s, out_dir, tracker, resume_dir)
    progress = progress and run.world.main
    _train(run, progress)
    st = run.state
    if not run.world.main:  # rank 0 tests
        distributed.shutdown()
        return FitResult(st.update, st.best, {}, None, run.save_dir, st.stopped_early)
    distributed.shutdown()
    return _test(run, out_dir, progress)


class _Window:
    """Loss terms summed between two logs of train/* metrics."""

    def __init__(self):
        self.sums: dict[str, float] = {}
        self.units = self.batches = self.updates = 0
        self.started = time.perf_counter()

    def add(self, stats: StepStats, batches: int) -> None:
        for name, value in {
            "loss": stats.loss,
            "ce": stats.ce,
            "id_loss": stats.id_loss,
            **stats.aux,
        }.items():
            self.sums[name] = self.sums.get(name, 0.0) + value
        self.units += stats.units
        self.batches += batches
        self.updates += 1

    def metrics(self, unit: str) -> dict[str, float]:
        """train/loss, train/ce, train/id_loss and the extra terms per unit, and the speed."""
        seconds = max(time.perf_counter() - self.started, 1e-9)
        out = {f"train/{name}": value / max(1, self.units) for name, value in self.sums.items()}
        out[f"train/{unit}_per_s"] = self.units / seconds
        out["train/updates_per_s"] = self.updates / seconds
        return out


def _train(run: Run, progress: bool) -> None:
    """Updates until the run's last one, an epoch limit or early stopping."""
    from tqdm import tqdm

    t, m, st = run.s.trainer, run.s.method, run.state
    warmup = round(t.warmup_ratio * run.total) if t.warmup_ratio is not None else t.warmup_updates
    alpha_total = min(m.total_updates, run.total)  # N of the adaptive schedule: at most the run
    run.model.train()
    bar = tqdm(
        total=run.total,
        initial=st.update,
        desc=run.recipe.name,
        unit="upd",
        disable=not progress,
        dynamic_ncols=True,
        mininterval=1.0 if sys.stderr.isatty() else 30.0,  # a batch job's log stays readable
    )
    window, skipped = _Window(), 0  # skipped: fp16 updates the loss scaler skipped
    run.clock = time.perf_counter()  # train/seconds counts from here
    eta = Eta(run.total)  # logs once how long the run will take
    machine = SystemMetrics(run.device) if run.s.tracking.system_metrics else None
    done = st.update >= run.total or st.stopped_early
    while not done and (t.max_epochs is None or st.epoch <= t.max_epochs):
        batches = run.recipe.epoch_batches(st.epoch)
        while st.batch_pos < len(batches) and not done:
            group = batches[st.batch_pos : st.batch_pos + t.update_freq * run.world.size]
            if len(group) < run.world.size:  # DDP: too few batches left to give every rank one
                st.batch_pos = len(batches)
                break
            lr = learning_rate(
                t.lr_schedule, st.update + 1, t.lr, warmup, run.total, t.warmup_init_lr
            )
            for g in run.optimizer.param_groups:
                g["lr"] = lr
            alpha = alpha_at(m.schedule, m.alpha, st.update, alpha_total, m.p, m.q)
            stats = _update(run, group, alpha)
            st.update += 1
            st.batch_pos += len(group)
            window.add(stats, len(group))
            skipped += stats.skipped
            bar.update(1)
            eta.after(st.update)
            if st.update % t.log_every == 0 or st.update >= run.total:
                metrics = window.metrics(run.recipe.unit) | {"train/alpha": alpha, "train/lr": lr}
                metrics |= run.recipe.train_metrics(alpha, window.units, window.batches)
                if run.scaler is not None:
                    metrics |= {
                        "train/skipped_steps": skipped,
                        "train/loss_scale": run.scaler.get_scale(),
                    }
                if machine is not None:
                    metrics |= machine.sample()
                run.tracker.log_metrics(metrics, step=st.update)
                speed = {f"{run.recipe.unit}_s": f"{metrics[f'train/{run.recipe.unit}_per_s']:.0f}"}
                bar.set_postfix(loss=f"{metrics['train/loss']:.3f}", lr=f"{lr:.2e}", **speed)
                window = _Window()
            run.analysis.during(st.update, run.tracker)  # analysis.track_every
            if t.validate_every and st.update % t.validate_every == 0:
                _validate_and_save(run)
            done = st.update >= run.total or st.stopped_early
        if st.batch_pos >= len(batches):  # epoch finished
            st.epoch, st.batch_pos = st.epoch + 1, 0
            if not t.validate_every and st.update != run.last_validated:
                _validate_and_save(run)
                done = done or st.stopped_early
    bar.close()
    if st.update != run.last_validated:
        _validate_and_save(run)
    st.stopped_early = st.stopped_early and st.update < run.total  # the cap came first
    if st.stopped_early:
        run.tracker.log_metrics({"train/stopped_early": st.update}, step=st.update)
        log.info(
            "early stop at update %d: %d validations without a better %s (best %s at update %d)",
            st.update,
            st.stale,
            run.recipe.selection.metric,
            st.best,
            st.best_update,
        )


def _update(run: Run, group, alpha: float) -> StepStats:
    """One optimizer update on this rank's share of `group`."""
    collated = [run.recipe.collate(idx) for idx in group[run.world.rank :: run.world.size]]
    try:
        return step(
            run.runner,
            run.optimizer,
            collated,
            run.recipe.loss,
            alpha=alpha,
            units=run.recipe.units,
            device=run.device,
            amp=run.amp,
            clip_norm=run.s.trainer.clip_norm,
            scaler=run.scaler,
        )
    except NonFiniteLoss as e:
        raise NonFiniteLoss(
            f"{e} at update {run.state.update + 1}; the last good checkpoint is kept in "
            f"{run.save_dir}"
        ) from None


def _validate_and_save(run: Run) -> None:
    """Rank 0 validates, counts the validation for early stopping and writes the checkpoints;
    the others wait and learn whether to stop."""
    st, selection = run.state, run.recipe.selection
    if run.world.main:
        scores = run.recipe.validate(run.model)
        _clock(run)
        timed = {} if st.seconds is None else {"train/seconds": st.seconds}
        run.tracker.log_metrics(scores | timed, step=st.update)
        log.info("update %d | %s", st.update, " | ".join(f"{k} {v:.4f}" for k, v in scores.items()))
        if st.record(scores[selection.metric], selection, run.s.trainer.patience):
            checkpoint.save_best(
                run.save_dir,
                model=run.model,
                metric=selection.metric,
                rng=rng_state(),
                state=st.to_dict(),
                settings=run.s.to_dict(),
            )
        _save_last(run, finished=False)
    stop = distributed.all_sum(torch.tensor([float(st.stopped_early)], device=run.device))
    st.stopped_early = bool(stop.item())
    run.last_validated = st.update


def _clock(run: Run) -> None:
    """Adds the wall time since the last call (or the start of training) to the state, which
    the checkpoint keeps: train/seconds is the time a run took over all its resumes, less the
    work a kill lost after its last checkpoint."""
    now = time.perf_counter()
    if run.state.seconds is not None:
        run.state.seconds += now - run.clock
    run.clock = now


def _save_last(run: Run, finished: bool) -> None:
    checkpoint.save_last(
        run.save_dir,
        model=run.model,
        optimizer=run.optimizer,
        scaler=run.scaler,
        rng=rng_state(),
        state=run.state.to_dict(),
        settings=run.s.to_dict(),
        meta={
            "config_hash": run.s.config_hash(),
            "run_id": run.tracker.run_id,
            "finished": finished,
        },
    )


def _test(run: Run, out_dir: Path, progress: bool) -> FitResult:
    """The best checkpoint on the test set, then the analyses (the meta keeps what they gave)."""
    st, recipe = run.state, run.recipe
    best = checkpoint.load(run.save_dir / checkpoint.BEST, run.device)
    run.model.load_state_dict(best["model"])
    if run.s.trainer.test:
        result = recipe.test(run.model, out_dir, run.tracker, progress)
    else:  # tuning on validation: the test set stays unseen
        result = recipe.score_valid(run.model, out_dir, progress)
    run.tracker.log_metrics(  # again: a finished run tested anew replaces its earlier scores
        {**result.metrics, f"best/{recipe.selection.metric}": st.best}, step=st.update, again=True
    )
    metric, evaluate = recipe.pruning_metric(run.model)
    run.analysis.after(  # analysis=sensitivity / pruning of the best checkpoint
        evaluate=evaluate,
        metric=metric,
        tracker=run.tracker,
        out_dir=out_dir,
        step=st.update,
        label=recipe.label(),
        progress=progress,
    )
    meta = checkpoint.read_meta(run.save_dir) or {}
    before = checkpoint.earlier_result(run.save_dir, meta)
    if before.get("updates") != st.update:  # trained on since: those scores are of another model
        before = {}
    # every evaluation of the best checkpoint so far (a tested run scored on validation later
    # keeps its test): what trainer.resume=true reports of a finished run without training it
    fit_result = FitResult(
        st.update,
        st.best,
        {**(before.get("metrics") or {}), **result.metrics},
        before.get("objective") if result.objective is None else result.objective,
        run.save_dir,
        st.stopped_early,
        st.best_update,
        result.info or before.get("info") or {},
        st.seconds,
    )
    record = {k: v for k, v in vars(fit_result).items() if k != "save_dir"}
    test = run.s.trainer.test
    tested = test or checkpoint.was_tested(run.save_dir, meta)
    scored_valid = not test or bool(meta.get("scored_valid"))
    checkpoint.write_meta(  # "finished" follows once the MLflow run has ended (runs.py)
        run.save_dir, {**meta, "tested": tested, "scored_valid": scored_valid, "result": record}
    )
    return fit_result.seen(test)
