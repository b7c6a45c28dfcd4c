"""Structured config schemas shared across config groups (the top-level :class:`Config`, and the
schemas every option of a group shares: model, data set, distribution, optimizer, schedule, logger).

A method's own schema lives beside its implementation and is registered with it
(:mod:`sparse_exp.registry`); :func:`sparse_exp.config.compose.setup` stores them all in Hydra's ConfigStore
as ``schema/<group>/<name>``, so OmegaConf checks types and refuses unknown keys at composition time.
Each group YAML pulls its schema in with a defaults entry such as ``- /schema/sparsifier@_here_: rigl``.
Value checks that types cannot express (ranges, cross-key constraints) are registered with each
option and run by :mod:`sparse_exp.config.validate` before any data is loaded.

This module imports no method and no plugin.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional

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
    #: ``auto`` (CIFAR: ``device``; others: ``torchvision``), ``device`` (the split as uint8 on the training
    #: device, batched crop / flip: :mod:`sparse_exp.data.device_loader`), ``torchvision`` (per-sample PIL)
    loader: str = "auto"
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
    """``sparsifier`` group base: fields every sparsifier has (each method's schema subclasses it)."""

    name: str = MISSING


@dataclass
class SuperposerDatasetDefaults:
    """``superposer.dataset_defaults``: the data set's Sup-tickets protocol (paper Sec. 4.1 / reference README),
    cycle length in epochs and cyclic LR range, from ``conf/superposer/dataset/<dataset>.yaml`` (chosen by
    ``conf/config.yaml`` for the chosen data set); ``conf/superposer/sup_tickets.yaml`` reads them."""

    cycle_epochs: float = 8.0
    lr_low: float = 0.001
    lr_high: float = 0.005


@dataclass
class SuperposerDistributionDefaults:
    """``superposer.distribution_defaults``: what the distribution implies for superposition, from
    ``conf/superposer/distribution/<distribution>.yaml`` (``nm``: ``reprune: nm``, the N:M groups kept)."""

    reprune: str = "global"


@dataclass
class SuperposerConfig:
    """``superposer`` group base: the option's ``name`` and the data set's and distribution's defaults every
    superposer sees."""

    name: str = MISSING
    dataset_defaults: SuperposerDatasetDefaults = field(default_factory=SuperposerDatasetDefaults)
    distribution_defaults: SuperposerDistributionDefaults = field(default_factory=SuperposerDistributionDefaults)


@dataclass
class FastConfig:
    """``fast`` block: how the train step runs (:mod:`sparse_exp.engine.fast_step`); every option off is the eager
    fp32 step.

    ``compile``: ``torch.compile`` the step; ``cuda_graphs``: capture it as one CUDA graph (CUDA only) after
    ``graph_warmup_steps`` eager steps; ``dtype``: ``fp32`` | ``bf16`` (autocast, fp32 master weights and masks);
    ``channels_last``: NHWC weights and inputs.
    """

    compile: bool = False
    cuda_graphs: bool = False
    dtype: str = "fp32"
    channels_last: bool = False
    graph_warmup_steps: int = 3


@dataclass
class DistConfig:
    """``dist`` block: data-parallel training (:mod:`sparse_exp.engine.distributed`).

    ``sync_bn``: convert BatchNorm to ``torch.nn.SyncBatchNorm`` under DDP (statistics of the global batch; CUDA /
    NCCL only, refused on CPU); false: each rank normalises by its own rows and DDP broadcasts rank 0's running
    statistics at every forward. No effect in one process.
    """

    sync_bn: bool = False


@dataclass
class Config:
    """Top-level config (``conf/config.yaml``).

    ``sparsity`` is the target fraction of zeros among the prunable weights (conv and linear
    weights), in [0, 1). ``epochs`` counts passes over the training split. ``report``: ``last`` (the
    final model's test metrics) | ``best_val`` (those of the best-validation epoch,
    :mod:`sparse_exp.callbacks.best_val`).
    """

    model: ModelConfig = MISSING
    dataset: DatasetConfig = MISSING
    sparsifier: Any = MISSING
    superposer: Any = MISSING
    distribution: DistributionConfig = MISSING
    optimizer: OptimizerConfig = MISSING
    schedule: ScheduleConfig = MISSING
    logger: LoggerConfig = MISSING
    #: chosen training tweaks, ``{name: node}`` (``tweaks=[soft_neurons,ghost_skip]``; empty: none)
    tweaks: Dict[str, Any] = field(default_factory=dict)
    #: how the train step runs (compile, CUDA graphs, bf16, channels_last): :mod:`sparse_exp.engine.fast_step`
    fast: FastConfig = field(default_factory=FastConfig)
    #: data-parallel options (SyncBatchNorm): :class:`DistConfig`
    dist: DistConfig = field(default_factory=DistConfig)
    sparsity: float = 0.9
    seed: int = 0
    epochs: int = 20
    report: str = "last"
    batch_size: int = 128
    eval_batch_size: int = 1000
    device: str = "auto"
    deterministic: bool = False
    check_invariants: bool = False
    log_every: int = 50
    stop_after_epochs: Optional[int] = None
    #: a tqdm bar per epoch, drawn only when stderr is a terminal (logs get one line per epoch either way)
    progress: bool = True
