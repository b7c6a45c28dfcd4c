"""The sparsifiers' schedules as objects (sparse_exp.sparse.density_schedules): hand-computed values, and the
sparsifiers and the FLOP estimator reading the same schedule."""

from __future__ import annotations

import math
from types import SimpleNamespace

import pytest
import torch
from omegaconf import OmegaConf
from torch import nn

from sparse_exp.engine.context import RunState
from sparse_exp.sparse.density_schedules import (
    ConstantDensity,
    ConstantFraction,
    CosineDecay,
    CubicDensity,
    FlopSchedule,
    UpdateInterval,
    drop_fraction_schedule,
)
from sparse_exp.sparse.flop_counts import expected_training_ratio, inference_flops
from sparse_exp.sparse.masking import Masking
from sparse_exp.sparse.sparsifiers import SPARSIFIERS, build_sparsifier
from sparse_exp.sparse.topology import cosine_fraction


def sparsifier_cfg(name, **overrides):
    """The schema defaults of ``sparsifier=name`` with ``overrides``."""
    cfg = OmegaConf.structured(SPARSIFIERS.entry(name).schema)
    cfg.name = name
    cfg.merge_with(overrides)
    return cfg


def bare(name, total_steps, density, **overrides):
    """The sparsifier's schedule side only: no model (its ``__init__`` reads ``total_steps`` and ``density``)."""
    cfg = sparsifier_cfg(name, **overrides)
    return cfg, SPARSIFIERS[name](cfg, SimpleNamespace(total_steps=total_steps, density=density, seed=0))


# ---------------------------------------------------------------------------------- drop fractions
def test_cosine_decay_at_start_half_and_end():
    rigl = CosineDecay(0.3, end_step=750)  # RigL Eq. 1: to 0 at the stop step
    assert rigl.at(0) == 0.3
    assert rigl.at(375) == pytest.approx(0.15)  # cos(pi / 2) = 0: half the initial fraction
    assert rigl.at(750) == 0.0
    assert rigl.at(1000) == 0.0  # clamped after the end
    granet = CosineDecay(0.5, end_step=1000, minimum=0.005)  # GraNet CosineDecay to prune_rate_min
    assert granet.at(0) == 0.5
    assert granet.at(500) == pytest.approx(0.005 + 0.495 / 2)
    assert granet.at(1000) == pytest.approx(0.005)
    for step in (0, 1, 99, 375, 749, 750, 900):  # exactly the topology formula
        assert rigl.at(step) == cosine_fraction(0.3, step, 750)


def test_constant_fraction_and_factory():
    assert ConstantFraction(0.3).at(0) == ConstantFraction(0.3).at(10**6) == 0.3
    assert drop_fraction_schedule("constant", 0.3, 750) == ConstantFraction(0.3)
    assert drop_fraction_schedule("cosine", 0.5, 1000, 0.005) == CosineDecay(0.5, 1000, 0.005)
    with pytest.raises(ValueError, match="cosine"):
        drop_fraction_schedule("linear", 0.3, 750)


# ------------------------------------------------------------------------------------ update steps
def test_update_interval_every_100_until_three_quarters_of_1000():
    every = UpdateInterval(100, 0.75, total_steps=1000)
    assert every.stop_step == 750
    assert list(every.steps()) == [100, 200, 300, 400, 500, 600, 700]
    assert [s for s in range(1, 1001) if every.is_update(s)] == list(every.steps())
    assert not every.is_update(750) and not every.is_update(800)
    assert list(UpdateInterval(100, 1.0, total_steps=1000).steps())[-1] == 1000


def test_update_interval_errors():
    with pytest.raises(ValueError, match="total_steps"):
        UpdateInterval(100, 0.75).stop_step  # built for the continuous estimate only
    with pytest.raises(ValueError, match="delta_t"):
        UpdateInterval(0)
    with pytest.raises(ValueError, match="stop_fraction"):
        UpdateInterval(100, 1.5, 1000)


