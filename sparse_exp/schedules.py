"""Learning-rate schedules as pure functions of the optimizer step.

A schedule maps ``step`` (0-based count of optimizer steps taken) to a multiplier of the base
LR; the engine wraps it in ``torch.optim.lr_scheduler.LambdaLR`` stepped once per iteration,
so resuming restores the LR exactly from the step counter.

``step``: x``gamma`` at each milestone fraction of training (Sup-tickets / GraNet CIFAR
protocol: x0.1 at 1/2 and 3/4). ``cosine``: half-cosine from 1 to ``min_factor``.
``constant``. All have an optional linear warm-up over ``warmup_epochs``.
"""

from __future__ import annotations

import math
from typing import Any, Callable

SCHEDULES = ("step", "cosine", "constant")


def lr_factor_fn(cfg: Any, total_steps: int, steps_per_epoch: int) -> Callable[[int], float]:
    """Multiplier ``f(step)`` for the schedule ``cfg`` over ``total_steps`` optimizer steps."""
    warmup = cfg.warmup_epochs * steps_per_epoch
    milestones = [int(round(m * total_steps)) for m in cfg.milestones]

    def base(step: int) -> float:
        if cfg.name == "constant":
            return 1.0
        if cfg.name == "step":
            return cfg.gamma ** sum(step >= m for m in milestones)
        if cfg.name == "cosine":
            t = min(1.0, step / max(1, total_steps))
            return cfg.min_factor + (1 - cfg.min_factor) * 0.5 * (1 + math.cos(math.pi * t))
        raise ValueError(f"schedule.name={cfg.name!r} is not known; allowed: {list(SCHEDULES)}")

    def factor(step: int) -> float:
        if step < warmup:
            return base(step) * (step + 1) / warmup
        return base(step)

    return factor
