"""SET, RigL, GraNet and GMP: the behaviour that defines each method, on tiny networks."""

import math

import pytest
import torch
from omegaconf import OmegaConf
from torch import nn

from sparse_exp.engine.context import RunState
from sparse_exp.sparse.masking import Masking
from sparse_exp.sparse.sparsifiers import SPARSIFIERS, build_sparsifier
from sparse_exp.sparse.topology import cosine_fraction, drop_and_grow, global_magnitude_prune

DIST = OmegaConf.create({"name": "erk", "erk_power_scale": 1.0, "dense_first_layer": False, "dense_last_layer": False})


def net():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(20, 50), nn.ReLU(), nn.Linear(50, 40), nn.ReLU(), nn.Linear(40, 5))


def make(name, sparsity=0.8, total_steps=200, seed=0, **over):
    model = net()
    masking = Masking(model)
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, weight_decay=5e-4)
    ctx = RunState.for_model(model, masking, opt, sparsity=sparsity, distribution=DIST,
                        total_steps=total_steps, steps_per_epoch=20, seed=seed, device=torch.device("cpu"))
    cfg = OmegaConf.load(f"conf/sparsifier/{name}.yaml")
    cfg.pop("defaults")
    cfg.update(over)
    sp = build_sparsifier(cfg, ctx)
    sp.init_masks()
    return model, masking, opt, sp


def sgd_step(model, masking, opt, sp, step, gen):
    x = torch.randn(16, 20, generator=gen)
    y = torch.randint(0, 5, (16,), generator=gen)
    opt.zero_grad()
    nn.functional.cross_entropy(model(x), y).backward()
    opt.step()
    masking.apply_(opt)
    return sp.after_step(step)


def test_rigl_grows_exactly_top_gradient_inactive_positions():
    model, m, opt, _ = make("rigl")
    name = m.names[1]
    w, mask = m.params[name], m.masks[name]
    n_active = m.target_counts[name]
    with torch.no_grad():
        w.copy_(torch.randn(w.shape) * mask)
    grad = torch.randn(w.shape)
    w.grad = grad.clone()
    old = mask.bool().clone()
    k = math.floor(0.3 * n_active)
    # by hand: keep the n_active - k largest |w| among active; grow the k largest |grad| elsewhere
    keep_scores = torch.where(old, w.detach().abs(), torch.tensor(-1.0))
    kept = torch.zeros(w.numel(), dtype=torch.bool)
    kept[keep_scores.flatten().argsort(descending=True)[: n_active - k]] = True
    kept = kept.view_as(w)
    grow_scores = torch.where(kept, torch.tensor(-1.0), grad.abs())
    grown = torch.zeros(w.numel(), dtype=torch.bool)
    grown[grow_scores.flatten().argsort(descending=True)[:k]] = True
    grown = grown.view_as(w)
    before = w.detach().clone()
    drop_and_grow(m, opt, 0.3, "gradient", layers=[name])
    assert torch.equal(mask.bool(), kept | grown)
    assert int(mask.sum()) == n_active
    new_only = grown & ~old
    assert new_only.any()
    assert torch.all(w[new_only] == 0), "newly grown weights start at zero"
    survivors = old & mask.bool()  # kept, or dropped and regrown in the same update (rigl reinit_when_same=False)
    assert torch.equal(w[survivors], before[survivors])


def test_set_growth_is_random_not_gradient_correlated():
    model, m, opt, _ = make("set", sparsity=0.9)
    name = m.names[1]
    w = m.params[name]
    ranks = []
    for trial in range(20):
        w.grad = torch.arange(w.numel(), dtype=torch.float32).view_as(w)  # gradient = position index
        old = m.masks[name].bool().clone()
        drop_and_grow(m, opt, 0.5, "random", torch.Generator().manual_seed(trial), layers=[name])
        grown = m.masks[name].bool() & ~old
        ranks.append(grown.flatten().nonzero().float().mean() / w.numel())
    mean_rank = torch.stack(ranks).mean().item()
    assert 0.4 < mean_rank < 0.6, f"random growth should be uncorrelated with the gradient, mean rank {mean_rank}"


