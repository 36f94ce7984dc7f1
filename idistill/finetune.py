"""Fine-tuning a pretrained encoder on an NLU task (GLUE, NER, TyDiQA), top to bottom:
settings -> data -> model -> loop -> evaluation of the best checkpoint.

The task module (idistill.data.<task>, see idistill.data.nlu) hands over tokenized features and
one of four heads; this loop only knows the heads. Every update runs the K-pass step of
`idistill.intra` with the head's task loss, and both terms are normalised alike: summed over the
counted units (examples; labelled positions for `tokens`; the start and the end distribution of
each example for `span`) and divided by their number in the update.
"""

from __future__ import annotations

import logging
import math
import os
import random
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from idistill.analysis.analyse import RunAnalysis, sensitivity_autocast
from idistill.checkpoint import BEST, LAST, atomic_save, write_meta
from idistill.config import ConfigError, RunSettings
from idistill.data.nlu import NLUData, nlu_module
from idistill.intra import intra_distill_loss
from idistill.losses import CLASSIFICATION_DIVERGENCES
from idistill.models.encoder import EncoderWithHead, build_encoder, load_tokenizer, sage_groups
from idistill.sage import SageAdamax, SageAdamW
from idistill.schedule import alpha_at, inverse_sqrt_lr
from idistill.train import (
    NonFiniteLoss,
    _rng_state,
    _set_rng_state,
    apply_update,
    autocast_dtype,
    loss_scaler,
    pick_device,
    to_device,
)

log = logging.getLogger(__name__)

Batch = dict[str, Tensor]
MODEL_KEYS = ("input_ids", "attention_mask", "token_type_ids")
LABEL_KEYS = {
    "classification": ("labels",),
    "regression": ("labels",),
    "tokens": ("labels",),
    "span": ("start_positions", "end_positions", "context_mask"),
}
IGNORE = -100  # tokens: label of a position that is not scored
MASKED = -1e4  # span: logit of a position outside the context (exp() is 0 in float32)


@dataclass
class FinetuneResult:
    """What a finished fine-tuning run reports."""

    updates: int
    best_dev: float  # the task's metric on data.select_on, at the best checkpoint
    metrics: dict[str, float]  # every eval set scored with the best checkpoint: "<set>/<metric>"
    objective: float | None  # what a sweep returns: test/<metric> (the mean over languages of a
    # zero-shot task) if the test set is scored, else the selection set's metric
    save_dir: Path
    test_bleu: None = None  # translation's field, absent here


def collate(features: list[dict], head: str, pad_id: int) -> Batch:
    """Pad a list of features to the longest one: ids with pad_id, token labels with -100."""
    longest = max(len(f["input_ids"]) for f in features)
    out = {}
    for key in (*MODEL_KEYS, *LABEL_KEYS[head]):
        if key not in features[0]:
            continue
        values = [f[key] for f in features]
        if isinstance(values[0], (list, tuple, np.ndarray)):
            fill = pad_id if key == "input_ids" else IGNORE if key == "labels" else 0
            padded = torch.full((len(values), longest), fill, dtype=torch.long)  # [B, T]
            for i, v in enumerate(values):
                padded[i, : len(v)] = torch.as_tensor(v, dtype=torch.long)
            out[key] = padded
        else:
            dtype = torch.float32 if head == "regression" else torch.long
            out[key] = torch.tensor(values, dtype=dtype)  # [B]
    return out


def count_units(head: str, batch: Batch) -> int:
    """What both loss terms are summed over: examples, labelled positions (tokens), or the
    start and end distributions of each example (span)."""
    if head == "tokens":
        return int((batch["labels"] != IGNORE).sum())
    n = len(batch["input_ids"])
    return 2 * n if head == "span" else n


