"""The run being trained: its parts (device, model, optimizer, analyses, checkpoint folder) set
up once, and its state restored from the last checkpoint when it resumes."""

from __future__ import annotations

import logging
import random
from dataclasses import dataclass
from pathlib import Path

import torch

from idistill import checkpoint, distributed
from idistill.analysis.analyse import RunAnalysis, sensitivity_autocast
from idistill.config import RunSettings
from idistill.distill import CHECKPOINT_TAG
from idistill.engine.device import (
    autocast_dtype,
    loss_scaler,
    native_bf16_cpu,
    pick_device,
    resolve_precision,
    set_rng_state,
    to_device,
)
from idistill.engine.recipe import Recipe
from idistill.engine.state import TrainState

log = logging.getLogger(__name__)


@dataclass
class Run:
    """What one call of `fit` works with; `state` is what changes as it trains."""

    s: RunSettings
    recipe: Recipe
    tracker: object
    world: distributed.World
    device: torch.device
    amp: torch.dtype | None
    scaler: torch.amp.GradScaler | None
    model: torch.nn.Module
    runner: torch.nn.Module  # what the step calls: the model, DDP-wrapped and/or compiled
    optimizer: torch.optim.Optimizer
    analysis: RunAnalysis
    save_dir: Path
    state: TrainState
    total: int  # updates the run may take
    last_validated: int = -1
    clock: float = 0.0  # perf_counter when training time was last added to state.seconds


def checkpoint_dir(s: RunSettings, out_dir: Path, resume_dir: Path | None) -> Path:
    """Where a run keeps its checkpoints (and its tracking journal): the one it resumes,
    trainer.save_dir, or <run dir>/checkpoints."""
    return resume_dir or Path(s.trainer.save_dir or out_dir / "checkpoints")


def start(recipe: Recipe, s: RunSettings, out_dir: Path, tracker, resume_dir: Path | None) -> Run:
    """Device, seeds, the run directory, the recipe's data and model, and the resumed state."""
    t = s.trainer
    world = distributed.from_env()  # torchrun: one process per GPU (or per CPU worker)
    device = pick_device(t.device)
    if world.size > 1 and device.type == "cuda":
        device = torch.device("cuda", world.local_rank)
    distributed.init(world, device)
    precision = resolve_precision(t.precision, device)  # the config hash keeps "auto"
    amp = autocast_dtype(precision, device)
    tracker.set_tags({"precision": precision})  # what ran
    if precision == "bf16" and device.type == "cpu" and not native_bf16_cpu():
        log.warning(  # emulated bf16
            "trainer.precision=bf16 on a CPU without native bf16 (no avx512_bf16, amx_bf16 or "
            "Arm bf16 flag): emulated there, usually slower than fp32"
        )
    if t.num_threads:
        torch.set_num_threads(t.num_threads)
    torch.manual_seed(s.seed)
    random.seed(s.seed)
    save_dir = checkpoint_dir(s, out_dir, resume_dir)
    save_dir.mkdir(parents=True, exist_ok=True)
    for path in checkpoint.remove_stale_temporaries(save_dir):
        log.warning("removed %s, a checkpoint a killed run left half-written", path)
    if world.main and not checkpoint.has_checkpoint(save_dir):  # resume=true finds it killed
        checkpoint.mark_started(
            save_dir, {"config_hash": s.config_hash(), "run_id": tracker.run_id}
        )
    tracker.set_tags({CHECKPOINT_TAG: str(save_dir.resolve())})  # a later teacher= finds it

    model, optimizer = recipe.setup(device, amp, tracker)
    tracker.log_params({"model.parameters": model.num_parameters()})
    analysis = RunAnalysis(  # checks analysis.include/exclude against the model before training
        model,
        s.analysis,
        sensitivity_loss(recipe, device, amp),
        recipe.analysis_batches,
        main=world.main,  # rank 0 tracks and analyses
    )
    scaler = loss_scaler(amp, device)
    state = TrainState()
    if resume_dir is not None and not checkpoint.has_checkpoint(resume_dir):
        log.info("%s: its run was stopped before its first checkpoint; training starts again there",
                 resume_dir)  # fmt: skip
        resume_dir = None
    if resume_dir is not None:  # the last checkpoint, or the one before it if that is unreadable
        ckpt, path = checkpoint.load_for_resume(resume_dir, device, repair=world.main)
        model.load_state_dict(ckpt["model"])
        if "optimizer" in ckpt:
            optimizer.load_state_dict(ckpt["optimizer"])
        else:  # the best checkpoint was the only readable one
            log.warning("%s holds no optimizer state: the optimizer starts afresh", path)
        if scaler is not None and ckpt.get("scaler"):
            scaler.load_state_dict(ckpt["scaler"])
        state = TrainState.from_checkpoint(ckpt)
        set_rng_state(ckpt["rng"])
        log.info("resumed from %s at update %d (epoch %d)", path, state.update, state.epoch)

    runner = model
    if world.size > 1:
        from torch.nn.parallel import DistributedDataParallel

        runner = DistributedDataParallel(  # starts from rank 0's weights
            model, device_ids=[device.index] if device.type == "cuda" else None
        )
        torch.manual_seed(s.seed * 100_003 + state.update * 1_009 + world.rank)  # own masks
    if t.compile == "model":
        runner = torch.compile(runner)
    per_epoch = recipe.updates_per_epoch()
    total = min(t.max_updates, per_epoch * t.max_epochs) if per_epoch and t.max_epochs else None
    run = Run(
        s,
        recipe,
        tracker,
        world,
        device,
        amp,
        scaler,
        model,
        runner,
        optimizer,
        analysis,
        save_dir,
        state,
        total or t.max_updates,
    )
    run.last_validated = state.update if resume_dir is not None else -1
    return run


def sensitivity_loss(recipe: Recipe, device, amp):
    """loss_fn(model, batch) of the sensitivity analysis: the plain task loss per unit, under
    bf16 autocast when training runs bf16, in fp32 otherwise (also when training runs fp16)."""

    def loss_fn(model, c: dict) -> torch.Tensor:
        b = to_device(c, device)
        with sensitivity_autocast(device.type, amp):
            loss = recipe.task_loss(model, b)
        return loss / max(1, recipe.units(c))

    return loss_fn
