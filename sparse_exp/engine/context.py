"""The run context: :class:`RunPlan` (what the config implies, static) and :class:`RunState` (what changes).

One plan and one state per run, handed alike to the pre-flight checks (the plan alone, built on the
``meta`` device), the sparsifier, the callbacks and the tweaks (the state, which holds the plan). No other
object carries these facts: :class:`sparse_exp.engine.build.Run` only forwards to its state.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, Iterator, List, Optional, Tuple

import torch
from omegaconf import OmegaConf
from torch import nn

from sparse_exp.config.errors import ConfigError
from sparse_exp.data import dataset_spec
from sparse_exp.models import build_configured
from sparse_exp.registry import DISTRIBUTIONS
from sparse_exp.sparse.distributions import layer_counts
from sparse_exp.sparse.masking import Masking, declared_dense, dense_layer_names, kept_dense, prunable_parameters

#: ``loss(logits (N, C), labels (N,)) -> scalar`` in nats
LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
#: ``batches(n)`` yields ``n`` training batches ``(x (B, C, H, W), y (B,))``
Batches = Callable[[int], Iterator[Tuple[torch.Tensor, torch.Tensor]]]


@dataclass(frozen=True)
class RunPlan:
    """What a run will be, known from its config and the data set's sizes (no data loaded, no weights).

    Attributes:
        cfg: the composed, validated config.
        spec: the data set's static facts (:class:`sparse_exp.data.spec.DatasetSpec`; None outside a
            configured run, see :meth:`RunState.for_model`).
        num_train / num_val / num_test: images per split after the validation hold-out and ``subset_*``.
        steps_per_epoch: optimizer steps per epoch, ``ceil(num_train / batch_size)``.
        total_steps: optimizer steps of the run's own ``epochs`` (the main phase; the sparsifier's
            schedules are fractions of it).
        shapes: prunable weight name -> shape, in forward order.
        dense_layers: prunable layers kept dense (never pruned or regrown): the model's own
            (``sparse_keep_dense``), the distribution's ``dense_first_layer`` / ``dense_last_layer`` and those it
            keeps dense itself (N:M's ``misfit=dense``): :func:`~sparse_exp.sparse.masking.kept_dense`.
    """

    cfg: Any
    spec: Any
    num_train: int
    num_val: int
    num_test: int
    steps_per_epoch: int
    total_steps: int
    shapes: Dict[str, Tuple[int, ...]]
    dense_layers: Tuple[str, ...]

    @property
    def num_weights(self) -> int:
        """Prunable weights of the model."""
        return sum(math.prod(s) for s in self.shapes.values())


def prunable_layout(cfg: Any, spec: Any) -> Tuple[Dict[str, Tuple[int, ...]], List[str]]:
    """``(shapes, declared)`` of ``cfg.model`` for ``spec``'s input, built on the ``meta`` device (no memory, no RNG
    draw): prunable weight name -> shape in forward order, and the layers the model keeps dense
    (:func:`~sparse_exp.sparse.masking.declared_dense`)."""
    with torch.device("meta"):
        model = build_configured(cfg.model, spec)
    return {n: tuple(p.shape) for n, p in prunable_parameters(model)}, declared_dense(model)


def prunable_shapes(cfg: Any, spec: Any) -> Dict[str, Tuple[int, ...]]:
    """Prunable weight shapes of ``cfg.model`` for ``spec``'s input (:func:`prunable_layout`)."""
    return prunable_layout(cfg, spec)[0]


