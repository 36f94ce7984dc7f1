"""The training run, top to bottom: settings -> data -> model -> loop -> test.

One readable loop: every update runs the K-pass step of `idistill.intra`, validation picks the
best checkpoint, and the test set is translated with beam search and scored with sacreBLEU.
"""

from __future__ import annotations

import contextlib
import logging
import math
import random
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor

from idistill import distributed
from idistill.analysis.analyse import RunAnalysis, sensitivity_autocast
from idistill.checkpoint import BEST, LAST, atomic_save, write_meta
from idistill.config import MethodSettings, RunSettings
from idistill.data.batching import collate, token_batches
from idistill.data.tasks import load_task
from idistill.distill import CHECKPOINT_TAG, load_teacher, teacher_kl
from idistill.evaluate import corpus_bleu, translate
from idistill.intra import intra_distill_loss
from idistill.losses import LabelSmoothedCE, label_smoothed_nll_loss
from idistill.models.transformer import Seq2SeqTransformer, model_config
from idistill.sage import make_optimizer
from idistill.schedule import alpha_at, inverse_sqrt_lr

log = logging.getLogger(__name__)


class NonFiniteLoss(RuntimeError):
    """The loss became NaN or inf; the last good checkpoint is kept."""


@dataclass
class RunResult:
    """What a finished run reports."""

    updates: int
    best_valid_loss: float
    test_bleu: float | None
    bleu_signature: str | None
    save_dir: Path


def pick_device(name: str) -> torch.device:
    """auto: CUDA when there is a GPU, else CPU."""
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("trainer.device=cuda but no GPU is visible; use trainer.device=auto")
    return torch.device(name)


def autocast_dtype(precision: str, device: torch.device) -> torch.dtype | None:
    """bf16 autocast on CUDA by default; fp32 (no autocast) on CPU unless asked; fp16 on
    request (the loop then scales the loss: `loss_scaler`)."""
    if precision == "fp16":
        return torch.float16
    if precision == "bf16" or (precision == "auto" and device.type == "cuda"):
        return torch.bfloat16
    return None


def loss_scaler(amp: torch.dtype | None, device: torch.device) -> torch.amp.GradScaler | None:
    """fp16's dynamic loss scaler (steps whose gradients overflow are skipped); None otherwise."""
    if amp != torch.float16:
        return None
    return torch.amp.GradScaler(device.type)


def build_model(model_cfg: dict, vocab_size: int, pad_id: int) -> Seq2SeqTransformer:
    """The seq2seq transformer of `model=` (transformer_small, switch_small, ...)."""
    return Seq2SeqTransformer(model_config(model_cfg, vocab_size, pad_id))


def to_device(batch: dict, device: torch.device) -> dict:
    """Tensors to `device`; to a GPU through pinned memory, so the copy does not block."""
    if device.type == "cuda":
        return {k: v.pin_memory().to(device, non_blocking=True) for k, v in batch.items()}
    return {k: v.to(device, non_blocking=True) for k, v in batch.items()}


@torch.no_grad()
def validate(model, examples, tokenizer, max_tokens, device, amp, label_smoothing) -> dict:
    """Label-smoothed loss and NLL per target token on `examples` (dropout off)."""
    model.eval()
    loss_sum = nll_sum = ntok = 0.0
    src_lens, tgt_lens = examples.src_lens + 1, examples.tgt_lens + 1  # [N] + eos, + bos / eos
    for idx in token_batches(src_lens, tgt_lens, max_tokens, shuffle=False):
        b = to_device(
            collate(
                [examples[i] for i in idx], tokenizer.pad_id, tokenizer.bos_id, tokenizer.eos_id
            ),
            device,
        )
        with torch.autocast(device.type, dtype=amp, enabled=amp is not None):
            logits = model(b["src_tokens"], b["prev_output_tokens"])  # [B, T, V]
        loss, nll = label_smoothed_nll_loss(logits, b["target"], label_smoothing, tokenizer.pad_id)
        loss_sum, nll_sum, ntok = (
            loss_sum + loss.item(),
            nll_sum + nll.item(),
            ntok + b["ntokens"].item(),
        )
    model.train()
    return {
        "loss": loss_sum / ntok,
        "nll_loss": nll_sum / ntok,
        "ppl": math.exp(min(nll_sum / ntok, 50.0)),
    }