def task_loss(head: str) -> Callable[[Tensor, Batch], Tensor]:
    """The head's task loss, summed over its units (float32)."""

    def classification(out: Tensor, b: Batch) -> Tensor:  # out [B, C]
        return F.cross_entropy(out.float(), b["labels"], reduction="sum")

    def regression(out: Tensor, b: Batch) -> Tensor:  # out [B]
        return F.mse_loss(out.float(), b["labels"], reduction="sum")

    def tokens(out: Tensor, b: Batch) -> Tensor:  # out [B, T, C]
        return F.cross_entropy(
            out.float().flatten(0, 1), b["labels"].flatten(), ignore_index=IGNORE, reduction="sum"
        )

    def span(out: Tensor, b: Batch) -> Tensor:  # out [B, 2, T], masked to the context
        start = F.cross_entropy(out[:, 0].float(), b["start_positions"], reduction="sum")
        return start + F.cross_entropy(out[:, 1].float(), b["end_positions"], reduction="sum")

    return {"classification": classification, "regression": regression, "tokens": tokens}.get(
        head, span
    )


def model_forward(model: EncoderWithHead, head: str) -> Callable[[Batch], Tensor]:
    """forward(batch) for the K-pass step: the head's output, and for `span` the start and end
    logits over positions [B, 2, T] with positions outside the context at -1e4, so that the
    divergence compares distributions over the context only."""

    def forward(b: Batch) -> Tensor:
        out = model(b["input_ids"], b["attention_mask"], b.get("token_type_ids"))
        if head != "span":
            return out
        out = out.transpose(1, 2)  # [B, T, 2] -> [B, 2, T]
        return out.masked_fill(~b["context_mask"].bool()[:, None, :], MASKED)

    return forward


def divergence_mask(head: str, b: Batch, id_mask: str) -> Tensor | None:
    """Positions the divergence counts: labelled tokens (id_mask=labels) or every non-pad
    token (id_mask=attention, as the official NER code); None (all) for the other heads."""
    if head != "tokens":
        return None
    return b["labels"] != IGNORE if id_mask == "labels" else b["attention_mask"].bool()


def make_optimizer(model: EncoderWithHead, s: RunSettings) -> tuple[torch.optim.Optimizer, str]:
    """trainer.optimizer (adamw | adamax), with SAGE's scaling when method.optimizer is sage_*;
    no weight decay on biases and LayerNorms. adamax is SAGE's BERT-style Adamax."""
    t, m = s.trainer, s.method
    name = f"sage_{t.optimizer}" if m.optimizer.startswith("sage_") else t.optimizer
    groups = sage_groups(model, t.weight_decay)
    if not name.startswith("sage_"):
        groups = [{**g, "sage": False} for g in groups]
    hyper = dict(lr=t.lr, betas=tuple(float(b) for b in t.betas), beta3=m.beta3)
    if name == "adamw":
        groups = [{k: v for k, v in g.items() if k != "sage"} for g in groups]
        return torch.optim.AdamW(groups, lr=t.lr, betas=hyper["betas"], eps=1e-8), name
    if name.endswith("adamw"):
        return SageAdamW(groups, eps=1e-8, **hyper), name
    return SageAdamax(groups, eps=1e-6, **hyper), name


def linear_lr(step: int, peak_lr: float, warmup: int, total: int) -> float:
    """Linear warm-up from 0 to peak_lr over `warmup` updates, then linear decay to 0 at `total`."""
    if step < warmup:
        return peak_lr * step / warmup
    return peak_lr * max(0.0, (total - step) / max(1, total - warmup))


def validation_due(update: int, total: int, every: int, epoch_done: bool) -> bool:
    """Evaluate (and checkpoint) after this update: every `every` updates, else at the end of
    each epoch, and always after the last update."""
    return update == total or (update % every == 0 if every else epoch_done)


