"""Layer-wise density allocation (``distribution`` group): uniform, ER and ERK, with exact integer counts.

Source: Evci et al., "Rigging the Lottery", ICML 2020, Sec. 3 and Appendix; google-research/rigl
``rigl/sparse_utils.py::get_sparsities`` (a layer whose ERK density would exceed 1 becomes dense and the rest
of the budget is rescaled). ER: Mocanu et al. 2018 (SET), density proportional to (n_in + n_out) / (n_in n_out).
Contract, unlike the reference's float densities: each layer gets floor or ceil of ``d_l * n_l`` ones and the
total is exactly ``round(density * N)`` (largest-remainder rounding).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Dict, Iterable, List, Mapping, Optional, Sequence, Tuple

from sparse_exp.config.errors import ConfigError, one_of, require
from sparse_exp.config.schema import DistributionConfig
from sparse_exp.registry import DISTRIBUTIONS, SPARSIFIERS
from sparse_exp.sparse.masking import distribution_dense
from sparse_exp.sparse.nm import fits

#: ``distribution.name`` -> raw layer score ``fn(shape, erk_power_scale) -> float`` (density is
#: proportional to it); ``uniform`` has none: every layer gets the same density.
DISTRIBUTIONS.add("uniform", None)


@DISTRIBUTIONS.register("er")
def er_score(shape: Sequence[int], erk_power_scale: float) -> float:
    """ER (rigl ``erdos_renyi``): ``(n_in + n_out) / (n_in * n_out)``; only fan-in / fan-out count."""
    n_out, n_in = shape[0], shape[1] if len(shape) > 1 else 1
    return (n_in + n_out) / (n_in * n_out)


@DISTRIBUTIONS.register("erk")
def erk_score(shape: Sequence[int], erk_power_scale: float) -> float:
    """ERK (RigL Sec. 3): ``(sum of the dims / product of the dims) ** erk_power_scale``."""
    return (sum(shape) / math.prod(shape)) ** erk_power_scale


@dataclass
class NMDistributionConfig(DistributionConfig):
    """``distribution=nm``: every group of ``m`` consecutive input weights of each sparse layer keeps exactly ``n``
    (:mod:`sparse_exp.sparse.nm`); ``sparsity`` must be ``1 - n/m``, the sparsity of the N:M layers. ``misfit``:
    a sparse layer whose input dimension ``m`` does not divide is refused at pre-flight (``refuse``) or kept dense
    (``dense``, named in ``summary.json`` as ``nm/dense_misfits``)."""

    name: str = "nm"
    n: int = 2
    m: int = 4
    misfit: str = "refuse"


#: ``distribution.misfit`` values
MISFITS = ("refuse", "dense")


def nm_pattern(node: Any) -> Optional[Tuple[int, int]]:
    """``distribution=nm``'s answer to the ``nm_pattern`` query: ``(n, m)``."""
    return int(node.n), int(node.m)


def nm_kept_dense(node: Any, shapes: Mapping[str, Sequence[int]]) -> List[str]:
    """``distribution=nm``'s answer to the ``kept_dense`` query: under ``misfit=dense``, the layers of ``shapes``
    whose input dimension ``shape[1]`` is not a multiple of ``m``; none under ``misfit=refuse``."""
    if node.get("misfit", "refuse") != "dense":
        return []
    return [name for name, shape in shapes.items() if not fits(shape, int(node.m))]


def nm_summary(node: Any, state: Any) -> Dict[str, Any]:
    """``distribution=nm``'s ``summary.json`` keys: ``nm/dense_misfits``, the layers kept dense by ``misfit=dense``
    (not counting those kept dense anyway), in forward order."""
    m = state.masking
    return {"nm/dense_misfits": distribution_dense(m.shapes, m.declared_dense, node)}


def check_nm(cfg: Any) -> None:
    """``1 <= n < m``; ``sparsity == 1 - n/m``; ``misfit`` in :data:`MISFITS`; the sparsifier declares
    ``supports_nm``."""
    d = cfg.distribution
    require(isinstance(d.m, int) and d.m >= 2, "distribution.m", d.m, "must be an integer >= 2")
    require(isinstance(d.n, int) and 1 <= d.n < d.m, "distribution.n", d.n, f"must be an integer in [1, m={d.m})")
    one_of("distribution.misfit", d.misfit, MISFITS)
    require(abs(float(cfg.sparsity) - (1 - d.n / d.m)) < 1e-9, "sparsity", cfg.sparsity,
            f"must equal 1 - n/m = {1 - d.n / d.m:g} with distribution=nm (n={d.n}, m={d.m}): the sparsity of the "
            "N:M layers")
    name = cfg.sparsifier.name
    impl = SPARSIFIERS.entry(name).impl
    if not getattr(impl, "supports_nm", False):
        allowed = sorted(k for k in SPARSIFIERS if getattr(SPARSIFIERS[k], "supports_nm", False))
        why = getattr(impl, "nm_refusal", None)
        raise ConfigError("distribution.name", "nm", f"is not supported by sparsifier={name} "
                          f"({why if why else 'yet'}); N:M works with sparsifier in {allowed}")


