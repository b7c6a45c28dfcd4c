"""Pruning at initialisation: ``snip``, ``grasp``, ``synflow`` and ``random``.

Each sparsifier scores every prunable weight of the freshly initialised model once
(:meth:`PruningAtInitSparsifier.init_masks`), keeps exactly

    k = round((1 - sparsity) * N)        (N = ``masking.total``, prunable weights)

weights GLOBALLY over all prunable tensors, and never changes the mask again
(``after_step`` does nothing). Layers named by ``ctx.dense_layers()`` (the
``distribution.dense_first_layer`` / ``dense_last_layer`` options) stay fully dense and count
against ``k``; the other layers share the remaining budget by score. Per-layer densities are
therefore an outcome of the score, not of ``distribution.name`` (which is ignored here).

Exact counts and the one-weight floor (every method): the kept set is the top ``budget`` of
the scores over the non-dense layers, except that a layer whose weights would all be
removed keeps its single best-scoring weight and, to keep the total exact, the globally
lowest-ranked weight that would otherwise have been kept (in another layer) is removed.
This avoids disconnecting the network (Tanaka et al. 2020 call this layer collapse). The
reference implementations instead threshold the scores (``score <= threshold`` /
``score > threshold``), so ties can give a count off by a few, and they may empty a layer.

Side effects: none besides the masks. Scores are computed with ``torch.autograd.grad`` (no
``.grad`` is written), parameters are never modified, every buffer (BN running statistics,
``num_batches_tracked``) and every module's train/eval flag are restored afterwards, the
optimizer is not touched except by the final ``masking.apply_`` (which zeroes buffers off the
mask), and the global RNG streams (CPU and the model's CUDA device) are forked, so that
dropout during scoring does not shift the run's later random numbers.

Sources:

* SNIP -- Lee, Ajanthan & Torr, "SNIP: Single-shot Network Pruning based on Connection
  Sensitivity", ICLR 2019, Sec. 4.1, Eq. 6: ``s_j = |g_j(w; D)| / sum_k |g_k(w; D)|`` with
  ``g_j = dL/dc_j`` at ``c = 1`` (``= w_j dL/dw_j``). Normalisation does not change the
  ranking and is omitted.
* GraSP -- Wang, Zhang & Grosse, "Picking Winning Tickets Before Training by Preserving
  Gradient Flow", ICLR 2020, Sec. 4, Eq. 8: ``S(-theta) = -theta * H g``; reference repo
  alecwangcq/GraSP, ``pruner/GraSP.py::GraSP``.
* SynFlow -- Tanaka, Kunin, Yamins & Ganguli, "Pruning neural networks without any data by
  iteratively conserving synaptic flow", NeurIPS 2020, Sec. 6 and Algorithm 1; reference repo
  ganguli-lab/Synaptic-Flow, ``Pruners/pruners.py::SynFlow`` and ``prune.py::prune_loop``.
* random -- global random pruning (the "Rand" pruner of ganguli-lab/Synaptic-Flow,
  ``Pruners/pruners.py::Rand``, with an exact count instead of Gaussian scores + threshold).
"""

from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass
from typing import Any, Dict, Iterator, List, Mapping, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import nn

from sparse_exp.config import SparsifierConfig
from sparse_exp.errors import ConfigError
from sparse_exp.sparse.topology import global_topk_masks
from sparse_exp.sparse.sparsifiers.base import Sparsifier


# ---------------------------------------------------------------------------------------- schemas
@dataclass
class SnipConfig(SparsifierConfig):
    """``sparsifier=snip``: one-shot global pruning at init by connection sensitivity |g * w|.

    ``num_batches``: training batches (``ctx.batches``) whose loss gradients are summed.
    """

    name: str = "snip"
    num_batches: int = 1


@dataclass
class GraspConfig(SparsifierConfig):
    """``sparsifier=grasp``: one-shot global pruning at init by -theta * (H g).

    ``num_batches``: training batches for g and H g; ``temperature``: logits are divided by
    it before the loss (reference ``T = 200``).
    """

    name: str = "grasp"
    num_batches: int = 1
    temperature: float = 200.0


@dataclass
class SynflowConfig(SparsifierConfig):
    """``sparsifier=synflow``: data-free iterative synaptic-flow pruning at init.

    ``iterations``: pruning rounds of the exponential density schedule (reference 100).
    """

    name: str = "synflow"
    iterations: int = 100


@dataclass
class RandomPruningConfig(SparsifierConfig):
    """``sparsifier=random``: exactly ``k`` weights kept uniformly at random over all layers."""

    name: str = "random"


#: schema name -> dataclass, to be merged into ``sparse_exp.config.SCHEMAS["sparsifier"]``.
PAI_SCHEMAS = {
    "snip": SnipConfig,
    "grasp": GraspConfig,
    "synflow": SynflowConfig,
    "random": RandomPruningConfig,
}