def analysis_batches(examples, tokenizer, max_tokens: int, seed: int, n: int) -> list[dict]:
    """`n` collated training batches for the sensitivity analysis: a fixed random sample
    (epoch 0's order, which training never uses), the same every time it is asked for."""
    src_lens, tgt_lens = examples.src_lens + 1, examples.tgt_lens + 1
    order = token_batches(src_lens, tgt_lens, max_tokens, shuffle=True, seed=seed, epoch=0)
    pad, bos, eos = tokenizer.pad_id, tokenizer.bos_id, tokenizer.eos_id
    return [collate([examples[i] for i in idx], pad, bos, eos) for idx in order[:n]]


def token_loss(label_smoothing: float, pad_id: int, device, amp) -> Callable:
    """loss_fn(model, batch): the plain task loss (label-smoothed CE, no consistency term) per
    target token of a collated batch; what the sensitivity (eq. 2) differentiates. It runs
    under bf16 autocast when training does, in fp32 otherwise (also when training runs fp16)."""

    def loss_fn(model, c: dict) -> Tensor:
        b = to_device({k: c[k] for k in ("src_tokens", "prev_output_tokens", "target")}, device)
        with sensitivity_autocast(device.type, amp):
            logits = model(b["src_tokens"], b["prev_output_tokens"])  # [B, T, V]
        loss, _ = label_smoothed_nll_loss(logits, b["target"], label_smoothing, pad_id)
        return loss / int(c["ntokens"])

    return loss_fn


@dataclass
class StepStats:
    """One update's loss terms, summed over its target tokens (all ranks under DDP)."""

    loss: float
    ce: float
    id_loss: float
    ntokens: int
    aux: dict[str, float]  # extra loss terms (balance_loss, kd_loss), logged as train/<name>
    skipped: bool = False  # fp16: the gradients overflowed and the loss scaler skipped the step


def train_step(
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    batches: list[dict],
    *,
    method: MethodSettings,
    alpha: float,
    pad_id: int,
    label_smoothing: float,
    device: torch.device,
    amp: torch.dtype | None = None,
    clip_norm: float = 0.0,
    teacher: torch.nn.Module | None = None,
    scaler: torch.amp.GradScaler | None = None,
    compile_loss: bool = False,
) -> StepStats:
    """One optimizer update over `batches` (collated, on the CPU; gradient accumulation).

    Each batch gets the K-pass loss of `idistill.intra` (plus the switch balance loss and the
    self-distillation KL when they apply); the gradient is that of the summed loss divided by
    the update's target tokens, then clipped (clip_norm > 0) and applied. With an fp16
    `scaler`, the loss is scaled and an update whose gradients overflow is skipped.
    compile_loss: the fused CE + divergence runs through torch.compile'd kernels.
    """
    core = model.module if hasattr(model, "module") else model  # the DDP-wrapped model
    ntokens = sum(int(b["ntokens"]) for b in batches)
    # Under DDP an update spans every rank's batches and DDP averages the gradients over the
    # ranks: dividing by (all ranks' target tokens / ranks) gives the per-token gradient.
    denominator = ntokens
    if distributed.active():
        total = distributed.all_sum(torch.tensor([float(ntokens)], device=device))
        denominator = total.item() / distributed.size()

    task_loss = LabelSmoothedCE(label_smoothing, pad_id, compiled=compile_loss)  # summed

    def forward(batch):
        return model(batch["src_tokens"], batch["prev_output_tokens"])  # [B, T, V]

    optimizer.zero_grad(set_to_none=True)
    sums: dict[str, Tensor] = {}  # summed on the device: one host sync per update, not per batch

    def add(name: str, value: Tensor) -> None:
        sums[name] = sums.get(name, 0.0) + value.detach().float()

    def accumulate(c: dict) -> None:  # forward and backward of one batch
        b = to_device({k: c[k] for k in ("src_tokens", "prev_output_tokens", "target")}, device)
        n_b = int(c["ntokens"])  # this batch's target tokens (on the CPU: no sync)
        mask = b["target"] != pad_id  # [B, T] the positions that count
        with torch.autocast(device.type, dtype=amp, enabled=amp is not None):
            res = intra_distill_loss(
                forward,
                b,
                task_loss,
                k=method.effective_k,
                alpha=alpha,
                divergence=method.divergence,
                passes=method.passes,
                mask=mask,
            )
            loss = res.loss
            if core.cfg.experts:  # switch models' routing loss; the loss sums over tokens
                balance = core.pop_balance_loss() * n_b
                loss = loss + core.cfg.balance_coef * balance
                add("balance_loss", balance)
            if teacher is not None:  # eq. 3: + KL(p_t || p_s), mean over the passes
                with torch.no_grad():
                    t_logits = teacher(b["src_tokens"], b["prev_output_tokens"])
                kd = sum(teacher_kl(o, t_logits, mask) for o in res.outputs) / len(res.outputs)
                loss = loss + kd
                add("kd_loss", kd)
        loss_of_update = loss / denominator  # its gradient: the per-token loss's of the update
        (scaler.scale(loss_of_update) if scaler else loss_of_update).backward()
        add("loss", loss)
        add("ce", res.task)
        add("id", res.id_loss)

    for i, c in enumerate(batches):
        sync = i == len(batches) - 1 or not hasattr(model, "no_sync")  # DDP: on the last only
        with contextlib.nullcontext() if sync else model.no_sync():
            accumulate(c)

    names = sorted(sums)
    count = sums["loss"].new_tensor(float(ntokens))
    totals = distributed.all_sum(torch.stack([sums[n] for n in names] + [count]))
    values = dict(zip(names + ["ntokens"], totals.tolist(), strict=True))  # one host sync
    if scaler is None and not math.isfinite(values["loss"]):
        raise NonFiniteLoss(f"non-finite loss ({values['loss']})")
    skipped = apply_update(model, optimizer, clip_norm, scaler)
    loss, ce, id_loss = values.pop("loss"), values.pop("ce"), values.pop("id")
    ntokens = int(values.pop("ntokens"))  # all ranks'
    return StepStats(loss, ce, id_loss, ntokens, values, skipped)