def official_sizes(cfg: Any, spec: Any) -> Tuple[int, int, int]:
    """``(num_train, num_val, num_test)`` of ``cfg.dataset`` from the data set's official split sizes.

    Raises:
        ConfigError: ``dataset.val_size`` leaves no training image, or a ``subset_*`` exceeds its split
            (a run must train on what its config says: never clamped silently).
    """
    ds = cfg.dataset
    val = int(ds.val_size)
    if val >= spec.train_size:
        raise ConfigError("dataset.val_size", val, f"must be smaller than the {spec.train_size} training images "
                          f"of {spec.name} (they are held out of the training split)")
    pool = spec.train_size - val
    if ds.subset_train is not None and int(ds.subset_train) > pool:
        raise ConfigError("dataset.subset_train", int(ds.subset_train), f"must be at most {pool}: {spec.name} has "
                          f"{spec.train_size} training images, {val} of them held out for validation")
    if ds.subset_test is not None and int(ds.subset_test) > spec.test_size:
        raise ConfigError("dataset.subset_test", int(ds.subset_test), f"must be at most the {spec.test_size} test "
                          f"images of {spec.name}")
    num_train = pool if ds.subset_train is None else int(ds.subset_train)
    num_test = spec.test_size if ds.subset_test is None else int(ds.subset_test)
    return num_train, val, num_test


def plan_run(cfg: Any, sizes: Optional[Tuple[int, int, int]] = None) -> RunPlan:
    """The :class:`RunPlan` of a validated config.

    Args:
        cfg: the composed, validated config.
        sizes: ``(num_train, num_val, num_test)`` of the loaded data (a smaller copy on disk holds fewer
            images); default: from the official sizes (:func:`official_sizes`, the pre-flight's case).

    Raises:
        ConfigError: see :func:`official_sizes`.
    """
    spec = dataset_spec(cfg.dataset)
    num_train, num_val, num_test = official_sizes(cfg, spec) if sizes is None else sizes
    steps = math.ceil(num_train / int(cfg.batch_size))
    shapes, declared = prunable_layout(cfg, spec)
    dense = kept_dense(shapes, declared, cfg.distribution)
    return RunPlan(cfg=cfg, spec=spec, num_train=num_train, num_val=num_val, num_test=num_test,
                   steps_per_epoch=steps, total_steps=steps * int(cfg.epochs), shapes=shapes,
                   dense_layers=tuple(dense))


