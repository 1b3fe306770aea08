"""torchrun support: process-group setup from the environment torchrun sets, and small collectives.

Launch with ``torchrun --nproc_per_node=N -m lewm_agent.cli train ...`` (or any script calling
``train``); a plain ``python`` run is a world of one and touches no ``torch.distributed`` state.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

from lewm_agent.utils import pick_device

_created_group = False


@dataclass(frozen=True)
class World:
    """This process's place among the training processes."""

    rank: int = 0
    local_rank: int = 0
    size: int = 1

    @property
    def is_main(self) -> bool:
        """Only the main process writes files and shows progress."""
        return self.rank == 0


def setup(device: str = "auto") -> tuple[World, torch.device]:
    """Read ``WORLD_SIZE`` / ``RANK`` / ``LOCAL_RANK`` (set by torchrun) and, for more than one process,
    initialise the process group: NCCL on CUDA (one GPU per local rank), gloo otherwise."""
    size = int(os.environ.get("WORLD_SIZE", "1"))
    if size == 1:
        return World(), pick_device(device)
    world = World(int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0")), size)
    dev = pick_device(device)
    if dev.type == "cuda":
        dev = torch.device("cuda", world.local_rank)
        torch.cuda.set_device(dev)
    if not dist.is_initialized():
        dist.init_process_group("nccl" if dev.type == "cuda" else "gloo")
        global _created_group
        _created_group = True
    return world, dev


def teardown() -> None:
    """Destroy the process group if :func:`setup` created it (a caller's own group is left alone)."""
    global _created_group
    if _created_group and dist.is_initialized():
        dist.destroy_process_group()
    _created_group = False


def all_reduce_sum(x: torch.Tensor) -> torch.Tensor:
    """Sum ``x`` over all processes (identity in a single process)."""
    if dist.is_available() and dist.is_initialized():
        dist.all_reduce(x)
    return x


def barrier() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.barrier()
