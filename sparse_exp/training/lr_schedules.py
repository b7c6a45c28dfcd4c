"""Learning-rate schedules (``schedule=<name>``) as pure functions of the optimizer step.

A schedule maps ``step`` (0-based count of optimizer steps taken) to a multiplier of the base LR; the
loop wraps it in ``torch.optim.lr_scheduler.LambdaLR`` stepped once per iteration, so resuming restores
the LR exactly from the step counter.

``step``: x``gamma`` at each milestone fraction of training (Sup-tickets / GraNet CIFAR protocol: x0.1
at 1/2 and 3/4). ``cosine``: half-cosine from 1 to ``min_factor``. ``constant``. All have an optional
linear warm-up over ``warmup_epochs``. Each registers itself (:data:`sparse_exp.registry.SCHEDULES`) as
``fn(cfg, total_steps) -> (step -> multiplier)``; config values are read once, not per step.
:func:`remove_param_group` takes a parameter group out of the optimizer and its scheduler mid-run.
"""

from __future__ import annotations

import math
from typing import Any, Callable, Optional

import torch

from sparse_exp.config.errors import require
from sparse_exp.registry import SCHEDULES

LRFactor = Callable[[int], float]


@SCHEDULES.group_check
def check_schedule(cfg: Any) -> None:
    """Milestones, ``gamma``, ``min_factor`` and ``warmup_epochs`` (every schedule)."""
    sch = cfg.schedule
    require(all(0 < m < 1 for m in sch.milestones) and list(sch.milestones) == sorted(sch.milestones),
            "schedule.milestones", list(sch.milestones), "must be increasing fractions of training in (0, 1)")
    require(0 < sch.gamma <= 1, "schedule.gamma", sch.gamma, "must be in (0, 1]")
    require(0 <= sch.min_factor <= 1, "schedule.min_factor", sch.min_factor, "must be in [0, 1]")
    # warm-up may span the whole run (an epochs=1 check of the Fashion-MNIST recipe, which warms up 1 epoch)
    require(0 <= sch.warmup_epochs <= cfg.epochs, "schedule.warmup_epochs", sch.warmup_epochs,
            f"must be in [0, epochs={cfg.epochs}]")


@SCHEDULES.register("constant")
def constant(cfg: Any, total_steps: int) -> LRFactor:
    """Multiplier 1 throughout."""
    return lambda step: 1.0


@SCHEDULES.register("step")
def step_decay(cfg: Any, total_steps: int) -> LRFactor:
    """x``gamma`` at each of ``milestones`` (fractions of ``total_steps``, rounded to steps)."""
    milestones = [int(round(m * total_steps)) for m in cfg.milestones]
    gamma = cfg.gamma
    return lambda step: gamma ** sum(step >= m for m in milestones)


@SCHEDULES.register("cosine")
def cosine(cfg: Any, total_steps: int) -> LRFactor:
    """Half-cosine from 1 at step 0 to ``min_factor`` at ``total_steps`` (then flat)."""
    lo = cfg.min_factor

    def factor(step: int) -> float:
        t = min(1.0, step / max(1, total_steps))
        return lo + (1 - lo) * 0.5 * (1 + math.cos(math.pi * t))

    return factor


def lr_factor_fn(cfg: Any, total_steps: int, steps_per_epoch: int) -> LRFactor:
    """Multiplier ``f(step)`` for the schedule ``cfg`` over ``total_steps`` optimizer steps, with a linear
    warm-up ``(step + 1) / warmup_steps`` over the first ``warmup_epochs * steps_per_epoch`` steps.

    Raises:
        sparse_exp.config.errors.ConfigError: unknown ``cfg.name``.
    """
    warmup = cfg.warmup_epochs * steps_per_epoch
    base = SCHEDULES.build(cfg.name, cfg, total_steps)

    def factor(step: int) -> float:
        if step < warmup:
            return base(step) * (step + 1) / warmup
        return base(step)

    return factor


def remove_param_group(optimizer: torch.optim.Optimizer, scheduler: Optional[Any], index: int) -> None:
    """Remove parameter group ``index`` from ``optimizer`` (with its parameters' optimizer state, e.g.
    momentum buffers) and from ``scheduler``, in place; the other groups' LRs go on exactly as before.

    The scheduler (a ``torch.optim.lr_scheduler.LRScheduler`` such as ``LambdaLR``, or None) keeps
    one entry per group in its state (``base_lrs``, the last LRs; ``LambdaLR``'s ``lr_lambdas``): the
    group's entry is dropped from its ``state_dict()``, which is loaded back (``load_state_dict``), after
    ``LambdaLR``'s ``lr_lambdas`` lose the group's function. Its step counters are untouched, so its next
    ``step()`` and a checkpoint written after the removal are those of a scheduler that never had the group.

    Raises:
        IndexError: no group ``index``.
    """
    groups = optimizer.param_groups
    if not -len(groups) <= index < len(groups):
        raise IndexError(f"optimizer has {len(groups)} parameter groups, no group {index}")
    index %= len(groups)
    n = len(groups)
    for p in groups[index]["params"]:
        optimizer.state.pop(p, None)
    del groups[index]
    if scheduler is None:
        return
    state = scheduler.state_dict()
    for value in state.values():  # the per-group lists (base_lrs, the last LRs, LambdaLR's lr_lambdas)
        if isinstance(value, list) and len(value) == n:
            del value[index]
    lambdas = getattr(scheduler, "lr_lambdas", None)
    if isinstance(lambdas, list) and len(lambdas) == n:
        scheduler.lr_lambdas = lambdas[:index] + lambdas[index + 1:]
    scheduler.load_state_dict(state)
