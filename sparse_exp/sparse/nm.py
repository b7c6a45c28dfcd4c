"""N:M structured sparsity: the group operations (every group of ``m`` consecutive weights keeps exactly ``n``).

Layout (NVIDIA Ampere sparse tensor cores / ASP, ``apex.contrib.sparsity``; Mishra et al., "Accelerating Sparse
Deep Neural Networks", arXiv:2104.08378, Sec. 3): groups run along the input dimension. A Linear ``(out, in)`` is
grouped along ``in``; a conv ``(out, in, kh, kw)`` is permuted to ``(out, kh, kw, in)`` and its last axis (the input
channels at one kernel position) is grouped. A layer fits when ``in`` is a multiple of ``m`` (:func:`fits`).
All functions keep the weight's shape on the outside; groups are rows of a ``(num_groups, m)`` view.
"""

from __future__ import annotations

from typing import Optional, Sequence

import torch


def fits(shape: Sequence[int], m: int) -> bool:
    """Whether a weight of ``shape`` (PyTorch order ``(out, in, *kernel)``) splits into groups of ``m``."""
    return len(shape) >= 2 and int(shape[1]) % int(m) == 0


def to_groups(t: torch.Tensor, m: int) -> torch.Tensor:
    """``(out, in, *k)`` -> ``(out * prod(k) * in / m, m)``: row ``i`` is one group of ``m`` input weights.

    Raises:
        ValueError: ``in`` is not a multiple of ``m``.
    """
    if not fits(t.shape, m):
        raise ValueError(f"a weight of shape {tuple(t.shape)} has no N:M groups of m={m} along its input dimension")
    return t.movedim(1, -1).reshape(-1, m)


def from_groups(g: torch.Tensor, shape: Sequence[int]) -> torch.Tensor:
    """Inverse of :func:`to_groups` for a weight of ``shape``."""
    shape = tuple(shape)
    return g.reshape(shape[0], *shape[2:], shape[1]).movedim(-1, 1).contiguous()


def topk_per_group(scores: torch.Tensor, n: int, m: int) -> torch.Tensor:
    """Bool mask of ``scores``' shape keeping the ``n`` largest scores of every group (NaN ranks lowest)."""
    g = to_groups(scores.detach().float(), m)
    g = torch.where(torch.isnan(g), torch.full_like(g, float("-inf")), g)
    keep = torch.zeros_like(g, dtype=torch.bool)
    keep.scatter_(1, torch.topk(g, n, dim=1).indices, True)
    return from_groups(keep, scores.shape)


def random_n_per_group(shape: Sequence[int], n: int, m: int, generator: Optional[torch.Generator]) -> torch.Tensor:
    """Bool mask (CPU) of ``shape`` with ``n`` uniformly random ones in every group, drawn from ``generator``."""
    return topk_per_group(torch.rand(tuple(shape), generator=generator), n, m)


def is_nm(mask: torch.Tensor, n: int, m: int) -> bool:
    """Whether every group of ``mask`` (bool or 0/1) holds exactly ``n`` nonzeros."""
    return bool(((to_groups(mask != 0, m)).sum(dim=1) == n).all())


def regrow_per_group(kept: torch.Tensor, scores: torch.Tensor, n: int, m: int) -> torch.Tensor:
    """Refill each group of the bool mask ``kept`` (at most ``n`` ones per group) to exactly ``n`` ones,
    choosing the group's inactive positions with the largest ``scores`` (ties by position); returns the new mask."""
    gk = to_groups(kept, m)
    need = n - gk.sum(dim=1, keepdim=True)
    gs = to_groups(scores.detach().float(), m)
    gs = torch.where(gk | torch.isnan(gs), torch.full_like(gs, float("-inf")), gs)
    order = torch.sort(gs, dim=1, descending=True, stable=True).indices
    rank = torch.empty_like(order)
    rank.scatter_(1, order, torch.arange(m, device=order.device).expand_as(order).contiguous())
    return from_groups(gk | (rank < need), kept.shape)
