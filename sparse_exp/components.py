"""Import every component so that it registers itself (models, data sets, distributions, sparsifiers,
superposers, optimizers, LR schedules, loggers, training tweaks). :func:`sparse_exp.compose.setup` and :func:`sparse_exp.validate.validate` rely on it;
a new component module is added here once, with its config YAML and its tests.
"""

from __future__ import annotations

import sparse_exp.data  # noqa: F401
import sparse_exp.loggers  # noqa: F401
import sparse_exp.models  # noqa: F401
import sparse_exp.optim  # noqa: F401
import sparse_exp.schedules  # noqa: F401
import sparse_exp.sparse.distributions  # noqa: F401
import sparse_exp.sparse.sparsifiers  # noqa: F401
import sparse_exp.superpose  # noqa: F401
import sparse_exp.tweaks  # noqa: F401
from sparse_exp.registry import REGISTRIES

__all__ = ["REGISTRIES"]
