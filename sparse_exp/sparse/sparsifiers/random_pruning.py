"""``sparsifier=random``: global random pruning at initialisation (:mod:`.pai`).

Registered with its schema (:class:`RandomPruningConfig`); the method's source is in the class docstring.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Dict, Tuple

import torch

from sparse_exp.config.schema import SparsifierConfig
from sparse_exp.registry import SPARSIFIERS
from sparse_exp.sparse.flop_counts import Allocation
from sparse_exp.sparse.sparsifiers.pai import PruningAtInitSparsifier, check_pai_target


@dataclass
class RandomPruningConfig(SparsifierConfig):
    """``sparsifier=random``: exactly ``k`` weights kept uniformly at random over all layers."""

    name: str = "random"


@SPARSIFIERS.register("random", schema=RandomPruningConfig, checks=(check_pai_target,))
class RandomPruningSparsifier(PruningAtInitSparsifier):
    """Global random pruning: exactly ``k`` weights kept uniformly at random over all layers.

    Every subset of ``budget`` non-dense weights is equally likely (i.i.d. uniform scores from
    ``self.generator``, global top-k), so each layer's density is the global density in
    expectation while the global count is exact. Same seed, same mask. The one-weight floor
    applies (it only matters when a layer is tiny compared to ``N / k``).

    Source: the "Rand" pruner of ganguli-lab/Synaptic-Flow (``Pruners/pruners.py::Rand``:
    Gaussian scores, global threshold); here with an exact count.
    """

    name = "random"
    needs_model = False

    @classmethod
    def flop_allocation(cls, cfg: Any, distribution: str, shapes: Dict[str, Tuple[int, ...]]) -> Allocation:
        """Global random pruning: every layer at the global density in expectation (``uniform``)."""
        return Allocation("uniform")

    def _scores(self) -> Dict[str, torch.Tensor]:
        """name -> i.i.d. U[0, 1) scores (CPU, weight shape) from ``self.generator``."""
        m = self.ctx.masking
        dense = set(self.ctx.dense_layers)
        return {n: torch.rand(m.shapes[n], generator=self.generator) for n in m.names if n not in dense}
