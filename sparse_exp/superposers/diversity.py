"""Diversity among cheap tickets (Yin et al. 2022, Table 6; Fort et al. 2019; Liu et al. 2021a).

* prediction disagreement ``d_dis``: fraction of test examples on which two tickets' top-1
  predictions differ, averaged over all pairs;
* ``d_KL``: mean over examples of ``KL(p_i || p_j)``, averaged over all ordered pairs ``i != j``;
* mask diversity (:func:`mask_diversity`): Hamming distance and IoU of the tickets' masks, pairwise and against
  the ultimate ticket's (:mod:`sparse_exp.sparse.mask_distance`; Liu et al. 2020).
"""

from __future__ import annotations

from itertools import combinations, permutations
from typing import Any, Dict, Mapping, Sequence

import torch

from sparse_exp.sparse.mask_distance import mask_distance


def pairwise_diversity(probs: Sequence[torch.Tensor], eps: float = 1e-12) -> Dict[str, float]:
    """Disagreement and KL divergence among tickets.

    Args:
        probs: one ``(N, C)`` tensor of predicted class probabilities per ticket, same examples.

    Returns:
        ``{"diversity/disagreement": float in [0, 1], "diversity/kl": float >= 0 (nats)}``;
        NaN for fewer than two tickets.
    """
    if len(probs) < 2:
        return {"diversity/disagreement": float("nan"), "diversity/kl": float("nan")}
    dis, kl = [], []
    for a, b in permutations(range(len(probs)), 2):
        p, q = probs[a].double(), probs[b].double()
        if a < b:
            dis.append((p.argmax(1) != q.argmax(1)).double().mean().item())
        kl.append((p * ((p + eps).log() - (q + eps).log())).sum(1).mean().item())
    return {"diversity/disagreement": sum(dis) / len(dis), "diversity/kl": sum(kl) / len(kl)}


def mask_diversity(tickets: Mapping[int, Mapping[str, torch.Tensor]], ultimate: Mapping[str, torch.Tensor]
                   ) -> Dict[str, Any]:
    """How far apart the tickets' sparse topologies are: global Hamming distance and IoU of their masks (pooled
    over all prunable positions, :func:`sparse_exp.sparse.mask_distance.mask_distance`).

    Args:
        tickets: ``{ticket index: {layer: mask}}``; index 0 (the normal phase's end) counts against the ultimate
            ticket only, as in :func:`pairwise_diversity`'s callers, the cyclic tickets (index >= 1) also pairwise.
        ultimate: the ultimate ticket's masks (same layers and shapes).

    Returns:
        ``tickets/<i>/mask_hamming_vs_ultimate`` and ``tickets/<i>/mask_iou_vs_ultimate`` per ticket (floats in
        [0, 1]); with two cyclic tickets or more, ``diversity/mask_hamming`` and ``diversity/mask_iou`` (the mean
        over unordered pairs) and ``diversity/mask_iou_pairs`` (``[[i, j, iou], ...]``, ``i < j``).

    Raises:
        sparse_exp.sparse.mask_distance.MaskMismatchError: masks of different layers or shapes.
    """
    out: Dict[str, Any] = {}
    for i, masks in tickets.items():
        d = mask_distance(masks, ultimate, per_layer=False)
        out[f"tickets/{i}/mask_hamming_vs_ultimate"], out[f"tickets/{i}/mask_iou_vs_ultimate"] = d.hamming, d.iou
    cyclic = sorted(i for i in tickets if i > 0)
    pairs = [(i, j, mask_distance(tickets[i], tickets[j], per_layer=False)) for i, j in combinations(cyclic, 2)]
    if pairs:
        out["diversity/mask_hamming"] = sum(d.hamming for _, _, d in pairs) / len(pairs)
        out["diversity/mask_iou"] = sum(d.iou for _, _, d in pairs) / len(pairs)
        out["diversity/mask_iou_pairs"] = [[i, j, d.iou] for i, j, d in pairs]
    return out
