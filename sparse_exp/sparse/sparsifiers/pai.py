"""Pruning at initialisation: ``snip``, ``grasp``, ``synflow`` and ``random``.

Each sparsifier scores every prunable weight of the freshly initialised model once
(:meth:`PruningAtInitSparsifier.init_masks`), keeps exactly

    k = round((1 - sparsity) * N)        (N = ``masking.total``, prunable weights)

weights GLOBALLY over all prunable tensors, and never changes the mask again
(``after_step`` does nothing). Layers named by ``ctx.dense_layers`` (the
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
from typing import Any, Callable, Dict, Iterator, List, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import nn

from sparse_exp.sparse.flop_counts import Allocation
from sparse_exp.sparse.topology import global_topk_masks
from sparse_exp.sparse.sparsifiers.sparsifier import Sparsifier, check_sparse_target


# ---------------------------------------------------------------------------------------- helpers
check_pai_target = check_sparse_target  #: every pruning-at-init method needs a sparse target


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
    #: keep the LOWEST scores (GraSP) instead of the highest
    keep_lowest = False
    #: whether :meth:`scores` is called inside :func:`preserved_state`
    needs_model = True
    #: range checks of the method's own keys, ``check(sparsifier_node)`` (also run by ``validate``)
    config_check: Optional[Callable[[Any], None]] = None

    def __init__(self, cfg: Any, ctx) -> None:
        super().__init__(cfg, ctx)
        if self.config_check is not None:
            self.config_check(cfg)  # a bad value is refused when the sparsifier is built directly, too

    @classmethod
    def flop_allocation(cls, cfg: Any, distribution: str, shapes: Dict[str, Tuple[int, ...]]) -> Allocation:
        """Layer densities come from the scores; the estimate uses the configured distribution."""
        return Allocation(distribution, f"{cls.name} allocates layer densities by score; "
                                        f"the estimate uses distribution={distribution}")

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
        dense_set = set(ctx.dense_layers)
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
            raise ValueError(f"sparsifier={self.name} needs training batches (RunState.batches is None)")
        out = list(self.ctx.batches(n))
        if not out:
            raise ValueError(f"sparsifier={self.name}: RunState.batches({n}) yielded no batch")
        return out

    def _loss(self, logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        fn = self.ctx.score_loss if self.ctx.score_loss is not None else F.cross_entropy
        return fn(logits, y)


__all__ = ["PruningAtInitSparsifier", "check_pai_target", "keep_count", "preserved_state", "global_topk_masks"]
