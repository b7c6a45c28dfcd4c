"""FLOP accounting for sparse training: inference and training cost relative to the dense model.

Units. Every number here is FLOPs **per sample** (one image), counting a multiply and an add as
two FLOPs (a multiply-accumulate = 2 FLOPs). Only the weights of prunable layers are counted
(conv / linear, the tensors of :func:`sparse_exp.sparse.masking.prunable_parameters`):

* conv: ``2 * K_h * K_w * C_in / groups * C_out * H_out * W_out`` (generally
  ``2 * (weight.numel() / C_out) * output.numel()``, so Conv1d/3d are covered too);
* linear: ``2 * in_features * out_features`` (times the number of rows for >2-D inputs).

Batch norm, pooling, activations, residual additions and biases are ignored: they are a
fraction of a percent of a ResNet's FLOPs and do not scale with weight sparsity.

Source: Evci, Gale, Menick, Castro & Elsen, "Rigging the Lottery: Making All Tickets Winners",
ICML 2020, Sec. 4.1 and Appendix H; reference repo google-research/rigl (README FLOP columns,
``rigl/imagenet_resnet/colabs/Resnet_50_Param_Flops_Counting.ipynb``,
``rigl/sparse_utils.py::get_stats``). With ``f_D`` the dense forward FLOPs and ``f_S`` the sparse
ones (``f_S = sum_l d_l f_l`` for layer densities ``d_l``), one training step costs

* dense, static, SET, pruning at init: ``3 f_S`` (forward, plus backward w.r.t. activations and
  weights, each costing about one forward);
* RigL: ``(3 f_S dT + 2 f_S + f_D) / (dT + 1)`` on average -- at an update step the weight
  gradient is computed densely (``f_D``) to rank the inactive connections;
* SNFS: ``2 f_S + f_D`` (dense gradient every step, for the momentum statistic).

Training ratios are normalised by dense training, ``3 f_D`` per step.

What reproduces RigL's published ResNet-50 / ImageNet figures (tests/test_flops.py):

* Inference FLOPs: ``sum_l d_l f_l / sum_l f_l``; with torchvision's ResNet-50 (``f_D`` =
  8.18e9, RigL: 8.2e9) and our ERK / uniform allocation this gives the figures to within 0.01.
  RigL's own counter (micronet_challenge ``counting.py``) also counts one ReLU and one bias add
  per output element of each conv/fc layer (dense, not scaled by sparsity) and counts the
  first conv at 115x115 outputs (TF's 'same' formula applied to the pre-padded 230x230 input);
  passing those per-layer constants as ``overhead`` to :func:`inference_flops` (with RigL's
  uniform allocation: first layer dense, every other layer at exactly ``s``) reproduces all 18
  FLOP figures of the README's ResNet-50 table to the printed 2 decimals.
* Training FLOPs: the README's RigL figures use the formula above over the **whole** run (one
  dense gradient per ``dT + 1`` steps for 100% of training); counting the dense gradients only
  until the update stop (75%) -- which is what the training actually does, and the default of
  :func:`expected_training_ratio` -- misses several README figures by one in the 2nd decimal.
* Uniform: RigL keeps the first layer dense. The README lists 0.23x (80%) and 0.13x (90%) for
  uniform inference, which the first-layer-dense count reproduces; the paper's Table 2 (and the
  Sup-tickets tables copying it) print 0.10x at 90%, which is the nominal ``1 - s`` of a
  uniform allocation with every layer sparse.

The engine integrates the real per-step cost with :class:`TrainingFlops`, fed with plain Python
numbers whenever the density changes (no per-step host synchronisation).
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from typing import Any, Callable, Dict, Iterable, Mapping, Optional, Sequence, Tuple, Union

import torch
from torch import nn

from sparse_exp.sparse.distributions import layer_counts
from sparse_exp.sparse.masking import prunable_parameters

#: methods whose per-step cost is ``3 f_S`` with a fixed topology cost (no dense gradients)
STATIC_COST_METHODS = ("dense", "static", "set", "snip", "grasp", "synflow", "random", "mask_file")
#: methods with a dense weight gradient every ``delta_t`` steps until ``stop_fraction``
DENSE_GRADIENT_METHODS = ("rigl",)
#: gradual pruning with the cubic schedule; ``granet`` adds RigL-like regeneration
GRADUAL_METHODS = ("gmp", "granet")
#: every method :func:`expected_training_ratio` knows
KNOWN_METHODS = STATIC_COST_METHODS + DENSE_GRADIENT_METHODS + GRADUAL_METHODS + ("snfs",)


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

    The same allocation the sparsifiers use (``SparseContext.target_counts``); cached per
    density. A global density of 1 (or more) gives every layer density 1.
    """
    sizes = {n: math.prod(s) for n, s in shapes.items()}
    dense = tuple(dense_layers)

    @functools.lru_cache(maxsize=4096)
    def alloc(density: float) -> Tuple[Tuple[str, float], ...]:
        if density >= 1.0:
            return tuple((n, 1.0) for n in shapes)
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