def preflight_nm(plan: Any) -> None:
    """``misfit=refuse``: every sparse layer's input dimension is a multiple of ``m`` (else refused, naming the
    layers); ``misfit=dense``: at least one layer is left sparse (N:M)."""
    d, model = plan.cfg.distribution, plan.cfg.model.name
    m = int(d.m)
    sparse = [name for name in plan.shapes if name not in plan.dense_layers]
    bad = [f"{name} {tuple(plan.shapes[name])} (input {plan.shapes[name][1]})" for name in sparse
           if not fits(plan.shapes[name], m)]
    if bad:
        raise ConfigError("distribution.m", m, f"must divide the input dimension of every sparse layer; {model} has "
                          f"{', '.join(bad)}; keep such layers dense (distribution.misfit=dense, or "
                          "dense_first_layer / dense_last_layer) or choose another m")
    if not sparse and d.misfit == "dense":
        misfits = [name for name, shape in plan.shapes.items() if not fits(shape, m)]
        others = "; the others are kept dense anyway" if len(misfits) < len(plan.shapes) else ""
        raise ConfigError("distribution.misfit", d.misfit, f"keeps every prunable layer of {model} dense, so nothing "
                          f"would be N:M (m={m} divides the input dimension of none of {misfits}{others}); choose "
                          "another distribution.m")


DISTRIBUTIONS.add("nm", None, schema=NMDistributionConfig, checks=(check_nm,), preflight=(preflight_nm,),
                  queries={"nm_pattern": nm_pattern, "kept_dense": nm_kept_dense, "summary": nm_summary})


@DISTRIBUTIONS.group_preflight
def check_feasible(plan: Any) -> None:
    """The exact per-layer counts can be met for the run's model: the layers kept dense (the model's own,
    ``dense_first_layer`` / ``dense_last_layer``) must fit in the density budget."""
    cfg = plan.cfg
    if not cfg.sparsity > 0 or DISTRIBUTIONS.query(cfg.distribution.name, "nm_pattern")(cfg.distribution):
        return  # N:M: sparsity is that of the N:M layers, the dense ones come on top (preflight_nm)
    target = int(round((1.0 - float(cfg.sparsity)) * plan.num_weights))
    if target < len(plan.shapes):
        raise ConfigError("sparsity", cfg.sparsity, f"keeps {target} of the {plan.num_weights} weights of "
                          f"{cfg.model.name}, fewer than one per layer ({len(plan.shapes)} layers); allowed: at most "
                          f"{1 - len(plan.shapes) / plan.num_weights:.6f}")
    try:
        layer_counts(plan.shapes, 1.0 - float(cfg.sparsity), cfg.distribution.name,
                     float(cfg.distribution.erk_power_scale), plan.dense_layers)
    except ValueError:
        dense = sum(math.prod(plan.shapes[n]) for n in plan.dense_layers)
        flags = [f"distribution.{k}" for k in ("dense_last_layer", "dense_first_layer") if cfg.distribution[k]]
        key, value = (flags[0], True) if flags else ("sparsity", cfg.sparsity)  # else: the model's own dense layers
        raise ConfigError(key, value, f"the layers kept dense ({', '.join(plan.dense_layers)}: {dense} weights) exceed "
                          f"the budget of sparsity={cfg.sparsity} ({round((1 - cfg.sparsity) * plan.num_weights)} of "
                          f"{plan.num_weights} weights of {cfg.model.name}); lower the sparsity or keep fewer "
                          "layers dense") from None


@DISTRIBUTIONS.group_check
def _check_distribution(cfg: Any) -> None:
    """``distribution.erk_power_scale`` > 0 (every distribution)."""
    require(cfg.distribution.erk_power_scale > 0, "distribution.erk_power_scale", cfg.distribution.erk_power_scale,
            "must be > 0")


