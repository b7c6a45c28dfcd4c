"""Registry of sparsifiers: ``sparsifier=<name>`` on the command line picks one.

Every entry has a config file ``conf/sparsifier/<name>.yaml`` and a schema in
:mod:`sparse_exp.config`; ``tests/test_sparsifiers.py`` runs a contract test over all of them.
"""

from __future__ import annotations

from typing import Any, Dict, Type

from sparse_exp.sparse.sparsifiers.base import SparseContext, Sparsifier
from sparse_exp.sparse.sparsifiers.dst import RigLSparsifier, SETSparsifier
from sparse_exp.sparse.sparsifiers.gradual import GradualMagnitudeSparsifier, GraNetSparsifier
from sparse_exp.sparse.sparsifiers.lth import LotteryTicketSparsifier
from sparse_exp.sparse.sparsifiers.mask_file import MaskFileSparsifier
from sparse_exp.sparse.sparsifiers.pai import (GraspSparsifier, RandomPruningSparsifier, SnipSparsifier,
                                               SynflowSparsifier)
from sparse_exp.sparse.sparsifiers.static import DenseSparsifier, StaticSparsifier

SPARSIFIERS: Dict[str, Type[Sparsifier]] = {
    "dense": DenseSparsifier,
    "static": StaticSparsifier,
    "set": SETSparsifier,
    "rigl": RigLSparsifier,
    "granet": GraNetSparsifier,
    "gmp": GradualMagnitudeSparsifier,
    "mask_file": MaskFileSparsifier,
    "lth": LotteryTicketSparsifier,
    "snip": SnipSparsifier,
    "grasp": GraspSparsifier,
    "synflow": SynflowSparsifier,
    "random": RandomPruningSparsifier,
}


def build_sparsifier(cfg: Any, ctx: SparseContext) -> Sparsifier:
    """Instantiate the sparsifier named ``cfg.name``.

    Raises:
        ValueError: unknown name (lists the allowed ones).
    """
    if cfg.name not in SPARSIFIERS:
        raise ValueError(f"sparsifier.name={cfg.name!r} is not known; allowed: {sorted(SPARSIFIERS)}")
    return SPARSIFIERS[cfg.name](cfg, ctx)


__all__ = ["SPARSIFIERS", "SparseContext", "Sparsifier", "build_sparsifier"]
