"""Sparsifiers: ``sparsifier=<name>`` on the command line picks one from :data:`SPARSIFIERS`.

Each module below registers its sparsifier(s) with their schema and config checks
(``@SPARSIFIERS.register``, :mod:`sparse_exp.registry`); each has ``conf/sparsifier/<name>.yaml``,
and ``tests/test_sparsifier_contract.py`` runs a contract test over every registered name.
"""

from __future__ import annotations

from typing import Any

from sparse_exp.engine.context import RunState
from sparse_exp.registry import SPARSIFIERS
from sparse_exp.sparse.sparsifiers import dst, gradual, grasp, lth, mask_file, random_pruning, snip, static, synflow  # noqa: F401
from sparse_exp.sparse.sparsifiers.sparsifier import Sparsifier


def build_sparsifier(cfg: Any, ctx: RunState) -> Sparsifier:
    """Instantiate the sparsifier named ``cfg.name`` for ``ctx``.

    Raises:
        sparse_exp.config.errors.ConfigError: unknown name (lists the allowed ones).
    """
    return SPARSIFIERS.build(cfg.name, cfg, ctx)


__all__ = ["SPARSIFIERS", "Sparsifier", "build_sparsifier"]
