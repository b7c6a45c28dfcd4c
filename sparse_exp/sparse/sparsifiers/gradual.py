"""Gradual magnitude pruning: ``gmp`` (Zhu & Gupta 2017) and ``granet`` (Liu et al., NeurIPS 2021).

Every ``delta_t`` steps between ``prune_start_fraction`` and ``prune_end_fraction`` of training the global
density follows Zhu & Gupta 2017, Eq. 1 (GraNet Eq. 1; VITA-Group/GraNet ``sparselearning/core.py::pruning``)::

    d_t = d_f + (d_i - d_f) * (1 - (t - t_0) / (t_end - t_0)) ** 3    # t = step // delta_t, d_f = 1 - sparsity

with ``d_i`` = ``init_density``, and exactly ``round(d_t * N)`` weights are kept by GLOBAL magnitude (layer
densities emerge). ``gmp``: dense start, pruning only. ``granet``: a random start at ``init_density`` 0.5 shaped
by the ``distribution``, plus regeneration at every update (per layer drop ``prune_rate``, cosine-decayed
0.5 -> 0.005, and regrow by dense-gradient magnitude, Sec. 3.2); defaults as the reference CIFAR README
(ΔT = 1000, pruning over 0 .. 110/160 of training). Deviation: exact counts where the reference draws
Bernoulli masks and compares against a threshold.

N:M (``distribution=nm``, :mod:`sparse_exp.sparse.nm`): the same cubic schedule sets ``n`` per group instead of a
global count, ``n_t = clamp(floor(d_t * m + 1/2), n, n_now)`` (from ``n_init = init_density * m``, ``m`` for GMP's
dense start), and each pruning update keeps the ``n_t`` largest-magnitude active weights of every group
(:func:`~sparse_exp.sparse.topology.group_magnitude_prune`); GraNet's random start holds ``n_init`` per group and its
regeneration regrows within groups. ``n`` only moves in steps of ``1/m`` of density, so the realised density is a
staircase under the cubic curve's rounding; ``python -m sparse_exp.flops`` estimates with the smooth curve.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Dict, Optional

from sparse_exp.config.errors import ConfigError, one_of, require
from sparse_exp.config.schema import SparsifierConfig
from sparse_exp.registry import DISTRIBUTIONS, SPARSIFIERS
from sparse_exp.sparse.density_schedules import CubicDensity, FlopSchedule, UpdateInterval, drop_fraction_schedule
from sparse_exp.sparse.flop_counts import Allocation
from sparse_exp.sparse.masking import masks_from_counts
from sparse_exp.sparse.nm import random_n_per_group
from sparse_exp.sparse.sparsifiers.sparsifier import Sparsifier, check_sparse_target
from sparse_exp.sparse.topology import drop_and_grow, global_magnitude_prune, group_magnitude_prune


@dataclass
class GradualSparsifierConfig(SparsifierConfig):
    """``sparsifier=granet`` / ``gmp``: gradual global magnitude pruning (cubic schedule).

    ``init_density``: density before pruning starts (GraNet 0.5, GMP 1.0 = dense);
    ``prune_start_fraction`` / ``prune_end_fraction``: the pruning window as fractions of
    training; ``delta_t``: steps between pruning (and regeneration) updates.
    ``prune_rate`` (GraNet only): neuroregeneration drop fraction, decayed (``cosine`` to
    ``prune_rate_min`` over the run, or ``constant``) until ``stop_fraction`` of training.
    """

    init_density: float = 0.5
    prune_start_fraction: float = 0.0
    prune_end_fraction: float = 0.6875
    delta_t: int = 1000
    prune_rate: float = 0.5
    prune_rate_decay: str = "cosine"
    prune_rate_min: float = 0.005
    stop_fraction: float = 1.0


def check_gradual(cfg: Any) -> None:
    """Ranges of the gradual-pruning keys (``delta_t``, ``init_density``, the pruning window, the
    regeneration rate and its decay, ``stop_fraction``)."""
    sp = cfg.sparsifier
    require(sp.delta_t >= 1, "sparsifier.delta_t", sp.delta_t, "must be an integer >= 1 (optimizer steps)")
    require(0 < sp.stop_fraction <= 1, "sparsifier.stop_fraction", sp.stop_fraction, "must be in (0, 1]")
    require(0 < sp.init_density <= 1, "sparsifier.init_density", sp.init_density, "must be in (0, 1]")
    require(sp.init_density >= 1 - cfg.sparsity - 1e-9, "sparsifier.init_density", sp.init_density,
            f"must be at least the target density 1 - sparsity = {1 - cfg.sparsity:g} (gradual pruning only "
            "removes weights)")
    require(0 <= sp.prune_start_fraction < sp.prune_end_fraction <= 1, "sparsifier.prune_end_fraction",
            sp.prune_end_fraction,
            f"must satisfy 0 <= prune_start_fraction ({sp.prune_start_fraction}) < prune_end_fraction <= 1")
    require(0 <= sp.prune_rate <= 1, "sparsifier.prune_rate", sp.prune_rate, "must be in [0, 1]")
    require(0 <= sp.prune_rate_min <= sp.prune_rate, "sparsifier.prune_rate_min", sp.prune_rate_min,
            f"must be in [0, prune_rate={sp.prune_rate}]")
    one_of("sparsifier.prune_rate_decay", sp.prune_rate_decay, {"cosine", "constant"})
    pattern = DISTRIBUTIONS.query(cfg.distribution.name, "nm_pattern")(cfg.distribution)
    if pattern is not None:  # N:M: the start must be a whole number of ones per group
        m = pattern[1]
        require(abs(sp.init_density * m - round(sp.init_density * m)) < 1e-9, "sparsifier.init_density",
                sp.init_density, f"must be a multiple of 1/m = 1/{m} with distribution=nm (n_init = init_density x m "
                f"ones per group of {m}); e.g. {round(sp.init_density * m) / m:g}")


def check_pruning_window(cfg: Any, total_steps: int) -> None:
    """The last pruning update (``final_iter * delta_t``) must fall inside the run.

    Raises:
        ConfigError: ``delta_t`` too long for the pruning window of ``total_steps`` steps.
    """
    dt = int(cfg.delta_t)
    final = GradualMagnitudeSparsifier.cubic_density(cfg, total_steps, 0.0).final_iter
    if final * dt > total_steps:
        raise ConfigError("sparsifier.delta_t", dt, f"must be at most prune_end_fraction x total steps "
                          f"({int(cfg.prune_end_fraction * total_steps)} of {total_steps}), or the target sparsity is "
                          "never reached")


def preflight_gradual(plan: Any) -> None:
    """The pruning window against the run's steps (:func:`check_pruning_window`)."""
    check_pruning_window(plan.cfg.sparsifier, plan.total_steps)


