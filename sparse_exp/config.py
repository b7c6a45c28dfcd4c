"""Structured config schemas (Hydra ConfigStore) for ``python -m sparse_exp.train``.

Every option of every config group under ``conf/`` starts from one of these dataclasses,
so OmegaConf checks types and refuses unknown keys at composition time. Each group YAML
pulls its schema in with a defaults entry such as ``- /schema/sparsifier@_here_: rigl``.

Value checks that types cannot express (ranges, cross-key constraints) live in
:mod:`sparse_exp.validate` and run before any data is loaded.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, List, Optional

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING


@dataclass
class ModelConfig:
    """``model`` group: architecture name from :data:`sparse_exp.models.MODELS`; ``init``:
    ``default`` | ``kaiming_normal`` (:func:`sparse_exp.models.reinitialize_`)."""

    name: str = MISSING
    init: str = "default"


@dataclass
class DatasetConfig:
    """``dataset`` group.

    ``subset_train`` / ``subset_test`` shrink the data for smoke runs (first N images after
    the validation split). ``val_size`` images are held out of the training set for every
    model-selection decision; the test set is for reporting only.
    """

    name: str = MISSING
    root: Optional[str] = None
    download: bool = False
    val_size: int = 5000
    subset_train: Optional[int] = None
    subset_test: Optional[int] = None
    num_workers: int = 0
    augment: bool = True
    # the Sup-tickets protocol per data set (paper Sec. 4.1 / reference README): cycle length in
    # epochs and cyclic LR range; conf/superposer/sup_tickets.yaml reads them.
    sup_cycle_epochs: float = 8.0
    sup_lr_low: float = 0.001
    sup_lr_high: float = 0.005
    # the data set's recipe: epochs of linear LR warm-up; conf/schedule/*.yaml read it as
    # schedule.warmup_epochs (the paper's CIFAR / ImageNet protocols have none)
    lr_warmup_epochs: int = 0


@dataclass
class DistributionConfig:
    """``distribution`` group: how the global density is split over layers.

    ``name``: ``uniform`` | ``er`` | ``erk`` (Evci et al. 2020, RigL Sec. 3 / rigl
    ``sparse_utils.get_sparsities``). ``dense_first_layer`` / ``dense_last_layer`` keep the
    input / output layer fully dense (RigL keeps the first layer dense for uniform).
    """

    name: str = MISSING
    erk_power_scale: float = 1.0
    dense_first_layer: bool = False
    dense_last_layer: bool = False


@dataclass
class OptimizerConfig:
    """``optimizer`` group: ``sgd`` (momentum, Nesterov off) or ``adam``."""

    name: str = MISSING
    lr: float = 0.1
    momentum: float = 0.9
    weight_decay: float = 5e-4
    nesterov: bool = False
    betas: List[float] = field(default_factory=lambda: [0.9, 0.999])


@dataclass
class ScheduleConfig:
    """``schedule`` group: LR multiplier as a function of the training step.

    ``step``: multiply by ``gamma`` at each fraction in ``milestones`` of training;
    ``cosine``: cosine decay to ``min_factor``; ``constant``. ``warmup_epochs`` of linear warm-up.
    """

    name: str = MISSING
    milestones: List[float] = field(default_factory=lambda: [0.5, 0.75])
    gamma: float = 0.1
    min_factor: float = 0.0
    warmup_epochs: int = 0


@dataclass
class LoggerConfig:
    """``logger`` group: ``wandb`` (offline by default; ``WANDB_MODE`` overrides ``mode``) or ``none``."""

    name: str = MISSING
    project: str = "sparse_exp"
    entity: Optional[str] = None
    mode: str = "offline"
    tags: List[str] = field(default_factory=list)


@dataclass
class SparsifierConfig:
    """``sparsifier`` group base: fields every sparsifier has."""

    name: str = MISSING


@dataclass
class DenseSparsifierConfig(SparsifierConfig):
    """``sparsifier=dense``: no masks at all (the dense baseline; ``sparsity`` must be 0)."""

    name: str = "dense"


@dataclass
class StaticSparsifierConfig(SparsifierConfig):
    """``sparsifier=static``: random exact-count mask drawn once at initialisation, then fixed."""

    name: str = "static"


@dataclass
class DynamicSparsifierConfig(SparsifierConfig):
    """``sparsifier=set`` / ``rigl``: fixed-density prune-and-regrow.

    ``delta_t``: update interval ΔT in optimizer steps; ``drop_fraction``: fraction of each
    layer's active weights dropped per update (RigL's alpha); ``drop_decay``: ``cosine`` (RigL
    Eq. 1, to 0 at the stop step) or ``constant``; ``stop_fraction``: no updates after this
    fraction of training.
    """

    delta_t: int = 100
    drop_fraction: float = 0.3
    drop_decay: str = "cosine"
    stop_fraction: float = 0.75


@dataclass
class GradualSparsifierConfig(SparsifierConfig):
    """``sparsifier=granet`` / ``gmp``: gradual global magnitude pruning (cubic schedule).

    ``init_density``: density before pruning starts (GraNet 0.5, GMP 1.0 = dense);
    ``prune_start_fraction`` / ``prune_end_fraction``: the pruning window as fractions of
    training; ``delta_t``: steps between pruning (and regeneration) updates.
    ``prune_rate`` (GraNet only): neuroregeneration drop fraction, decayed (``cosine`` to
    ``prune_rate_min`` over the run, or ``constant``) until ``stop_fraction`` of training.
    """

    init_density: float = 0.5
    prune_start_fraction: float = 0.0
    prune_end_fraction: float = 0.6875
    delta_t: int = 1000
    prune_rate: float = 0.5
    prune_rate_decay: str = "cosine"
    prune_rate_min: float = 0.005
    stop_fraction: float = 1.0


@dataclass
class LotteryTicketConfig(SparsifierConfig):
    """``sparsifier=lth``: IMP with rewinding (Frankle & Carbin 2019; Frankle et al. 2020).

    ``rounds`` pruning rounds of ``round_epochs`` epochs each, pruning to density
    ``(1 - sparsity) ** (r / rounds)`` after round r; ``rewind_epoch`` 0 rewinds to init.
    """

    name: str = "lth"
    rounds: int = 5
    round_epochs: int = 10
    rewind_epoch: int = 0


@dataclass
class MaskFileSparsifierConfig(SparsifierConfig):
    """``sparsifier=mask_file sparsifier.path=runs/<run>/masks.pt``: train a given mask."""

    name: str = "mask_file"
    path: str = MISSING


@dataclass
class SuperposerConfig:
    """``superposer`` group base."""

    name: str = MISSING


@dataclass
class NoSuperposerConfig(SuperposerConfig):
    """``superposer=none``: the base method's final model is the result."""

    name: str = "none"