def layer_densities(
    shapes: Mapping[str, Sequence[int]],
    density: float,
    method: str,
    erk_power_scale: float = 1.0,
    dense_layers: Iterable[str] = (),
) -> Dict[str, float]:
    """Float density per layer so that the parameter-weighted mean equals ``density``.

    Args:
        shapes: layer name -> weight shape, PyTorch order ``(out, in, *kernel)``.
        density: global fraction of ones over all listed layers, in (0, 1].
        method: ``uniform`` | ``er`` | ``erk`` | ``nm`` (every non-forced layer at ``density`` = n/m).
        erk_power_scale: exponent on the ERK / ER score (rigl ``erk_power_scale``; 1.0 = ERK).
        dense_layers: names forced to density 1 (their weights count against the budget).

    Returns:
        name -> density in [0, 1].

    Raises:
        ValueError: unknown method, density outside (0, 1], or a budget that the forced-dense
        layers alone exceed.

    For ``uniform`` every non-forced layer gets the same density (rescaled for forced-dense
    layers). For ``er``/``erk`` this is rigl's loop: eps is solved so that the budget holds;
    layers whose density ``eps * raw`` would exceed 1 are made dense and eps is re-solved.
    """
    if method not in DISTRIBUTIONS:
        raise ValueError(f"distribution.name={method!r} is not known; allowed: {list(DISTRIBUTIONS)}")
    if not 0.0 < density <= 1.0:
        raise ValueError(f"density must be in (0, 1], got {density}")
    sizes = {n: math.prod(s) for n, s in shapes.items()}
    total = sum(sizes.values())
    dense = set(dense_layers)
    if method == "nm":  # N:M: every sparse layer at n/m = density, the dense ones on top of it
        return {n: (1.0 if n in dense else density) for n in shapes}
    if method == "uniform":
        budget = density * total - sum(sizes[n] for n in dense)
        rest = total - sum(sizes[n] for n in dense)
        if budget < -1e-9 or (rest == 0 and budget > 1e-9):
            raise ValueError("the layers kept dense exceed the density budget")
        d = min(1.0, budget / rest) if rest else 1.0
        return {n: (1.0 if n in dense else d) for n in shapes}

    score = DISTRIBUTIONS[method]
    raw = {n: score(s, erk_power_scale) for n, s in shapes.items()}
    while True:
        budget = density * total - sum(sizes[n] for n in dense)
        divisor = sum(raw[n] * sizes[n] for n in shapes if n not in dense)
        if budget < -1e-9:
            raise ValueError("the layers kept dense exceed the density budget")
        if divisor == 0:
            return {n: 1.0 for n in shapes}
        eps = budget / divisor
        free = [n for n in shapes if n not in dense]
        max_raw = max(raw[n] for n in free)
        if eps * max_raw > 1.0:
            dense.update(n for n in free if raw[n] == max_raw)
            continue
        return {n: (1.0 if n in dense else eps * raw[n]) for n in shapes}


def layer_counts(
    shapes: Mapping[str, Sequence[int]],
    density: float,
    method: str,
    erk_power_scale: float = 1.0,
    dense_layers: Iterable[str] = (),
) -> Dict[str, int]:
    """Exact number of ones per layer for a global ``density`` (see :func:`layer_densities`).

    Returns name -> k with ``0 <= k <= n_l``; each ``k`` is floor or ceil of ``d_l * n_l`` and
    ``sum(k) == round(density * N)`` (largest-remainder rounding among non-forced layers),
    forced-dense layers get ``k = n_l``. Every layer keeps at least one weight.
    """
    sizes = {n: math.prod(s) for n, s in shapes.items()}
    target = int(round(density * sum(sizes.values())))
    dens = layer_densities(shapes, density, method, erk_power_scale, dense_layers)
    if method == "nm":  # exact: n ones per group of m, the layer's size a multiple of m
        exact = {n: dens[n] * sizes[n] for n in shapes}
        bad = [n for n in shapes if abs(exact[n] - round(exact[n])) > 1e-6]
        if bad:
            raise ValueError(f"distribution=nm: density {density} gives no whole number of ones in {bad}")
        return {n: int(round(exact[n])) for n in shapes}
    # round away float noise (127.99999999999997 is 128) before taking floors
    exact = {n: round(dens[n] * sizes[n], 6) for n in shapes}
    counts = {n: min(sizes[n], max(1, int(math.floor(exact[n])))) for n in shapes}
    remainder = target - sum(counts.values())
    adjustable = [n for n in shapes if 0.0 < dens[n] < 1.0]
    if remainder > 0:
        order = sorted(adjustable, key=lambda n: (-(exact[n] - counts[n]), n))
        for n in order:
            if remainder == 0:
                break
            if counts[n] < min(sizes[n], math.ceil(exact[n])):
                counts[n] += 1
                remainder -= 1
    elif remainder < 0:
        order = sorted(adjustable, key=lambda n: (exact[n] - counts[n], n))
        for n in order:
            if remainder == 0:
                break
            if counts[n] > 1:
                counts[n] -= 1
                remainder += 1
    return counts
