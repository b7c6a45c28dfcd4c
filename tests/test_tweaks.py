"""The any-mask training tweaks, unit by unit: the hand-computable values of
``../shared/notes/any-mask-tweaks.md``, the structural guarantees (alpha 0 = plain model, removal gives
the plain architecture, the blended network ends bit-identical to the ReLU one) and the config checks."""

import copy
import math

import pytest
import torch
from conftest import compose_cfg
from torch import nn

from sparse_exp.config.errors import ConfigError, UserError
from sparse_exp.config.preflight import preflight
from sparse_exp.models import build_model
from sparse_exp.sparse.masking import prunable_parameters
from sparse_exp.tweaks.ghost_skip import GhostPath, ghost_units, insert_ghosts, remove_ghosts
from sparse_exp.tweaks.label_smoothing import smoothed_cross_entropy
from sparse_exp.tweaks.soft_neurons import (
    SoftNeuron,
    count_activation_calls,
    functional_relu_calls,
    restore_relus,
    swap_relus,
)


# ---------------------------------------------------------------- hand-computable values (the note)
def test_label_smoothing_losses_match_the_note():
    logits = torch.tensor([[2.0] + [0.0] * 9])
    y = torch.tensor([0])
    assert smoothed_cross_entropy(logits, y, 0.1, "code").item() == pytest.approx(0.996614, abs=1e-6)
    assert smoothed_cross_entropy(logits, y, 0.1, "pytorch").item() == pytest.approx(0.976614, abs=1e-6)
    uniform = torch.zeros(3, 10)
    for alpha in (0.0, 0.1, 0.5):
        assert smoothed_cross_entropy(uniform, torch.tensor([0, 4, 9]), alpha).item() == pytest.approx(math.log(10))


def test_ghost_branch_bn_output_on_plus_minus_one():
    ghost = GhostPath(1, 1, stride=1, groups=1, init=1e-4, zero_init=False).train()
    out = ghost(torch.tensor([1.0, -1.0]).view(2, 1, 1, 1)).flatten()
    assert out.tolist() == pytest.approx([0.031607, -0.031607], abs=1e-6)
    zero = GhostPath(1, 1, stride=1, groups=1, init=1e-4, zero_init=True).train()
    assert torch.equal(zero(torch.tensor([1.0, -1.0]).view(2, 1, 1, 1)), torch.zeros(2, 1, 1, 1))


@pytest.mark.parametrize("beta", [1.0, 2.0, 3.0])
def test_pswish_is_within_0_27846_over_beta_of_relu(beta):
    x = torch.linspace(-20, 20, 400_001, dtype=torch.float64)
    soft = SoftNeuron("pswish", beta, nn.ReLU())
    assert (soft(x) - torch.relu(x)).abs().max().item() == pytest.approx(0.27846 / beta, rel=1e-4)


def test_resnet18_has_17_activation_calls_all_swapped():
    with torch.device("meta"):
        model = build_model("resnet18", in_channels=3, num_classes=100, image_size=32)
    swapped = swap_relus(model, "swish", 1.0)
    assert len(swapped) == 17 and not any(type(m) is nn.ReLU for m in model.modules())
    assert count_activation_calls(model, (3, 32, 32)) == 17
    assert functional_relu_calls(model, (3, 32, 32)) == 0


def test_ghost_sizes_on_resnet18_match_the_note():
    model = build_model("resnet18", in_channels=3, num_classes=100, image_size=32)
    conv = sum(p.numel() for n, p in prunable_parameters(model) if p.dim() == 4)
    paths, _ = insert_ghosts(model)
    ghost_weights = sum(g.conv.weight.numel() for g in paths)
    assert (conv, ghost_weights) == (11_159_232, 1_220_608)  # 10.94 % of the conv weights
    assert [n for n, _ in prunable_parameters(model) if "ghost" in n] == [], "ghost convs are never prunable"


# ---------------------------------------------------------------- structural guarantees
def _pair(name="resnet32", seed=0):
    torch.manual_seed(seed)
    plain = build_model(name, in_channels=1, num_classes=10, image_size=28)
    return plain, copy.deepcopy(plain)


@pytest.mark.parametrize("train", [False, True])
def test_alpha_zero_ghost_model_equals_plain_model(train):
    plain, ghosted = _pair()
    paths, _ = insert_ghosts(ghosted)
    for g in paths:
        g.alpha = 0.0
    x = torch.randn(4, 1, 28, 28)
    plain.train(train), ghosted.train(train)
    assert torch.equal(plain(x), ghosted(x))
    for g in paths:
        g.alpha = 1.0
    assert not torch.equal(plain.eval()(x), ghosted.eval()(x))


