"""Data-parallel training across processes (`torchrun`): which rank this is, and the few
collective operations the training loop needs. One process per GPU (NCCL), or CPU processes
(gloo); a plain `idistill` run is world size 1 and never touches torch.distributed.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class World:
    """This process's place among the data-parallel processes."""

    rank: int = 0
    size: int = 1
    local_rank: int = 0

    @property
    def main(self) -> bool:
        """Rank 0: the only process that logs, validates, writes checkpoints and tests."""
        return self.rank == 0


def from_env() -> World:
    """The world torchrun describes (RANK, WORLD_SIZE, LOCAL_RANK); size 1 without torchrun."""
    size = int(os.environ.get("WORLD_SIZE", "1"))
    if size == 1:
        return World()
    return World(int(os.environ["RANK"]), size, int(os.environ.get("LOCAL_RANK", "0")))


def init(world: World, device: torch.device) -> None:
    """Join the process group (NCCL on CUDA, gloo on CPU) unless already joined."""
    if world.size == 1 or dist.is_initialized():
        return
    if device.type == "cuda":
        torch.cuda.set_device(device)
    dist.init_process_group("nccl" if device.type == "cuda" else "gloo")


def active() -> bool:
    """Whether this process trains with others."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def size() -> int:
    """Number of data-parallel processes (1 without torchrun)."""
    return dist.get_world_size() if active() else 1


def all_sum(t: torch.Tensor) -> torch.Tensor:
    """`t` summed element-wise over all processes, in place (unchanged without torchrun)."""
    if active():
        dist.all_reduce(t)
    return t


def barrier() -> None:
    """Wait for every process (e.g. while rank 0 validates and writes a checkpoint)."""
    if active():
        dist.barrier()


def shutdown() -> None:
    """Leave the process group at the end of the run."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
