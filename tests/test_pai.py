"""Pruning at initialisation (SNIP, GraSP, SynFlow, random) on tiny networks, checked by hand."""

import copy

import pytest
import torch
import torch.nn.functional as F
from omegaconf import OmegaConf
from torch import nn

from sparse_exp.engine.context import RunState
from sparse_exp.sparse.masking import Masking
from sparse_exp.sparse.sparsifiers.grasp import GraspConfig, GraspSparsifier
from sparse_exp.sparse.sparsifiers.random_pruning import RandomPruningConfig, RandomPruningSparsifier
from sparse_exp.sparse.sparsifiers.snip import SnipConfig, SnipSparsifier
from sparse_exp.sparse.sparsifiers.synflow import SynflowConfig, SynflowSparsifier
from sparse_exp.sparse.topology import global_topk_masks

CLASSES = {"snip": SnipSparsifier, "grasp": GraspSparsifier, "synflow": SynflowSparsifier,
           "random": RandomPruningSparsifier}
SCHEMAS = {"snip": SnipConfig, "grasp": GraspConfig, "synflow": SynflowConfig, "random": RandomPruningConfig}
METHODS = sorted(CLASSES)


def dist(dense_first=False, dense_last=False):
    return OmegaConf.create({"name": "erk", "erk_power_scale": 1.0, "dense_first_layer": dense_first,
                             "dense_last_layer": dense_last})


def cfg_of(name, **over):
    """The YAML of ``conf/sparsifier/<name>.yaml`` merged onto its schema (as Hydra would)."""
    raw = OmegaConf.load(f"conf/sparsifier/{name}.yaml")
    raw.pop("defaults")
    cfg = OmegaConf.merge(OmegaConf.structured(SCHEMAS[name]), raw)
    cfg.update(over)
    return cfg


def fixed_batches(in_shape, n_classes=3, batch=8, n=4, dtype=torch.float32, seed=123):
    g = torch.Generator().manual_seed(seed)
    data = [(torch.randn(batch, *in_shape, generator=g, dtype=dtype),
             torch.randint(0, n_classes, (batch,), generator=g)) for _ in range(n)]

    def batches(k):
        yield from data[:k]

    return data, batches


def iters(name, n):
    """``iterations=n`` for SynFlow (the other schemas have no such key)."""
    return {"iterations": n} if name == "synflow" else {}


def make(model, name, sparsity=0.8, in_shape=(6,), seed=0, dense_first=False, dense_last=False,
         dtype=torch.float32, **over):
    masking = Masking(model)
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, weight_decay=5e-4)
    data, batches = fixed_batches(in_shape, dtype=dtype)
    ctx = RunState.for_model(model, masking, opt, sparsity=sparsity,
                        distribution=dist(dense_first, dense_last), total_steps=100, steps_per_epoch=10, seed=seed,
                        device=torch.device("cpu"), batches=batches, score_loss=F.cross_entropy)
    sp = CLASSES[name](cfg_of(name, **over), ctx)
    return sp, masking, opt, data


def mlp(bias=True):
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(6, 8, bias=bias), nn.Tanh(), nn.Linear(8, 3, bias=bias))


def convnet():
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(),
        nn.Conv2d(4, 6, 3, padding=1), nn.BatchNorm2d(6), nn.ReLU(), nn.Dropout(0.2),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(6, 3))


CONV_IN = (3, 5, 5)


def kept_topk(scores_list, k):
    flat = torch.cat([s.reshape(-1) for s in scores_list])
    keep = torch.zeros(flat.numel(), dtype=torch.bool)
    keep[flat.argsort(descending=True)[:k]] = True
    return keep


def flat_masks(masking):
    return torch.cat([masking.masks[n].reshape(-1).bool() for n in masking.names])