@pytest.mark.parametrize("name", ["set", "rigl"])
def test_dst_preserves_counts_and_invariants(name):
    model, m, opt, sp = make(name, delta_t=5)
    counts = dict(m.target_counts)
    gen = torch.Generator().manual_seed(1)
    changed = 0
    for step in range(1, 61):
        changed += sgd_step(model, m, opt, sp, step, gen)
        m.check_invariants(opt)
        assert m.counts() == counts
    assert changed == 12
    assert m.itop_rate() > 1 - 0.8, "exploration must activate new positions"


def test_updates_stop_at_stop_fraction():
    _, _, _, sp = make("rigl", total_steps=1000, delta_t=100)
    assert [s for s in range(1, 1001) if sp.is_update_step(s)] == [100, 200, 300, 400, 500, 600, 700]


def test_cosine_drop_fraction():
    assert cosine_fraction(0.3, 0, 750) == pytest.approx(0.3)
    assert cosine_fraction(0.3, 375, 750) == pytest.approx(0.15)
    assert cosine_fraction(0.3, 750, 750) == pytest.approx(0.0)
    assert cosine_fraction(0.5, 1000, 1000, 0.005) == pytest.approx(0.005)


@pytest.mark.parametrize("name", ["set", "rigl", "granet", "gmp"])
def test_same_seed_same_masks(name):
    runs = []
    for _ in range(2):
        model, m, opt, sp = make(name, delta_t=10)
        gen = torch.Generator().manual_seed(3)
        for step in range(1, 41):
            sgd_step(model, m, opt, sp, step, gen)
        runs.append({n: m.masks[n].clone() for n in m.names})
    assert all(torch.equal(runs[0][n], runs[1][n]) for n in runs[0])


@pytest.mark.parametrize("name,init_density", [("granet", 0.5), ("gmp", 1.0)])
def test_gradual_density_follows_cubic_schedule(name, init_density):
    total, dt = 100, 10
    model, m, opt, sp = make(name, sparsity=0.9, total_steps=total, delta_t=dt, prune_end_fraction=0.5)
    N = m.total
    assert sum(m.counts().values()) == round(init_density * N) if init_density < 1 else N
    gen = torch.Generator().manual_seed(0)
    for step in range(1, total + 1):
        sgd_step(model, m, opt, sp, step, gen)
        m.check_invariants(opt)
        if step % dt == 0:
            it = step // dt
            progress = min(1.0, it / 5)
            expected = 0.1 + (init_density - 0.1) * (1 - progress) ** 3
            assert sum(m.counts().values()) == round(expected * N), (step, expected)
    assert sum(m.counts().values()) == round(0.1 * N)


def test_granet_regenerates_by_gradient_after_pruning_ends():
    model, m, opt, sp = make("granet", sparsity=0.9, total_steps=100, delta_t=10, prune_end_fraction=0.3)
    gen = torch.Generator().manual_seed(0)
    for step in range(1, 31):
        sgd_step(model, m, opt, sp, step, gen)
    before = {n: m.masks[n].clone() for n in m.names}
    counts = m.counts()
    for step in range(31, 41):
        sgd_step(model, m, opt, sp, step, gen)
    assert m.counts() == counts, "neuroregeneration keeps per-layer counts"
    assert any(not torch.equal(before[n], m.masks[n]) for n in m.names), "topology keeps changing"


def test_global_magnitude_prune_keeps_largest():
    model, m, opt, _ = make("gmp", delta_t=10)
    weights = torch.cat([m.params[n].detach().abs().flatten() for n in m.names])
    keep = 1500
    global_magnitude_prune(m, opt, keep)
    threshold = weights.sort(descending=True).values[keep - 1]
    assert sum(m.counts().values()) == keep
    for n in m.names:
        assert torch.all(m.params[n].detach().abs()[m.masks[n].bool()] >= threshold)


def test_global_magnitude_prune_never_empties_a_layer():
    model, m, opt, _ = make("gmp", delta_t=10)
    with torch.no_grad():
        m.params[m.names[2]].mul_(1e-6)  # the last layer would lose every weight
    global_magnitude_prune(m, opt, 100)
    assert sum(m.counts().values()) == 100
    assert m.counts()[m.names[2]] == 1


def test_registry_names_match_classes():
    for name, cls in SPARSIFIERS.items():
        assert cls.name == name
