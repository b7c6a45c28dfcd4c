"""Exact per-layer counts for uniform / ER / ERK (RigL sparse_utils semantics, integer counts)."""

import math

import pytest

from sparse_exp.sparse.distributions import DISTRIBUTIONS, layer_counts, layer_densities

SHAPES = {
    "conv1": (16, 3, 3, 3),
    "conv2": (32, 16, 3, 3),
    "conv3": (64, 32, 3, 3),
    "fc1": (128, 1024),
    "fc2": (10, 128),
}


@pytest.mark.parametrize("method", DISTRIBUTIONS)
@pytest.mark.parametrize("sparsity", [0.5, 0.8, 0.9, 0.95, 0.99])
def test_counts_are_exact(method, sparsity):
    if method == "nm" and sparsity != 0.5:
        pytest.skip("nm allows only sparsity = 1 - n/m (n ones per group of m; tests/test_nm.py): 0.5 = 2:4 here")
    counts = layer_counts(SHAPES, 1 - sparsity, method)
    sizes = {n: math.prod(s) for n, s in SHAPES.items()}
    total = sum(sizes.values())
    assert sum(counts.values()) == round((1 - sparsity) * total)
    dens = layer_densities(SHAPES, 1 - sparsity, method)
    for n in SHAPES:
        assert 1 <= counts[n] <= sizes[n]
        exact = dens[n] * sizes[n]
        assert math.floor(exact) - 1e-6 <= counts[n] <= math.ceil(exact) + 1e-6, n


def test_uniform_same_density_everywhere():
    dens = layer_densities(SHAPES, 0.1, "uniform")
    assert all(d == pytest.approx(0.1) for d in dens.values())


def test_uniform_with_dense_first_layer_rescales_rest():
    dens = layer_densities(SHAPES, 0.1, "uniform", dense_layers=["conv1"])
    sizes = {n: math.prod(s) for n, s in SHAPES.items()}
    assert dens["conv1"] == 1.0
    rest = (0.1 * sum(sizes.values()) - sizes["conv1"]) / (sum(sizes.values()) - sizes["conv1"])
    assert dens["fc1"] == pytest.approx(rest)


def test_erk_hand_computed_with_dense_overflow():
    # raw ERK scores: (10+10)/100 = 0.2 and (100+100)/10000 = 0.02. At density 0.5 the first
    # layer would get 0.2 * 0.5*10100/220 = 4.59 > 1, so it becomes dense (RigL's rule) and the
    # second takes the rest: (5050 - 100) / 10000 = 0.495.
    shapes = {"a": (10, 10), "b": (100, 100)}
    dens = layer_densities(shapes, 0.5, "erk")
    assert dens == {"a": 1.0, "b": pytest.approx(0.495)}
    assert layer_counts(shapes, 0.5, "erk") == {"a": 100, "b": 4950}


def test_erk_power_scale_zero_like_is_uniform_ratio():
    # ERK density ratio between two layers equals the ratio of (sum(shape)/prod(shape)).
    shapes = {"a": (50, 40, 3, 3), "b": (60, 50, 3, 3)}
    dens = layer_densities(shapes, 0.2, "erk")
    ra = sum(shapes["a"]) / math.prod(shapes["a"])
    rb = sum(shapes["b"]) / math.prod(shapes["b"])
    assert dens["a"] / dens["b"] == pytest.approx(ra / rb)


def test_er_uses_only_fan_in_and_fan_out():
    shapes = {"a": (50, 40, 3, 3), "b": (60, 50, 5, 5)}
    dens = layer_densities(shapes, 0.2, "er")
    assert dens["a"] / dens["b"] == pytest.approx(((50 + 40) / 2000) / ((60 + 50) / 3000))


def test_no_density_above_one():
    for method in DISTRIBUTIONS:
        dens = layer_densities(SHAPES, 0.6, method)
        assert max(dens.values()) <= 1.0


def test_unknown_method_is_refused():
    with pytest.raises(ValueError, match="allowed"):
        layer_densities(SHAPES, 0.1, "bogus")