@dataclass
class SupTicketsConfig(SuperposerConfig):
    """``superposer=sup_tickets`` (Yin et al. UAI 2022, Alg. 1).

    Budget: the cyclic phase is the last ``phase_fraction`` of the epochs rounded down to
    whole cycles of ``cycle_epochs``, or ``num_tickets * cycle_epochs`` epochs when
    ``num_tickets`` is set (Fig. 4). LR: ``lr_schedule`` ``triangle`` (Eq. 3) | ``fge`` | ``swa``
    between ``lr_low`` and ``lr_high`` (absolute LRs). Exploration at each cycle start drops
    ``explore_fraction`` per layer and regrows with ``explore_growth`` (``auto`` = the base
    method's criterion). ``averaging`` ``cia`` | ``caa`` | ``cima`` (``beta``); ``reprune``
    ``global`` | ``layerwise``; ``bn`` ``average`` | ``recompute``.
    The per-dataset defaults of cycle length and LR range live in the ``dataset`` group.
    """

    name: str = "sup_tickets"
    phase_fraction: float = 0.1
    cycle_epochs: float = 8.0
    num_tickets: Optional[int] = None
    lr_schedule: str = "triangle"
    lr_low: float = 0.001
    lr_high: float = 0.005
    explore_fraction: float = 0.5
    explore_growth: str = "auto"
    dst_updates_in_cycles: bool = True
    averaging: str = "cia"
    beta: float = 0.8
    count_normal_phase_ticket: bool = False
    prune_running_average: bool = False
    reprune: str = "global"
    bn: str = "average"


@dataclass
class Config:
    """Top-level config (``conf/config.yaml``).

    ``sparsity`` is the target fraction of zeros among the prunable weights (conv and linear
    weights), in [0, 1). ``epochs`` counts passes over the training split.
    """

    model: ModelConfig = MISSING
    dataset: DatasetConfig = MISSING
    sparsifier: Any = MISSING
    superposer: Any = MISSING
    distribution: DistributionConfig = MISSING
    optimizer: OptimizerConfig = MISSING
    schedule: ScheduleConfig = MISSING
    logger: LoggerConfig = MISSING
    sparsity: float = 0.9
    seed: int = 0
    epochs: int = 20
    batch_size: int = 128
    eval_batch_size: int = 1000
    device: str = "auto"
    deterministic: bool = False
    check_invariants: bool = False
    log_every: int = 50
    stop_after_epochs: Optional[int] = None
    progress: bool = True


#: schema name per (group, option); YAML files refer to ``/schema/<group>@_here_: <name>``.
SCHEMAS = {
    "model": {"model": ModelConfig},
    "dataset": {"dataset": DatasetConfig},
    "distribution": {"distribution": DistributionConfig},
    "optimizer": {"optimizer": OptimizerConfig},
    "schedule": {"schedule": ScheduleConfig},
    "logger": {"logger": LoggerConfig},
    "sparsifier": {
        "dense": DenseSparsifierConfig,
        "static": StaticSparsifierConfig,
        "set": DynamicSparsifierConfig,
        "rigl": DynamicSparsifierConfig,
        "granet": GradualSparsifierConfig,
        "gmp": GradualSparsifierConfig,
        "mask_file": MaskFileSparsifierConfig,
        "lth": LotteryTicketConfig,
    },
    "superposer": {"none": NoSuperposerConfig, "sup_tickets": SupTicketsConfig},
}


def register_configs() -> None:
    """Store the top-level schema and every group schema in Hydra's ConfigStore (idempotent)."""
    from sparse_exp.sparse.sparsifiers.pai import PAI_SCHEMAS

    SCHEMAS["sparsifier"].update(PAI_SCHEMAS)
    cs = ConfigStore.instance()
    cs.store(name="base_config", node=Config)
    from hydra_plugins.sparse_exp_sweeper.sparse_exp_sweeper import register_sweeper

    register_sweeper()
    for group, options in SCHEMAS.items():
        for name, node in options.items():
            cs.store(group=f"schema/{group}", name=name, node=node)


def add_schema(group: str, name: str, node: type) -> None:
    """Register one more schema (used by modules that add sparsifiers / superposers)."""
    SCHEMAS.setdefault(group, {})[name] = node
    ConfigStore.instance().store(group=f"schema/{group}", name=name, node=node)