@dataclass
class RunState:
    """A run's dynamic state: what the loop keeps current and the sparsifier and callbacks read.

    The plan's facts are read through it (``state.steps_per_epoch`` is ``state.plan.steps_per_epoch``),
    never copied.

    Attributes:
        plan: the run's :class:`RunPlan`.
        model: the network being trained (not the DDP wrapper), on ``device``.
        masking: its masks (:class:`sparse_exp.sparse.masking.Masking`).
        optimizer: the optimizer (None where no step is taken, e.g. scoring a mask outside a run).
        device: where the model and the batches live.
        data: train / val / test loaders (:class:`sparse_exp.data.spec.DataBundle`; None outside a run).
        sparsifier: chooses and evolves the masks (its ``growth``, ``generator``, ``updates``).
        scheduler: the per-step LR scheduler (``LambdaLR``; set once built, after the callbacks' ``setup``).
        pre_steps: steps of the sparsifier's LR phases before the main phase (``Sparsifier.lr_phases``).
        batches: ``batches(n)`` yields ``n`` training batches for pruning-at-init scores.
        score_loss: the loss of those scores ``loss(logits, y) -> scalar`` (plain CE unless a tweak wraps it).
        step: optimizer steps completed in the whole run.
        epoch: epochs completed in the whole run.
        elapsed: training seconds so far, over all sessions of the run.
        log: ``log(row)`` sends scalars to the experiment logger at the current step.
        reported_masks: set at the end: the reported model's masks if a callback replaced the individual
            model (``final_masks``), else None.
        run_dir: where a callback may write its own files (None in processes that do not write: DDP ranks
            > 0, in-memory runs).
    """

    plan: RunPlan
    model: nn.Module
    masking: Masking
    optimizer: Optional[torch.optim.Optimizer]
    device: torch.device
    data: Any = None
    sparsifier: Any = None
    scheduler: Any = None
    pre_steps: int = 0
    batches: Optional[Batches] = None
    score_loss: Optional[LossFn] = None
    step: int = 0
    epoch: int = 0
    elapsed: float = 0.0
    log: Callable[[Dict[str, Any]], None] = field(default=lambda row: None, repr=False)
    reported_masks: Optional[Dict[str, torch.Tensor]] = None
    run_dir: Optional[Path] = None

    @classmethod
    def for_model(cls, model: nn.Module, masking: Masking, optimizer: Optional[torch.optim.Optimizer], *,
                  sparsity: float, distribution: Any, total_steps: int, steps_per_epoch: int, seed: int = 0,
                  device: Optional[torch.device] = None, batches: Optional[Batches] = None,
                  score_loss: Optional[LossFn] = None) -> "RunState":
        """A context for a model outside a configured run (tests, benchmarks): a plan with just the
        sparse facts (``sparsity``, the ``distribution`` node, ``seed``, step counts), no data set."""
        dist = OmegaConf.create(OmegaConf.to_container(distribution) if OmegaConf.is_config(distribution)
                                else dict(distribution))
        cfg = OmegaConf.create({"sparsity": float(sparsity), "seed": int(seed), "distribution": dist,
                                "epochs": -(-int(total_steps) // int(steps_per_epoch))})
        dense = dense_layer_names(masking, dist)
        plan = RunPlan(cfg=cfg, spec=None, num_train=0, num_val=0, num_test=0, steps_per_epoch=int(steps_per_epoch),
                       total_steps=int(total_steps), shapes=dict(masking.shapes), dense_layers=tuple(dense))
        return cls(plan=plan, model=model, masking=masking, optimizer=optimizer,
                   device=device if device is not None else torch.device("cpu"), batches=batches,
                   score_loss=score_loss)

    # -- the plan's facts, read through the state
    @property
    def cfg(self) -> Any:
        return self.plan.cfg

    @property
    def steps_per_epoch(self) -> int:
        return self.plan.steps_per_epoch

    @property
    def total_steps(self) -> int:
        """Steps of the run's own training (main phase), ``epochs * steps_per_epoch``."""
        return self.plan.total_steps

    @property
    def epochs(self) -> int:
        """Epochs of the run's own training (``cfg.epochs``)."""
        return int(self.plan.cfg.epochs)

    @property
    def num_classes(self) -> int:
        return int(self.plan.spec.num_classes)

    @property
    def base_lr(self) -> float:
        """The optimizer's configured LR (``optimizer.lr``)."""
        return float(self.plan.cfg.optimizer.lr)

    @property
    def dense_layers(self) -> Tuple[str, ...]:
        return self.plan.dense_layers

    @property
    def sparsity(self) -> float:
        """Target fraction of zeros over the prunable weights, in [0, 1)."""
        return float(self.plan.cfg.sparsity)

    @property
    def density(self) -> float:
        return 1.0 - self.sparsity

    @property
    def distribution(self) -> Any:
        """The ``distribution`` config node (name, erk_power_scale, dense_*_layer)."""
        return self.plan.cfg.distribution

    @property
    def nm_pattern(self) -> Optional[Tuple[int, int]]:
        """``(n, m)`` if the distribution asks for N:M groups (its ``nm_pattern`` query), else None."""
        return DISTRIBUTIONS.query(self.distribution.name, "nm_pattern")(self.distribution)

    @property
    def seed(self) -> int:
        return int(self.plan.cfg.seed)

    @property
    def main_step(self) -> int:
        """Steps completed in the main phase (after the sparsifier's LR phases); <= 0 before it."""
        return self.step - self.pre_steps

    def target_counts(self, density: Optional[float] = None) -> Dict[str, int]:
        """Exact ones per layer for ``density`` (default: the target) under the distribution."""
        return layer_counts(self.masking.shapes, self.density if density is None else density,
                            self.distribution.name, self.distribution.erk_power_scale, self.dense_layers)
