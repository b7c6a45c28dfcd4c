"""``sparsifier=synflow``: SynFlow (Tanaka et al., NeurIPS 2020) (one-shot pruning at initialisation, :mod:`.pai`).

Registered with its schema (:class:`SynflowConfig`) and checks; the method's source and deviations are in
the class docstring.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Dict, List, Mapping, Optional, Sequence

import torch

from sparse_exp.config.errors import require
from sparse_exp.config.schema import SparsifierConfig
from sparse_exp.engine.preemption import poll
from sparse_exp.registry import SPARSIFIERS
from sparse_exp.sparse.nm import topk_per_group
from sparse_exp.sparse.sparsifiers.pai import (
    PruningAtInitSparsifier,
    _grads,
    check_pai_target,
    global_topk_masks,
    preserved_state,
)


@dataclass
class SynflowConfig(SparsifierConfig):
    """``sparsifier=synflow``: data-free iterative synaptic-flow pruning at init.

    ``iterations``: pruning rounds of the exponential density schedule (reference 100).
    """

    name: str = "synflow"
    iterations: int = 100


def check_synflow(cfg: Any) -> None:
    """``iterations`` >= 1."""
    sp = cfg.sparsifier if "sparsifier" in cfg else cfg
    require(int(sp.iterations) >= 1, "sparsifier.iterations", sp.iterations, "must be an integer >= 1 (pruning rounds)")


@SPARSIFIERS.register("synflow", schema=SynflowConfig, checks=(check_pai_target, check_synflow))
class SynflowSparsifier(PruningAtInitSparsifier):
    """SynFlow: iterative data-free pruning by synaptic flow ``|dR/dtheta * theta|`` (global).

    Source: Tanaka et al., NeurIPS 2020, Sec. 6, Eq. 2 and Algorithm 1; reference
    ganguli-lab/Synaptic-Flow ``Pruners/pruners.py::SynFlow.score`` and ``prune.py::prune_loop``.

    Score (one round): every parameter and floating buffer is replaced by its absolute value
    (reference ``linearize``: ``param.abs_()`` over ``model.state_dict()``, BN running stats
    included), the pruned weights are zero (``theta = |w| * mask``), the input is a single
    all-ones example ``(1, *x.shape[1:])`` of the data shape (taken from one batch of
    ``ctx.batches(1)``), ``R = sum(model(ones))`` and the score is ``|dR/dtheta * theta|``
    (0 for pruned weights). The model is in eval mode (``prune_loop`` calls ``model.eval()``, so
    BN uses its running statistics, ``|mean| = 0`` and ``var = 1`` at init).

    Schedule: ``R = cfg.iterations`` rounds (reference 100); in round ``r = 1..R`` the kept
    non-dense weights are ``round(n_free * (budget / n_free) ** (r / R))`` (the reference's
    exponential schedule ``density ** (r / R)``, applied to the non-dense layers so that the
    final round lands exactly on the budget), selected by global top-k among the weights still
    kept; pruned weights never come back.

    Deviations from the reference code (intentional):

    * no in-place linearisation: the scoring forward is a ``torch.func.functional_call`` on
      ``|.|`` copies of the parameters and buffers, so the model's weights (signs and values),
      BN buffers and gradients are never touched (equivalent to ``linearize`` + ``nonlinearize``,
      but bitwise safe).
    * float64 (``dtype``): the reference runs float32 (``model.double()`` is commented out);
      ``R`` grows like the product of the layers' ``|W|`` row sums and overflows float32 on deep
      nets (e.g. ~1e78 for a ResNet-50-like stack), which turns all scores into inf/NaN.
    * exact counts and the one-weight floor of the module docstring instead of ``kthvalue``
      thresholding.
    """

    name = "synflow"
    config_check = staticmethod(check_synflow)
    #: precision of the scoring forward/backward
    dtype = torch.float64

    def _input_shape(self) -> torch.Size:
        x, _ = self._batches(1)[0]
        return torch.Size((1, *x.shape[1:]))

    def _scores(self, masks: Optional[Mapping[str, torch.Tensor]] = None,
               input_shape: Optional[Sequence[int]] = None) -> Dict[str, torch.Tensor]:
        """name -> ``|dR/dtheta * theta|`` (weight shape, ``dtype``) with ``theta = |w| * mask``.

        Args:
            masks: name -> 0/1 (or bool) tensor; missing names (or ``None``) mean all ones.
            input_shape: ``(1, C, H, W)`` (or ``(1, features)``); default from ``ctx.batches(1)``.
        """
        m, model = self.ctx.masking, self.ctx.model
        shape = torch.Size(input_shape) if input_shape is not None else self._input_shape()
        device = next(iter(m.params.values())).device
        masks = masks or {}
        model.eval()
        with torch.no_grad():
            params = {n: p.detach().abs().to(self.dtype) for n, p in model.named_parameters()}
            bufs = {n: (b.detach().abs().to(self.dtype) if b.is_floating_point() else b.detach().clone())
                    for n, b in model.named_buffers()}
            theta = {}
            for n in m.names:
                t = params[n]
                if n in masks:
                    t = t * masks[n].to(device=t.device, dtype=t.dtype)
                theta[n] = t.requires_grad_(True)
            params.update(theta)
        with torch.enable_grad():
            ones = torch.ones(shape, dtype=self.dtype, device=device)
            out = torch.func.functional_call(model, (params, bufs), (ones,))
            R = out.sum()
            gs = _grads(R, [theta[n] for n in m.names])
        return {n: (g * theta[n]).detach().abs() for n, g in zip(m.names, gs)}

    def select(self, free: List[str], budget: int) -> Dict[str, torch.Tensor]:
        m = self.ctx.masking
        rounds = int(self.cfg.iterations)
        n_free = sum(m.sizes[n] for n in free)
        final_density = budget / n_free
        with preserved_state(self.ctx.model, self.ctx.device):
            shape = self._input_shape()
            keep = {n: torch.ones(m.shapes[n], dtype=torch.bool, device=m.params[n].device) for n in free}
            for r in range(1, rounds + 1):
                poll("pruning-at-init scoring")  # per round: a stop leaves scoring, the requeued run redoes it
                kr = budget if r == rounds else int(round(n_free * final_density ** (r / rounds)))
                kr = min(max(kr, budget, len(free)), sum(int(keep[n].count_nonzero()) for n in free))
                scores = self._scores(masks=keep, input_shape=shape)
                ranked = {n: torch.where(keep[n], scores[n], torch.full_like(scores[n], -math.inf)) for n in free}
                keep = global_topk_masks(ranked, kr)
        return keep

    def select_groups(self, free: List[str]) -> Dict[str, torch.Tensor]:
        """N:M: the same ``iterations`` rounds, each group keeping ``round(m * (n/m) ** (r/R))`` (at least ``n``,
        ``n`` in the last round) of its best scores, rescored on the kept weights each round."""
        m = self.ctx.masking
        rounds = int(self.cfg.iterations)
        with preserved_state(self.ctx.model, self.ctx.device):
            shape = self._input_shape()
            keep = {n: torch.ones(m.shapes[n], dtype=torch.bool, device=m.params[n].device) for n in free}
            for r in range(1, rounds + 1):
                poll("pruning-at-init scoring")
                scores = self._scores(masks=keep, input_shape=shape)
                for name in free:
                    n, mm = m.groups[name]
                    kr = n if r == rounds else max(n, int(round(mm * (n / mm) ** (r / rounds))))
                    ranked = torch.where(keep[name], scores[name], torch.full_like(scores[name], -math.inf))
                    keep[name] = topk_per_group(ranked, kr, mm).to(keep[name].device)
        return keep
