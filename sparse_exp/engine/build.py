"""Build a run from a validated config: ``build_run(cfg) -> Run``, everything a run is made of.

config -> :func:`build_run` -> :class:`sparse_exp.engine.loop.Trainer` (the epoch loop) -> ``summary.json``. The
order is fixed for bitwise reproducibility (the global RNG is seeded first and consumed by the model's initialisation
only): (1) seed, device, distributed environment, data; (2) the callbacks (the training tweaks, then the superposer
group), the model (each callback may ``transform_model`` it), the optimizer with the callbacks' ``param_groups``, the
masks, the FLOP and topology meters (callbacks); (3) the run context (:mod:`sparse_exp.engine.context`: the plan and
the state), the sparsifier built on it, the callbacks' ``setup``; (4) the LR schedule: the sparsifier's
``lr_phases``, each a full base schedule, then the main phase, whose multiplier a callback may replace
(``lr_schedule``) or scale (``lr_multiplier``).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any, Callable, Iterator, List, Tuple

import torch
import torch.nn.functional as F
from torch import nn

from sparse_exp.callbacks.best_val import BestValReport
from sparse_exp.callbacks.flop_meter import FlopMeter
from sparse_exp.callbacks.protocol import CallbackList, LRFactor
from sparse_exp.callbacks.topology_meter import TopologyMeter
from sparse_exp.config.errors import ConfigError
from sparse_exp.data import build_data
from sparse_exp.data.spec import ShardedBatches
from sparse_exp.engine.context import LossFn, RunState, plan_run
from sparse_exp.engine.distributed import DistEnv, init_distributed, quiet_other_ranks, rank_device
from sparse_exp.engine.seeding import seed_everything
from sparse_exp.models import build_configured, reinitialize_
from sparse_exp.registry import SPARSIFIERS, SUPERPOSERS, TWEAKS
from sparse_exp.sparse.flop_counts import layer_forward_flops
from sparse_exp.sparse.masking import Masking
from sparse_exp.training.lr_schedules import lr_factor_fn
from sparse_exp.training.optimizers import build_optimizer

#: epoch id used to draw batches for pruning-at-init scores (never a training epoch)
INIT_BATCHES_EPOCH = 1_000_000


@dataclass
class Run:
    """What one run is made of (built by :func:`build_run`, driven by :class:`sparse_exp.engine.loop.Trainer`).

    The model, masks, optimizer, sparsifier, scheduler, data and config live in :attr:`state` (the one run
    context, :mod:`sparse_exp.engine.context`); the attributes of the same names read them from there.

    Attributes:
        state: the :class:`~sparse_exp.engine.context.RunState` the loop keeps current and every plug-in reads.
        dist: the distributed environment (one process: ``enabled`` is False).
        train_loader: the training loader this rank iterates (a shard of each global batch under DDP).
        train_model: what the step calls (the DDP wrapper, or ``state.model``).
        callbacks: superposers, tweaks and the FLOP meter, in call order.
        loss_fn: the training loss (plain cross-entropy, possibly wrapped by callbacks).
        phases: ``(name, epochs)`` of the run in order: the sparsifier's LR phases, then ``("main", epochs)``.
    """

    state: RunState
    dist: DistEnv
    train_loader: Any
    train_model: nn.Module
    callbacks: CallbackList
    loss_fn: LossFn
    phases: List[Tuple[str, int]]

    cfg = property(lambda self: self.state.cfg, doc="the composed, validated config")
    device = property(lambda self: self.state.device, doc="where the model and the batches live")
    data = property(lambda self: self.state.data, doc="train / val / test loaders")
    model = property(lambda self: self.state.model, doc="the network (not the DDP wrapper)")
    optimizer = property(lambda self: self.state.optimizer, doc="the optimizer")
    masking = property(lambda self: self.state.masking, doc="the masks of the prunable weights")
    sparsifier = property(lambda self: self.state.sparsifier, doc="chooses and evolves the masks")
    scheduler = property(lambda self: self.state.scheduler, doc="per-step LR multiplier (LambdaLR)")

    @property
    def total_epochs(self) -> int:
        """Epochs of the whole run, LR phases included."""
        return sum(epochs for _, epochs in self.phases)

    def phase_at(self, epoch: int) -> str:
        """Name of the phase the 0-based ``epoch`` belongs to."""
        for name, epochs in self.phases:
            if epoch < epochs:
                return name
            epoch -= epochs
        return self.phases[-1][0]


def resolve_device(name: str) -> torch.device:
    """``auto`` -> CUDA if available, else CPU; anything else is passed to ``torch.device``."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def cross_entropy(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Mean cross-entropy of logits ``(N, C)`` against labels ``(N,)``, in nats (the plain training loss)."""
    return F.cross_entropy(logits, y)