# ----------------------------------------------------------------------------------------- density
def test_cubic_density_at_window_start_middle_and_end():
    # 200 steps, an update every 10: window 25% .. 75% = iterations 5 .. 15
    cubic = CubicDensity(0.5, 0.1, start_fraction=0.25, end_fraction=0.75, delta_t=10, total_steps=200)
    assert (cubic.first_iter, cubic.final_iter) == (5, 15)
    assert cubic.at(10) == cubic.at(50) == 0.5  # before / at the window start
    assert cubic.at(100) == pytest.approx(0.1 + 0.4 * 0.5 ** 3)  # middle: 0.15
    assert cubic.at(109) == cubic.at(100)  # counted in update iterations
    assert cubic.at(150) == cubic.at(200) == 0.1  # window end and after
    assert [s for s in range(1, 201) if cubic.prunes_at(s)] == list(cubic.update_steps()) == list(range(50, 151, 10))
    # continuous form at fractions of training
    assert cubic.at_fraction(0.25) == 0.5
    assert cubic.at_fraction(0.5) == pytest.approx(0.15)
    assert cubic.at_fraction(0.75) == 0.1


def test_cubic_density_window_of_one_iteration_and_errors():
    short = CubicDensity(0.5, 0.1, 0.0, 0.01, delta_t=10, total_steps=100)  # int(1) // 10 = 0 -> final_iter 1
    assert (short.first_iter, short.final_iter) == (0, 1)
    assert short.at(10) == 0.1
    with pytest.raises(ValueError):
        CubicDensity(0.1, 0.5)  # final above initial
    with pytest.raises(ValueError):
        CubicDensity(0.5, 0.1, 0.6, 0.6)  # empty window
    with pytest.raises(ValueError, match="total_steps"):
        CubicDensity(0.5, 0.1).first_iter


def test_flop_schedule_segments():
    rigl = FlopSchedule(ConstantDensity(0.2), UpdateInterval(4, 1.0, 10), total_steps=10)
    assert rigl.segments() == [(1, 4, 0.2, True), (5, 8, 0.2, True), (9, 10, 0.2, False)]
    assert [t for t, _, dense in rigl.per_step() if dense] == [4, 8]
    cubic = CubicDensity(1.0, 0.2, 0.0, 0.5, delta_t=2, total_steps=8)  # prunes at steps 2 and 4
    assert FlopSchedule(cubic, None, 8).segments() == [(1, 2, 1.0, False), (3, 4, cubic.at(2), False),
                                                        (5, 8, 0.2, False)]
    with pytest.raises(ValueError):
        FlopSchedule(ConstantDensity(0.2)).segments()


# ------------------------------------------------------------- the sparsifiers query the same objects
def test_rigl_sparsifier_and_estimator_share_the_schedule():
    cfg, sp = bare("rigl", 1000, 0.2, delta_t=100, stop_fraction=0.75)
    assert sp.interval == UpdateInterval(100, 0.75, 1000) and sp.stop_step == 750
    assert sp.drop_schedule == CosineDecay(0.3, 750)
    assert [sp.drop_fraction_at(s) for s in (0, 375, 750)] == [0.3, CosineDecay(0.3, 750).at(375), 0.0]
    declared = SPARSIFIERS["rigl"].flop_schedule(cfg, 1000, 0.2)
    assert [t for t, _, dense in declared.per_step() if dense] == [s for s in range(1, 1001) if sp.dense_gradient_at(s)]
    assert {d for _, d, _ in declared.per_step()} == {0.2}
    # SET updates on the same steps but never reads a dense gradient
    set_cfg, set_sp = bare("set", 1000, 0.2, delta_t=100, stop_fraction=0.75, drop_decay="constant")
    assert set_sp.drop_fraction_at(500) == 0.3
    assert SPARSIFIERS["set"].flop_schedule(set_cfg, 1000, 0.2).dense_gradient is None