def training_flops_ratio(
    method: str,
    f_sparse: Union[float, Sequence[float]],
    f_dense: float,
    delta_t: Optional[int] = None,
) -> float:
    """Training FLOPs per step relative to dense (``3 f_D``), RigL paper Appendix H.

    Args:
        method: ``rigl`` (needs ``delta_t``), ``snfs``, or any method in
            :data:`STATIC_COST_METHODS` / ``gmp`` (``3 f_S``).
        f_sparse: the sparse forward FLOPs, a constant or one value per step.
        f_dense: dense forward FLOPs ``f_D``.
        delta_t: RigL's update interval.

    For a constant ``f_S``, RigL is the paper's ``(3 f_S dT + 2 f_S + f_D) / (dT + 1)``. For a
    per-step sequence, step ``t`` (1-based) with ``t % dT == 0`` costs ``2 f_S + f_D``.
    """
    if method == "rigl" and (delta_t is None or delta_t < 1):
        raise ValueError("method 'rigl' needs delta_t >= 1")
    if isinstance(f_sparse, (int, float)):
        fs = float(f_sparse)
        if method == "rigl":
            per_step = (3 * fs * delta_t + 2 * fs + f_dense) / (delta_t + 1)
        elif method == "snfs":
            per_step = 2 * fs + f_dense
        elif method in STATIC_COST_METHODS or method == "gmp":
            per_step = 3 * fs
        else:
            raise ValueError(f"unknown method {method!r}; allowed: {sorted(KNOWN_METHODS)}")
        return per_step / (3 * f_dense)
    acc = TrainingFlops(f_dense)
    for t, fs in enumerate(f_sparse, start=1):
        if method == "snfs" or (method == "rigl" and t % delta_t == 0):
            acc.add_dense_gradient_steps(1, fs)
        elif method in STATIC_COST_METHODS or method in ("rigl", "gmp"):
            acc.add_steps(1, fs)
        else:
            raise ValueError(f"unknown method {method!r}; allowed: {sorted(KNOWN_METHODS)}")
    return acc.ratio()


def cubic_density(progress: float, init_density: float, final_density: float,
                  start: float, end: float) -> float:
    """Zhu & Gupta cubic schedule at ``progress`` in [0, 1] of training: ``d_i`` before
    ``start``, ``d_f + (d_i - d_f)(1 - (p - start)/(end - start))^3`` inside, ``d_f`` after."""
    if progress <= start:
        return init_density
    if progress >= end:
        return final_density
    frac = (progress - start) / (end - start)
    return final_density + (init_density - final_density) * (1.0 - frac) ** 3


