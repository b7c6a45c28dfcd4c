"""``sparsifier=snip``: SNIP (Lee et al., ICLR 2019) (one-shot pruning at initialisation, :mod:`.pai`).

Registered with its schema (:class:`SnipConfig`) and checks; the method's source and deviations are in
the class docstring.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Dict

import torch

from sparse_exp.config.errors import require
from sparse_exp.config.schema import SparsifierConfig
from sparse_exp.engine.preemption import poll
from sparse_exp.registry import SPARSIFIERS
from sparse_exp.sparse.sparsifiers.pai import PruningAtInitSparsifier, _grads, check_pai_target


@dataclass
class SnipConfig(SparsifierConfig):
    """``sparsifier=snip``: one-shot global pruning at init by connection sensitivity |g * w|.

    ``num_batches``: training batches (``ctx.batches``) whose loss gradients are summed.
    """

    name: str = "snip"
    num_batches: int = 1


def check_snip(cfg: Any) -> None:
    """``num_batches`` >= 1."""
    sp = cfg.sparsifier if "sparsifier" in cfg else cfg
    require(int(sp.num_batches) >= 1, "sparsifier.num_batches", sp.num_batches,
            "must be an integer >= 1 (training batches)")


@SPARSIFIERS.register("snip", schema=SnipConfig, checks=(check_pai_target, check_snip))
class SnipSparsifier(PruningAtInitSparsifier):
    """SNIP: keep the ``k`` weights of largest connection sensitivity ``|g * w|`` (global).

    Source: Lee et al., ICLR 2019, Sec. 4.1, Eq. 6 (``dL/dc_j = w_j * dL/dw_j``).

    ``g`` is the gradient of the training loss ``ctx.score_loss(model(x), y)`` with respect to
    each prunable weight, summed over ``cfg.num_batches`` batches of ``ctx.batches`` (each loss
    a batch mean). The model is put in train mode for scoring (BN uses batch statistics, as
    in training); BN buffers and mode flags are restored afterwards. The paper's
    normalisation by ``sum |g * w|`` is omitted (it does not change the ranking).
    """

    name = "snip"
    config_check = staticmethod(check_snip)

    def _scores(self) -> Dict[str, torch.Tensor]:
        """name -> ``|g * w|`` (weight shape, units of loss per unit relative weight change)."""
        m, model = self.ctx.masking, self.ctx.model
        weights = [m.params[n] for n in m.names]
        model.train()
        total = [torch.zeros_like(w) for w in weights]
        for x, y in self._batches(int(self.cfg.num_batches)):
            poll("pruning-at-init scoring")
            gs = _grads(self._loss(model(x), y), weights)
            total = [t + g.detach() for t, g in zip(total, gs)]
        return {n: (g * w.detach()).abs() for n, g, w in zip(m.names, total, weights)}
