"""Pruning at initialisation: ``snip``, ``grasp``, ``synflow`` and ``random``.

Each scores every prunable weight of the freshly initialised model once (:meth:`PruningAtInitSparsifier.init_masks`)
and keeps exactly ``k = round((1 - sparsity) * N)`` weights GLOBALLY, never changing the mask again; layers of
``ctx.dense_layers`` stay dense and count against ``k``, ``distribution.name`` is ignored. Every layer keeps at
least its best-scoring weight (the globally lowest kept weight elsewhere makes room), so no layer is
emptied (Tanaka et al. 2020's layer collapse); the references threshold the scores instead. Scoring has no
side effect besides the masks (no ``.grad`` written; parameters, buffers, train/eval flags and the global RNG
streams as before). Sources: SNIP (Lee et al., ICLR 2019, Eq. 6, normalisation omitted), GraSP (Wang et al., ICLR
2020, Eq. 8; alecwangcq/GraSP ``pruner/GraSP.py``), SynFlow (Tanaka et al., NeurIPS 2020, Alg. 1;
ganguli-lab/Synaptic-Flow ``Pruners/pruners.py``, ``prune.py::prune_loop``), random (that repo's ``Rand``
pruner with an exact count).
"""

from __future__ import annotations

import contextlib
import logging
from typing import Any, Callable, Dict, Iterator, List, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import nn

from sparse_exp.sparse.flop_counts import Allocation
from sparse_exp.sparse.nm import topk_per_group
from sparse_exp.sparse.sparsifiers.sparsifier import Sparsifier, check_sparse_target
from sparse_exp.sparse.topology import global_topk_masks

log = logging.getLogger("sparse_exp")

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
    supports_nm = True
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

    def select_groups(self, free: List[str]) -> Dict[str, torch.Tensor]:
        """N:M (``masking.groups``): bool masks keeping the ``n`` best scores of every group of the layers ``free``."""
        scores, groups = self.scores(), self.ctx.masking.groups
        sign = -1.0 if self.keep_lowest else 1.0
        return {n: topk_per_group(sign * scores[n], *groups[n]) for n in free}

    def init_masks(self) -> None:
        """Score, keep exactly ``round((1 - sparsity) * N)`` weights globally, apply the masks.

        Sets ``masking.target_counts`` to the resulting per-layer counts (ints). N:M (``masking.groups``): the
        ``n`` best of every group of ``m`` instead (:meth:`select_groups`), dense layers as above.

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
        if budget < len(free) and not m.groups:
            raise ValueError(f"sparsity={ctx.sparsity} keeps {k} of {m.total} weights: too few for the dense layers "
                             f"{dense} plus one weight in each of the other {len(free)} layers")
        if m.groups:  # N:M: the sparsity is that of the N:M layers (distribution=nm), kept per group
            log.info("%s: scoring the weights at initialisation (top n per group of m)", self.name)
            chosen = self.select_groups(free)
        elif budget >= free_total:  # nothing to prune (sparsity 0 or dense layers take the rest)
            chosen = {n: torch.ones(m.shapes[n], dtype=torch.bool) for n in free}
        else:
            log.info("%s: scoring the weights at initialisation", self.name)
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
