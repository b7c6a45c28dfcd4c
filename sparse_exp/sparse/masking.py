"""The masking core: one binary mask per prunable weight tensor, applied with fused ops.

Prunable: the ``weight`` of every ``nn.Conv*`` / ``nn.Linear`` module without ``sparse_exempt = True``; biases
and normalisation stay dense. A model keeps a prunable layer dense by setting ``sparse_keep_dense = True`` on its
module (:func:`declared_dense`, e.g. a ViT's patch embedding and head): it stays in the masks at density 1, counts
against the density budget and is never pruned or regrown, like ``distribution.dense_first_layer``.
Masks live on the weights' device and dtype (0/1) and are only updated in place,
so tensors captured by ``torch.compile`` or CUDA graphs stay valid. Invariant (:meth:`Masking.check_invariants`):
after every optimizer step :meth:`Masking.apply_` leaves the weights and the optimizer's per-parameter buffers
exactly zero off the mask, with no host synchronisation. Gradients are not masked, so growth criteria see the
dense gradient (as in GraNet / Sup-tickets ``sparselearning/core.py``).
"""

from __future__ import annotations

import math
from typing import Any, Dict, Iterable, List, Mapping, Optional, Sequence, Tuple

import torch
from torch import nn

from sparse_exp.registry import DISTRIBUTIONS
from sparse_exp.sparse.nm import is_nm

PRUNABLE_TYPES = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear)


class InvariantError(AssertionError):
    """A masking invariant does not hold (density off target, non-zero weight off the mask)."""


def prunable_parameters(model: nn.Module) -> List[Tuple[str, nn.Parameter]]:
    """``(name, weight)`` of every prunable layer in module registration order.

    Registration order is forward order for every model in :mod:`sparse_exp.models`, so the
    first entry is the input layer and the last the classifier.
    """
    out = []
    for mod_name, module in model.named_modules():
        if isinstance(module, PRUNABLE_TYPES) and not getattr(module, "sparse_exempt", False):
            out.append((f"{mod_name}.weight" if mod_name else "weight", module.weight))
    return out


def declared_dense(model: nn.Module) -> List[str]:
    """Names (as :func:`prunable_parameters`) of the prunable weights whose module sets ``sparse_keep_dense = True``:
    the layers the model itself keeps dense, in forward order."""
    return [f"{mod_name}.weight" if mod_name else "weight" for mod_name, module in model.named_modules()
            if isinstance(module, PRUNABLE_TYPES) and not getattr(module, "sparse_exempt", False)
            and getattr(module, "sparse_keep_dense", False)]


def _flagged_dense(names: Sequence[str], declared: Iterable[str], distribution: Any) -> List[str]:
    """The model's own dense layers, then the first / last of ``names`` where ``distribution`` asks."""
    out = list(declared)
    for wanted, name in ((distribution.dense_first_layer, names[0]), (distribution.dense_last_layer, names[-1])):
        if wanted and name not in out:
            out.append(name)
    return out


def distribution_dense(shapes: Mapping[str, Sequence[int]], declared: Iterable[str], distribution: Any) -> List[str]:
    """The layers the distribution keeps dense by its own rule (the ``distribution`` registry's ``kept_dense``
    query, e.g. N:M's ``misfit=dense``) among ``shapes`` (name -> shape, forward order) not kept dense otherwise."""
    flagged = set(_flagged_dense(list(shapes), declared, distribution))
    rest = {n: tuple(s) for n, s in shapes.items() if n not in flagged}
    return list(DISTRIBUTIONS.query(distribution.name, "kept_dense")(distribution, rest))


def kept_dense(shapes: Mapping[str, Sequence[int]], declared: Iterable[str], distribution: Any) -> List[str]:
    """Prunable layers kept at density 1, without repeats: those the model declares (:func:`declared_dense`), the
    first / last of ``shapes`` (forward order) where ``distribution.dense_first_layer`` / ``dense_last_layer`` ask,
    then :func:`distribution_dense`. Every place that needs the run's dense layers computes them here."""
    return _flagged_dense(list(shapes), declared, distribution) + distribution_dense(shapes, declared, distribution)


def exact_random_mask(shape: torch.Size, k: int, generator: torch.Generator) -> torch.Tensor:
    """Boolean mask of ``shape`` with exactly ``k`` ones at uniformly random positions (CPU)."""
    n = math.prod(shape)
    if not 0 <= k <= n:
        raise ValueError(f"cannot place {k} ones in a tensor of {n} elements")
    mask = torch.zeros(n, dtype=torch.bool)
    mask[torch.randperm(n, generator=generator)[:k]] = True
    return mask.view(shape)


def topk_mask(scores: torch.Tensor, k: int) -> torch.Tensor:
    """Boolean mask with ones at the ``k`` largest ``scores`` (ties broken by index order)."""
    flat = scores.reshape(-1)
    mask = torch.zeros_like(flat, dtype=torch.bool)
    if k > 0:
        mask[torch.topk(flat, k, sorted=False).indices] = True
    return mask.view_as(scores)