# ------------------------------------------------------------------------------------------ SNIP
def test_snip_keeps_top_k_of_abs_grad_times_weight():
    model = mlp()
    ref = copy.deepcopy(model)
    sp, m, _, data = make(model, "snip", sparsity=0.7, num_batches=2)
    # by hand: plain autograd on a copy, loss gradients summed over the two batches
    for x, y in data[:2]:
        F.cross_entropy(ref(x), y).backward()
    by_hand = [(ref[0].weight.grad * ref[0].weight).abs(), (ref[2].weight.grad * ref[2].weight).abs()]
    scores = sp.scores()
    for n, h in zip(m.names, by_hand):
        torch.testing.assert_close(scores[n], h.detach(), rtol=1e-5, atol=1e-8)
    sp.init_masks()
    k = round(0.3 * m.total)
    assert sum(m.counts().values()) == k
    assert torch.equal(flat_masks(m), kept_topk([h.detach() for h in by_hand], k))
    assert m.target_counts == m.counts()
    assert sp.after_step(1) is False


# ------------------------------------------------------------------------------------------ GraSP
def test_grasp_score_is_minus_theta_hessian_gradient_and_keeps_lowest():
    torch.manual_seed(1)
    model = nn.Sequential(nn.Linear(5, 4), nn.Linear(4, 3)).double()
    T = 200.0
    sp, m, _, data = make(model, "grasp", sparsity=0.6, in_shape=(5,), dtype=torch.float64, num_batches=2)
    W1, W2 = model[0].weight.detach().clone(), model[1].weight.detach().clone()
    b1, b2 = model[0].bias.detach(), model[1].bias.detach()

    def loss_of(x, y):
        return lambda A, B: F.cross_entropy(((x @ A.T + b1) @ B.T + b2) / T, y)

    # g: sum of the per-batch gradients (a constant); Hg: sum of per-batch Hessian-vector products
    g = [torch.zeros_like(W1), torch.zeros_like(W2)]
    for x, y in data[:2]:
        jac = torch.autograd.functional.jacobian(loss_of(x, y), (W1, W2))
        g = [a + b for a, b in zip(g, jac)]
    hg = [torch.zeros_like(W1), torch.zeros_like(W2)]
    for x, y in data[:2]:
        _, hv = torch.autograd.functional.hvp(loss_of(x, y), (W1, W2), tuple(g))
        hg = [a + b for a, b in zip(hg, hv)]
    by_hand = [-W1 * hg[0], -W2 * hg[1]]

    scores = sp.scores()
    scale = max(h.abs().max() for h in by_hand)
    for n, h in zip(m.names, by_hand):
        torch.testing.assert_close(scores[n], h, rtol=1e-6, atol=1e-9 * float(scale))
    sp.init_masks()
    k = round(0.4 * m.total)
    assert sum(m.counts().values()) == k
    # the kept set is the k LOWEST scores (the highest are removed, as the reference does)
    assert torch.equal(flat_masks(m), kept_topk([-h for h in by_hand], k))


# ------------------------------------------------------------------------------------------ SynFlow
def test_synflow_one_round_matches_closed_form():
    torch.manual_seed(2)
    model = nn.Sequential(nn.Linear(6, 5, bias=False), nn.ReLU(), nn.Linear(5, 4, bias=False))
    sp, m, _, _ = make(model, "synflow", sparsity=0.75, iterations=1)
    A1, A2 = model[0].weight.detach().abs(), model[2].weight.detach().abs()
    # R = 1^T |W2| |W1| 1 (ReLU is the identity on positive inputs):
    # dR/d|W1|_ij = sum_k |W2|_ki,  dR/d|W2|_ki = sum_j |W1|_ij
    s1 = A2.sum(0)[:, None] * A1
    s2 = A1.sum(1)[None, :] * A2
    scores = sp.scores()
    torch.testing.assert_close(scores[m.names[0]], s1.double(), rtol=1e-6, atol=0)
    torch.testing.assert_close(scores[m.names[1]], s2.double(), rtol=1e-6, atol=0)
    w_before = [p.detach().clone() for p in model.parameters()]
    sp.init_masks()
    k = round(0.25 * m.total)
    assert sum(m.counts().values()) == k
    assert torch.equal(flat_masks(m), kept_topk([s1.double(), s2.double()], k))
    # weights restored with their signs (kept ones unchanged, pruned ones zero)
    for p, w in zip(model.parameters(), w_before):
        mask = m.masks[m.names[0]] if p.shape == w_before[0].shape else m.masks[m.names[1]]
        assert torch.equal(p.detach(), w * mask)


