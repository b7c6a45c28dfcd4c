"""Data-parallel training across processes (DDP), from ``torchrun`` or SLURM tasks.

    torchrun --nproc_per_node=2 -m sparse_exp.train ...                     # one node, 2 GPUs
    python -m sparse_exp.train ... hydra/launcher=slurm hydra.launcher.tasks_per_node=2 \\
        hydra.launcher.gpus_per_node=2 -m                                     # SLURM: one task per GPU

The world comes from ``torchrun``'s variables (``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR`` /
``MASTER_PORT``) or, in a SLURM job with several tasks, from submitit's ``TorchDistributedEnvironment``.
Contract: masks are identical on every rank; ``batch_size`` is the global batch and rank r loads and trains on only
its contiguous block of rows of each global batch (:func:`sparse_exp.data.spec.shard_slice`), its loss scaled so that
DDP's averaged gradient is the global batch's mean gradient; evaluation is sharded the same way and gathered
(:func:`sparse_exp.training.metrics.predict`); BatchNorm: DDP's buffer broadcast, or ``dist.sync_bn=true``
(SyncBatchNorm, CUDA only); only rank 0 writes files and logs.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Tuple

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


def process_world() -> Tuple[int, int]:
    """``(rank, world_size)`` of this process's default process group; ``(0, 1)`` when none is initialised."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def sync_buffers_(model: torch.nn.Module) -> None:
    """Copy rank 0's floating-point buffers (BatchNorm running statistics) into ``model`` on every rank, in place
    (one broadcast; no-op for one process or no buffers). Called before the model is read -- evaluation
    (:func:`sparse_exp.training.metrics.predict`), a ticket, the end of an epoch -- not per step: during training
    DDP's own buffer broadcast (``broadcast_buffers=True``) gives every forward rank 0's statistics, and each rank
    then updates them with its own rows until the next forward."""
    if process_world()[1] <= 1:
        return
    by_dtype: "dict[torch.dtype, list[torch.Tensor]]" = {}
    for b in model.buffers():
        if b.is_floating_point():
            by_dtype.setdefault(b.dtype, []).append(b)
    for buffers in by_dtype.values():  # one broadcast per dtype (usually one)
        flat = torch.cat([b.detach().reshape(-1) for b in buffers])
        dist.broadcast(flat, src=0)
        offset = 0
        for b in buffers:
            b.copy_(flat[offset:offset + b.numel()].view_as(b))
            offset += b.numel()


def any_rank(flag: bool, env: DistEnv, device: torch.device) -> bool:
    """True on every rank if ``flag`` is True on any rank (one all-reduce; no-op for one process)."""
    if not env.enabled:
        return flag
    t = torch.tensor([1 if flag else 0], device=device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return bool(t.item())
