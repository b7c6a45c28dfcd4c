"""What every training tweak shares: the ``tweaks`` registry's conventions, epoch windows, ramps.

Tweaks (``tweaks=[soft_neurons,ghost_skip,label_smoothing,lrsi]``, any subset) are callbacks
(:mod:`sparse_exp.callbacks.protocol`) built from the config's ``tweaks`` node, one sub-node per chosen tweak
(``tweaks.<name>.*``). Their schedules are in **epochs of the run's own training** (the main phase):
a sparsifier's LR phases before it (the IMP rounds of ``sparsifier=lth``) run with every tweak at its
start value, and epoch ``t`` of a schedule is ``max(main_step, 0) / steps_per_epoch`` (fractional; the
value used for a step is the one at the step's start).

Source: Jaiswal et al., "Training Your Sparse Neural Network Better with Any Mask", ICML 2022
(reference code VITA-Group/ToST); ``../shared/notes/any-mask-tweaks.md`` records what the code does.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional

from sparse_exp.callbacks.protocol import RunState
from sparse_exp.config.errors import ConfigError, require
from sparse_exp.registry import SUPERPOSERS


def schedule_epoch(state: RunState) -> float:
    """Epochs of the main phase completed so far (fractional), 0 during the sparsifier's LR phases."""
    return max(state.main_step, 0) / state.steps_per_epoch


def ramp(t: float, start_epoch: float, end_epoch: float) -> float:
    """0 before ``start_epoch``, 1 from ``end_epoch`` on, linear in between (``end_epoch > start_epoch``)."""
    if t <= start_epoch:
        return 0.0
    if t >= end_epoch:
        return 1.0
    return (t - start_epoch) / (end_epoch - start_epoch)


@dataclass
class RampConfig:
    """A scalar that is ``start`` until ``start_epoch`` and moves linearly to ``end`` at ``end_epoch``.

    ``end: null`` keeps it at ``start`` for the whole run (then ``end_epoch`` is unused). Epochs count
    the run's own training (module doc). Example: ``tweaks.ghost_skip.alpha.end=0
    tweaks.ghost_skip.alpha.end_epoch=30`` anneals the ghost paths' scale from 1 to 0 over 30 epochs.
    """

    start: float = 1.0
    end: Optional[float] = None
    start_epoch: float = 0.0
    end_epoch: Optional[float] = None

    @staticmethod
    def value(cfg: Any, t: float) -> float:
        """The ramp's value at main-phase epoch ``t``."""
        if cfg.end is None:
            return float(cfg.start)
        return float(cfg.start) + (float(cfg.end) - float(cfg.start)) * ramp(t, cfg.start_epoch, cfg.end_epoch)


def check_window(key: str, start_epoch: Any, end_epoch: Any, epochs: int, *, end_required: bool) -> None:
    """``0 <= start_epoch < end_epoch <= epochs`` for the keys ``<key>.start_epoch`` / ``<key>.end_epoch``.

    Raises:
        ConfigError: naming the first bad key; ``end_epoch`` missing when ``end_required`` (an end point
            has no published value: the user sets it).
    """
    require(start_epoch is not None and 0 <= start_epoch <= epochs, f"{key}.start_epoch", start_epoch,
            f"must be in [0, epochs={epochs}]")
    if end_epoch is None:
        if end_required:
            raise ConfigError(f"{key}.end_epoch", None, "must be set: this schedule needs an end epoch and the "
                              f"paper publishes none (an epoch in ({start_epoch}, {epochs}])")
        return
    require(start_epoch < end_epoch <= epochs, f"{key}.end_epoch", end_epoch,
            f"must be in ({start_epoch}, epochs={epochs}] (after {key}.start_epoch)")


def check_ramp(key: str, cfg: Any, epochs: int) -> None:
    """A :class:`RampConfig` node at ``key``: its window when it changes (``end`` set)."""
    if cfg.end is not None:
        check_window(key, cfg.start_epoch, cfg.end_epoch, epochs, end_required=True)


def check_settled_before_cycles(cfg: Any, plan: Any, settles_at: Optional[float], key: str, what: str) -> None:
    """A tweak that changes the network's function until main-phase epoch ``settles_at`` must have
    settled before a superposer starts collecting tickets (tickets and their average must all see the
    same network). When that is, the superposer answers (the ``superposer`` group's query
    ``ticket_collection_start``, :data:`sparse_exp.registry.SUPERPOSERS`; None: it collects none).

    Raises:
        ConfigError: naming ``key``: the change ends inside the cyclic phase.
    """
    if settles_at is None:
        return
    collection_start = SUPERPOSERS.query(cfg.superposer.name, "ticket_collection_start")
    start_step = collection_start(cfg.superposer, int(cfg.epochs), plan.steps_per_epoch)
    if start_step is None:
        return
    start = start_step / plan.steps_per_epoch
    require(settles_at <= start + 1e-9, key, settles_at,
            f"must be <= {start:g}, the epoch where superposer={cfg.superposer.name} starts collecting tickets: "
            f"{what} would differ between the cheap tickets that are averaged (or use superposer=none)")