def test_synflow_iterative_exact_count_and_state_untouched():
    model = convnet()
    model.train()
    with torch.no_grad():  # non-trivial BN statistics
        for _ in range(3):
            model(torch.randn(8, *CONV_IN))
    sp, m, opt, _ = make(model, "synflow", sparsity=0.9, in_shape=CONV_IN)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    sp.scores()
    for k, v in model.state_dict().items():
        assert torch.equal(v, state[k]), k
    assert model.training and all(p.grad is None for p in model.parameters())
    sp.init_masks()
    assert sum(m.counts().values()) == round(0.1 * m.total)
    assert all(c >= 1 for c in m.counts().values())
    for k, v in model.state_dict().items():
        if k in m.masks:
            assert torch.equal(v, state[k] * m.masks[k])
        else:
            assert torch.equal(v, state[k]), k


def test_synflow_prunes_iteratively_not_one_shot():
    """100 rounds re-score after each pruning step, so the result differs from one shot."""
    sp1, m1, _, _ = make(convnet(), "synflow", sparsity=0.95, in_shape=CONV_IN, iterations=1)
    sp100, m100, _, _ = make(convnet(), "synflow", sparsity=0.95, in_shape=CONV_IN, iterations=100)
    sp1.init_masks()
    sp100.init_masks()
    assert sum(m1.counts().values()) == sum(m100.counts().values())
    assert not torch.equal(flat_masks(m1), flat_masks(m100))


# ------------------------------------------------------------------------------------------ random
def test_random_exact_count_and_seeded():
    def masks(seed):
        sp, m, _, _ = make(convnet(), "random", sparsity=0.8, in_shape=CONV_IN, seed=seed)
        sp.init_masks()
        assert sum(m.counts().values()) == round(0.2 * m.total)
        return flat_masks(m)

    a, b, c = masks(0), masks(0), masks(1)
    assert torch.equal(a, b)
    assert not torch.equal(a, c)


def test_random_layer_densities_near_uniform():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(100, 200), nn.ReLU(), nn.Linear(200, 100))
    sp, m, _, _ = make(model, "random", sparsity=0.9, in_shape=(100,))
    sp.init_masks()
    for d in m.densities().values():
        assert abs(d - 0.1) < 0.01


# ------------------------------------------------------------------------------------------ every method
def _sgd_steps(model, m, opt, steps=3):
    g = torch.Generator().manual_seed(7)
    for _ in range(steps):
        x, y = torch.randn(8, *CONV_IN, generator=g), torch.randint(0, 3, (8,), generator=g)
        opt.zero_grad()
        F.cross_entropy(model(x), y).backward()
        opt.step()
        m.apply_(opt)
        m.check_invariants(opt)


@pytest.mark.parametrize("name", METHODS)
@pytest.mark.parametrize("sparsity", [0.8, 0.9, 0.95])
def test_exact_global_count_and_invariants(name, sparsity):
    model = convnet()
    sp, m, opt, _ = make(model, name, sparsity=sparsity, in_shape=CONV_IN, **iters(name, 20))
    sp.init_masks()
    assert sum(m.counts().values()) == round((1 - sparsity) * m.total)
    assert m.target_counts == m.counts()
    assert all(isinstance(c, int) and c >= 1 for c in m.target_counts.values())
    m.check_invariants(opt)
    _sgd_steps(model, m, opt)
    assert sp.after_step(1) is False


