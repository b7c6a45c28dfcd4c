"""The sparsifiers' schedules as plain objects, so that the sparsifiers and the FLOP estimator query the same ones.

``step``: main-phase optimizer step, from 1; ``*_fraction``: of ``total_steps``. :class:`UpdateInterval` (RigL
Alg. 1, GraNet Sec. 3.2), :class:`CosineDecay` / :class:`ConstantFraction` (drop fraction: RigL Eq. 1, GraNet),
:class:`CubicDensity` / :class:`ConstantDensity` (Zhu & Gupta 2017, Eq. 1), :class:`FlopSchedule` (read by
:func:`~sparse_exp.sparse.flop_counts.expected_training_ratio`); with ``total_steps=None`` step queries raise::

    >>> CosineDecay(0.3, end_step=750).at(375)
    0.15
    >>> UpdateInterval(100, 0.75, total_steps=1000).steps()
    range(100, 751, 100)
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator, List, Optional, Sequence, Tuple, Union

from sparse_exp.sparse.topology import cosine_fraction


def _steps_of(total_steps: Optional[int], what: str) -> int:
    if total_steps is None:
        raise ValueError(f"{what} needs total_steps (built with total_steps=None: fraction queries only)")
    return total_steps


# ------------------------------------------------------------------------------------ update steps
@dataclass(frozen=True)
class UpdateInterval:
    """Updates at the steps ``t`` with ``t % delta_t == 0`` and ``t <= stop_step``.

    Args:
        delta_t: ΔT, optimizer steps between updates (>= 1).
        stop_fraction: no update after ``stop_step = int(stop_fraction * total_steps)`` (in [0, 1];
            RigL 0.75, GraNet 1.0).
        total_steps: optimizer steps of the run, or None (continuous estimate only).

    Raises:
        ValueError: ``delta_t < 1``, ``stop_fraction`` outside [0, 1] or ``total_steps < 0``.
    """

    delta_t: int
    stop_fraction: float = 1.0
    total_steps: Optional[int] = None

    def __post_init__(self) -> None:
        if self.delta_t < 1:
            raise ValueError(f"delta_t must be an integer >= 1 (optimizer steps), got {self.delta_t}")
        if not 0 <= self.stop_fraction <= 1:
            raise ValueError(f"stop_fraction must be in [0, 1], got {self.stop_fraction}")
        if self.total_steps is not None and self.total_steps < 0:
            raise ValueError(f"total_steps must be >= 0, got {self.total_steps}")

    @property
    def stop_step(self) -> int:
        """Last step that may update: ``int(stop_fraction * total_steps)``."""
        return int(self.stop_fraction * _steps_of(self.total_steps, "UpdateInterval.stop_step"))

    def is_update(self, step: int) -> bool:
        """Whether ``step`` (from 1) is an update step."""
        return step % self.delta_t == 0 and step <= self.stop_step

    def steps(self) -> range:
        """Every update step, ascending (``delta_t, 2 delta_t, ... <= stop_step``)."""
        return range(self.delta_t, self.stop_step + 1, self.delta_t)


# ---------------------------------------------------------------------------------- drop fractions
@dataclass(frozen=True)
class CosineDecay:
    """``minimum + (initial - minimum) (1 + cos(pi step / end_step)) / 2``, ``minimum`` from ``end_step`` on.

    RigL (Evci et al. 2020, Eq. 1): ``minimum = 0``, ``end_step`` = the stop step of the updates.
    GraNet (Liu et al. 2021; VITA-Group/GraNet ``sparselearning/core.py::CosineDecay``): ``minimum``
    ``prune_rate_min``, ``end_step`` = the run's last step. Fractions of a layer's active weights.
    """

    initial: float
    end_step: int
    minimum: float = 0.0

    def at(self, step: int) -> float:
        """The fraction at ``step`` (:func:`~sparse_exp.sparse.topology.cosine_fraction`)."""
        return cosine_fraction(self.initial, step, self.end_step, self.minimum)


@dataclass(frozen=True)
class ConstantFraction:
    """The same fraction ``value`` at every step."""

    value: float

    def at(self, step: int) -> float:
        return self.value


DropFraction = Union[CosineDecay, ConstantFraction]


def drop_fraction_schedule(decay: str, initial: float, end_step: int, minimum: float = 0.0) -> DropFraction:
    """``decay="cosine"`` -> :class:`CosineDecay`, ``"constant"`` -> :class:`ConstantFraction` (``initial``).

    Raises:
        ValueError: another ``decay``.
    """
    if decay == "cosine":
        return CosineDecay(initial, end_step, minimum)
    if decay == "constant":
        return ConstantFraction(initial)
    raise ValueError(f"decay must be 'cosine' or 'constant', got {decay!r}")


# ----------------------------------------------------------------------------------------- density
@dataclass(frozen=True)
class ConstantDensity:
    """A fixed global density ``value`` (static, SET, RigL, pruning at init, mask file; 1 = dense)."""

    value: float

    @property
    def initial(self) -> float:
        return self.value

    @property
    def final(self) -> float:
        return self.value

    def at(self, step: int) -> float:
        return self.value

    def at_fraction(self, progress: float) -> float:
        return self.value

    def update_steps(self) -> Sequence[int]:
        """Steps that may change the density: none."""
        return ()


@dataclass(frozen=True)
class CubicDensity:
    """Gradual pruning's global density (Zhu & Gupta 2017, Eq. 1; GraNet Eq. 1)::

        d = final + (initial - final) * (1 - progress) ** 3

    Step-exact (as ``GradualMagnitudeSparsifier``): updates happen every ``delta_t`` steps; at
    ``step`` the iteration is ``it = step // delta_t`` and ``progress = clamp((it - first_iter) /
    (final_iter - first_iter), 0, 1)`` with ``first_iter = int(start_fraction * total_steps) //
    delta_t`` and ``final_iter = max(first_iter + 1, int(end_fraction * total_steps) // delta_t)``;
    the iterations ``first_iter .. final_iter`` prune. Continuous (:meth:`at_fraction`): ``progress =
    (p - start_fraction) / (end_fraction - start_fraction)`` at the fraction ``p`` of training.

    Args:
        initial: density before pruning (the sparsifiers pass ``max(init_density, final)``).
        final: the target density ``1 - sparsity``.
        start_fraction / end_fraction: the pruning window, fractions of training.
        delta_t: optimizer steps between pruning updates (>= 1).
        total_steps: optimizer steps of the run, or None (:meth:`at_fraction` only).

    Raises:
        ValueError: not ``0 <= final <= initial <= 1``, not ``0 <= start < end <= 1``, ``delta_t < 1``.
    """

    initial: float
    final: float
    start_fraction: float = 0.0
    end_fraction: float = 1.0
    delta_t: int = 1
    total_steps: Optional[int] = None

    def __post_init__(self) -> None:
        if not 0 <= self.final <= self.initial <= 1:
            raise ValueError(f"need 0 <= final ({self.final}) <= initial ({self.initial}) <= 1")
        if not 0 <= self.start_fraction < self.end_fraction <= 1:
            raise ValueError(f"need 0 <= start_fraction ({self.start_fraction}) < end_fraction "
                             f"({self.end_fraction}) <= 1")
        if self.delta_t < 1:
            raise ValueError(f"delta_t must be an integer >= 1 (optimizer steps), got {self.delta_t}")

    @property
    def first_iter(self) -> int:
        """First pruning iteration (its density is ``initial``)."""
        return int(self.start_fraction * _steps_of(self.total_steps, "CubicDensity.first_iter")) // self.delta_t

    @property
    def final_iter(self) -> int:
        """Last pruning iteration (its density is ``final``); at least ``first_iter + 1``."""
        end = int(self.end_fraction * _steps_of(self.total_steps, "CubicDensity.final_iter")) // self.delta_t
        return max(self.first_iter + 1, end)

    def at(self, step: int) -> float:
        """Scheduled density after the update at ``step`` (any step: its iteration ``step // delta_t``)."""
        it = step // self.delta_t
        first, final_iter = self.first_iter, self.final_iter
        progress = min(1.0, max(0.0, (it - first) / (final_iter - first)))
        df = self.final
        return df + (self.initial - df) * (1.0 - progress) ** 3

    def prunes_at(self, step: int) -> bool:
        """Whether ``step`` is a pruning update (a multiple of ``delta_t`` in the window's iterations)."""
        return step % self.delta_t == 0 and self.first_iter <= step // self.delta_t <= self.final_iter

    def update_steps(self) -> Sequence[int]:
        """Every pruning step within ``1 .. total_steps``, ascending."""
        total = _steps_of(self.total_steps, "CubicDensity.update_steps")
        first = max(self.first_iter, 1) * self.delta_t
        return range(first, min(self.final_iter * self.delta_t, total) + 1, self.delta_t)

    def at_fraction(self, progress: float) -> float:
        """Continuous schedule at the fraction ``progress`` of training: ``initial`` up to
        ``start_fraction``, ``final`` from ``end_fraction`` on, cubic between."""
        if progress <= self.start_fraction:
            return self.initial
        if progress >= self.end_fraction:
            return self.final
        frac = (progress - self.start_fraction) / (self.end_fraction - self.start_fraction)
        return self.final + (self.initial - self.final) * (1.0 - frac) ** 3


DensitySchedule = Union[ConstantDensity, CubicDensity]


# ------------------------------------------------------------------------------------ cost model
@dataclass(frozen=True)
class FlopSchedule:
    """What one training run costs per step, as declared by its sparsifier (``flop_schedule``).

    Args:
        density: the global density schedule; a step runs at the density set by the updates
            before it (densities only decrease: pruning never regrows more than it drops).
        dense_gradient: the steps whose mask update reads the dense weight gradient (cost
            ``2 f_S + f_D`` instead of ``3 f_S``, RigL App. H), or None.
        total_steps: optimizer steps of the run; None = continuous estimate only.
    """

    density: DensitySchedule
    dense_gradient: Optional[UpdateInterval] = None
    total_steps: Optional[int] = None

    def segments(self) -> List[Tuple[int, int, float, bool]]:
        """``(first, last, density, dense_at_last)`` blocks covering steps ``1 .. total_steps``:
        steps ``first .. last`` run at ``density``; step ``last`` reads a dense gradient iff
        ``dense_at_last``. Raises ``ValueError`` without ``total_steps``."""
        total = _steps_of(self.total_steps, "FlopSchedule.segments")
        pruning = set(self.density.update_steps())
        dense = set(self.dense_gradient.steps()) if self.dense_gradient is not None else set()
        out: List[Tuple[int, int, float, bool]] = []
        current, done = self.density.initial, 0
        for t in sorted(pruning | dense):
            if t > total:
                break
            out.append((done + 1, t, current, t in dense))
            if t in pruning:
                current = min(current, self.density.at(t))
            done = t
        if done < total:
            out.append((done + 1, total, current, False))
        return out

    def per_step(self) -> Iterator[Tuple[int, float, bool]]:
        """``(step, density during the step, reads a dense gradient)`` for every step from 1."""
        for first, last, density, dense in self.segments():
            for t in range(first, last + 1):
                yield t, density, dense and t == last
