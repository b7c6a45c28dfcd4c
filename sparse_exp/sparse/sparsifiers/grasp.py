"""``sparsifier=grasp``: GraSP (Wang et al., ICLR 2020) (one-shot pruning at initialisation, :mod:`.pai`).

Registered with its schema (:class:`GraspConfig`) and checks; the method's source and deviations are in
the class docstring.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Dict

import torch
from torch.nn.attention import SDPBackend, sdpa_kernel

from sparse_exp.config.errors import require
from sparse_exp.config.schema import SparsifierConfig
from sparse_exp.engine.preemption import poll
from sparse_exp.registry import SPARSIFIERS
from sparse_exp.sparse.sparsifiers.pai import PruningAtInitSparsifier, _grads, check_pai_target


@dataclass
class GraspConfig(SparsifierConfig):
    """``sparsifier=grasp``: one-shot global pruning at init by -theta * (H g).

    ``num_batches``: training batches for g and H g; ``temperature``: logits are divided by
    it before the loss (reference ``T = 200``).
    """

    name: str = "grasp"
    num_batches: int = 1
    temperature: float = 200.0


def check_grasp(cfg: Any) -> None:
    """``num_batches`` >= 1 and ``temperature`` > 0."""
    sp = cfg.sparsifier if "sparsifier" in cfg else cfg
    require(int(sp.num_batches) >= 1, "sparsifier.num_batches", sp.num_batches,
            "must be an integer >= 1 (training batches)")
    require(float(sp.temperature) > 0, "sparsifier.temperature", sp.temperature,
            "must be > 0 (logits are divided by it)")


@SPARSIFIERS.register("grasp", schema=GraspConfig, checks=(check_pai_target, check_grasp))
class GraspSparsifier(PruningAtInitSparsifier):
    """GraSP: remove the weights with the HIGHEST ``S = -theta * (H g)``, keep the ``k`` lowest.

    Source: Wang et al., ICLR 2020, Sec. 4, Eq. 8 (``S(-theta) = -theta * H g``) and
    Algorithm 1; reference alecwangcq/GraSP ``pruner/GraSP.py::GraSP``, which

    1. divides the logits by ``T = 200`` before the cross-entropy (both passes);
    2. computes ``g`` = sum over data chunks of ``autograd.grad(loss, weights)`` WITHOUT a graph
       (so ``g`` is a constant, ``grad_w[count].data``);
    3. for each chunk, ``grad_f = autograd.grad(loss, weights, create_graph=True)``,
       ``z = sum_l <g_l, grad_f_l>`` and ``z.backward()``, accumulating ``H g`` (``H`` = Hessian
       of the loss w.r.t. the conv/linear weights only) in ``weight.grad``;
    4. scores ``-weight * weight.grad``, divides by ``|sum(scores)| + 1e-10`` and removes the
       ``int(N * ratio)`` highest (keeps ``score <= threshold``).

    Here: the same with ``torch.autograd.grad`` for step 3 (no ``.grad`` is written), the loss
    is ``ctx.score_loss(model(x) / temperature, y)`` and the data are ``cfg.num_batches`` batches
    of ``ctx.batches`` (both passes use the same batches, as the reference). Model in train
    mode (the reference deep-copies the net and leaves ``.eval()`` commented out, so BN uses
    batch statistics); BN buffers and mode flags are restored.

    Deviations from the reference code (intentional):

    * data: ordinary training batches instead of ``samples_per_class`` (10) examples per class
      fetched class by class and split into two class-sorted halves (``GraSP_fetch_data``);
      one batch is one chunk. ``g`` and ``H g`` are sums over chunks as in the reference.
    * no ``reinit``: the reference re-initialises every ``nn.Linear`` weight of its scoring copy
      with ``xavier_normal`` (default ``reinit=True``) while the trained net keeps its own
      init, i.e. it scores different weights than it trains; here the model's own weights are
      scored.
    * ``H g`` is taken with PyTorch's math attention backend (``sdpa_kernel(SDPBackend.MATH)``), the only one with
      a double backward; a model without ``scaled_dot_product_attention`` (every CNN) is unaffected.
    * no normalisation (a positive factor, ranking unchanged) and an exact count ``k`` instead
      of the threshold (ties); the one-weight floor of the module docstring.
    """

    name = "grasp"
    config_check = staticmethod(check_grasp)
    keep_lowest = True

    def _scores(self) -> Dict[str, torch.Tensor]:
        """name -> ``-theta * (H g)`` (weight shape); LOWER is kept."""
        m, model = self.ctx.masking, self.ctx.model
        T = float(self.cfg.temperature)
        weights = [m.params[n] for n in m.names]
        model.train()
        batches = self._batches(int(self.cfg.num_batches))
        g = [torch.zeros_like(w) for w in weights]
        for x, y in batches:
            poll("pruning-at-init scoring")
            gs = _grads(self._loss(model(x) / T, y), weights)
            g = [a + b.detach() for a, b in zip(g, gs)]
        hg = [torch.zeros_like(w) for w in weights]
        for x, y in batches:
            poll("pruning-at-init scoring")
            with sdpa_kernel(SDPBackend.MATH):  # fused attention kernels have no double backward (transformers)
                gf = _grads(self._loss(model(x) / T, y), weights, create_graph=True)
            z = sum((gi * fi).sum() for gi, fi in zip(g, gf))
            hs = _grads(z, weights)
            hg = [a + b.detach() for a, b in zip(hg, hs)]
        return {n: -(w.detach() * h) for n, w, h in zip(m.names, weights, hg)}