@pytest.mark.parametrize("name", METHODS)
def test_dense_first_layer(name):
    model = convnet()
    sp, m, opt, _ = make(model, name, sparsity=0.6, in_shape=CONV_IN, dense_first=True, **iters(name, 10))
    sp.init_masks()
    first = m.first_layer
    assert m.counts()[first] == m.sizes[first]
    assert sum(m.counts().values()) == round(0.4 * m.total)
    assert all(m.counts()[n] < m.sizes[n] for n in m.names[1:])
    _sgd_steps(model, m, opt, steps=2)


@pytest.mark.parametrize("name", ["snip", "grasp", "synflow"])
def test_scoring_has_no_side_effects(name):
    model = convnet()
    model.train()
    with torch.no_grad():
        model(torch.randn(8, *CONV_IN))
    sp, m, opt, _ = make(model, name, sparsity=0.9, in_shape=CONV_IN, **iters(name, 3))
    _sgd_steps(model, m, opt, steps=1)  # optimizer state and grads exist
    state = {k: v.clone() for k, v in model.state_dict().items()}
    grads = [p.grad.clone() for p in model.parameters()]
    opt_state = {id(p): {k: v.clone() for k, v in s.items()} for p, s in opt.state.items()}
    rng = torch.get_rng_state()
    sp.scores()
    for k, v in model.state_dict().items():
        assert torch.equal(v, state[k]), k
    for p, g in zip(model.parameters(), grads):
        assert torch.equal(p.grad, g)
    for p, s in opt.state.items():
        for k, v in s.items():
            assert torch.equal(v, opt_state[id(p)][k])
    assert torch.equal(torch.get_rng_state(), rng)
    assert model.training and all(mod.training for mod in model.modules())


def test_eval_mode_flags_restored():
    model = convnet().eval()
    sp, _, _, _ = make(model, "snip", sparsity=0.9, in_shape=CONV_IN)
    sp.init_masks()
    assert not any(mod.training for mod in model.modules())


# ------------------------------------------------------------------------------------------ selection
def test_one_weight_floor_keeps_best_of_an_emptied_layer():
    scores = {"a": torch.tensor([0.1, 0.3, 0.2]), "b": torch.tensor([5.0, 4.0, 3.0, 6.0])}
    keep = global_topk_masks(scores, 3)
    # plain top-3 would be b's 6, 5, 4; "a" keeps its best (0.3) and b loses its lowest kept (4)
    assert keep["a"].tolist() == [False, True, False]
    assert keep["b"].tolist() == [True, False, False, True]
    # no change when every layer is already represented
    keep = global_topk_masks({"a": torch.tensor([9.0, 0.0]), "b": torch.tensor([1.0, 2.0])}, 2)
    assert keep["a"].tolist() == [True, False] and keep["b"].tolist() == [False, True]
    with pytest.raises(ValueError):
        global_topk_masks(scores, 1)


def test_too_few_weights_for_dense_layers_raises():
    sp, _, _, _ = make(mlp(), "snip", sparsity=0.9, dense_first=True)  # first layer alone is 48 of 72
    with pytest.raises(ValueError, match="too few"):
        sp.init_masks()


def test_zero_sparsity_keeps_everything():
    sp, m, _, _ = make(mlp(), "grasp", sparsity=0.0)
    sp.init_masks()
    assert m.counts() == m.sizes


@pytest.mark.parametrize("name,key,value", [("snip", "num_batches", 0), ("grasp", "temperature", 0.0),
                                            ("synflow", "iterations", 0)])
def test_bad_config_values_raise(name, key, value):
    from sparse_exp.config.errors import ConfigError

    with pytest.raises(ConfigError, match=key):
        make(mlp(), name, **{key: value})


def test_yaml_defaults_match_schemas():
    assert cfg_of("snip").num_batches == 1
    assert cfg_of("grasp").num_batches == 1 and cfg_of("grasp").temperature == 200.0
    assert cfg_of("synflow").iterations == 100
    assert cfg_of("random").name == "random"