@torch.no_grad()
def predict(model, features, head, pad_id, batch_size, device, amp) -> list[np.ndarray]:
    """The head's output for each feature without padding ([C], [], [T, C] or [T, 2]), in order;
    dropout off. Features go through in order of length, so batches hold little padding."""
    model.eval()
    order = sorted(range(len(features)), key=lambda i: len(features[i]["input_ids"]))
    out: list[np.ndarray] = [None] * len(features)  # type: ignore[list-item]
    for lo in range(0, len(order), batch_size):
        idx = order[lo : lo + batch_size]
        b = collate(
            [{k: features[i][k] for k in MODEL_KEYS if k in features[i]} for i in idx],
            "classification",
            pad_id,
        )
        b = {k: v.to(device) for k, v in b.items()}
        with torch.autocast(device.type, dtype=amp, enabled=amp is not None):
            o = model(b["input_ids"], b["attention_mask"], b.get("token_type_ids"))
        o = o.float().cpu().numpy()  # [B, ...]
        for j, i in enumerate(idx):
            out[i] = o[j, : len(features[i]["input_ids"])] if head in ("tokens", "span") else o[j]
    model.train()
    return out


def finetune_step(
    model: EncoderWithHead,
    optimizer: torch.optim.Optimizer,
    batches: list[Batch],
    head: str,
    alpha: float,
    alpha_per_batch: bool,
    *,
    method,
    device: torch.device,
    amp: torch.dtype | None = None,
    clip_norm: float = 0.0,
    id_mask: str = "labels",
    scaler: torch.amp.GradScaler | None = None,
) -> tuple[float, float, float, int]:
    """One optimizer update over `batches` (collated, on the CPU; gradient accumulation).

    Each batch gets the K-pass loss of `idistill.intra` with the head's task loss; the gradient
    is that of the summed loss divided by the update's units. alpha_per_batch: the paper's code
    summed the divergence over a batch against a batch-mean task loss, which is alpha x (units
    in the batch) per unit. Returns the summed loss, task loss and divergence, and the units;
    a non-finite loss is returned without a step.
    """
    counts = [count_units(head, b) for b in batches]
    units = max(1, sum(counts))
    loss_of, forward = task_loss(head), model_forward(model, head)
    optimizer.zero_grad(set_to_none=True)
    sums = torch.zeros(3, device=device)  # loss, task, divergence: one host sync per update
    for c, n_b in zip(batches, counts, strict=True):
        b = to_device(c, device)
        with torch.autocast(device.type, dtype=amp, enabled=amp is not None):
            res = intra_distill_loss(
                forward,
                b,
                loss_of,
                k=method.effective_k,
                alpha=alpha * n_b if alpha_per_batch else alpha,
                divergence=method.divergence,
                passes=method.passes,
                mask=divergence_mask(head, b, id_mask),
            )
        loss = res.loss / units  # the per-unit loss of the update
        (scaler.scale(loss) if scaler is not None else loss).backward()  # fp16: scaled
        sums += torch.stack([res.loss.detach().float(), res.task.float(), res.id_loss.float()])
    loss, ce, id_loss = sums.tolist()
    if not math.isfinite(loss):
        return loss, ce, id_loss, units  # no step: the caller stops the run
    apply_update(model, optimizer, clip_norm, scaler)
    return loss, ce, id_loss, units


def unit_loss(head: str, device, amp) -> Callable:
    """loss_fn(model, batch): the head's plain task loss (no consistency term) per counted unit
    of a collated batch; what the sensitivity (eq. 2) differentiates. It runs under bf16
    autocast when training does, in fp32 otherwise (also when training runs fp16)."""
    loss_of = task_loss(head)

    def loss_fn(model: EncoderWithHead, c: Batch) -> Tensor:
        b = to_device(c, device)
        with sensitivity_autocast(device.type, amp):
            loss = loss_of(model_forward(model, head)(b), b)
        return loss / max(1, count_units(head, c))

    return loss_fn