def build_callbacks(cfg: Any) -> List[Any]:
    """The config's callbacks: the training tweaks (``TWEAKS``, in the config's order; :class:`CallbackList`
    calls them in their declared ``priority`` order), then the superposer's (``superposer=none`` builds none); last,
    with ``report=best_val``, :class:`~sparse_exp.callbacks.best_val.BestValReport` (it sees the epoch rows and final
    metrics of every callback before it; the FLOP meter, added after them by :func:`build_run`, reads no
    ``val/*`` or ``test/*``)."""
    out = [TWEAKS.build(name, cfg.tweaks[name]) for name in TWEAKS.chosen(cfg)]
    superposer = SUPERPOSERS.build(cfg.superposer.name, cfg.superposer)
    if superposer is not None:
        out.append(superposer)
    # keep last: which model the run reports (after every other callback)
    if cfg.report == "best_val":
        out.append(BestValReport())
    return out


def score_batches(train: Any) -> Callable[[int], Iterator[Tuple[torch.Tensor, torch.Tensor]]]:
    """``batches(n)``: the first ``n`` batches of ``train`` in the order of epoch :data:`INIT_BATCHES_EPOCH` (never a
    training epoch), for pruning-at-init scores."""

    def batches(n: int) -> Iterator[Tuple[torch.Tensor, torch.Tensor]]:
        for i, batch in enumerate(train.iterate(INIT_BATCHES_EPOCH)):
            if i >= n:
                return
            yield batch

    return batches


def phased_lr(phases: List[Tuple[str, int]], steps_per_epoch: int, base: Callable[[int], LRFactor],
              main: LRFactor) -> LRFactor:
    """LR multiplier over the whole run: each LR phase but the last is a full ``base`` schedule over its
    own steps (restarted), the last phase follows ``main`` (0-based steps within it)."""
    if len(phases) == 1:
        return main
    bounds, start = [], 0
    for _, epochs in phases[:-1]:
        n = epochs * steps_per_epoch
        bounds.append((start, start + n, base(n)))
        start += n
    pre = start

    def factor(step: int) -> float:
        if step >= pre:
            return main(step - pre)
        for lo, hi, fn in bounds:
            if step < hi:
                return fn(step - lo)
        raise AssertionError("unreachable")

    return factor


def attach_sparsifier(state: RunState, hooks: CallbackList) -> List[Tuple[str, int]]:
    """Build the config's sparsifier on ``state`` (``state.sparsifier``), set ``state.pre_steps`` from its LR phases
    and call the callbacks' ``setup``; returns the run's phases ``(name, epochs)``, the main phase last."""
    cfg = state.cfg
    state.sparsifier = SPARSIFIERS.build(cfg.sparsifier.name, cfg.sparsifier, state)
    phases = list(state.sparsifier.lr_phases()) + [("main", int(cfg.epochs))]
    state.pre_steps = sum(epochs for _, epochs in phases[:-1]) * state.steps_per_epoch
    hooks.setup(state)
    return phases


def lr_scheduler(state: RunState, hooks: CallbackList,
                 phases: List[Tuple[str, int]]) -> torch.optim.lr_scheduler.LambdaLR:
    """The run's per-step LR schedule on ``state.optimizer``: the config's ``schedule`` for each of ``phases``
    (:func:`phased_lr`), the main phase's multiplier replaced or scaled by the callbacks (``lr_schedule``,
    ``lr_multiplier``). ``LambdaLR`` sets each group's LR to its initial LR x the multiplier of step 0."""
    cfg, steps_per_epoch = state.cfg, state.steps_per_epoch

    def base(n: int) -> LRFactor:
        return lr_factor_fn(cfg.schedule, n, steps_per_epoch)

    main = hooks.lr_schedule(base, state.total_steps)
    return torch.optim.lr_scheduler.LambdaLR(state.optimizer, phased_lr(phases, steps_per_epoch, base, main))


