"""Diversity among cheap tickets (Yin et al. 2022, Table 6; Fort et al. 2019; Liu et al. 2021a).

* prediction disagreement ``d_dis``: fraction of test examples on which two tickets' top-1
  predictions differ, averaged over all pairs;
* ``d_KL``: mean over examples of ``KL(p_i || p_j)``, averaged over all ordered pairs ``i != j``.
"""

from __future__ import annotations

from itertools import permutations
from typing import Dict, Sequence

import torch


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
