"""Distances between two sparse topologies: Hamming distance and IoU of two mask dicts, per layer and global.

A mask dict is ``{param name: tensor}``; a position is active where the tensor is non-zero (``bool`` or 0/1 of
any dtype, any device). For two masks ``a``, ``b`` of one layer:

* Hamming distance: the fraction of positions where ``a`` and ``b`` differ, in [0, 1] (0: same topology);
* IoU: the Jaccard index of the active sets, ``|a & b| / |a | b|``, in [0, 1] (1: same topology; two empty
  masks count as identical, IoU 1).

The global figures pool every position of every layer (differing positions over all positions; the summed
intersections over the summed unions), so a large layer weighs more than a small one: they are not means of the
per-layer figures. Source: Liu et al. 2020, "Topological insights into sparse neural networks" (ECML-PKDD;
the "NNSTD" paper, cited by the Sup-tickets paper, Yin et al. 2022), and VITA-Group/ToST ``hamming_distance.py``
(the normalised Hamming distance between two runs' masks). Rationale: ``docs/topology.md``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Dict, Mapping

import torch

Masks = Mapping[str, torch.Tensor]


class MaskMismatchError(ValueError):
    """Two mask dicts that cannot be compared: different layer names or a different shape in some layer."""


@dataclass
class MaskDistance:
    """Hamming distance and IoU between two mask dicts.

    Attributes:
        hamming / iou: the global figures (pooled over all positions of all layers), in [0, 1].
        layers: ``{name: {"hamming": float, "iou": float}}`` per layer, in the first dict's order.
        differ / positions: the counts behind the global Hamming distance (positions that differ; all positions).
    """

    hamming: float
    iou: float
    differ: int
    positions: int
    layers: Dict[str, Dict[str, float]] = field(default_factory=dict)

    def as_dict(self, prefix: str = "") -> Dict[str, float]:
        """``{prefix + "hamming": ..., prefix + "iou": ...}`` (the global figures only)."""
        return {f"{prefix}hamming": self.hamming, f"{prefix}iou": self.iou}


def check_comparable(a: Masks, b: Masks) -> None:
    """Raise :class:`MaskMismatchError` unless ``a`` and ``b`` have the same layer names and shapes."""
    if set(a) != set(b):
        only_a, only_b = sorted(set(a) - set(b)), sorted(set(b) - set(a))
        raise MaskMismatchError(f"mask dicts cover different layers: only in the first {only_a}, "
                                f"only in the second {only_b}")
    for name in a:
        if tuple(a[name].shape) != tuple(b[name].shape):
            raise MaskMismatchError(f"mask {name!r} has shape {tuple(a[name].shape)} in the first dict and "
                                    f"{tuple(b[name].shape)} in the second")


def _iou(inter: int, union: int) -> float:
    return inter / union if union else 1.0


@torch.no_grad()
def mask_distance(a: Masks, b: Masks, per_layer: bool = True) -> MaskDistance:
    """Hamming distance and IoU between mask dicts ``a`` and ``b`` (see the module docstring).

    Args:
        a, b: ``{name: tensor}`` with the same names and per-name shapes; non-zero = active. ``b``'s tensors are
            moved to ``a``'s device where they differ.
        per_layer: also fill :attr:`MaskDistance.layers`.

    Returns:
        a :class:`MaskDistance`; global Hamming 0 and IoU 1 for two empty dicts.

    Raises:
        MaskMismatchError: different layer names, or a layer whose shapes differ.
    """
    check_comparable(a, b)
    differ = positions = inter = union = 0
    layers: Dict[str, Dict[str, float]] = {}
    for name in a:
        x = a[name] != 0
        y = (b[name].to(x.device)) != 0
        d, n = int((x ^ y).count_nonzero()), x.numel()
        i, u = int((x & y).count_nonzero()), int((x | y).count_nonzero())
        differ, positions, inter, union = differ + d, positions + n, inter + i, union + u
        if per_layer:
            layers[name] = {"hamming": d / n if n else 0.0, "iou": _iou(i, u)}
    return MaskDistance(hamming=differ / positions if positions else 0.0, iou=_iou(inter, union), differ=differ,
                        positions=positions, layers=layers)


def snapshot(masks: Masks) -> Dict[str, torch.Tensor]:
    """A bool copy of ``masks`` on their device (masks updated in place later do not change it)."""
    return {n: m != 0 for n, m in masks.items()}
