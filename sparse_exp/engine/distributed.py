"""Data-parallel training across processes (DDP), from ``torchrun`` or SLURM tasks.

    torchrun --nproc_per_node=2 -m sparse_exp.train ...                     # one node, 2 GPUs
    python -m sparse_exp.train ... hydra/launcher=slurm hydra.launcher.tasks_per_node=2 \\
        hydra.launcher.gpus_per_node=2 -m                                     # SLURM: one task per GPU

The world comes from ``torchrun``'s variables (``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR`` /
``MASTER_PORT``) or, in a SLURM job step with several tasks (``hydra.launcher.nodes=N tasks_per_node=G``: N x G
ranks), from submitit's ``TorchDistributedEnvironment`` (:func:`slurm_torch_env`). Each rank trains on
``cuda:LOCAL_RANK`` (:func:`rank_device`). Details and the multi-node commands: ``docs/grids.md``.
Contract: masks are identical on every rank; ``batch_size`` is the global batch and rank r loads and trains on only
its contiguous block of rows of each global batch (:func:`sparse_exp.data.spec.shard_slice`), its loss scaled so that
DDP's averaged gradient is the global batch's mean gradient; evaluation is sharded the same way and gathered
(:func:`sparse_exp.training.metrics.predict`); BatchNorm: DDP's buffer broadcast, or ``dist.sync_bn=true``
(SyncBatchNorm, CUDA only); only rank 0 writes files and logs.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from typing import Dict, Mapping, Optional, Tuple

import torch
import torch.distributed as dist

from sparse_exp.config.errors import UserError


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


#: the variables of torch.distributed's ``env://`` rendezvous that :func:`slurm_torch_env` computes
TORCH_VARS = ("MASTER_ADDR", "MASTER_PORT", "RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE")


def slurm_step_tasks(environ: Optional[Mapping[str, str]] = None) -> int:
    """Tasks of the SLURM job step this process is one of (``$SLURM_STEP_NUM_TASKS``; 1 outside a step).

    Only ``srun`` (as submitit's job script runs it) sets it: the batch script of an ``sbatch -n 8`` job, or a
    shell in ``salloc -n 8``, is one process although ``$SLURM_NTASKS`` says 8, and must not wait for 7 more.
    """
    environ = os.environ if environ is None else environ
    if "SLURM_JOB_ID" not in environ:
        return 1
    return int(environ.get("SLURM_STEP_NUM_TASKS") or 1)


def slurm_torch_env() -> Dict[str, str]:
    """The ``env://`` variables (:data:`TORCH_VARS`) of this SLURM task, from submitit's public
    ``submitit.helpers.TorchDistributedEnvironment`` reading this process's ``SLURM_*`` variables.

    ``MASTER_ADDR``: the first host of ``$SLURM_JOB_NODELIST``; ``MASTER_PORT``: ``$MASTER_PORT`` if set, else a
    port in [20000, 60000] drawn from the job id (``<array job>_<task>`` for an array task), so every task of
    the job computes the same one; ``RANK`` = ``$SLURM_PROCID``, ``WORLD_SIZE`` = ``$SLURM_NTASKS``,
    ``LOCAL_RANK`` = ``$SLURM_LOCALID``, ``LOCAL_WORLD_SIZE`` = tasks // ``$SLURM_JOB_NUM_NODES``.
    Works under ``srun`` without submitit too (``$SUBMITIT_EXECUTOR`` is set to ``slurm`` while it is read).
    """
    import submitit

    had = os.environ.get("SUBMITIT_EXECUTOR")
    os.environ["SUBMITIT_EXECUTOR"] = had or "slurm"  # how submitit's JobEnvironment() knows it is in SLURM
    try:
        env = submitit.helpers.TorchDistributedEnvironment()
    finally:
        if had is None:
            del os.environ["SUBMITIT_EXECUTOR"]
    return {"MASTER_ADDR": str(env.master_addr), "MASTER_PORT": str(env.master_port), "RANK": str(env.rank),
            "WORLD_SIZE": str(env.world_size), "LOCAL_RANK": str(env.local_rank),
            "LOCAL_WORLD_SIZE": str(env.local_world_size)}


def export_slurm_torch_env() -> bool:
    """Export :func:`slurm_torch_env` into ``os.environ`` if this process is one of several tasks of a SLURM step
    and no launcher (``torchrun``: ``$WORLD_SIZE``) described the world already; returns whether it did.

    ``MASTER_ADDR`` / ``MASTER_PORT`` already set are kept (a user's choice, the same on every task).
    """
    if "WORLD_SIZE" in os.environ or slurm_step_tasks() <= 1:
        return False
    for key, value in slurm_torch_env().items():
        if key in ("MASTER_ADDR", "MASTER_PORT"):
            os.environ.setdefault(key, value)
        else:
            os.environ[key] = value
    return True


def init_distributed(device_type: str) -> DistEnv:
    """Join the process group if the environment describes more than one process.

    ``torchrun``'s variables are used as they are; a task of a multi-task SLURM step exports its own first
    (:func:`export_slurm_torch_env`). ``WORLD_SIZE=1`` (``torchrun --nproc_per_node 1``) is plain
    single-process training, without a process group.

    Args:
        device_type: ``cuda`` (NCCL backend) or anything else (gloo).
    """
    if dist.is_available() and dist.is_initialized():
        return DistEnv(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", 0)))
    export_slurm_torch_env()
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return DistEnv()
    backend = "nccl" if device_type == "cuda" else "gloo"
    dist.init_process_group(backend=backend)
    return DistEnv(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", 0)))


def quiet_other_ranks(env: DistEnv) -> None:
    """Log only warnings and errors from the ``sparse_exp`` loggers on ranks other than 0, so that a ``torchrun``
    console shows each epoch line once (rank 0's; the ranks train the same model)."""
    if not env.is_main:
        logging.getLogger("sparse_exp").setLevel(logging.WARNING)


def rank_device(env: DistEnv, device: torch.device, cuda_count: Optional[int] = None) -> torch.device:
    """The device this rank trains on: ``cuda:LOCAL_RANK`` for a CUDA run of several ranks, else ``device``.

    A task that sees one GPU only (a cluster binding one GPU per task) uses ``cuda:0``.

    Args:
        cuda_count: GPUs this process sees (default ``torch.cuda.device_count()``).

    Raises:
        sparse_exp.config.errors.UserError: ``LOCAL_RANK`` names a GPU this process does not see.
    """
    if not env.enabled or device.type != "cuda":
        return device
    count = torch.cuda.device_count() if cuda_count is None else cuda_count
    if env.local_rank < count:
        return torch.device("cuda", env.local_rank)
    if count == 1:
        return torch.device("cuda", 0)
    raise UserError(f"rank {env.rank} has LOCAL_RANK={env.local_rank} but sees {count} GPU(s) "
                    f"(CUDA_VISIBLE_DEVICES={os.environ.get('CUDA_VISIBLE_DEVICES', 'unset')}); allowed: one GPU per "
                    "task on a node (hydra.launcher.gpus_per_node = hydra.launcher.tasks_per_node)")


def process_world() -> Tuple[int, int]:
    """``(rank, world_size)`` of this process's default process group; ``(0, 1)`` when none is initialised."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def epoch_totals(loss_sum: torch.Tensor, correct: torch.Tensor, seen: int) -> Tuple[float, int, int]:
    """``(loss sum, correct, seen)`` of an epoch so far (0-d tensors on the training device, ``seen`` in samples),
    summed over the ranks: one all-reduce under DDP, two host syncs for one process."""
    if process_world()[1] <= 1:
        return loss_sum.item(), int(correct.item()), seen
    t = torch.stack([loss_sum.double(), correct.double(),
                     torch.tensor(float(seen), device=loss_sum.device, dtype=torch.float64)])
    dist.all_reduce(t)
    return float(t[0]), int(t[1]), int(t[2])


def rank_accumulators(loss_sum: torch.Tensor, correct: torch.Tensor, seen: int) -> "list[Tuple[float, int, int]]":
    """Every rank's own ``(loss sum, correct, seen)`` of the epoch so far, in rank order (one all-gather under DDP).

    A mid-epoch checkpoint keeps these, not their sum: each resumed rank then adds its remaining batches to its own
    float32 sum, in the uninterrupted run's order, so the epoch's ``train/loss`` stays bitwise the same."""
    rank_world = process_world()
    if rank_world[1] <= 1:
        return [(loss_sum.item(), int(correct.item()), seen)]
    mine = torch.stack([loss_sum.double(), correct.double(),
                        torch.tensor(float(seen), device=loss_sum.device, dtype=torch.float64)])
    every = [torch.empty_like(mine) for _ in range(rank_world[1])]
    dist.all_gather(every, mine)
    return [(float(t[0]), int(t[1]), int(t[2])) for t in every]


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