def check_config(cfg: Any) -> None:
    """Range checks for the pruning-at-init keys (for ``sparse_exp.validate.EXTRA_CHECKS``).

    Raises:
        ConfigError: ``num_batches`` < 1, ``iterations`` < 1 or ``temperature`` <= 0.
    """
    sp = cfg.sparsifier if hasattr(cfg, "sparsifier") else cfg
    name = getattr(sp, "name", None)
    if name in ("snip", "grasp") and not int(sp.num_batches) >= 1:
        raise ConfigError("sparsifier.num_batches", sp.num_batches, "must be an integer >= 1 (training batches)")
    if name == "grasp" and not float(sp.temperature) > 0:
        raise ConfigError("sparsifier.temperature", sp.temperature, "must be > 0 (logits are divided by it)")
    if name == "synflow" and not int(sp.iterations) >= 1:
        raise ConfigError("sparsifier.iterations", sp.iterations, "must be an integer >= 1 (pruning rounds)")


# ---------------------------------------------------------------------------------------- helpers
def keep_count(total: int, sparsity: float) -> int:
    """Number of weights kept, ``round((1 - sparsity) * total)`` (same rounding as ``layer_counts``)."""
    return int(round((1.0 - sparsity) * total))


@contextlib.contextmanager
def preserved_state(model: nn.Module, device: Optional[torch.device] = None) -> Iterator[None]:
    """Run the body, then restore every buffer, every module's train flag and the RNG streams.

    Buffers (BN ``running_mean`` / ``running_var`` / ``num_batches_tracked``) are cloned before
    and copied back in place after (so tensors captured elsewhere stay valid). The global CPU
    RNG and, for a CUDA ``device``, that device's RNG are forked (``torch.random.fork_rng``).
    """
    flags = [(m, m.training) for m in model.modules()]
    saved = [(b, b.detach().clone()) for b in model.buffers()]
    cuda = [device.index if device.index is not None else torch.cuda.current_device()] \
        if device is not None and device.type == "cuda" else []
    try:
        with torch.random.fork_rng(devices=cuda):
            yield
    finally:
        with torch.no_grad():
            for b, v in saved:
                b.copy_(v)
        for m, flag in flags:
            m.training = flag


def _grads(out: torch.Tensor, inputs: Sequence[torch.Tensor], create_graph: bool = False) -> List[torch.Tensor]:
    """``torch.autograd.grad`` with zeros for inputs ``out`` does not depend on."""
    gs = torch.autograd.grad(out, list(inputs), create_graph=create_graph, allow_unused=True)
    return [torch.zeros_like(x) if g is None else g for g, x in zip(gs, inputs)]


