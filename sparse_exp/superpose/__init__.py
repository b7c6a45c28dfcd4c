"""Superposers (``superposer=<name>``): what happens on top of the base sparsifier.

``none`` -- nothing; ``sup_tickets`` -- Yin et al. UAI 2022 (:mod:`.sup_tickets`).
"""

from __future__ import annotations

from typing import Any, Dict, Type

from sparse_exp.superpose.sup_tickets import NoSuperposer, SupTickets

SUPERPOSERS: Dict[str, Type[NoSuperposer]] = {"none": NoSuperposer, "sup_tickets": SupTickets}


def build_superposer(cfg: Any, trainer: Any) -> NoSuperposer:
    """Instantiate ``cfg.name`` for ``trainer``; ValueError lists the allowed names."""
    if cfg.name not in SUPERPOSERS:
        raise ValueError(f"superposer.name={cfg.name!r} is not known; allowed: {sorted(SUPERPOSERS)}")
    return SUPERPOSERS[cfg.name](cfg, trainer)


__all__ = ["SUPERPOSERS", "build_superposer", "NoSuperposer", "SupTickets"]