def language_means(scores: dict[str, float], eval_langs: Sequence[str] | None) -> dict[str, float]:
    """Zero-shot tasks (task.eval_langs): "<split>/avg/<metric>", the mean over the languages of
    "<split>/<lang>/<metric>" for dev and test, as the paper reports it (e.g. test/avg/f1);
    {} for other tasks, whose eval sets may also hold a slash (MNLI's dev/matched)."""
    per_lang: dict[str, list[float]] = {}
    for key, value in scores.items():
        split, *lang, name = key.split("/")
        if len(lang) == 1 and lang[0] in (eval_langs or ()) and split in ("dev", "test"):
            per_lang.setdefault(f"{split}/avg/{name}", []).append(value)
    return {k: sum(v) / len(v) for k, v in per_lang.items() if len(v) > 1}


def _check_head(data: NLUData, divergence: str, task_name: str) -> None:
    """The same rule as the config checks, for task modules that cannot tell their head early."""
    if data.head == "regression" and divergence != "mse":
        raise ConfigError(
            f"divergence={divergence} needs probabilities; task {task_name} is a regression "
            "task: use divergence=mse"
        )
    if data.head != "regression" and divergence not in CLASSIFICATION_DIVERGENCES:
        raise ConfigError(
            f"divergence={divergence} is for regression outputs; task {task_name} has a "
            f"{data.head} head: use divergence=x (or js, jeffrey)"
        )


def _start(s: RunSettings, out_dir: Path, resume_dir: Path | None):
    """Device, autocast dtype (bf16 on CUDA), threads, seeds, and the checkpoint directory."""
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        raise ConfigError(
            "NLU fine-tuning runs in one process; torchrun (DDP) is for translation so far: "
            "run idistill without torchrun"
        )
    device = pick_device(s.trainer.device)
    if s.trainer.num_threads:
        torch.set_num_threads(s.trainer.num_threads)
    torch.manual_seed(s.seed)
    random.seed(s.seed)
    save_dir = resume_dir or Path(s.trainer.save_dir or out_dir / "checkpoints")
    save_dir.mkdir(parents=True, exist_ok=True)
    return device, autocast_dtype(s.trainer.precision, device), save_dir


