"""Dynamic sparse training with a fixed density: ``set`` and ``rigl``.

Both start from a random exact-count mask with the ``distribution``'s layer densities and, every ``delta_t``
steps until ``stop_fraction`` of training, drop each layer's ``drop_fraction`` smallest-magnitude active
weights and regrow as many (:func:`sparse_exp.sparse.topology.drop_and_grow`; counts per layer preserved):
``set`` at random (Mocanu et al., Nature Communications 2018), ``rigl`` by dense-gradient magnitude (Evci et
al., ICML 2020, Alg. 1; google-research/rigl ``sparse_optimizers.py``; defaults ΔT = 100, drop fraction 0.3
cosine-decayed to 0, stop at 75 %). Deviations: SET drops by |w| (as RigL's reimplementation), not positive
and negative weights apart; on a mask-update step the SGD step happens and the update follows it (as the
PyTorch ports; the TF reference skips that step's weight update).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional

from sparse_exp.config.errors import one_of, require
from sparse_exp.config.schema import SparsifierConfig
from sparse_exp.registry import SPARSIFIERS
from sparse_exp.sparse.density_schedules import ConstantDensity, FlopSchedule, UpdateInterval, drop_fraction_schedule
from sparse_exp.sparse.sparsifiers.sparsifier import check_sparse_target
from sparse_exp.sparse.sparsifiers.static import StaticSparsifier
from sparse_exp.sparse.topology import drop_and_grow


@dataclass
class DynamicSparsifierConfig(SparsifierConfig):
    """``sparsifier=set`` / ``rigl``: fixed-density prune-and-regrow.

    ``delta_t``: update interval ΔT in optimizer steps; ``drop_fraction``: fraction of each
    layer's active weights dropped per update (RigL's alpha); ``drop_decay``: ``cosine`` (RigL
    Eq. 1, to 0 at the stop step) or ``constant``; ``stop_fraction``: no updates after this
    fraction of training.
    """

    delta_t: int = 100
    drop_fraction: float = 0.3
    drop_decay: str = "cosine"
    stop_fraction: float = 0.75


def check_dynamic(cfg: Any) -> None:
    """Ranges of ``delta_t``, ``drop_fraction``, ``drop_decay`` and ``stop_fraction``."""
    sp = cfg.sparsifier
    require(sp.delta_t >= 1, "sparsifier.delta_t", sp.delta_t, "must be an integer >= 1 (optimizer steps)")
    require(0 <= sp.drop_fraction <= 1, "sparsifier.drop_fraction", sp.drop_fraction, "must be in [0, 1]")
    one_of("sparsifier.drop_decay", sp.drop_decay, {"cosine", "constant"})
    require(0 < sp.stop_fraction <= 1, "sparsifier.stop_fraction", sp.stop_fraction, "must be in (0, 1]")


def preflight_dynamic(plan: Any) -> None:
    """ΔT must fit before the update stop, or the run would never change its mask (static training)."""
    sp = plan.cfg.sparsifier
    stop = DynamicSparsifier.update_interval(sp, plan.total_steps).stop_step
    require(sp.delta_t <= stop, "sparsifier.delta_t", sp.delta_t,
            f"must be at most stop_fraction x total steps = {stop} ({plan.total_steps} steps of "
            f"{plan.steps_per_epoch} per epoch): no mask update would happen")


class DynamicSparsifier(StaticSparsifier):
    """Fixed-density prune-and-regrow every ``cfg.delta_t`` steps (base of SET and RigL); the
    initial mask is :class:`StaticSparsifier`'s random exact-count mask."""

    growth = "random"

    def __init__(self, cfg: Any, ctx) -> None:
        super().__init__(cfg, ctx)
        #: the update steps: every ``delta_t`` until ``stop_step``
        self.interval = self.update_interval(cfg, ctx.total_steps)
        self.stop_step = self.interval.stop_step
        #: drop fraction per update: RigL Eq. 1 (cosine to 0 at ``stop_step``) or constant
        self.drop_schedule = drop_fraction_schedule(cfg.drop_decay, cfg.drop_fraction, self.stop_step)

    @staticmethod
    def update_interval(cfg: Any, total_steps: Optional[int]) -> UpdateInterval:
        """Every ``cfg.delta_t`` steps until ``cfg.stop_fraction`` of ``total_steps`` (None: fractions only)."""
        return UpdateInterval(int(cfg.delta_t), float(cfg.stop_fraction), total_steps)

    @classmethod
    def flop_schedule(cls, cfg: Any, total_steps: Optional[int], density: float) -> FlopSchedule:
        """Constant density; gradient growth (RigL) reads the dense gradient at every update step."""
        dense = cls.update_interval(cfg, total_steps) if cls.growth == "gradient" else None
        return FlopSchedule(ConstantDensity(density), dense, total_steps)

    def drop_fraction_at(self, step: int) -> float:
        """Drop fraction at ``step``: ``cosine`` (RigL Eq. 1) or ``constant``."""
        return self.drop_schedule.at(step)

    def is_update_step(self, step: int) -> bool:
        """Every ``delta_t`` steps, up to ``stop_fraction`` of training (``step`` counts from 1)."""
        return self.interval.is_update(step)

    def after_step(self, step: int) -> bool:
        if not self.is_update_step(step):
            return False
        layers = [n for n in self.ctx.masking.names if n not in set(self.ctx.dense_layers)]
        drop_and_grow(self.ctx.masking, self.ctx.optimizer, self.drop_fraction_at(step), self.growth,
                      self.generator, layers)
        self.updates += 1
        return True



@SPARSIFIERS.register("set", schema=DynamicSparsifierConfig, checks=(check_sparse_target, check_dynamic),
                      preflight=(preflight_dynamic,))
class SETSparsifier(DynamicSparsifier):
    """SET: magnitude drop, random regrowth."""

    name = "set"
    growth = "random"


@SPARSIFIERS.register("rigl", schema=DynamicSparsifierConfig, checks=(check_sparse_target, check_dynamic),
                      preflight=(preflight_dynamic,))
class RigLSparsifier(DynamicSparsifier):
    """RigL: magnitude drop, dense-gradient regrowth."""

    name = "rigl"
    growth = "gradient"

    def dense_gradient_at(self, step: int) -> bool:
        """Gradient growth reads the dense gradient at every update step (RigL App. H)."""
        return self.is_update_step(step)
