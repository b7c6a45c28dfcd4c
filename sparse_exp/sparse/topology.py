"""Topology operations shared by the dynamic sparsifiers and Sup-tickets exploration; exact counts throughout.

* :func:`drop_and_grow` -- per layer, drop the smallest-magnitude fraction of active weights and regrow as many,
  at random (SET, Mocanu et al. 2018) or by dense-gradient magnitude (RigL, Evci et al. 2020, Alg. 1; GraNet
  regeneration, Liu et al. 2021, Sec. 3.2); per-layer counts preserved, regrown weights and buffers start at 0.
* :func:`global_magnitude_prune` -- keep the ``k`` largest active weights over all layers (GraNet / GMP,
  VITA-Group/GraNet ``sparselearning/core.py::pruning``).
* :func:`group_magnitude_prune` -- N:M gradual pruning: keep the ``n`` largest active weights of every group.
* :func:`cosine_fraction` -- the cosine-decayed drop fraction (RigL Eq. 1; GraNet ``CosineDecay``).

They run only at update steps, so, like the references, they may synchronise with the host.
"""

from __future__ import annotations

import math
from typing import Dict, Iterable, Optional

import torch

from sparse_exp.sparse.masking import Masking, topk_mask
from sparse_exp.sparse.nm import regrow_per_group, topk_per_group

GROWTH_MODES = ("random", "gradient")


def cosine_fraction(initial: float, step: int, end_step: int, minimum: float = 0.0) -> float:
    """``minimum + (initial - minimum) * (1 + cos(pi * step / end_step)) / 2``, clamped at ``end_step``.

    RigL (Evci et al. 2020, Eq. 1) uses ``minimum = 0`` and ``end_step`` = the step where updates
    stop; GraNet's ``CosineDecay`` uses ``minimum = 0.005`` over the whole run.
    """
    t = min(1.0, step / max(1, end_step))
    return minimum + (initial - minimum) * 0.5 * (1.0 + math.cos(math.pi * t))


@torch.no_grad()
def _zero_outside(masking: Masking, name: str, keep: torch.Tensor, optimizer: Optional[torch.optim.Optimizer]) -> None:
    """Zero the weight and its optimizer buffers where ``keep`` is False."""
    w = masking.params[name]
    w.mul_(keep)
    if optimizer is not None:
        for value in optimizer.state.get(w, {}).values():
            if torch.is_tensor(value) and value.shape == w.shape:
                value.mul_(keep)


@torch.no_grad()
def drop_and_grow(
    masking: Masking,
    optimizer: Optional[torch.optim.Optimizer],
    fraction: float,
    growth: str,
    generator: Optional[torch.Generator] = None,
    layers: Optional[Iterable[str]] = None,
) -> Dict[str, int]:
    """One prune-and-regrow update, layer by layer.

    Args:
        masking: masks to update in place.
        optimizer: its buffers of dropped and regrown weights are zeroed.
        fraction: fraction of each layer's active weights to drop, in [0, 1]; the number is
            ``floor(fraction * n_active)`` (rigl ``sparse_utils`` rounding).
        growth: ``"random"`` (uniform over positions inactive after the drop, drawn from
            ``generator``) or ``"gradient"`` (largest ``|p.grad|`` among positions inactive
            after the drop; needs the dense gradient in ``p.grad``).
        generator: CPU generator for random growth (shared seed => identical masks on all ranks).
        layers: restrict to these layers (default: every layer that is not fully dense).

    Returns:
        name -> number of connections dropped (= regrown).

    Raises:
        ValueError: unknown growth mode; RuntimeError: gradient growth without gradients.

    N:M layers (``masking.groups``): the drop is as above; each group then regrows as many as it lost, its
    inactive positions with the largest growth score, so every group keeps exactly ``n``.
    Positions dropped in this update may be regrown, as in RigL's reference; such a weight
    keeps its value (rigl ``SparseRigLOptimizer(reinit_when_same=False)``, the default), every
    other regrown weight starts at zero. Layers at full density are skipped.
    """
    if growth not in GROWTH_MODES:
        raise ValueError(f"growth={growth!r} is not known; allowed: {list(GROWTH_MODES)}")
    if not 0.0 <= fraction <= 1.0:
        raise ValueError(f"drop fraction must be in [0, 1], got {fraction}")
    changed: Dict[str, int] = {}
    names = list(layers) if layers is not None else masking.names
    for name in names:
        n_active = masking.target_counts[name]
        n = masking.params[name].numel()
        k = int(math.floor(fraction * n_active))
        if k == 0 or n_active >= n:
            continue
        w, mask = masking.params[name], masking.masks[name]
        old = mask.bool()
        neg_inf = torch.tensor(float("-inf"), device=w.device, dtype=torch.float32)
        keep_scores = torch.where(old, w.detach().abs().float(), neg_inf)
        after_drop = topk_mask(keep_scores, n_active - k)
        if growth == "gradient":
            if w.grad is None:
                raise RuntimeError(f"gradient growth needs the dense gradient of {name}, but .grad is None")
            grow_scores = w.grad.detach().abs().float()
        else:
            grow_scores = torch.rand(w.shape, generator=generator).to(w.device)
        grow_scores = torch.where(after_drop, neg_inf, grow_scores)
        if name in masking.groups:  # N:M: each group regrows what it lost, its best inactive candidates
            new = regrow_per_group(after_drop, grow_scores, *masking.groups[name])
        else:
            new = after_drop | topk_mask(grow_scores, k)
        # only old & new keeps its value: dropped and newly grown weights (and their buffers) are zero; a weight
        # dropped and regrown in this same update keeps its value
        _zero_outside(masking, name, old & new, optimizer)
        masking.set_masks_({name: new})
        changed[name] = k
    return changed


