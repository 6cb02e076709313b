"""Data parallelism across processes (``torchrun``): one GPU or CPU process per rank, DDP gradients.

Launch the same ``gptlab pretrain`` command under ``torchrun --nproc-per-node N`` (and ``--nnodes``,
``--rdzv-endpoint`` across machines): torchrun sets RANK / WORLD_SIZE / LOCAL_RANK, and this module
joins the process group (NCCL on CUDA, gloo on CPU). Each rank draws its own share of every global
batch; only rank 0 writes logs, plots and checkpoints.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass
class DistInfo:
    """This process's place in the job (rank 0 of 1 when not distributed)."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        """True on the one process that writes files and prints progress."""
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1


def init_distributed(device_type: str) -> DistInfo:
    """Join the torchrun process group if this process was launched by torchrun; else a single rank."""
    if "RANK" not in os.environ or int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return DistInfo()
    info = DistInfo(int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"]), int(os.environ.get("LOCAL_RANK", "0")))
    if not dist.is_initialized():
        backend = "nccl" if device_type == "cuda" else "gloo"
        if device_type == "cuda":
            torch.cuda.set_device(info.local_rank)
        dist.init_process_group(backend=backend)
    return info


def all_reduce_mean(value: float, info: DistInfo, device: torch.device) -> float:
    """The mean of a Python number over all ranks (itself when not distributed)."""
    if not info.enabled:
        return value
    t = torch.tensor([value], dtype=torch.float64, device=device)
    dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return float(t.item()) / info.world_size


def broadcast_flag(flag: bool, info: DistInfo, device: torch.device) -> bool:
    """Rank 0's decision (e.g. "stop now: time is up"), shared so every rank stops at the same step."""
    if not info.enabled:
        return flag
    t = torch.tensor([1 if flag else 0], dtype=torch.int32, device=device)
    dist.broadcast(t, src=0)
    return bool(t.item())


def shutdown(info: DistInfo) -> None:
    """Leave the process group (at the end of a distributed run)."""
    if info.enabled and dist.is_initialized():
        dist.destroy_process_group()
