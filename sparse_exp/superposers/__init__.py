"""Superposers (``superposer=<name>``): boosters on top of the base sparsifier, as callbacks.

``none`` -- nothing (builds no callback); ``sup_tickets`` -- Yin et al. UAI 2022
(:mod:`.sup_tickets`, registered there with its schema and checks).
"""

from __future__ import annotations

from dataclasses import dataclass

from sparse_exp.config.schema import SuperposerConfig
from sparse_exp.registry import SUPERPOSERS
from sparse_exp.superposers.sup_tickets import SupTickets


@dataclass
class NoSuperposerConfig(SuperposerConfig):
    """``superposer=none``: the base method's final model is the result."""

    name: str = "none"


SUPERPOSERS.add("none", lambda cfg: None, schema=NoSuperposerConfig)

__all__ = ["SUPERPOSERS", "NoSuperposerConfig", "SupTickets"]