@pytest.mark.parametrize("name", ["granet", "gmp"])
def test_gradual_estimator_density_sequence_is_the_sparsifiers(name):
    total = 1000
    cfg, sp = bare(name, total, 0.1, delta_t=50, prune_start_fraction=0.1, prune_end_fraction=0.7,
                   init_density=0.5 if name == "granet" else 1.0, stop_fraction=0.9)
    current, expected, dense_steps = sp.init_density, [], []
    for step in range(1, total + 1):  # after_step's pruning, without a model
        expected.append(current)
        if step % cfg.delta_t == 0 and sp.first_iter <= step // cfg.delta_t <= sp.final_iter:
            current = min(current, sp.density_at(step))
        if sp.dense_gradient_at(step):
            dense_steps.append(step)
    declared = SPARSIFIERS[name].flop_schedule(cfg, total, 0.1)
    assert [d for _, d, _ in declared.per_step()] == expected
    assert [t for t, _, dense in declared.per_step() if dense] == dense_steps
    assert bool(dense_steps) == (name == "granet") and dense_steps[-1:] in ([900], [])
    if name == "granet":  # the prune rate: GraNet's cosine decay to prune_rate_min over the run
        assert [sp.rate_schedule.at(s) for s in (0, 500, 1000)] == \
            [cosine_fraction(0.5, s, total, 0.005) for s in (0, 500, 1000)]


def _tiny_run(name, total, **overrides):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(20, 50), nn.ReLU(), nn.Linear(50, 40), nn.ReLU(), nn.Linear(40, 5))
    masking = Masking(model)
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    dist = OmegaConf.create({"name": "erk", "erk_power_scale": 1.0, "dense_first_layer": False,
                             "dense_last_layer": False})
    ctx = RunState.for_model(model, masking, opt, sparsity=0.9, distribution=dist,
                        total_steps=total, steps_per_epoch=10, seed=0, device=torch.device("cpu"))
    cfg = sparsifier_cfg(name, **overrides)
    sp = build_sparsifier(cfg, ctx)
    sp.init_masks()
    return cfg, model, masking, opt, sp


def test_granet_training_follows_the_declared_schedule():
    """A real GraNet run: the kept weights during each step are ``round(d * N)`` of the declared density,
    and the dense-gradient steps (mask changed + ``dense_gradient_at``, as FlopMeter counts) are the declared ones."""
    total = 60
    cfg, model, m, opt, sp = _tiny_run("granet", total, delta_t=5, prune_end_fraction=0.5, stop_fraction=0.8)
    declared = SPARSIFIERS["granet"].flop_schedule(cfg, total, 0.1)
    gen = torch.Generator().manual_seed(0)
    dense_steps = []
    for step, density, _ in declared.per_step():
        assert sum(m.counts().values()) == round(density * m.total), step
        x, y = torch.randn(8, 20, generator=gen), torch.randint(0, 5, (8,), generator=gen)
        opt.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        opt.step()
        m.apply_(opt)
        if sp.after_step(step) and sp.dense_gradient_at(step):
            dense_steps.append(step)
    assert dense_steps == [t for t, _, dense in declared.per_step() if dense] == list(range(5, 49, 5))
    assert sum(m.counts().values()) == round(0.1 * m.total)


def test_step_exact_estimate_integrates_the_declared_steps():
    """``expected_training_ratio`` charges exactly ``3 f_S`` / ``2 f_S + f_D`` on the declared steps; the
    continuous estimate (no ``total_steps``) is close when the updates are frequent."""
    total = 2000
    cfg, _ = bare("granet", total, 0.2, delta_t=20, prune_end_fraction=0.5)
    declared = SPARSIFIERS["granet"].flop_schedule(cfg, total, 0.2)
    flops, f_d = {"a": 300.0, "b": 100.0}, 400.0

    def per_layer(d):
        return {"a": d, "b": min(1.0, 2 * d)}

    by_hand = 0.0
    for _, d, dense in declared.per_step():
        f_s = inference_flops(flops, per_layer(d))
        by_hand += 2 * f_s + f_d if dense else 3 * f_s
    by_hand /= 3 * f_d * total
    assert expected_training_ratio(declared, flops, per_layer) == pytest.approx(by_hand, rel=1e-12)
    continuous = expected_training_ratio(SPARSIFIERS["granet"].flop_schedule(cfg, None, 0.2), flops, per_layer)
    assert math.isclose(continuous, by_hand, abs_tol=0.005)
