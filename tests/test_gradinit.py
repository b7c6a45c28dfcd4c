"""GradInit (LRsI): the scale optimizer's arithmetic and ``gradinit_``'s contract, on a tiny CPU model."""

from __future__ import annotations

import itertools
import math

import pytest
import torch
from torch import nn

from sparse_exp.tweaks.gradinit import GradInitSettings, RescaleAdam, gradinit_


class Tiny(nn.Module):
    """conv(3->4, 3x3) + BN + ReLU + avgpool + linear(64->5) on 8x8 inputs; conv bias and BN beta start at 0."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.bn = nn.BatchNorm2d(4)
        self.fc = nn.Linear(64, 5)
        nn.init.zeros_(self.conv.bias)

    def forward(self, x):
        return self.fc(torch.flatten(nn.functional.avg_pool2d(torch.relu(self.bn(self.conv(x))), 2), 1))


def make_model(seed: int = 0) -> Tiny:
    torch.manual_seed(seed)
    return Tiny()


def make_batches(n: int, seed: int = 1, size: int = 8):
    g = torch.Generator().manual_seed(seed)
    return [(torch.randn(size, 3, 8, 8, generator=g), torch.randint(0, 5, (size,), generator=g)) for _ in range(n)]


def settings(**kw) -> GradInitSettings:
    return GradInitSettings(**{"iterations": 3, **kw})


class Counting:
    """An iterator over ``items`` that counts what was taken."""

    def __init__(self, items):
        self.items, self.taken = iter(items), 0

    def __iter__(self):
        return self

    def __next__(self):
        item = next(self.items)
        self.taken += 1
        return item


def test_rescale_adam_hand_check():
    theta0 = torch.tensor([3.0, 4.0])
    a = torch.ones((), requires_grad=True)
    opt = RescaleAdam([a], [0.01], lr=1e-2)
    (a * theta0 * torch.tensor([0.1, 0.1])).sum().backward()  # dL/dtheta = [0.1, 0.1] -> a.grad = 0.7
    opt.step()
    assert opt.value(0) == pytest.approx(0.99, rel=1e-6)
    assert (a.detach() * theta0).tolist() == pytest.approx([2.97, 3.96], rel=1e-6)


def test_rescale_adam_shared_second_moment_and_clip():
    b1, b2, lr, eps = 0.9, 0.999, 1e-2, 1e-8
    a = torch.ones((), requires_grad=True)
    opt = RescaleAdam([a], [0.0], lr=lr, grad_clip=1.0)
    a.grad = torch.tensor(5.0)  # clipped to 1
    opt.step(is_constraint=True)
    a1 = 1 - lr * 1.0 / (1.0 + eps)
    assert opt.value(0) == pytest.approx(a1, rel=1e-12)
    a.grad = torch.tensor(-0.5)  # first objective step: own first moment (count 1), shared v (count 2)
    opt.step(is_constraint=False)
    v = b2 * (1 - b2) * 1.0 + (1 - b2) * 0.25
    m_hat = (1 - b1) * -0.5 / (1 - b1)
    expected = a1 - lr * m_hat / (math.sqrt(v / (1 - b2**2)) + eps)
    assert opt.value(0) == pytest.approx(expected, rel=1e-12)
    a.grad = torch.tensor(1.0)  # huge lr: clamped at the bound
    RescaleAdam([a], [0.25], lr=10.0).step()
    assert float(a.detach()) == 0.25


@pytest.mark.parametrize("gamma,constraint", [(1e-12, True), (math.inf, False)])
def test_constraint_and_objective_branches(gamma, constraint):
    model, batches = make_model(), Counting(make_batches(9))
    res = gradinit_(model, batches, settings(gamma=gamma))
    assert (res.constraint_steps, res.objective_steps) == ((3, 0) if constraint else (0, 3))
    assert batches.taken == (6 if constraint else 9)
    assert len(res.grad_norms) == 3 and len(res.objective_losses) == res.objective_steps


def test_batch_reuse_s_prime_is_first_batch_plus_new_one():
    seen = []

    def loss_fn(logits, y):
        seen.append(y.clone())
        return nn.functional.cross_entropy(logits, y)

    b = make_batches(3)
    gradinit_(make_model(), b, settings(iterations=1, gamma=math.inf), loss_fn=loss_fn)
    assert len(seen) == 2
    assert torch.equal(seen[0], torch.cat([b[0][1], b[1][1]])) and torch.equal(seen[1], torch.cat([b[0][1], b[2][1]]))


@pytest.mark.parametrize("lookahead", [False, True])
def test_masked_weights_stay_zero(lookahead):
    model = make_model()
    g = torch.Generator().manual_seed(3)
    masks = {n: (torch.rand(p.shape, generator=g) > 0.5).float() for n, p in model.named_parameters()
             if n in ("conv.weight", "fc.weight")}
    with torch.no_grad():
        for n, p in model.named_parameters():
            if n in masks:
                p.mul_(masks[n])
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    res = gradinit_(model, make_batches(9), settings(mask_lookahead=lookahead, gamma=math.inf, lr=0.05), masks=masks)
    assert res.objective_steps == 3
    for n, p in model.named_parameters():
        if n.endswith("weight"):
            assert torch.equal(p != 0, before[n] != 0), n
        if n in masks:
            assert torch.all(p[masks[n] == 0] == 0)
    assert any(not torch.equal(p, before[n]) for n, p in model.named_parameters())


def test_mask_lookahead_changes_the_look_ahead():
    model = make_model()
    masks = {"conv.weight": (torch.arange(108).reshape(4, 3, 3, 3) % 2).float()}
    with torch.no_grad():
        model.conv.weight.mul_(masks["conv.weight"])
    results = [gradinit_(make_model_like(model), make_batches(9), settings(mask_lookahead=la, gamma=math.inf),
                         masks=masks) for la in (False, True)]
    assert results[0].grad_norms[0] > results[1].grad_norms[0]  # the masked gradient has a smaller norm


def make_model_like(model: nn.Module) -> nn.Module:
    clone = Tiny()
    clone.load_state_dict(model.state_dict())
    return clone


def test_bad_mask_is_refused():
    model = make_model()
    with pytest.raises(ValueError, match="apply the mask first"):
        gradinit_(model, make_batches(9), settings(), masks={"conv.weight": torch.zeros(4, 3, 3, 3)})
    with pytest.raises(ValueError, match="does not match"):
        gradinit_(model, make_batches(9), settings(), masks={"conv.weight": torch.zeros(3)})


def test_bn_buffers_and_training_flags_restored():
    model = make_model()
    model.train()
    model(make_batches(1, seed=7)[0][0])  # move the running statistics away from their defaults
    model.fc.eval()
    buffers = {n: b.clone() for n, b in model.named_buffers()}
    flags = {n: m.training for n, m in model.named_modules()}
    gradinit_(model, make_batches(9), settings(gamma=1.0))
    assert all(torch.equal(b, buffers[n]) for n, b in model.named_buffers())
    assert {n: m.training for n, m in model.named_modules()} == flags
    assert model.bn.track_running_stats


def test_scale_bounds_and_zero_norm_tensors_skipped():
    model = make_model()
    zero = {"conv.bias": model.conv.bias.detach().clone(), "bn.bias": model.bn.bias.detach().clone()}
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    res = gradinit_(model, make_batches(30), settings(iterations=10, lr=0.5, gamma=0.05, min_scale=0.3))
    assert sorted(res.skipped) == sorted(zero) and not set(zero) & set(res.scales)
    assert set(res.scales) == {"conv.weight", "bn.weight", "fc.weight", "fc.bias"}
    for n, p in model.named_parameters():
        if n in zero:
            assert torch.equal(p, zero[n])
        else:
            assert res.scales[n] >= (0.0 if n.endswith("bias") else 0.3)
            assert torch.allclose(p, before[n] * res.scales[n])
    assert min(res.scales[n] for n in res.scales if n.endswith("weight")) == 0.3  # the bound was reached


def test_second_order_flag_changes_the_objective_gradient():
    scales = [gradinit_(make_model(), make_batches(9), settings(gamma=math.inf, second_order=so)).scales
              for so in (False, True)]
    assert scales[0].keys() == scales[1].keys() and scales[0] != scales[1]


def test_deterministic():
    states = []
    for _ in range(2):
        model = make_model(seed=5)
        gradinit_(model, make_batches(9, seed=6), settings(gamma=1.0))
        states.append(model.state_dict())
    assert all(torch.equal(states[0][k], states[1][k]) for k in states[0])


def test_objective_lowers_the_look_ahead_loss_on_fixed_batches():
    fixed = make_batches(3, seed=11)  # every iteration sees S = [b0, b1], S' = [b0, b2]
    res = gradinit_(make_model(seed=2), itertools.cycle(fixed), settings(iterations=8, gamma=math.inf, lr=0.05))
    assert res.objective_steps == 8
    assert res.objective_losses[-1] < res.objective_losses[0]


def test_errors_leave_the_model_unchanged():
    model = make_model()
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    with pytest.raises(ValueError, match="ran out after 5 batches, at iteration 2"):
        gradinit_(model, make_batches(5), settings(gamma=math.inf))
    assert all(torch.equal(p, before[n]) for n, p in model.named_parameters())
    assert model.training and model.bn.track_running_stats
    with pytest.raises(ValueError, match="no tensor to rescale"):
        gradinit_(nn.Sequential(nn.Flatten(), nn.Linear(4, 2).requires_grad_(False)), make_batches(2), settings())
    with pytest.raises(ValueError, match="eta"):
        GradInitSettings(eta=0.0)