def global_topk_masks(scores: Dict[str, torch.Tensor], k: int) -> Dict[str, torch.Tensor]:
    """Boolean masks keeping the ``k`` largest scores over all tensors, at least one per tensor.

    Args:
        scores: name -> score tensor (any shape); larger is kept first.
        k: total number of ones, ``len(scores) <= k <= total elements``.

    Each tensor's single largest score is promoted to ``+inf`` (so no layer is ever emptied,
    which would disconnect the network); if the plain top-k already holds a weight of that
    tensor nothing changes, otherwise the globally lowest of the plain top-k makes room, so the
    total stays exactly ``k``. NaN scores rank below everything. Scores are compared in float64.
    Source of the global top-k: GraNet ``core.py::pruning`` and the Sup-tickets re-pruning
    (luuyin/Sup-tickets), with exact counts instead of a threshold.

    Raises:
        ValueError: ``k`` outside ``[len(scores), total elements]``.
    """
    names = list(scores)
    if not len(names) <= k <= sum(scores[n].numel() for n in names):
        raise ValueError(f"cannot keep {k} entries over {len(names)} tensors (at least one per tensor)")
    flat = []
    for n in names:
        f = scores[n].detach().reshape(-1).to(torch.float64)
        f = torch.where(torch.isnan(f), torch.full_like(f, -math.inf), f)
        f[torch.argmax(f)] = math.inf
        flat.append(f)
    keep = topk_mask(torch.cat(flat), k)
    out, offset = {}, 0
    for n in names:
        size = scores[n].numel()
        out[n] = keep[offset:offset + size].view(scores[n].shape)
        offset += size
    return out


@torch.no_grad()
def global_magnitude_prune(
    masking: Masking,
    optimizer: Optional[torch.optim.Optimizer],
    keep: int,
    dense_layers: Iterable[str] = (),
) -> Dict[str, int]:
    """Keep exactly ``keep`` active weights over all layers, the largest by magnitude.

    Layers in ``dense_layers`` stay as they are and count against ``keep``. Every other layer
    keeps at least one weight (its largest). Returns the new per-layer counts and sets
    ``masking.target_counts`` to them.

    Raises:
        ValueError: ``keep`` is larger than the active count (this only prunes) or too small.

    Source: GraNet ``sparselearning/core.py::pruning`` (global top-k over |w|), with an exact
    count instead of the reference's threshold comparison.
    """
    dense = set(dense_layers)
    names = [n for n in masking.names if n not in dense]
    budget = keep - sum(masking.target_counts[n] for n in dense)
    active = sum(masking.target_counts[n] for n in names)
    if budget > active:
        raise ValueError(f"global_magnitude_prune only removes weights: {budget} requested, {active} active")
    scores = {n: torch.where(masking.masks[n].bool(), masking.params[n].detach().abs().float(),
                             torch.tensor(-1.0, device=masking.params[n].device)) for n in names}
    new_masks = global_topk_masks(scores, budget)
    for n, new in new_masks.items():
        _zero_outside(masking, n, new, optimizer)
    masking.set_masks_(new_masks)
    masking.target_counts.update({n: int(new.count_nonzero()) for n, new in new_masks.items()})
    return dict(masking.target_counts)


@torch.no_grad()
def group_magnitude_prune(
    masking: Masking,
    optimizer: Optional[torch.optim.Optimizer],
    n: int,
    layers: Iterable[str],
) -> Dict[str, int]:
    """N:M gradual pruning: in each of ``layers`` (all in ``masking.groups``) keep the ``n`` largest-magnitude active
    weights of every group of ``m``; sets ``masking.groups[name] = (n, m)`` and the layer's ``target_counts``.

    Returns name -> new count. Raises:
        ValueError: a layer without N:M groups, or ``n`` above the ones its groups hold now (this only prunes).

    The per-group form of GMP / GraNet's magnitude pruning (Zhu & Gupta 2017; Liu et al. 2021 Sec. 3.2) with the
    N:M layout of :mod:`sparse_exp.sparse.nm` (NVIDIA ASP: groups along the input dimension).
    """
    out: Dict[str, int] = {}
    for name in layers:
        if name not in masking.groups:
            raise ValueError(f"{name} has no N:M groups (masking.groups)")
        current, m = masking.groups[name]
        if n > current:
            raise ValueError(f"group_magnitude_prune only removes weights: {name} holds {current} of {m}, asked {n}")
        w = masking.params[name]
        # inactive positions score -1 (< any |w|), so with n <= current only active weights are kept
        scores = torch.where(masking.masks[name].bool(), w.detach().abs().float(), torch.tensor(-1.0, device=w.device))
        keep = topk_per_group(scores, n, m)
        _zero_outside(masking, name, keep, optimizer)
        masking.groups[name] = (n, m)
        masking.set_masks_({name: keep})
        masking.target_counts[name] = out[name] = int(keep.count_nonzero())
    return out