@SPARSIFIERS.register("gmp", schema=GradualSparsifierConfig, checks=(check_gradual,), preflight=(preflight_gradual,))
class GradualMagnitudeSparsifier(Sparsifier):
    """GMP: dense start, cubic global magnitude pruning to the target density."""

    name = "gmp"
    regenerate = False
    supports_nm = True

    def __init__(self, cfg: Any, ctx) -> None:
        super().__init__(cfg, ctx)
        #: the cubic density schedule (its pruning iterations ``first_iter .. final_iter``)
        self.density_schedule = self.cubic_density(cfg, ctx.total_steps, ctx.density)
        self.first_iter = self.density_schedule.first_iter
        self.final_iter = self.density_schedule.final_iter
        self.init_density = self.density_schedule.initial
        check_pruning_window(cfg, ctx.total_steps)
        #: neuroregeneration steps (GraNet) or None (GMP)
        self.regeneration = self.regeneration_interval(cfg, ctx.total_steps)
        #: neuroregeneration drop fraction: cosine to ``prune_rate_min`` over the run, or constant
        self.rate_schedule = None if self.regeneration is None else drop_fraction_schedule(
            cfg.prune_rate_decay, cfg.prune_rate, ctx.total_steps, cfg.prune_rate_min)
        #: the target ``(n, m)`` of the N:M layers, or None (unstructured: global magnitude pruning)
        self.nm = getattr(ctx, "nm_pattern", None)  # a minimal context (FLOP estimate, unit tests) has none

    @staticmethod
    def cubic_density(cfg: Any, total_steps: Optional[int], density: float) -> CubicDensity:
        """Zhu & Gupta's schedule from ``max(init_density, density)`` to ``density`` over the pruning window."""
        return CubicDensity(max(float(cfg.init_density), density), density, float(cfg.prune_start_fraction),
                            float(cfg.prune_end_fraction), int(cfg.delta_t), total_steps)

    @classmethod
    def regeneration_interval(cls, cfg: Any, total_steps: Optional[int]) -> Optional[UpdateInterval]:
        """GraNet: every ``delta_t`` steps until ``stop_fraction`` of training; GMP: None."""
        return UpdateInterval(int(cfg.delta_t), float(cfg.stop_fraction), total_steps) if cls.regenerate else None

    @classmethod
    def flop_schedule(cls, cfg: Any, total_steps: Optional[int], density: float) -> FlopSchedule:
        """Cubic density; regeneration grows by dense gradient, so its steps read the dense gradient."""
        return FlopSchedule(cls.cubic_density(cfg, total_steps, density),
                            cls.regeneration_interval(cfg, total_steps), total_steps)

    @classmethod
    def flop_allocation(cls, cfg: Any, distribution: str, shapes: Dict[str, tuple]) -> Allocation:
        """Layer densities emerge from global magnitude pruning; the estimate uses the distribution (N:M: exact,
        every N:M layer at the schedule's density)."""
        if "nm_pattern" in DISTRIBUTIONS.entry(distribution).queries:  # an N:M distribution: no global ranking
            return Allocation(distribution)
        return Allocation(distribution, f"{cls.name} prunes globally by magnitude; the estimate uses "
                                        f"distribution={distribution} at every density of the cubic schedule")

    def density_at(self, step: int) -> float:
        """Scheduled global density after the update at ``step`` (cubic, Zhu & Gupta Eq. 1)."""
        return self.density_schedule.at(step)

    def regenerates_at(self, step: int) -> bool:
        """Whether ``step`` is a neuroregeneration step (GraNet: every ``delta_t`` until ``stop_fraction``)."""
        return self.regeneration is not None and self.regeneration.is_update(step)

    def dense_gradient_at(self, step: int) -> bool:
        """Regeneration grows by dense-gradient magnitude (GraNet Sec. 3.2), so it reads the dense gradient."""
        return self.regenerates_at(step)

    def nm_at(self, step: int, n: int, m: int, current: int) -> int:
        """N:M: ones per group of ``m`` after the update at ``step``: the cubic density rounded to a whole ``n_t``
        (half up), never below the target ``n`` nor above the ``current`` ones (this only prunes)."""
        return max(n, min(current, int(self.density_at(step) * m + 0.5)))

    def init_masks(self) -> None:
        m = self.ctx.masking
        if m.groups:  # N:M: init_density * m per group of every N:M layer (GMP: all m); the dense ones all ones
            n_init = {name: int(round(self.init_density * g[1])) for name, g in m.groups.items()}
            m.set_masks_({n: (random_n_per_group(m.shapes[n], n_init[n], m.groups[n][1], self.generator)
                              if n in m.groups else m.masks[n].new_ones(m.shapes[n])) for n in m.names})
            m.groups = {name: (n_init[name], g[1]) for name, g in m.groups.items()}
            counts = {n: int(m.masks[n].count_nonzero()) for n in m.names}
        elif self.init_density >= 1.0:
            counts = dict(m.sizes)
            m.set_masks_({n: m.masks[n].new_ones(m.shapes[n]) for n in m.names})
        else:
            counts = self.ctx.target_counts(self.init_density)
            m.set_masks_(masks_from_counts(m.shapes, counts, self.generator))
        m.target_counts = counts
        m.apply_(self.ctx.optimizer)

    def after_step(self, step: int) -> bool:
        if step % self.cfg.delta_t != 0:
            return False
        m = self.ctx.masking
        changed = False
        if self.density_schedule.prunes_at(step) and self.nm is not None:
            n, size = self.nm
            current = next(iter(m.groups.values()))[0]  # one schedule: every N:M layer holds the same n_t
            target = self.nm_at(step, n, size, current)
            if target < current:
                group_magnitude_prune(m, self.ctx.optimizer, target, list(m.groups))
                changed = True
        elif self.density_schedule.prunes_at(step):
            keep = int(round(self.density_at(step) * m.total))
            if keep < sum(m.target_counts.values()):
                global_magnitude_prune(m, self.ctx.optimizer, keep, self.ctx.dense_layers)
                changed = True
        if self.regenerates_at(step):
            rate = self.rate_schedule.at(step)
            layers = [n for n in m.names if n not in set(self.ctx.dense_layers)]
            drop_and_grow(m, self.ctx.optimizer, rate, "gradient", self.generator, layers)
            changed = True
        self.updates += int(changed)
        return changed



@SPARSIFIERS.register("granet", schema=GradualSparsifierConfig, checks=(check_sparse_target, check_gradual),
                      preflight=(preflight_gradual,))
class GraNetSparsifier(GradualMagnitudeSparsifier):
    """GraNet: sparse start, gradual global magnitude pruning and gradient neuroregeneration."""

    name = "granet"
    regenerate = True
    growth = "gradient"
