"""Data-parallel training across processes (DDP), from ``torchrun`` or SLURM tasks.

    torchrun --nproc_per_node=2 -m sparse_exp.train ...                     # one node, 2 GPUs
    python -m sparse_exp.train ... hydra/launcher=slurm hydra.launcher.tasks_per_node=2 \\
        hydra.launcher.gpus_per_node=2 -m                                     # SLURM: one task per GPU

The world comes from ``torchrun``'s variables (``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR`` /
``MASTER_PORT``) or, in a SLURM job with several tasks, from submitit's ``TorchDistributedEnvironment``.
Contract: masks are identical on every rank; ``batch_size`` is the global batch (rank r trains on rows r,
r + W, ... of each global batch); only rank 0 writes files and logs.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Iterator, Tuple

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class DistEnv:
    """Where this process sits in the world; ``world_size == 1`` is plain single-process training."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1


def init_distributed(device_type: str) -> DistEnv:
    """Join the process group if the environment describes more than one process.

    Args:
        device_type: ``cuda`` (NCCL backend) or anything else (gloo).
    """
    if dist.is_available() and dist.is_initialized():
        return DistEnv(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", 0)))
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1 and int(os.environ.get("SLURM_NTASKS", "1")) > 1 \
            and "SLURM_JOB_ID" in os.environ:
        import submitit

        submitit.helpers.TorchDistributedEnvironment().export(set_cuda_visible_devices=False)
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return DistEnv()
    backend = "nccl" if device_type == "cuda" else "gloo"
    dist.init_process_group(backend=backend)
    return DistEnv(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", 0)))


class ShardedLoader:
    """Rank ``rank`` of ``world`` gets rows ``rank::world`` of every global batch of ``loader``."""

    def __init__(self, loader, env: DistEnv) -> None:
        self.loader, self.env = loader, env

    def __len__(self) -> int:
        return len(self.loader)

    def iterate(self, epoch: int) -> Iterator[Tuple[torch.Tensor, torch.Tensor]]:
        r, w = self.env.rank, self.env.world_size
        for x, y in self.loader.iterate(epoch):
            yield x[r::w], y[r::w]


def broadcast_buffers_(buffers: "list[torch.Tensor]", env: DistEnv) -> None:
    """Copy rank 0's ``buffers`` (BatchNorm running statistics) to every rank, in place (no-op for one
    process or no buffers). Each rank's BN sees only its shard of a batch, so without this the ranks'
    running statistics drift apart after every step (DDP's own broadcast happens only at the next forward)."""
    if not env.enabled or not buffers:
        return
    flat = torch._utils._flatten_dense_tensors(buffers)  # one collective per step, not one per buffer
    dist.broadcast(flat, src=0)
    for b, synced in zip(buffers, torch._utils._unflatten_dense_tensors(flat, buffers)):
        b.copy_(synced)


def any_rank(flag: bool, env: DistEnv, device: torch.device) -> bool:
    """True on every rank if ``flag`` is True on any rank (one all-reduce; no-op for one process)."""
    if not env.enabled:
        return flag
    t = torch.tensor([1 if flag else 0], device=device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return bool(t.item())