def run(
    s: RunSettings, out_dir: Path, tracker, *, resume_dir: Path | None = None, progress: bool = True
) -> FinetuneResult:
    """Fine-tune, evaluate every epoch, keep the best checkpoint by the task's dev metric, then
    score every eval set with it and write test predictions; log everything to `tracker`."""
    from tqdm import tqdm

    t, m = s.trainer, s.method
    device, amp, save_dir = _start(s, out_dir, resume_dir)

    # ---- data
    tokenizer = load_tokenizer(s.model)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    data = nlu_module(s.task).load(s.task, tokenizer, s.data_dir)
    _check_head(data, m.divergence, s.task["name"])
    head, train_set = data.head, data.train
    tracker.set_tags({"head": head, **{k: str(s.task[k]) for k in ("glue_task",) if s.task.get(k)}})
    log.info(
        "data: %d train features, eval sets %s, %s head with %d labels",
        len(train_set),
        ", ".join(f"{k} ({len(v.features)})" for k, v in data.evals.items()),
        head,
        data.num_labels,
    )

    # ---- model and optimizer
    model = build_encoder(s.model, head, data.num_labels).to(device)
    optimizer, opt_name = make_optimizer(model, s)
    scaler = loss_scaler(amp, device)  # fp16 only
    tracker.log_params({"model.parameters": model.num_parameters(), "optimizer": opt_name})
    log.info(
        "model: %s, %.2fM parameters, %s",
        s.model["name_or_path"],
        model.num_parameters() / 1e6,
        opt_name,
    )

    def analysis_batches(n: int) -> list[Batch]:  # a fixed sample: an order training never uses
        order = np.random.default_rng([s.seed, 0]).permutation(len(train_set))
        return [
            collate([train_set[i] for i in order[lo : lo + t.batch_size]], head, pad_id)
            for lo in range(0, min(len(order), n * t.batch_size), t.batch_size)
        ]

    # checks analysis.include/exclude against the model before training
    analysis = RunAnalysis(model, s.analysis, unit_loss(head, device, amp), analysis_batches)

    per_epoch = math.ceil(len(train_set) / (t.batch_size * t.update_freq))  # updates
    total = min(t.max_updates, per_epoch * t.max_epochs) if t.max_epochs else t.max_updates
    warmup = round(t.warmup_ratio * total) if t.warmup_ratio is not None else t.warmup_updates
    alpha_total = min(m.total_updates, total)  # N of the adaptive schedule: at most the run
    alpha_per_batch = s.task.get("alpha_per", "unit") == "batch"
    id_mask = s.task.get("id_mask", "labels")
    eval_batch = 2 * t.batch_size * max(1, m.effective_k)  # no K copies, no gradients
    log.info("%d updates (%d per epoch), warm-up %d", total, per_epoch, warmup)

    update, epoch, batch_pos, best = 0, 1, 0, -math.inf
    if resume_dir is not None:
        ckpt = torch.load(resume_dir / LAST, map_location=device, weights_only=False)
        model.load_state_dict(ckpt["model"])
        optimizer.load_state_dict(ckpt["optimizer"])
        if scaler is not None and "scaler" in ckpt:
            scaler.load_state_dict(ckpt["scaler"])
        update, epoch, batch_pos, best = (ckpt[k] for k in ("update", "epoch", "batch_pos", "best"))
        _set_rng_state(ckpt["rng"])
        log.info("resumed from %s at update %d (epoch %d)", resume_dir, update, epoch)

    def checkpoint(score: float | None, finished: bool = False) -> None:
        nonlocal best
        if score is not None and score > best:  # higher is better for every NLU metric
            best = score
            atomic_save(
                {"model": model.state_dict(), "update": update, "score": score}, save_dir / BEST
            )
        position = {"update": update, "epoch": epoch, "batch_pos": batch_pos, "best": best}
        weights = {"model": model.state_dict(), "optimizer": optimizer.state_dict()}
        if scaler is not None:
            weights["scaler"] = scaler.state_dict()
        atomic_save({**weights, **position, "rng": _rng_state(), "settings": s.to_dict()},
                    save_dir / LAST)  # fmt: skip
        meta = {"config_hash": s.config_hash(), "update": update, "run_id": tracker.run_id}
        write_meta(save_dir, {**meta, "finished": finished})

    def evaluate(names) -> dict[str, float]:
        scores = {}
        for name in names:
            outputs = predict(
                model, data.evals[name].features, head, pad_id, eval_batch, device, amp
            )
            scores |= {f"{name}/{k}": v for k, v in data.evals[name].score(outputs).items()}
        return scores

    def run_validation() -> float:
        scores = evaluate([data.select_on])
        tracker.log_metrics(scores, step=update)
        log.info("update %d | %s", update, " | ".join(f"{k} {v:.4f}" for k, v in scores.items()))
        return scores[f"{data.select_on}/{data.metric}"]

    step_settings = dict(method=m, device=device, amp=amp, clip_norm=t.clip_norm, id_mask=id_mask)
    step_settings["scaler"] = scaler

    # ---- the loop
    model.train()
    bar = tqdm(
        total=total,
        initial=update,
        desc="finetune",
        unit="upd",
        disable=not progress,
        dynamic_ncols=True,
        mininterval=1.0 if sys.stderr.isatty() else 30.0,
    )
    window = {"loss": 0.0, "ce": 0.0, "id": 0.0, "units": 0, "batches": 0, "n": 0}
    started = time.perf_counter()
    while update < total:
        order = np.random.default_rng([s.seed, epoch]).permutation(len(train_set))
        batches = [order[i : i + t.batch_size] for i in range(0, len(order), t.batch_size)]
        while batch_pos < len(batches) and update < total:
            group = batches[batch_pos : batch_pos + t.update_freq]
            if t.lr_schedule == "linear":
                lr = linear_lr(update + 1, t.lr, warmup, total)
            else:
                lr = inverse_sqrt_lr(update + 1, t.lr, max(1, warmup), t.warmup_init_lr)
            for g in optimizer.param_groups:
                g["lr"] = lr
            alpha = alpha_at(m.schedule, m.alpha, update, alpha_total, m.p, m.q)
            collated = [collate([train_set[i] for i in idx], head, pad_id) for idx in group]
            step_loss, step_ce, step_id, units = finetune_step(
                model, optimizer, collated, head, alpha, alpha_per_batch, **step_settings
            )
            if not math.isfinite(step_loss):  # the step was not applied
                raise NonFiniteLoss(
                    f"non-finite loss ({step_loss}) at update {update + 1}; the last good "
                    f"checkpoint is kept in {save_dir}"
                )
            update += 1
            batch_pos += len(group)

            window["loss"] += step_loss
            window["ce"] += step_ce
            window["id"] += step_id
            window["units"] += units
            window["batches"] += len(group)
            window["n"] += 1
            bar.update(1)
            if update % t.log_every == 0 or update == total:
                now = time.perf_counter()
                metrics = {
                    "train/loss": window["loss"] / window["units"],
                    "train/ce": window["ce"] / window["units"],
                    "train/id_loss": window["id"] / window["units"],
                    "train/alpha": alpha,
                    # the weight per unit: alpha' x the window's mean units per batch (batch)
                    "train/effective_alpha": alpha * window["units"] / window["batches"]
                    if alpha_per_batch
                    else alpha,
                    "train/lr": lr,
                    "train/updates_per_s": window["n"] / (now - started),
                }
                tracker.log_metrics(metrics, step=update)
                bar.set_postfix(loss=f"{metrics['train/loss']:.3f}", lr=f"{lr:.2e}")
                window = {"loss": 0.0, "ce": 0.0, "id": 0.0, "units": 0, "batches": 0, "n": 0}
                started = now
            analysis.during(update, tracker)  # analysis.track_every: sensitivity statistics
            epoch_done = batch_pos >= len(batches)
            if validation_due(update, total, t.validate_every, epoch_done):
                checkpoint(run_validation())
        if batch_pos >= len(batches):
            epoch, batch_pos = epoch + 1, 0
    bar.close()
    checkpoint(None, finished=True)

    # ---- every eval set with the best checkpoint; test predictions as files
    best_state = torch.load(save_dir / BEST, map_location=device, weights_only=False)
    model.load_state_dict(best_state["model"])
    final: dict[str, float] = {}
    for name, eval_set in data.evals.items():
        outputs = predict(model, eval_set.features, head, pad_id, eval_batch, device, amp)
        final |= {f"{name}/{k}": v for k, v in eval_set.score(outputs).items()}
        if eval_set.write is not None:
            tracker.log_artifact(eval_set.write(outputs, out_dir / "predictions"), "predictions")
    final |= language_means(final, s.task.get("eval_langs"))  # zero-shot tasks
    tracker.log_metrics({**final, f"best/{data.select_on}/{data.metric}": best}, step=update)
    log.info(
        "best checkpoint (update %d): %s",
        best_state["update"],
        " | ".join(f"{k} {v:.4f}" for k, v in final.items()),
    )
    test_key = next(
        (k for k in final if k.startswith("test") and k.endswith(f"/{data.metric}")), None
    )
    keys = (f"test/avg/{data.metric}", test_key, f"{data.select_on}/{data.metric}")
    objective = next((final[k] for k in keys if k in final), None)
    selected = f"{data.select_on}/{data.metric}"
    analysis.after(  # analysis=sensitivity / pruning of the best checkpoint
        evaluate=lambda: evaluate([data.select_on])[selected],
        metric=selected,
        tracker=tracker,
        out_dir=out_dir,
        step=update,
        label=f"{m.name} K={m.effective_k}",
        progress=progress,
    )
    return FinetuneResult(update, best, final, objective, save_dir)
