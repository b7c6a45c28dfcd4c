"""``dense`` and ``static`` sparsifiers.

``static``: random exact-count masks at initialisation with per-layer densities from the
``distribution`` group (uniform / ER / ERK), never changed: the "Static" / "ERK" baseline of
RigL (Evci et al. 2020, Sec. 4) and of the Sup-tickets tables (Yin et al. 2022, Tables 1-2).
"""

from __future__ import annotations

from sparse_exp.sparse.masking import masks_from_counts
from sparse_exp.sparse.sparsifiers.base import Sparsifier


class DenseSparsifier(Sparsifier):
    """No masks: every prunable weight stays trainable (requires ``sparsity=0``)."""

    name = "dense"

    def init_masks(self) -> None:
        m = self.ctx.masking
        m.enabled = False
        m.target_counts = dict(m.sizes)


class StaticSparsifier(Sparsifier):
    """Random exact-count masks drawn once from the run seed, then fixed."""

    name = "static"

    def init_masks(self) -> None:
        m = self.ctx.masking
        counts = self.ctx.target_counts()
        m.set_masks_(masks_from_counts(m.shapes, counts, self.generator))
        m.target_counts = counts
        m.apply_(self.ctx.optimizer)
