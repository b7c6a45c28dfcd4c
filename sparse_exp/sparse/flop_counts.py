"""FLOP accounting for sparse training: inference and training cost relative to the dense model.

Units: FLOPs per sample, a multiply-add = 2 FLOPs, prunable layers only (conv: ``2 * (weight.numel() / C_out) *
output.numel()``; linear: ``2 * in * out`` per row); BN, pooling, activations, residual adds and biases are left
out, and so are a transformer's attention matmuls (``Q K^T`` and ``A V``: ``4 T^2 D`` per block and sample for
``T`` tokens of width ``D``; no weight, so never sparse; for ``model=vit``'s default on 28x28 inputs 4 % of the
dense forward FLOPs, so its ratios slightly overstate the saving: docs/vit.md).
With ``f_D`` / ``f_S = sum_l d_l f_l`` the dense / sparse forward FLOPs, a training step costs ``3 f_S``, or
``2 f_S + f_D`` where a mask update reads the dense weight gradient (RigL; :func:`rigl_step_flops` averages
``(3 f_S dT + 2 f_S + f_D) / (dT + 1)``); training ratios are relative to ``3 f_D`` per step. Source: Evci et
al., "Rigging the Lottery", ICML 2020, Sec. 4.1 and App. H; google-research/rigl ``rigl/sparse_utils.py::get_stats``
and ``Resnet_50_Param_Flops_Counting.ipynb``. :class:`TrainingFlops` integrates a run's real cost (fed plain
numbers when the density changes); :func:`expected_training_ratio` integrates what a sparsifier declares
(``flop_schedule``, ``flop_allocation``) without training; no method is known here by name.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from typing import Any, Callable, Dict, Iterable, Mapping, Optional, Sequence, Tuple

import torch
from torch import nn

from sparse_exp.sparse.density_schedules import ConstantDensity, FlopSchedule
from sparse_exp.sparse.distributions import layer_counts, layer_densities
from sparse_exp.sparse.masking import prunable_parameters


# ----------------------------------------------------------------------------------- forward FLOPs
@dataclass
class FlopProfile:
    """Per prunable layer: dense forward FLOPs and number of output elements (one sample).

    ``outputs`` is what RigL's counter charges per layer independent of sparsity (one ReLU and
    one bias add per output element); pass it as ``overhead`` to :func:`inference_flops` to
    reproduce that counter.
    """

    flops: Dict[str, int]
    outputs: Dict[str, int]


def layer_forward_profile(model: nn.Module, input_shape: Sequence[int]) -> FlopProfile:
    """Count forward FLOPs and output sizes of every prunable layer with one forward pass.

    Args:
        model: any module; its prunable layers are those of :func:`prunable_parameters`.
        input_shape: one sample's shape without the batch dimension, e.g. ``(3, 224, 224)``.

    Runs a zeros batch of shape ``(1, *input_shape)`` on the model's device and dtype under
    ``torch.no_grad`` with every module in eval mode (BN running statistics untouched), then
    restores each module's train/eval flag. A layer called twice is counted twice; a layer never
    called counts 0.
    """
    names = [n for n, _ in prunable_parameters(model)]
    wanted = set(names)
    flops = {n: 0 for n in names}
    outputs = {n: 0 for n in names}
    handles = []

    def make_hook(key: str, module: nn.Module) -> Callable:
        def hook(_mod: nn.Module, _inp: Any, out: torch.Tensor) -> None:
            n_out = out.numel() // out.shape[0]  # per sample
            per_output = module.weight.numel() // module.weight.shape[0]  # K_h*K_w*C_in/groups, or in
            flops[key] += 2 * per_output * n_out
            outputs[key] += n_out

        return hook

    for mod_name, module in model.named_modules():
        key = f"{mod_name}.weight" if mod_name else "weight"
        if key in wanted:
            handles.append(module.register_forward_hook(make_hook(key, module)))
    modes = {m: m.training for m in model.modules()}
    try:
        first = next(model.parameters(), None)
        device = first.device if first is not None else torch.device("cpu")
        dtype = first.dtype if first is not None and first.is_floating_point() else torch.float32
        model.eval()
        with torch.no_grad():
            model(torch.zeros((1, *input_shape), device=device, dtype=dtype))
    finally:
        for h in handles:
            h.remove()
        for m, mode in modes.items():
            m.training = mode
    return FlopProfile(flops=flops, outputs=outputs)


def layer_forward_flops(model: nn.Module, input_shape: Sequence[int]) -> Dict[str, int]:
    """Dense forward FLOPs per prunable layer, keyed like :func:`prunable_parameters` (e.g.
    ``"conv1.weight"``), for one sample of ``input_shape``. See :func:`layer_forward_profile`."""
    return layer_forward_profile(model, input_shape).flops


# --------------------------------------------------------------------------------- inference FLOPs
def _check_keys(layer_flops: Mapping[str, float], densities: Mapping[str, float]) -> None:
    missing = [n for n in layer_flops if n not in densities]
    if missing:
        raise KeyError(f"no density for layers {missing}")


def inference_flops(
    layer_flops: Mapping[str, float],
    densities: Mapping[str, float],
    overhead: Optional[Mapping[str, float]] = None,
) -> float:
    """Sparse forward FLOPs ``sum_l d_l f_l`` (+ ``sum_l overhead_l`` if given).

    Args:
        layer_flops: dense forward FLOPs per layer (:func:`layer_forward_flops`).
        densities: fraction of non-zero weights per layer (same keys).
        overhead: optional per-layer FLOPs that do not scale with density (e.g.
            :attr:`FlopProfile.outputs` to emulate RigL's micronet counter).
    """
    _check_keys(layer_flops, densities)
    total = sum(float(densities[n]) * layer_flops[n] for n in layer_flops)
    if overhead is not None:
        total += sum(overhead.get(n, 0) for n in layer_flops)
    return total


def dense_flops(layer_flops: Mapping[str, float], overhead: Optional[Mapping[str, float]] = None) -> float:
    """Dense forward FLOPs ``f_D = sum_l f_l`` (+ overhead)."""
    return sum(layer_flops.values()) + (sum(overhead.get(n, 0) for n in layer_flops) if overhead else 0.0)


def inference_ratio(
    layer_flops: Mapping[str, float],
    densities: Mapping[str, float],
    overhead: Optional[Mapping[str, float]] = None,
) -> float:
    """``inference_flops / f_D`` (1.0 for a dense model)."""
    return inference_flops(layer_flops, densities, overhead) / dense_flops(layer_flops, overhead)


def density_allocator(
    shapes: Mapping[str, Sequence[int]],
    method: str,
    erk_power_scale: float = 1.0,
    dense_layers: Iterable[str] = (),
) -> Callable[[float], Dict[str, float]]:
    """``f(global_density) -> {layer: density}`` with the exact counts of :func:`layer_counts`.

    The same allocation the sparsifiers use (``RunState.target_counts``, :mod:`sparse_exp.engine.context`); cached per
    density. A global density of 1 (or more) gives every layer density 1.
    """
    sizes = {n: math.prod(s) for n, s in shapes.items()}
    dense = tuple(dense_layers)

    @functools.lru_cache(maxsize=4096)
    def alloc(density: float) -> Tuple[Tuple[str, float], ...]:
        if density >= 1.0:
            return tuple((n, 1.0) for n in shapes)
        if method == "nm":  # every N:M layer at the density itself (exact at n/m; GMP's smooth curve in between)
            return tuple(layer_densities(shapes, density, method, erk_power_scale, dense).items())
        counts = layer_counts(shapes, density, method, erk_power_scale, dense)
        return tuple((n, counts[n] / sizes[n]) for n in shapes)

    def allocate(density: float) -> Dict[str, float]:
        return dict(alloc(float(density)))

    return allocate


# ---------------------------------------------------------------------------------- training FLOPs
class TrainingFlops:
    """Accumulates training FLOPs step by step; :meth:`ratio` is relative to dense training.

    Args:
        f_dense: dense forward FLOPs per sample, ``f_D``.

    Usage by the engine (Python numbers only; call when the density changes or at epoch end)::

        tf = TrainingFlops(f_dense)
        tf.add_steps(n_ordinary_steps, f_sparse)            # 3 f_S each
        tf.add_dense_gradient_steps(n_update_steps, f_sparse)  # 2 f_S + f_D each (RigL updates)
        tf.ratio()                                           # total / (3 f_D * steps)

    ``add_dense_gradient_steps`` counts steps *instead of* ``add_steps`` (do not add them twice).
    All numbers are per sample; multiply by the batch size for absolute FLOPs (the ratio does
    not depend on it as long as the batch size is constant).
    """

    def __init__(self, f_dense: float) -> None:
        if not f_dense > 0:
            raise ValueError(f"f_dense must be > 0, got {f_dense}")
        self.f_dense = float(f_dense)
        self.total = 0.0
        self.steps = 0

    def add_steps(self, n_steps: int, f_sparse: float) -> None:
        """``n_steps`` ordinary sparse steps at forward cost ``f_sparse``: ``3 f_S`` each."""
        self._check(n_steps, f_sparse)
        self.total += 3.0 * float(f_sparse) * n_steps
        self.steps += int(n_steps)

    def add_dense_gradient_steps(self, n_steps: int, f_sparse: float) -> None:
        """``n_steps`` steps that also need the dense weight gradient: ``2 f_S + f_D`` each."""
        self._check(n_steps, f_sparse)
        self.total += (2.0 * float(f_sparse) + self.f_dense) * n_steps
        self.steps += int(n_steps)

    def _check(self, n_steps: int, f_sparse: float) -> None:
        if n_steps < 0:
            raise ValueError(f"n_steps must be >= 0, got {n_steps}")
        if not 0 <= f_sparse <= self.f_dense * (1 + 1e-9):
            raise ValueError(f"f_sparse={f_sparse} must be in [0, f_dense={self.f_dense}]")

    @property
    def dense_total(self) -> float:
        """FLOPs dense training would have spent on the same number of steps."""
        return 3.0 * self.f_dense * self.steps

    def ratio(self) -> float:
        """Training FLOPs so far relative to dense training of as many steps (NaN if none)."""
        return self.total / self.dense_total if self.steps else math.nan

    def state_dict(self) -> Dict[str, float]:
        return {"f_dense": self.f_dense, "total": self.total, "steps": self.steps}

    def load_state_dict(self, state: Mapping[str, float]) -> None:
        self.f_dense = float(state["f_dense"])
        self.total = float(state["total"])
        self.steps = int(state["steps"])


def rigl_step_flops(f_sparse: float, f_dense: float, delta_t: int) -> float:
    """Mean FLOPs per step with a dense-gradient update every ``delta_t`` steps (RigL App. H):

        (3 f_S dT + 2 f_S + f_D) / (dT + 1)

    i.e. ``dT`` ordinary steps at ``3 f_S`` and one update step at ``2 f_S + f_D``; divide by
    ``3 f_D`` for the ratio to dense training. Raises ``ValueError`` for ``delta_t < 1``.
    """
    if delta_t is None or delta_t < 1:
        raise ValueError(f"delta_t must be >= 1, got {delta_t}")
    fs = float(f_sparse)
    return (3 * fs * delta_t + 2 * fs + f_dense) / (delta_t + 1)


# ---------------------------------------------------------------------------- estimate (no training)
@dataclass(frozen=True)
class Allocation:
    """How a sparsifier's layer densities are estimated without training
    (:meth:`~sparse_exp.sparse.sparsifiers.sparsifier.Sparsifier.flop_allocation`).

    Attributes:
        distribution: the :func:`layer_counts` method that spreads a global density over the
            layers: the configured ``distribution.name``, or another one (``"uniform"`` for global
            random pruning, every layer at the global density in expectation).
        note: what the estimate assumes where the real densities are an outcome of training or
            scoring (printed by ``python -m sparse_exp.flops``); None when the allocation is exact.
        layers: fixed per-layer densities used at every global density (a mask file), or None.
    """

    distribution: str
    note: Optional[str] = None
    layers: Optional[Mapping[str, float]] = None

    def density(self, shapes: Mapping[str, Sequence[int]], default: float) -> float:
        """Global density of the fixed ``layers`` (weighted by layer size), else ``default``."""
        if self.layers is None:
            return default
        return sum(self.layers[n] * math.prod(shapes[n]) for n in shapes) / sum(math.prod(s) for s in shapes.values())

    def allocator(self, shapes: Mapping[str, Sequence[int]], erk_power_scale: float = 1.0,
                  dense_layers: Iterable[str] = ()) -> Callable[[float], Dict[str, float]]:
        """``global density -> {layer: density}``: the fixed ``layers``, or :func:`density_allocator`."""
        if self.layers is not None:
            fixed = {n: float(self.layers[n]) for n in shapes}
            return lambda _density: fixed
        return density_allocator(shapes, self.distribution, erk_power_scale, dense_layers)


def expected_training_ratio(
    schedule: FlopSchedule,
    layer_flops: Mapping[str, float],
    densities_at: Callable[[float], Mapping[str, float]],
    *,
    num_points: int = 512,
) -> float:
    """Training FLOPs of a whole run relative to dense training, from a sparsifier's declaration.

    Args:
        schedule: what the run costs per step, ``SPARSIFIERS[name].flop_schedule(cfg, total_steps,
            density)`` (:class:`~sparse_exp.sparse.density_schedules.FlopSchedule`).
        layer_flops: dense forward FLOPs per layer (:func:`layer_forward_flops`).
        densities_at: ``global density -> layer densities`` (:meth:`Allocation.allocator`,
            :func:`density_allocator`).
        num_points: midpoints of the continuous estimate of a varying density.

    Step-exact when ``schedule.total_steps`` is set: every step costs ``3 f_S`` at the density set
    by the updates before it, or ``2 f_S + f_D`` if it reads a dense gradient
    (:meth:`FlopSchedule.segments`; the engine's :class:`TrainingFlops` count). Otherwise the
    continuous approximation: a constant density costs ``f_S / f_D``, plus RigL's formula
    (:func:`rigl_step_flops`, one dense gradient per ``dT + 1`` steps) over the first
    ``dense_gradient.stop_fraction`` of training; a varying density is sampled at ``num_points``
    midpoints of training (``density.at_fraction``), each costing ``3 f_S`` or, up to the stop
    fraction, RigL's formula.

    Where the layer densities are an outcome of training (global magnitude pruning) the estimate
    uses ``densities_at`` at each global density instead (see the sparsifier's ``Allocation.note``).

    Raises:
        TypeError: ``schedule`` is not a :class:`FlopSchedule` (e.g. a method name).
    """
    if not isinstance(schedule, FlopSchedule):
        raise TypeError(f"expected a FlopSchedule (Sparsifier.flop_schedule), got {schedule!r}")
    f_d = float(sum(layer_flops.values()))

    def f_s(d: float) -> float:
        return inference_flops(layer_flops, densities_at(d))

    grad = schedule.dense_gradient
    if schedule.total_steps is not None:
        acc = TrainingFlops(f_d)
        for first, last, density, dense in schedule.segments():
            fs = f_s(density)
            acc.add_steps(last - first + 1 - int(dense), fs)
            if dense:
                acc.add_dense_gradient_steps(1, fs)
        return acc.ratio()
    if isinstance(schedule.density, ConstantDensity):
        fs = f_s(schedule.density.value)
        if grad is None:
            return fs / f_d
        upd = rigl_step_flops(fs, f_d, grad.delta_t) / (3 * f_d)
        return grad.stop_fraction * upd + (1.0 - grad.stop_fraction) * fs / f_d
    total = 0.0
    for k in range(num_points):
        p = (k + 0.5) / num_points
        fs = f_s(schedule.density.at_fraction(p))
        if grad is not None and p <= grad.stop_fraction:
            total += rigl_step_flops(fs, f_d, grad.delta_t)
        else:
            total += 3 * fs
    return total / (3 * f_d * num_points)