def apply_update(
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    clip_norm: float,
    scaler: torch.amp.GradScaler | None,
) -> bool:
    """Clip (clip_norm > 0) and apply the accumulated gradients; with an fp16 `scaler`, unscale
    first and skip an update whose gradients overflowed. Returns whether it was skipped."""
    if scaler is not None:
        scaler.unscale_(optimizer)  # clip the true gradients
    if clip_norm > 0:
        torch.nn.utils.clip_grad_norm_(model.parameters(), clip_norm)
    if scaler is None:
        optimizer.step()
        return False
    scale = scaler.get_scale()
    scaler.step(optimizer)  # skipped when a gradient is inf or NaN
    scaler.update()
    return scaler.get_scale() < scale


def _rng_state() -> dict:
    state = {"torch": torch.get_rng_state(), "python": random.getstate()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    random.setstate(state["python"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def run(
    s: RunSettings, out_dir: Path, tracker, *, resume_dir: Path | None = None, progress: bool = True
) -> RunResult:
    """Train, validate, checkpoint and test one configuration; log everything to `tracker`."""
    from tqdm import tqdm

    t, m = s.trainer, s.method
    # ---- device and seeds
    world = distributed.from_env()  # torchrun: one process per GPU (or per CPU worker)
    device = pick_device(t.device)
    if world.size > 1 and device.type == "cuda":
        device = torch.device("cuda", world.local_rank)
    distributed.init(world, device)
    progress = progress and world.main
    amp = autocast_dtype(t.precision, device)
    scaler = loss_scaler(amp, device)
    if t.num_threads:
        torch.set_num_threads(t.num_threads)
    torch.manual_seed(s.seed)
    random.seed(s.seed)
    save_dir = resume_dir or Path(t.save_dir or out_dir / "checkpoints")
    save_dir.mkdir(parents=True, exist_ok=True)
    tracker.set_tags({CHECKPOINT_TAG: str(save_dir.resolve())})  # a later teacher= finds it

    # ---- data
    data = load_task(s.task, s.lang, s.data_dir)
    tok, train_set = data.tokenizer, data.splits["train"]
    src_lens = train_set.src_lens + 1  # [N] + eos
    tgt_lens = train_set.tgt_lens + 1  # [N] + bos / eos
    log.info(
        "data: %s train, %s valid, %s test pairs, vocabulary %d (%s)",
        len(train_set),
        len(data.splits["valid"]),
        len(data.splits["test"]),
        tok.vocab_size,
        data.path,
    )

    # ---- model and optimizer
    model = build_model(s.model, tok.vocab_size, tok.pad_id).to(device)
    tracker.log_params({"model.parameters": model.num_parameters()})
    log.info("model: %.2fM parameters", model.num_parameters() / 1e6)
    analysis = RunAnalysis(  # checks analysis.include/exclude against the model before training
        model,
        s.analysis,
        token_loss(t.label_smoothing, tok.pad_id, device, amp),
        lambda n: analysis_batches(train_set, tok, t.max_tokens, s.seed, n),
        main=world.main,  # rank 0 tracks and analyses
    )
    teacher = load_teacher(model, Path(m.teacher), device) if m.teacher else None
    optimizer = make_optimizer(  # adamw, or SAGE's sensitivity-scaled variants (method=sage)
        model, m.optimizer, t.lr, t.betas, 1e-8, t.weight_decay, beta3=m.beta3
    )

    update, epoch, batch_pos, best = 0, 1, 0, math.inf
    if resume_dir is not None:
        ckpt = torch.load(resume_dir / LAST, map_location=device, weights_only=False)
        model.load_state_dict(ckpt["model"])
        optimizer.load_state_dict(ckpt["optimizer"])
        update, epoch, batch_pos, best = (
            ckpt["update"],
            ckpt["epoch"],
            ckpt["batch_pos"],
            ckpt["best_valid_loss"],
        )
        _set_rng_state(ckpt["rng"])
        if scaler is not None and ckpt.get("scaler"):
            scaler.load_state_dict(ckpt["scaler"])
        log.info("resumed from %s at update %d (epoch %d)", resume_dir, update, epoch)

    runner = model  # what the training step calls: the model, DDP-wrapped and/or compiled
    if world.size > 1:
        from torch.nn.parallel import DistributedDataParallel

        runner = DistributedDataParallel(  # starts from rank 0's weights
            model, device_ids=[device.index] if device.type == "cuda" else None
        )
        torch.manual_seed(s.seed * 100_003 + update * 1_009 + world.rank)  # own dropout masks
    if t.compile == "model":
        runner = torch.compile(runner)

    def checkpoint(valid_loss: float | None, finished: bool = False) -> None:
        nonlocal best
        state = {
            "model": model.state_dict(),
            "optimizer": optimizer.state_dict(),
            "update": update,
            "epoch": epoch,
            "batch_pos": batch_pos,
            "best_valid_loss": min(best, valid_loss or math.inf),
            "rng": _rng_state(),
            "scaler": scaler.state_dict() if scaler is not None else None,
            "settings": s.to_dict(),
        }
        if valid_loss is not None and valid_loss < best:
            best = valid_loss
            atomic_save(
                {
                    "model": state["model"],
                    "update": update,
                    "valid_loss": best,
                    "settings": state["settings"],
                },
                save_dir / BEST,
            )
        atomic_save(state, save_dir / LAST)
        write_meta(
            save_dir,
            {
                "config_hash": s.config_hash(),
                "update": update,
                "run_id": tracker.run_id,
                "finished": finished,
            },
        )

    def run_validation() -> float:
        v = validate(model, data.splits["valid"], tok, t.max_tokens, device, amp, t.label_smoothing)
        tracker.log_metrics({f"valid/{k}": val for k, val in v.items()}, step=update)
        log.info(
            "update %d | valid loss %.3f | nll %.3f | ppl %.2f",
            update,
            v["loss"],
            v["nll_loss"],
            v["ppl"],
        )
        return v["loss"]

    def validate_and_save() -> None:  # rank 0 validates and writes; the others wait
        nonlocal last_validated
        if world.main:
            checkpoint(run_validation())
        distributed.barrier()
        last_validated = update

    # ---- the loop
    model.train()
    bar = tqdm(
        total=t.max_updates,
        initial=update,
        desc="train",
        unit="upd",
        disable=not progress,
        dynamic_ncols=True,
        mininterval=1.0 if sys.stderr.isatty() else 30.0,  # a batch job's log stays readable
    )
    window = {"loss": 0.0, "ce": 0.0, "id": 0.0, "tokens": 0, "time": time.perf_counter()}
    aux_window: dict[str, float] = {}
    skipped = 0  # fp16 updates skipped by the loss scaler
    last_validated = update if resume_dir is not None else -1
    done = update >= t.max_updates
    while not done and (t.max_epochs is None or epoch <= t.max_epochs):
        batches = token_batches(
            src_lens, tgt_lens, t.max_tokens, shuffle=True, seed=s.seed, epoch=epoch
        )
        while batch_pos < len(batches) and not done:
            group = batches[batch_pos : batch_pos + t.update_freq * world.size]
            if len(group) < world.size:  # DDP: too few batches left to give every rank one
                batch_pos = len(batches)
                break
            lr = inverse_sqrt_lr(update + 1, t.lr, t.warmup_updates, t.warmup_init_lr)
            for g in optimizer.param_groups:
                g["lr"] = lr
            alpha = alpha_at(m.schedule, m.alpha, update, m.total_updates, m.p, m.q)
            collated = [
                collate([train_set[i] for i in idx], tok.pad_id, tok.bos_id, tok.eos_id)
                for idx in group[world.rank :: world.size]  # this rank's share of the update
            ]
            try:
                stats = train_step(
                    runner,
                    optimizer,
                    collated,
                    method=m,
                    alpha=alpha,
                    pad_id=tok.pad_id,
                    label_smoothing=t.label_smoothing,
                    device=device,
                    amp=amp,
                    clip_norm=t.clip_norm,
                    teacher=teacher,
                    scaler=scaler,
                    compile_loss=t.compile != "none",
                )
            except NonFiniteLoss as e:
                raise NonFiniteLoss(
                    f"{e} at update {update + 1}; the last good checkpoint is kept in {save_dir}"
                ) from None
            update += 1
            batch_pos += len(group)
            done = update >= t.max_updates

            window["loss"] += stats.loss
            window["ce"] += stats.ce
            window["id"] += stats.id_loss
            window["tokens"] += stats.ntokens
            skipped += stats.skipped
            for name, value in stats.aux.items():
                aux_window[name] = aux_window.get(name, 0.0) + value
            bar.update(1)
            if update % t.log_every == 0 or done:
                now = time.perf_counter()
                metrics = {
                    "train/loss": window["loss"] / window["tokens"],
                    "train/ce": window["ce"] / window["tokens"],
                    "train/id_loss": window["id"] / window["tokens"],
                    "train/alpha": alpha,
                    "train/lr": lr,
                    "train/tokens_per_s": window["tokens"] / (now - window["time"]),
                }
                metrics |= {f"train/{k}": v / window["tokens"] for k, v in aux_window.items()}
                if scaler is not None:
                    metrics |= {
                        "train/skipped_steps": skipped,
                        "train/loss_scale": scaler.get_scale(),
                    }
                tracker.log_metrics(metrics, step=update)
                bar.set_postfix(
                    loss=f"{metrics['train/loss']:.3f}",
                    lr=f"{lr:.2e}",
                    tok_s=f"{metrics['train/tokens_per_s']:.0f}",
                )
                window = {"loss": 0.0, "ce": 0.0, "id": 0.0, "tokens": 0, "time": now}
                aux_window = {}
            analysis.during(update, tracker)  # analysis.track_every: sensitivity statistics
            if t.validate_every and update % t.validate_every == 0:
                validate_and_save()
        if batch_pos >= len(batches):  # epoch finished
            epoch, batch_pos = epoch + 1, 0
            if not t.validate_every and update != last_validated:
                validate_and_save()
    bar.close()
    if update != last_validated:
        validate_and_save()
    if not world.main:  # rank 0 writes the last checkpoint and tests
        distributed.shutdown()
        return RunResult(update, best, None, None, save_dir)
    checkpoint(None, finished=True)
    distributed.shutdown()

    # ---- test: best checkpoint, beam search, sacreBLEU on the raw references
    best_state = torch.load(save_dir / BEST, map_location=device, weights_only=False)
    model.load_state_dict(best_state["model"])
    test = data.splits["test"]
    refs = data.references["test"]
    if t.test_max_sentences:
        test, refs = test[: t.test_max_sentences], refs[: t.test_max_sentences]

    def test_translations(progress: bool = progress) -> list[str]:
        return translate(
            model,
            test,
            tok,
            device=device,
            max_tokens=t.max_tokens,
            beam=t.beam,
            len_penalty=t.len_penalty,
            max_len_a=t.max_len_a,
            max_len_b=t.max_len_b,
            autocast_dtype=amp,
            progress=progress,
        )

    hyps = test_translations()
    bleu = corpus_bleu(hyps, refs)
    for name, lines in (("test.hyp", hyps), ("test.ref", refs)):  # .ref: idistill-report's
        path = out_dir / name  # paired bootstrap needs both sides
        path.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
        tracker.log_artifact(path)
    tracker.log_metrics({"test/bleu": bleu.score}, step=update)
    tracker.set_tags({"sacrebleu.signature": bleu.signature})
    log.info(
        "test BLEU %.2f (%s) from the checkpoint of update %d",
        bleu.score,
        bleu.signature,
        best_state["update"],
    )
    analysis.after(  # analysis=sensitivity / pruning of the best checkpoint
        evaluate=lambda: corpus_bleu(test_translations(progress=False), refs).score,
        metric="bleu",
        tracker=tracker,
        out_dir=out_dir,
        step=update,
        label=f"{m.name} K={m.effective_k}",
        progress=progress,
    )
    return RunResult(update, best, bleu.score, bleu.signature, save_dir)
