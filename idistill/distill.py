"""Self-distillation (paper Table 1, eq. 3): a frozen teacher's distribution as a second target.

The student minimises KL(y || p_s) + KL(p_t || p_s): the task loss (label-smoothed
cross-entropy) plus the KL divergence from the teacher's output distribution, summed over
target positions like the task loss. The teacher has the student's architecture, runs with
dropout off and gets no gradients.
"""

from __future__ import annotations

import copy
import re
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from idistill.checkpoint import BEST, load
from idistill.config import ConfigError

RUN_ID = re.compile(r"[0-9a-f]{32}")  # an MLflow run id
CHECKPOINT_TAG = "checkpoint_dir"  # run tag: where a run's checkpoints are


def teacher_checkpoint(spec: str, tracking_uri: str | None = None) -> Path:
    """The checkpoint `method.teacher` names: a checkpoint file, a run directory or its
    checkpoints/ (its best checkpoint), or an MLflow run id (the run's best checkpoint)."""
    path = Path(str(spec)).expanduser()
    if path.is_file():
        return path
    for candidate in (path / BEST, path / "checkpoints" / BEST):
        if candidate.is_file():
            return candidate
    if RUN_ID.fullmatch(str(spec)):
        from mlflow import MlflowClient

        try:
            tags = MlflowClient(tracking_uri).get_run(str(spec)).data.tags
        except Exception as e:
            raise ConfigError(f"method.teacher={spec}: no such MLflow run ({e})") from None
        folder = tags.get(CHECKPOINT_TAG)
        if folder and (Path(folder) / BEST).is_file():
            return Path(folder) / BEST
        raise ConfigError(
            f"method.teacher={spec}: MLflow run found, but its best checkpoint is not at "
            f"{folder}/{BEST}; pass the checkpoint path instead"
        )
    raise ConfigError(
        f"method.teacher={spec}: no {BEST} there, and not an MLflow run id; pass a checkpoint, "
        f"a run directory or a run id"
    )


def load_teacher(student: nn.Module, checkpoint: Path, device: torch.device) -> nn.Module:
    """A frozen copy of `student`'s architecture with the weights of `checkpoint`, in eval mode."""
    teacher = copy.deepcopy(student)
    state = load(checkpoint, device)["model"]  # tensors and plain values only (weights_only)
    try:
        teacher.load_state_dict(state)
    except RuntimeError as e:
        raise ConfigError(
            f"method.teacher checkpoint {checkpoint} does not fit this model (the teacher must "
            f"have the student's architecture and vocabulary): {str(e)[:300]}"
        ) from None
    return teacher.eval().requires_grad_(False)


def teacher_kl(student_logits: Tensor, teacher_logits: Tensor, mask: Tensor) -> Tensor:
    """sum over positions where `mask` of KL(p_t || p_s), float32 (eq. 3's second term).

    student_logits, teacher_logits [B, T, V]; mask bool [B, T].
    """
    logp_s = F.log_softmax(student_logits[mask].float(), dim=-1)  # [M, V]
    logp_t = F.log_softmax(teacher_logits[mask].float(), dim=-1)  # [M, V]
    return F.kl_div(logp_s, logp_t, log_target=True, reduction="sum")