def build_run(cfg: Any) -> Run:
    """Everything a run is made of, from a composed and validated config (see the module doc).

    Raises:
        sparse_exp.config.errors.UserError: data missing or unreadable; a component refuses the config once the
            data's size is known (e.g. a Sup-tickets budget that holds no ticket).
    """
    device = resolve_device(cfg.device)
    if os.environ.get("SLURM_CPUS_PER_TASK"):  # use the CPUs SLURM gave us, not the node's count
        torch.set_num_threads(int(os.environ["SLURM_CPUS_PER_TASK"]))
    sync_bn = bool(cfg.dist.sync_bn)
    if sync_bn and device.type != "cuda":  # SyncBatchNorm's forward raises on CPU tensors
        raise ConfigError("dist.sync_bn", True, f"SyncBatchNorm needs CUDA (NCCL), but the device is {device.type}; "
                          "allowed on this device: false (DDP broadcasts rank 0's BN statistics)")
    dist = init_distributed(device.type)
    quiet_other_ranks(dist)  # one console line per epoch under torchrun, rank 0's
    device = rank_device(dist, device)  # cuda:LOCAL_RANK when several ranks train on GPUs
    if dist.enabled and device.type == "cuda":
        torch.cuda.set_device(device)
    if cfg.deterministic:
        torch.use_deterministic_algorithms(True)
    seed_everything(cfg.seed)
    data = build_data(cfg.dataset, seed=cfg.seed, batch_size=cfg.batch_size, eval_batch_size=cfg.eval_batch_size,
                      device=device)
    spec = data.spec
    # DDP: each rank loads and trains on only its rows of every global batch (evaluation is sharded in
    # training.metrics.predict); pruning-at-init scores, GradInit and BN re-estimation use the full data on every
    # rank (identical results, identical masks)
    train_loader = ShardedBatches(data.train, dist.rank, dist.world_size) if dist.enabled else data.train

    callbacks = build_callbacks(cfg)
    hooks = CallbackList(callbacks)
    model = reinitialize_(build_configured(cfg.model, spec), cfg.model.init)
    model = hooks.transform_model(model).to(device)
    optimizer = build_optimizer(cfg.optimizer, model, hooks.param_groups(model))
    train_model = model
    if dist.enabled:
        ids = [device.index] if device.type == "cuda" else None
        if sync_bn:  # BN statistics of the global batch (in place: the optimizer's parameters are unchanged)
            model = torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)
        # broadcast_buffers: every forward starts from rank 0's BN running statistics; before the model is read
        # (evaluation, tickets, epoch end) they are broadcast once more (engine.distributed.sync_buffers_)
        train_model = torch.nn.parallel.DistributedDataParallel(model, device_ids=ids, broadcast_buffers=True)
    plan = plan_run(cfg, sizes=(data.num_train, data.num_val, data.num_test))
    steps_per_epoch = plan.steps_per_epoch
    assert steps_per_epoch == len(data.train), (steps_per_epoch, len(data.train))
    masking = Masking(model)
    # FLOP accounting (sparse_exp.callbacks.flop_meter): per-layer dense forward FLOPs, once
    meter = FlopMeter(layer_forward_flops(model, (spec.in_channels, spec.image_size, spec.image_size)))
    # mask topology change at each mask update (sparse_exp.callbacks.topology_meter)
    hooks = CallbackList(callbacks + [meter, TopologyMeter()])
    loss_fn = hooks.wrap_loss(cross_entropy)

    state = RunState(plan=plan, model=model, masking=masking, optimizer=optimizer, device=device, data=data,
                     batches=score_batches(data.train), score_loss=hooks.wrap_score_loss(cross_entropy))
    phases = attach_sparsifier(state, hooks)
    state.scheduler = lr_scheduler(state, hooks, phases)
    return Run(state=state, dist=dist, train_loader=train_loader, train_model=train_model, callbacks=hooks,
               loss_fn=loss_fn, phases=phases)
