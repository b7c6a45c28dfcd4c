"""The config groups' registries (one :class:`~sparse_exp.registry.Registry` per group).

This module only creates them; every option registers itself in the module that implements it, and
:mod:`sparse_exp.components` imports all of those. Group-level schemas shared by every option (models,
data sets, distributions) come from :mod:`sparse_exp.config`.

==============  =====================================================  ==============================
group           implementations                                        registered in
==============  =====================================================  ==============================
``model``       ``fn(in_channels, num_classes, image_size) -> Module``  :mod:`sparse_exp.models`
``dataset``     :class:`sparse_exp.data.base.DatasetSpec`               :mod:`sparse_exp.data`
``distribution`` raw layer score ``fn(shape, power) -> float``          :mod:`sparse_exp.sparse.distributions`
``sparsifier``  :class:`sparse_exp.sparse.sparsifiers.base.Sparsifier`  :mod:`sparse_exp.sparse.sparsifiers`
``superposer``  callback factory ``fn(cfg) -> Callback | None``         :mod:`sparse_exp.superpose`
``optimizer``   ``fn(cfg, param_groups) -> torch.optim.Optimizer``      :mod:`sparse_exp.optim`
``schedule``    ``fn(cfg, total_steps) -> (step -> LR multiplier)``     :mod:`sparse_exp.schedules`
``logger``      ``fn(cfg, run_dir, config, name) -> logger``            :mod:`sparse_exp.loggers`
``tweaks``      callback class ``cls(node) -> Callback`` (several at once)  :mod:`sparse_exp.tweaks`
==============  =====================================================  ==============================
"""

from __future__ import annotations

from sparse_exp.config import (DatasetConfig, DistributionConfig, LoggerConfig, ModelConfig, OptimizerConfig,
                               ScheduleConfig)
from sparse_exp.registry import Registry

MODELS = Registry("model", default_schema=ModelConfig)
DATASETS = Registry("dataset", default_schema=DatasetConfig)
DISTRIBUTIONS = Registry("distribution", default_schema=DistributionConfig)
SPARSIFIERS = Registry("sparsifier")
SUPERPOSERS = Registry("superposer")
OPTIMIZERS = Registry("optimizer", default_schema=OptimizerConfig)
SCHEDULES = Registry("schedule", default_schema=ScheduleConfig)
LOGGERS = Registry("logger", default_schema=LoggerConfig)
#: list-valued group: ``tweaks=[a,b]`` selects several options, each configured under ``tweaks.<name>``
TWEAKS = Registry("tweaks", key=lambda cfg: list(cfg.tweaks or {}))

__all__ = ["MODELS", "DATASETS", "DISTRIBUTIONS", "SPARSIFIERS", "SUPERPOSERS", "OPTIMIZERS", "SCHEDULES", "LOGGERS", "TWEAKS"]
