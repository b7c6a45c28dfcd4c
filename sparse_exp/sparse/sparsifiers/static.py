"""``dense`` and ``static`` sparsifiers.

``static``: random exact-count masks at initialisation with per-layer densities from the
``distribution`` group (uniform / ER / ERK), never changed: the "Static" / "ERK" baseline of
RigL (Evci et al. 2020, Sec. 4) and of the Sup-tickets tables (Yin et al. 2022, Tables 1-2).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional

import torch

from sparse_exp.config.errors import require
from sparse_exp.config.schema import SparsifierConfig
from sparse_exp.registry import SPARSIFIERS
from sparse_exp.sparse.density_schedules import ConstantDensity, FlopSchedule
from sparse_exp.sparse.masking import masks_from_counts
from sparse_exp.sparse.nm import random_n_per_group
from sparse_exp.sparse.sparsifiers.sparsifier import Sparsifier, check_sparse_target


@dataclass
class DenseSparsifierConfig(SparsifierConfig):
    """``sparsifier=dense``: no masks at all (the dense baseline; ``sparsity`` must be 0)."""

    name: str = "dense"


@dataclass
class StaticSparsifierConfig(SparsifierConfig):
    """``sparsifier=static``: random exact-count mask drawn once at initialisation, then fixed."""

    name: str = "static"


def check_dense_target(cfg: Any) -> None:
    """``sparsity`` = 0 with ``sparsifier=dense``."""
    require(cfg.sparsity == 0, "sparsity", cfg.sparsity, "must be 0 with sparsifier=dense")


@SPARSIFIERS.register("dense", schema=DenseSparsifierConfig, checks=(check_dense_target,))
class DenseSparsifier(Sparsifier):
    """No masks: every prunable weight stays trainable (requires ``sparsity=0``)."""

    name = "dense"

    @classmethod
    def flop_schedule(cls, cfg: Any, total_steps: Optional[int], density: float) -> FlopSchedule:
        """Dense training: density 1 at every step (``3 f_D``, ratio 1)."""
        return FlopSchedule(ConstantDensity(1.0), None, total_steps)

    def init_masks(self) -> None:
        m = self.ctx.masking
        m.enabled = False
        m.target_counts = dict(m.sizes)


@SPARSIFIERS.register("static", schema=StaticSparsifierConfig, checks=(check_sparse_target,))
class StaticSparsifier(Sparsifier):
    """Random exact-count masks drawn once from the run seed, then fixed."""

    name = "static"
    supports_nm = True

    def init_masks(self) -> None:
        m = self.ctx.masking
        counts = self.ctx.target_counts()
        if m.groups:  # N:M: n random ones per group of every sparse layer, the dense layers all ones
            m.set_masks_({n: random_n_per_group(m.shapes[n], *m.groups[n], self.generator) if n in m.groups
                          else torch.ones(m.shapes[n], dtype=torch.bool) for n in m.names})
        else:
            m.set_masks_(masks_from_counts(m.shapes, counts, self.generator))
        m.target_counts = counts
        m.apply_(self.ctx.optimizer)