def test_removal_restores_the_plain_architecture():
    plain, ghosted = _pair()
    paths, handles = insert_ghosts(ghosted)
    ghost_count = sum(p.numel() for g in paths for p in g.parameters())
    assert ghost_count > 0
    before = sum(p.numel() for p in ghosted.parameters())
    assert remove_ghosts(ghosted, handles) == len(paths)
    assert list(ghosted.state_dict()) == list(plain.state_dict())
    assert sum(p.numel() for p in ghosted.parameters()) == before - ghost_count
    x = torch.randn(3, 1, 28, 28)
    assert torch.equal(plain.eval()(x), ghosted.eval()(x))


def test_linear_blend_end_is_bit_identical_to_relu():
    plain, soft = _pair()
    modules = swap_relus(soft, "swish", 1.0)
    x = torch.randn(3, 1, 28, 28)
    plain.eval(), soft.eval()
    for m in modules:
        m.blend = 0.5
    assert not torch.equal(plain(x), soft(x))
    assert restore_relus(soft) == len(modules)
    assert torch.equal(plain(x), soft(x))
    assert all(type(m) is not SoftNeuron for m in soft.modules())


class FunctionalRelu(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(1, 2, 3)
        self.act = nn.ReLU()

    def forward(self, x):
        return torch.relu(self.act(self.conv(x))).flatten(1)


def test_functional_relu_is_detected():
    assert functional_relu_calls(FunctionalRelu(), (1, 8, 8)) == 1


@pytest.mark.parametrize("name", ["resnet32", "resnet50", "vgg16", "mobilenet_v2", "wrn28_10"])
def test_every_declared_unit_is_conv_then_bn(name):
    with torch.device("meta"):
        model = build_model(name, in_channels=3, num_classes=10, image_size=32)
    units = ghost_units(model)
    assert units
    for conv, bn in units:
        c, b = model.get_submodule(conv), model.get_submodule(bn)
        assert isinstance(c, nn.Conv2d) and isinstance(b, nn.BatchNorm2d) and c.out_channels == b.num_features
    with torch.device("meta"):
        insert_ghosts(model)
        model(torch.empty(2, 3, 32, 32))  # every ghost fits its unit's shapes


def test_lenet_is_refused_by_ghost_skip():
    with pytest.raises(UserError, match="no conv -> BatchNorm -> activation unit"):
        insert_ghosts(build_model("lenet5", in_channels=1, num_classes=10, image_size=28))


# ---------------------------------------------------------------- config checks (before any work)
@pytest.mark.parametrize("overrides, key", [
    (["tweaks=[soft_neurons]", "tweaks.soft_neurons.schedule=linear_blend"], "tweaks.soft_neurons.end_epoch"),
    (["tweaks=[soft_neurons]", "tweaks.soft_neurons.activation=tanh"], "tweaks.soft_neurons.activation"),
    (["tweaks=[ghost_skip]", "tweaks.ghost_skip.remove_at_end=true"], "tweaks.ghost_skip.alpha.end"),
    (["tweaks=[ghost_skip]", "tweaks.ghost_skip.alpha.end=0"], "tweaks.ghost_skip.alpha.end_epoch"),
    (["tweaks=[ghost_skip]", "tweaks.ghost_skip.alpha.end=0", "tweaks.ghost_skip.alpha.end_epoch=99"],
     "tweaks.ghost_skip.alpha.end_epoch"),
    (["tweaks=[label_smoothing]", "tweaks.label_smoothing.alpha=1.0"], "tweaks.label_smoothing.alpha"),
    (["tweaks=[label_smoothing]", "tweaks.label_smoothing.convention=keras"], "tweaks.label_smoothing.convention"),
    (["tweaks=[lrsi]", "tweaks.lrsi.when=later"], "tweaks.lrsi.when"),
    (["tweaks=[ghost_skip]"], "tweaks"),  # lenet5 has no BN unit
    # the ghost paths would vanish between cheap tickets: epochs 10, tickets from epoch 9
    (["model=resnet32", "tweaks=[ghost_skip]", "tweaks.ghost_skip.alpha.end=0", "tweaks.ghost_skip.alpha.end_epoch=10",
      "superposer=sup_tickets", "superposer.cycle_epochs=1"], "tweaks.ghost_skip.alpha.end_epoch"),
    (["model=resnet32", "tweaks=[soft_neurons]", "tweaks.soft_neurons.schedule=step",
      "tweaks.soft_neurons.end_epoch=10", "superposer=sup_tickets", "superposer.cycle_epochs=1"],
     "tweaks.soft_neurons.end_epoch"),
], ids=lambda v: v if isinstance(v, str) else None)
def test_bad_tweak_configs_are_refused_naming_the_key(overrides, key):
    with pytest.raises(ConfigError) as err:
        preflight(compose_cfg(["epochs=10", *overrides]), local=False)
    assert err.value.key == key, str(err.value)