# ---------------------------------------------------------------------------------------- base
class PruningAtInitSparsifier(Sparsifier):
    """Base of the pruning-at-init sparsifiers: global exact-count selection, then fixed masks.

    Subclasses implement :meth:`_scores` (larger = more important, unless ``keep_lowest``) or
    override :meth:`select` (iterative methods).
    """

    name = "pai"
    dynamic = False
    #: keep the LOWEST scores (GraSP) instead of the highest
    keep_lowest = False
    #: whether :meth:`scores` is called inside :func:`preserved_state`
    needs_model = True

    def __init__(self, cfg: Any, ctx) -> None:
        super().__init__(cfg, ctx)
        check_config(cfg)

    # -- to implement
    def _scores(self, **kwargs: Any) -> Dict[str, torch.Tensor]:
        """name -> score tensor (weight shape); may change modes / buffers (see :meth:`scores`)."""
        raise NotImplementedError

    def scores(self, **kwargs: Any) -> Dict[str, torch.Tensor]:
        """name -> score tensor (weight shape) for the prunable weights, side-effect free.

        Runs :meth:`_scores` inside :func:`preserved_state` (buffers, train flags and RNG
        restored) with gradients enabled.
        """
        if not self.needs_model:
            return self._scores(**kwargs)
        with preserved_state(self.ctx.model, self.ctx.device), torch.enable_grad():
            return self._scores(**kwargs)

    # -- selection
    def select(self, free: List[str], budget: int) -> Dict[str, torch.Tensor]:
        """Bool masks for the layers ``free`` with exactly ``budget`` ones in total (one-shot)."""
        scores = self.scores()
        sign = -1.0 if self.keep_lowest else 1.0
        return global_topk_masks({n: sign * scores[n] for n in free}, budget)

    def init_masks(self) -> None:
        """Score, keep exactly ``round((1 - sparsity) * N)`` weights globally, apply the masks.

        Sets ``masking.target_counts`` to the resulting per-layer counts (ints).

        Raises:
            ValueError: the dense layers alone exceed the budget, or fewer weights remain than
                one per non-dense layer.
        """
        ctx, m = self.ctx, self.ctx.masking
        k = keep_count(m.total, ctx.sparsity)
        dense_set = set(ctx.dense_layers())
        dense = [n for n in m.names if n in dense_set]
        free = [n for n in m.names if n not in dense_set]
        budget = k - sum(m.sizes[n] for n in dense)
        free_total = sum(m.sizes[n] for n in free)
        if budget < len(free):
            raise ValueError(f"sparsity={ctx.sparsity} keeps {k} of {m.total} weights: too few for the dense layers "
                             f"{dense} plus one weight in each of the other {len(free)} layers")
        if budget >= free_total:  # nothing to prune (sparsity 0 or dense layers take the rest)
            chosen = {n: torch.ones(m.shapes[n], dtype=torch.bool) for n in free}
        else:
            chosen = self.select(free, budget)
        masks = {n: torch.ones(m.shapes[n], dtype=torch.bool) for n in dense}
        masks.update(chosen)
        m.set_masks_({n: masks[n] for n in m.names})
        m.target_counts = {n: int(masks[n].count_nonzero()) for n in m.names}
        m.apply_(ctx.optimizer)

    # -- data
    def _batches(self, n: int) -> List[Tuple[torch.Tensor, torch.Tensor]]:
        if self.ctx.batches is None:
            raise ValueError(f"sparsifier={self.name} needs training batches (SparseContext.batches is None)")
        out = list(self.ctx.batches(n))
        if not out:
            raise ValueError(f"sparsifier={self.name}: SparseContext.batches({n}) yielded no batch")
        return out

    def _loss(self, logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        fn = self.ctx.loss_fn if self.ctx.loss_fn is not None else F.cross_entropy
        return fn(logits, y)


# ---------------------------------------------------------------------------------------- SNIP
class SnipSparsifier(PruningAtInitSparsifier):
    """SNIP: keep the ``k`` weights of largest connection sensitivity ``|g * w|`` (global).

    Source: Lee et al., ICLR 2019, Sec. 4.1, Eq. 6 (``dL/dc_j = w_j * dL/dw_j``).

    ``g`` is the gradient of the training loss ``ctx.loss_fn(model(x), y)`` with respect to
    each prunable weight, summed over ``cfg.num_batches`` batches of ``ctx.batches`` (each loss
    a batch mean). The model is put in train mode for scoring (BN uses batch statistics, as
    in training); BN buffers and mode flags are restored afterwards. The paper's
    normalisation by ``sum |g * w|`` is omitted (it does not change the ranking).
    """

    name = "snip"

    def _scores(self) -> Dict[str, torch.Tensor]:
        """name -> ``|g * w|`` (weight shape, units of loss per unit relative weight change)."""
        m, model = self.ctx.masking, self.ctx.model
        weights = [m.params[n] for n in m.names]
        model.train()
        total = [torch.zeros_like(w) for w in weights]
        for x, y in self._batches(int(self.cfg.num_batches)):
            gs = _grads(self._loss(model(x), y), weights)
            total = [t + g.detach() for t, g in zip(total, gs)]
        return {n: (g * w.detach()).abs() for n, g, w in zip(m.names, total, weights)}


# ---------------------------------------------------------------------------------------- GraSP
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
    is ``ctx.loss_fn(model(x) / temperature, y)`` and the data are ``cfg.num_batches`` batches
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
    * no normalisation (a positive factor, ranking unchanged) and an exact count ``k`` instead
      of the threshold (ties); the one-weight floor of the module docstring.
    """

    name = "grasp"
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
            gs = _grads(self._loss(model(x) / T, y), weights)
            g = [a + b.detach() for a, b in zip(g, gs)]
        hg = [torch.zeros_like(w) for w in weights]
        for x, y in batches:
            gf = _grads(self._loss(model(x) / T, y), weights, create_graph=True)
            z = sum((gi * fi).sum() for gi, fi in zip(g, gf))
            hs = _grads(z, weights)
            hg = [a + b.detach() for a, b in zip(hg, hs)]
        return {n: -(w.detach() * h) for n, w, h in zip(m.names, weights, hg)}


# ---------------------------------------------------------------------------------------- SynFlow
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
                kr = budget if r == rounds else int(round(n_free * final_density ** (r / rounds)))
                kr = min(max(kr, budget, len(free)), sum(int(keep[n].count_nonzero()) for n in free))
                scores = self._scores(masks=keep, input_shape=shape)
                ranked = {n: torch.where(keep[n], scores[n], torch.full_like(scores[n], -math.inf)) for n in free}
                keep = global_topk_masks(ranked, kr)
        return keep


# ---------------------------------------------------------------------------------------- random
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

    def _scores(self) -> Dict[str, torch.Tensor]:
        """name -> i.i.d. U[0, 1) scores (CPU, weight shape) from ``self.generator``."""
        m = self.ctx.masking
        dense = set(self.ctx.dense_layers())
        return {n: torch.rand(m.shapes[n], generator=self.generator) for n in m.names if n not in dense}


__all__ = [
    "GraspConfig",
    "GraspSparsifier",
    "PAI_SCHEMAS",
    "PruningAtInitSparsifier",
    "RandomPruningConfig",
    "RandomPruningSparsifier",
    "SnipConfig",
    "SnipSparsifier",
    "SynflowConfig",
    "SynflowSparsifier",
    "check_config",
    "global_topk_masks",
    "keep_count",
    "preserved_state",
]