class Masking:
    """Owns the masks of a model's prunable weights.

    Args:
        model: the network; its prunable weights are found by :func:`prunable_parameters`.
        enabled: ``False`` for dense training (masks stay all-ones, :meth:`apply_` is a no-op).

    Attributes:
        names: prunable parameter names, forward order.
        params: name -> weight parameter (shape ``(out, in, *kernel)``).
        masks: name -> mask, same shape/device/dtype as the weight, values in {0, 1}.
        target_counts: name -> number of ones the current sparsifier promises per layer
            (checked by :meth:`check_invariants`); set by the sparsifier.
    """

    def __init__(self, model: nn.Module, enabled: bool = True) -> None:
        pairs = prunable_parameters(model)
        if not pairs:
            raise ValueError("the model has no prunable (conv / linear) weights")
        self.model = model
        self.enabled = enabled
        self.names: List[str] = [n for n, _ in pairs]
        #: prunable layers the model itself keeps dense (:func:`declared_dense`)
        self.declared_dense: List[str] = declared_dense(model)
        self.params: Dict[str, nn.Parameter] = dict(pairs)
        self.masks: Dict[str, torch.Tensor] = {n: torch.ones_like(p, requires_grad=False) for n, p in pairs}
        self.target_counts: Dict[str, int] = {n: p.numel() for n, p in pairs}
        #: N:M layers: name -> ``(n, m)``, every group of ``m`` input weights keeps exactly ``n``
        #: (:mod:`sparse_exp.sparse.nm`); set by the sparsifier from the distribution, checked by check_invariants
        self.groups: Dict[str, Tuple[int, int]] = {}
        self._weights = [self.params[n] for n in self.names]
        self._mask_list = [self.masks[n] for n in self.names]
        self._buffer_cache: Optional[Tuple[int, List[torch.Tensor], List[torch.Tensor]]] = None
        #: union of every mask ever set (for the ITOP rate, Liu et al. ICML 2021)
        self.ever_active: Dict[str, torch.Tensor] = {n: torch.zeros_like(p, dtype=torch.bool) for n, p in pairs}

    # ------------------------------------------------------------------ sizes
    @property
    def shapes(self) -> Dict[str, torch.Size]:
        return {n: self.params[n].shape for n in self.names}

    @property
    def sizes(self) -> Dict[str, int]:
        return {n: self.params[n].numel() for n in self.names}

    @property
    def total(self) -> int:
        """Number of prunable weights."""
        return sum(self.sizes.values())

    @property
    def first_layer(self) -> str:
        return self.names[0]

    @property
    def last_layer(self) -> str:
        return self.names[-1]

    # ------------------------------------------------------------------ updates
    @torch.no_grad()
    def set_masks_(self, new_masks: Mapping[str, torch.Tensor]) -> None:
        """Copy new masks in place (bool or 0/1 tensors of the right shape); the caller then runs :meth:`apply_`."""
        for name, new in new_masks.items():
            if new.shape != self.masks[name].shape:
                raise ValueError(f"mask for {name} has shape {tuple(new.shape)}, "
                                 f"expected {tuple(self.masks[name].shape)}")
            self.masks[name].copy_(new)
            self.ever_active[name] |= self.masks[name].bool()

    def _optimizer_buffers(self, optimizer: Optional[torch.optim.Optimizer]
                           ) -> Tuple[List[torch.Tensor], List[torch.Tensor]]:
        """Per-parameter optimizer state tensors with the weight's shape, paired with masks.

        Cached once every prunable weight has its state (the buffers are created lazily by the
        first ``optimizer.step()`` and then updated in place by PyTorch's optimizers).
        """
        if optimizer is None:
            return [], []
        key = id(optimizer)
        if self._buffer_cache is not None and self._buffer_cache[0] == key:
            return self._buffer_cache[1], self._buffer_cache[2]
        bufs, masks, complete = [], [], True
        for name in self.names:
            state = optimizer.state.get(self.params[name])
            if not state:
                complete = False
                continue
            for value in state.values():
                if torch.is_tensor(value) and value.shape == self.params[name].shape:
                    bufs.append(value)
                    masks.append(self.masks[name])
        if complete:
            self._buffer_cache = (key, bufs, masks)
        return bufs, masks

    def invalidate_buffer_cache(self) -> None:
        """Forget cached optimizer buffers (call after ``optimizer.load_state_dict``)."""
        self._buffer_cache = None

    @torch.no_grad()
    def apply_(self, optimizer: Optional[torch.optim.Optimizer] = None) -> None:
        """Zero weights and optimizer buffers off the masks (fused, no host sync)."""
        if not self.enabled:
            return
        # x * 0 == 0 for every finite x: weights and buffers off the mask are exactly zero after this, whatever the
        # optimizer step wrote there (only a NaN / inf survives it, and such a run ends as failed)
        torch._foreach_mul_(self._weights, self._mask_list)
        bufs, masks = self._optimizer_buffers(optimizer)
        if bufs:
            torch._foreach_mul_(bufs, masks)

    # ------------------------------------------------------------------ measurements (host sync)
    def counts(self) -> Dict[str, int]:
        """Number of ones per mask."""
        return {n: int(self.masks[n].count_nonzero()) for n in self.names}

    def nonzero_weights(self) -> Dict[str, int]:
        """Number of non-zero weight entries per prunable layer."""
        return {n: int(self.params[n].count_nonzero()) for n in self.names}

    def densities(self) -> Dict[str, float]:
        """Fraction of ones per mask."""
        c = self.counts()
        return {n: c[n] / self.params[n].numel() for n in self.names}

    def global_density(self) -> float:
        """Fraction of ones over all prunable weights."""
        return sum(self.counts().values()) / self.total

    def itop_rate(self) -> float:
        """In-Time Over-Parameterization rate: fraction of prunable weights ever active.

        Source: Liu et al., "Do We Actually Need Dense Over-Parameterization? In-Time
        Over-Parameterization in Sparse Training", ICML 2021, Sec. 3 (R_s). Dense training has 1.
        """
        if not self.enabled:
            return 1.0
        return sum(int(self.ever_active[n].count_nonzero()) for n in self.names) / self.total

    def global_sparsity(self) -> float:
        """Fraction of zeros in the masks over all prunable weights."""
        return 1.0 - self.global_density()

    @torch.no_grad()
    def check_invariants(self, optimizer: Optional[torch.optim.Optimizer] = None) -> None:
        """Raise :class:`InvariantError` unless every invariant holds.

        1. masks are binary; 2. each layer has exactly ``target_counts[name]`` ones (N:M layers: ``n`` per group);
        3. weights are exactly zero off the mask; 4. optimizer buffers are zero off the mask.
        """
        for name in self.names:
            mask, weight = self.masks[name], self.params[name]
            if not torch.all((mask == 0) | (mask == 1)):
                raise InvariantError(f"{name}: mask is not binary")
            ones = int(mask.count_nonzero())
            if ones != self.target_counts[name]:
                raise InvariantError(f"{name}: mask has {ones} ones, expected {self.target_counts[name]}")
            if name in self.groups and not is_nm(mask, *self.groups[name]):
                raise InvariantError(f"{name}: a group of m={self.groups[name][1]} does not hold exactly "
                                     f"n={self.groups[name][0]} ones")
            if not self.enabled:
                continue
            off = mask == 0
            if weight[off].count_nonzero():
                raise InvariantError(f"{name}: {int(weight[off].count_nonzero())} non-zero weights off the mask")
            if optimizer is not None:
                for key, value in optimizer.state.get(weight, {}).items():
                    if torch.is_tensor(value) and value.shape == weight.shape and value[off].count_nonzero():
                        raise InvariantError(f"{name}: optimizer buffer {key!r} non-zero off the mask")

    # ------------------------------------------------------------------ checkpointing
    def state_dict(self) -> Dict[str, object]:
        """Masks as bool tensors on CPU plus the promised per-layer counts and N:M groups (gradual N:M pruning
        lowers ``n`` during the run)."""
        return {
            "masks": {n: self.masks[n].detach().to("cpu", torch.bool) for n in self.names},
            "target_counts": dict(self.target_counts),
            "groups": {n: tuple(g) for n, g in self.groups.items()},
            "enabled": self.enabled,
            "ever_active": {n: self.ever_active[n].detach().cpu() for n in self.names},
        }

    def load_state_dict(self, state: Mapping[str, object]) -> None:
        """Restore masks in place (shapes must match)."""
        masks = state["masks"]
        missing = set(self.names) - set(masks)
        if missing:
            raise KeyError(f"checkpoint has no mask for {sorted(missing)}")
        self.set_masks_({n: masks[n] for n in self.names})
        for n in self.names:
            self.ever_active[n].copy_(state["ever_active"][n])
        self.target_counts = dict(state["target_counts"])
        if "groups" in state:  # checkpoints from before N:M keep the groups the sparsifier set
            self.groups = {n: (int(g[0]), int(g[1])) for n, g in state["groups"].items()}
        self.enabled = bool(state["enabled"])
        self.invalidate_buffer_cache()


def masks_from_counts(
    shapes: Mapping[str, torch.Size], counts: Mapping[str, int], generator: torch.Generator
) -> Dict[str, torch.Tensor]:
    """Random exact-count boolean masks for every layer (layer order as in ``shapes``)."""
    return {n: exact_random_mask(shapes[n], counts[n], generator) for n in shapes}


def dense_layer_names(masking: Masking, distribution: Any) -> List[str]:
    """Names of layers kept fully dense under the ``distribution`` node (:func:`kept_dense` of the masking's layers
    and :attr:`Masking.declared_dense`)."""
    return kept_dense(masking.shapes, masking.declared_dense, distribution)


def iter_masked(masking: Masking) -> Iterable[Tuple[str, torch.Tensor, torch.Tensor]]:
    """``(name, weight, mask)`` triples in forward order."""
    for n in masking.names:
        yield n, masking.params[n], masking.masks[n]
