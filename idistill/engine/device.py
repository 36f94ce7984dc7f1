"""Where a run computes: the device, the autocast dtype, fp16's loss scaler, batch copies and
the random state a checkpoint carries."""

from __future__ import annotations

import os
import random
from pathlib import Path

import torch


def pick_device(name: str) -> torch.device:
    """auto: CUDA when there is a GPU, else CPU."""
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("trainer.device=cuda but no GPU is visible; use trainer.device=auto")
    return torch.device(name)


def thread_share(jobs: int) -> int:
    """Intra-op threads for each of `jobs` processes training at once on this machine's cores
    (those this process may run on): each its share, so their OpenMP threads do not fight."""
    return max(1, len(os.sched_getaffinity(0)) // max(1, jobs))


def native_bf16_cpu(cpuinfo: str = "/proc/cpuinfo") -> bool:
    """The CPU computes bf16 in hardware (x86's avx512_bf16 or amx_bf16 flag, Arm's bf16
    feature), read from the kernel's CPU flags, not assumed: there bf16 matmuls run ~2x as fast
    as fp32 ones."""
    try:
        text = Path(cpuinfo).read_text()
    except OSError:  # not Linux: no claim
        return False
    flags = {  # x86 lists "flags", Arm "Features"
        f
        for line in text.splitlines()
        if line.startswith(("flags", "Features"))
        for f in line.split()
    }
    return bool(flags & {"avx512_bf16", "amx_bf16", "bf16"})


def resolve_precision(precision: str, device: torch.device) -> str:
    """What trainer.precision=auto means on `device`: bf16 on CUDA, fp32 on a CPU. (Even with
    native bf16 a CPU runs small models slower in bf16: the demo's update takes 116 ms against
    69 in fp32, while experiment=multi30k_converged's model trains 1.4x as fast; such
    experiments set bf16 themselves.) Any other setting as given."""
    if precision != "auto":
        return precision
    return "bf16" if device.type == "cuda" else "fp32"


def autocast_dtype(precision: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype of `precision` (auto: `resolve_precision`); None for fp32. fp16 makes
    the step scale the loss (`loss_scaler`)."""
    return {"bf16": torch.bfloat16, "fp16": torch.float16}.get(resolve_precision(precision, device))


def loss_scaler(amp: torch.dtype | None, device: torch.device) -> torch.amp.GradScaler | None:
    """fp16's dynamic loss scaler (steps whose gradients overflow are skipped); None otherwise."""
    if amp != torch.float16:
        return None
    return torch.amp.GradScaler(device.type)


def to_device(batch: dict, device: torch.device) -> dict:
    """The tensors of `batch` to `device` (other values as they are); to a GPU through pinned
    memory, so the copy does not block."""

    def copy(v):
        if not isinstance(v, torch.Tensor):
            return v
        return (v.pin_memory() if device.type == "cuda" else v).to(device, non_blocking=True)

    return {k: copy(v) for k, v in batch.items()}


def rng_state() -> dict:
    """torch's, Python's and (where there is one) CUDA's random state."""
    state = {"torch": torch.get_rng_state(), "python": random.getstate()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    """Restore what `rng_state` saved."""
    torch.set_rng_state(state["torch"])
    random.setstate(state["python"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