def expected_training_ratio(
    method: str,
    layer_flops: Mapping[str, float],
    densities_at: Callable[[float], Mapping[str, float]],
    density: float,
    *,
    delta_t: int = 100,
    stop_fraction: float = 0.75,
    init_density: Optional[float] = None,
    prune_start_fraction: float = 0.0,
    prune_end_fraction: float = 1.0,
    total_steps: Optional[int] = None,
    num_points: int = 512,
) -> float:
    """Analytic training FLOPs of a whole run relative to dense training.

    Args:
        method: one of :data:`KNOWN_METHODS`.
        layer_flops: dense forward FLOPs per layer.
        densities_at: ``global density -> layer densities`` (e.g. :func:`density_allocator`).
        density: the target (final) global density ``1 - sparsity``.
        delta_t: update interval in steps (RigL mask updates; GraNet regeneration).
        stop_fraction: dense-gradient updates happen only in the first ``stop_fraction`` of
            training (RigL 0.75; GraNet 1.0). Use 1.0 to get RigL's README convention.
        init_density: gradual methods' density before pruning (GMP 1.0, GraNet 0.5); the
            effective value is ``max(init_density, density)`` as in the sparsifier.
        prune_start_fraction / prune_end_fraction: the cubic schedule's window.
        total_steps: if given, count exactly as the engine does (updates at steps ``t`` with
            ``t % delta_t == 0`` and ``t <= int(stop_fraction * total_steps)``; the gradual
            density changes every ``delta_t`` steps); otherwise the continuous approximation
            (RigL's formula for the fraction ``stop_fraction`` of training, one dense-gradient
            step per ``delta_t + 1`` steps; the cubic schedule integrated with ``num_points``
            midpoints).

    Methods:

    * static / set / snip / grasp / synflow / random / mask_file / dense: ``3 f_S / 3 f_D``.
    * rigl: ``stop * (3 f_S dT + 2 f_S + f_D)/(dT + 1) + (1 - stop) * 3 f_S``, over ``3 f_D``.
    * snfs: ``(2 f_S + f_D) / 3 f_D``.
    * gmp / granet: ``f_S(t)`` follows the cubic density schedule; layer densities at each
      global density come from ``densities_at``. Approximation: GMP and GraNet prune *globally*
      by magnitude, so their real layer densities emerge from training; the estimate uses the
      configured allocation (ERK / uniform) at each density instead. GraNet additionally
      computes a dense gradient at every regeneration step (every ``delta_t`` steps until
      ``stop_fraction``), like RigL.
    """
    if method not in KNOWN_METHODS:
        raise ValueError(f"no training-FLOP model for sparsifier {method!r}; known: {sorted(KNOWN_METHODS)}")
    f_d = float(sum(layer_flops.values()))

    def f_s(d: float) -> float:
        return inference_flops(layer_flops, densities_at(d))

    if method in STATIC_COST_METHODS:
        return f_s(density) / f_d if method != "dense" else 1.0
    if method == "snfs":
        return training_flops_ratio("snfs", f_s(density), f_d)
    if method == "rigl":
        fs = f_s(density)
        if total_steps is None:
            upd = training_flops_ratio("rigl", fs, f_d, delta_t)
            return stop_fraction * upd + (1.0 - stop_fraction) * fs / f_d
        n_upd = int(stop_fraction * total_steps) // delta_t
        acc = TrainingFlops(f_d)
        acc.add_steps(total_steps - n_upd, fs)
        acc.add_dense_gradient_steps(n_upd, fs)
        return acc.ratio()

    # gradual: gmp / granet
    d_i = max(float(init_density if init_density is not None else (1.0 if method == "gmp" else 0.5)), density)
    regenerate = method == "granet"
    if total_steps is not None:
        return _gradual_exact(f_s, f_d, density, d_i, delta_t, stop_fraction, prune_start_fraction,
                              prune_end_fraction, total_steps, regenerate)
    total = 0.0
    for k in range(num_points):
        p = (k + 0.5) / num_points
        fs = f_s(cubic_density(p, d_i, density, prune_start_fraction, prune_end_fraction))
        if regenerate and p <= stop_fraction:
            total += (3 * fs * delta_t + 2 * fs + f_d) / (delta_t + 1)
        else:
            total += 3 * fs
    return total / (3 * f_d * num_points)


def _gradual_exact(f_s: Callable[[float], float], f_d: float, d_f: float, d_i: float, delta_t: int,
                   stop_fraction: float, start: float, end: float, total_steps: int, regenerate: bool) -> float:
    """Step-exact gradual schedule, mirroring ``GradualMagnitudeSparsifier``: the density set at
    update step ``t`` (a multiple of ``delta_t``) holds for steps ``t + 1 ... t + delta_t``."""
    first_iter = int(start * total_steps) // delta_t
    final_iter = max(first_iter + 1, int(end * total_steps) // delta_t)
    stop_step = stop_fraction * total_steps

    def density_after(it: int) -> float:
        progress = min(1.0, max(0.0, (it - first_iter) / (final_iter - first_iter)))
        return d_f + (d_i - d_f) * (1.0 - progress) ** 3

    acc = TrainingFlops(f_d)
    current = d_i  # before any pruning update
    step = 0
    while step < total_steps:
        # steps step+1 .. block_end run at `current`; the last of them may be an update step
        block_end = min(total_steps, (step // delta_t + 1) * delta_t)
        fs = f_s(current)
        n = block_end - step
        is_update = block_end % delta_t == 0
        if is_update and regenerate and block_end <= stop_step:
            acc.add_steps(n - 1, fs)
            acc.add_dense_gradient_steps(1, fs)
        else:
            acc.add_steps(n, fs)
        if is_update:
            it = block_end // delta_t
            if first_iter <= it <= final_iter:
                current = min(current, density_after(it))
        step = block_end
    return acc.ratio()
