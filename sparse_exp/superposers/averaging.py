"""Superposing cheap tickets: CIA, CAA and CIMA averaging, then magnitude re-pruning.

Source: Yin et al., "Superposing Many Tickets into One", UAI 2022, Sec. 3.2.2 and 3.3; luuyin/Sup-tickets.
CIA: the running mean of Eq. 4, ``avg_t = ((t - 1) avg_{t-1} + theta^t) / t``; CAA: ``sum_i theta^i / N(k, j)``,
``N`` = tickets in which the connection was active; CIMA: ``avg_t = beta avg_{t-1} + (1 - beta) theta^t``,
``avg_1 = theta^1``. Averaged: the whole state dict, BN running statistics included (the paper's "average" BN);
integer buffers take the latest ticket's value; unmasked entries count as active in every ticket. Re-pruning
keeps the largest-magnitude averaged weights, ``global`` (one top-k, the reference) or ``layerwise`` (the
individual model's per-layer counts) or ``nm`` (the ``n`` largest of every group of ``m`` of each N:M layer,
:mod:`sparse_exp.sparse.nm`; the default, and required, with ``distribution=nm``). By default the running average
is never pruned, so the ultimate ticket is exactly ``prune(CIA(theta^1..theta^M))``; ``prune_running_average=True``
feeds the pruned average on instead.
"""

from __future__ import annotations

from typing import Any, Dict, Mapping, Optional, Tuple

import torch

from sparse_exp.config.errors import ConfigError
from sparse_exp.registry import DISTRIBUTIONS
from sparse_exp.sparse.masking import topk_mask
from sparse_exp.sparse.nm import topk_per_group
from sparse_exp.sparse.topology import global_topk_masks

AVERAGING = ("cia", "caa", "cima")
REPRUNE = ("global", "layerwise", "nm")


def check_reprune_scope(cfg: Any) -> None:
    """``superposer.reprune=nm`` exactly when the distribution asks for N:M groups (its ``nm_pattern`` query);
    the offline variants (saved tickets carry no groups) are refused with N:M."""
    sp, nm = cfg.superposer, DISTRIBUTIONS.query(cfg.distribution.name, "nm_pattern")(cfg.distribution) is not None
    if nm != (sp.reprune == "nm"):
        raise ConfigError("superposer.reprune", sp.reprune, f"must be nm with N:M sparsity (distribution="
                          f"{cfg.distribution.name}) and only then; allowed here: "
                          f"{['nm'] if nm else [r for r in REPRUNE if r != 'nm']}")
    if nm and sp.offline:
        raise ConfigError("superposer.offline", "[...]", "is not supported with N:M sparsity (yet): saved tickets "
                          "carry no N:M groups; leave it empty")


class TicketAverager:
    """Running superposition of tickets.

    Args:
        method: ``cia`` | ``caa`` | ``cima``.
        beta: CIMA decay in [0, 1) (weight of the previous average).
        prune_running_average: prune the running state in place after each step (Alg. 1 literal).

    State (all on the model's device): ``running`` (mean for CIA / CIMA, sum for CAA), ``active``
    (CAA only: per-connection count of tickets in which a masked weight was active, int32),
    ``count`` (tickets so far).
    """

    def __init__(self, method: str, beta: float = 0.8, prune_running_average: bool = False) -> None:
        if method not in AVERAGING:
            raise ValueError(f"superposer.averaging={method!r} is not known; allowed: {list(AVERAGING)}")
        self.method = method
        self.beta = beta
        self.prune_running_average = prune_running_average
        self.count = 0
        self.running: Dict[str, torch.Tensor] = {}
        self.active: Dict[str, torch.Tensor] = {}

    @torch.no_grad()
    def add(self, state: Mapping[str, torch.Tensor], masks: Mapping[str, torch.Tensor]) -> None:
        """Superpose one ticket.

        Args:
            state: the ticket's ``state_dict()`` (weights are already zero off their masks).
            masks: name -> 0/1 mask of the ticket's masked weights (names are state keys).
        """
        t = self.count + 1
        for key, value in state.items():
            value = value.detach()
            if not value.is_floating_point():
                self.running[key] = value.clone()
                continue
            if t == 1:
                self.running[key] = value.clone()
            elif self.method == "cia":  # Eq. 4
                self.running[key].mul_(t - 1).add_(value).div_(t)
            elif self.method == "cima":
                self.running[key].mul_(self.beta).add_(value, alpha=1.0 - self.beta)
            else:  # caa: running sum
                self.running[key].add_(value)
        if self.method == "caa":
            for key, mask in masks.items():
                inc = mask.detach().to(torch.int32)
                if t == 1:
                    self.active[key] = inc.clone()
                else:
                    self.active[key].add_(inc)
        self.count = t

    @torch.no_grad()
    def averaged(self) -> Dict[str, torch.Tensor]:
        """The superposed (not yet re-pruned) state dict."""
        if self.count == 0:
            raise RuntimeError("no ticket has been superposed yet")
        if self.method != "caa":
            return {k: v.clone() for k, v in self.running.items()}
        out = {}
        for key, value in self.running.items():
            if not value.is_floating_point():
                out[key] = value.clone()
            elif key in self.active:
                out[key] = value / self.active[key].clamp(min=1).to(value.dtype)
            else:
                out[key] = value / self.count
        return out

    @torch.no_grad()
    def prune_running_(self, masks: Mapping[str, torch.Tensor]) -> None:
        """Zero the running state off ``masks`` (only with ``prune_running_average``)."""
        for key, mask in masks.items():
            self.running[key].mul_(mask.to(self.running[key].dtype))

    def state_dict(self) -> Dict[str, object]:
        return {"count": self.count, "running": {k: v.clone() for k, v in self.running.items()},
                "active": {k: v.clone() for k, v in self.active.items()}}

    def load_state_dict(self, state: Mapping[str, object], device: Optional[torch.device] = None) -> None:
        self.count = int(state["count"])
        self.running = {k: v.to(device) if device else v.clone() for k, v in state["running"].items()}
        self.active = {k: v.to(device) if device else v.clone() for k, v in state["active"].items()}


@torch.no_grad()
def reprune(weights: Mapping[str, torch.Tensor], counts: Mapping[str, int], scope: str,
            groups: Optional[Mapping[str, Tuple[int, int]]] = None) -> Dict[str, torch.Tensor]:
    """Boolean masks keeping the largest ``|weights|``.

    Args:
        weights: name -> averaged weight tensor.
        counts: name -> ones the layer should keep (``layerwise``); their sum is the global
            budget (``global``), so the ultimate ticket's sparsity equals the target exactly.
        scope: ``global`` | ``layerwise`` | ``nm``.
        groups: ``nm``: N:M layer -> ``(n, m)`` (``Masking.groups``); the other layers keep ``counts`` ones.

    Raises:
        ValueError: unknown scope.
    """
    if scope == "nm":
        if not groups:
            raise ValueError("superposer.reprune=nm needs the N:M groups of the layers (Masking.groups)")
        return {n: topk_per_group(weights[n].abs(), *groups[n]) if n in groups
                else topk_mask(weights[n].abs().float(), counts[n]) for n in weights}
    if scope == "layerwise":
        return {n: topk_mask(weights[n].abs().float(), counts[n]) for n in weights}
    if scope == "global":
        return global_topk_masks({n: weights[n].abs() for n in weights}, sum(counts[n] for n in weights))
    raise ValueError(f"superposer.reprune={scope!r} is not known; allowed: {list(REPRUNE)}")
