"""The cyclic phase of Sup-tickets: its budget and its per-iteration learning rate.

Source: Yin et al., "Superposing Many Tickets into One", UAI 2022, Sec. 3.2.1, Eq. 3 and Alg. 1; luuyin/Sup-tickets
(the phase is the last ``cycle_rate`` of the epochs, rounded down to whole cycles). Schedules over
``[lr_low, lr_high]``, with ``t(i) = (mod(i - 1, C) + 1) / C`` for iteration ``i`` = 1, 2, ... of the phase:
``triangle`` (Eq. 3: low -> high at mid-cycle -> low; ticket at the cycle end), ``fge`` (Garipov et al. 2018,
Sec. 3.2: high -> low at mid-cycle -> high; ticket at mid-cycle), ``swa`` (Izmailov et al. 2018, Eq. 2:
``(1 - t) lr_high + t lr_low``, a saw-tooth; ticket at the cycle end) -- the ablation of Table 7.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable, List

from sparse_exp.config.errors import ConfigError

LR_SCHEDULES = ("triangle", "fge", "swa")


@dataclass(frozen=True)
class CyclicBudget:
    """Where the cyclic phase sits in a run, in optimizer steps.

    Attributes:
        total_steps: steps of the whole run (the base method's budget; unchanged).
        start_step: steps of the normal phase (the cyclic phase begins after it).
        cycle_steps: steps per cycle ``C``.
        num_tickets: cycles ``M`` (one cheap ticket each).
    """

    total_steps: int
    start_step: int
    cycle_steps: int
    num_tickets: int

    @property
    def cyclic_steps(self) -> int:
        return self.cycle_steps * self.num_tickets

    def cycle_of(self, step: int) -> int:
        """1-based cycle of the step with 0-based index ``step`` (0 in the normal phase)."""
        if step < self.start_step:
            return 0
        return min(self.num_tickets, (step - self.start_step) // self.cycle_steps + 1)

    def ticket_steps(self, collect_at: float = 1.0) -> List[int]:
        """Completed-step counts after which a ticket is taken (cycle end, or mid-cycle for FGE)."""
        offset = int(round(collect_at * self.cycle_steps))
        return [self.start_step + c * self.cycle_steps + offset for c in range(self.num_tickets)]

    def exploration_steps(self) -> List[int]:
        """Completed-step counts after which the mask is re-explored (each cycle start)."""
        return [self.start_step + c * self.cycle_steps for c in range(self.num_tickets)]


def make_budget(epochs: int, steps_per_epoch: int, cycle_epochs: float, phase_fraction: float,
                num_tickets: int | None) -> CyclicBudget:
    """Budget of the cyclic phase.

    With ``num_tickets`` unset, the phase is the last ``phase_fraction`` of the epochs rounded
    DOWN to whole cycles (reference: 250 epochs, 0.1, cycle 8 -> 3 tickets in 24 epochs); with it
    set, the phase is ``num_tickets * cycle_epochs`` epochs (paper Fig. 4). The total number of
    steps is the base run's either way.

    Raises:
        ValueError: fewer than one ticket fits, or the phase is not shorter than the run.
    """
    total = epochs * steps_per_epoch
    cycle_steps = int(round(cycle_epochs * steps_per_epoch))
    if cycle_steps < 1:
        raise ValueError("a cycle must be at least one step long")
    if num_tickets is None:
        num_tickets = int(math.floor(phase_fraction * epochs / cycle_epochs + 1e-9))
    if num_tickets < 1:
        raise ValueError(f"no ticket fits: the cyclic phase ({phase_fraction} x {epochs} epochs) is shorter than "
                         f"one cycle ({cycle_epochs} epochs)")
    start = total - num_tickets * cycle_steps
    if start <= 0:
        raise ValueError(f"{num_tickets} cycles of {cycle_epochs} epochs leave no normal phase in {epochs} epochs")
    return CyclicBudget(total_steps=total, start_step=start, cycle_steps=cycle_steps, num_tickets=num_tickets)


def cyclic_lr(schedule: str, i: int, cycle_steps: int, lr_low: float, lr_high: float) -> float:
    """LR of iteration ``i`` (1-based within the cyclic phase).

    Args:
        schedule: ``triangle`` | ``fge`` | ``swa``.
        i: iteration index, ``i >= 1``.
        cycle_steps: cycle length ``C`` in iterations.
        lr_low, lr_high: the LR range (paper CIFAR: 0.001 and 0.005).
    """
    t = ((i - 1) % cycle_steps + 1) / cycle_steps
    if schedule == "triangle":  # Eq. 3 with alpha_1 = lr_low, alpha_2 = lr_high
        return (1 - 2 * t) * lr_low + 2 * t * lr_high if t <= 0.5 else (2 - 2 * t) * lr_high + (2 * t - 1) * lr_low
    if schedule == "fge":  # Garipov et al. Eq. 2 with alpha_1 = lr_high, alpha_2 = lr_low
        return (1 - 2 * t) * lr_high + 2 * t * lr_low if t <= 0.5 else (2 - 2 * t) * lr_low + (2 * t - 1) * lr_high
    if schedule == "swa":
        return (1 - t) * lr_high + t * lr_low
    raise ValueError(f"superposer.lr_schedule={schedule!r} is not known; allowed: {list(LR_SCHEDULES)}")


def collect_fraction(schedule: str) -> float:
    """Where in a cycle the LR is lowest, i.e. where the ticket is taken (FGE: mid-cycle)."""
    return 0.5 if schedule == "fge" else 1.0


def sup_tickets_lr_factor(budget: CyclicBudget, normal: Callable[[int], float], schedule: str, lr_low: float,
                          lr_high: float, base_lr: float) -> Callable[[int], float]:
    """LR multiplier (of ``base_lr``) per optimizer step of a Sup-tickets run.

    Args:
        budget: where the cyclic phase sits (:func:`make_budget`).
        normal: the base schedule compressed to the normal phase, ``normal(step) -> multiplier`` for
            ``step < budget.start_step`` (the reference's MultiStep at 1/2 and 3/4 of the normal epochs).
        schedule, lr_low, lr_high: the cyclic LR (:func:`cyclic_lr`), absolute learning rates.
        base_lr: the optimizer's LR (the multiplier of the cyclic phase is ``lr / base_lr``).

    Returns:
        ``factor(step)`` for the 0-based step count, as ``torch.optim.lr_scheduler.LambdaLR`` calls it.
    """

    def factor(step: int) -> float:
        if step < budget.start_step:
            return normal(step)
        i = step - budget.start_step + 1
        return cyclic_lr(schedule, i, budget.cycle_steps, lr_low, lr_high) / base_lr

    return factor


def budget_of(cfg: Any, epochs: int, steps_per_epoch: int) -> CyclicBudget:
    """The cyclic budget of ``superposer`` node ``cfg`` in a run of ``epochs`` x ``steps_per_epoch`` steps.

    Raises:
        ConfigError: naming ``superposer.cycle_epochs``: a cycle shorter than a step, no ticket, or no
            normal phase.
    """
    try:
        return make_budget(epochs, steps_per_epoch, cfg.cycle_epochs, cfg.phase_fraction, cfg.num_tickets)
    except ValueError as exc:
        raise ConfigError("superposer.cycle_epochs", cfg.cycle_epochs,
                          f"{exc} ({steps_per_epoch} steps per epoch)") from None


def ticket_collection_start(cfg: Any, epochs: int, steps_per_epoch: int) -> int:
    """Main-phase steps done when tickets start being collected: the end of the normal phase (the
    ``superposer`` group's query, :data:`sparse_exp.registry.SUPERPOSERS`).

    Raises:
        ConfigError: as :func:`budget_of`.
    """
    return budget_of(cfg, epochs, steps_per_epoch).start_step
