"""model.init: Kaiming-normal re-initialisation of conv / linear weights."""

import math

import pytest
import torch

from sparse_exp.models import build_model, reinitialize_


def test_kaiming_normal_std_matches_fan_in():
    torch.manual_seed(0)
    model = reinitialize_(build_model("lenet_300_100", 1, 10, 28), "kaiming_normal")
    for module in model.modules():
        if isinstance(module, torch.nn.Linear):
            fan_in = module.weight.shape[1]
            assert module.weight.std().item() == pytest.approx(math.sqrt(2 / fan_in), rel=0.05)
            assert torch.all(module.bias == 0)


def test_default_keeps_the_architecture_init():
    torch.manual_seed(0)
    a = build_model("lenet5", 1, 10, 28)
    torch.manual_seed(0)
    b = reinitialize_(build_model("lenet5", 1, 10, 28), "default")
    assert all(torch.equal(x, y) for x, y in zip(a.parameters(), b.parameters()))


def test_unknown_scheme_is_refused():
    with pytest.raises(ValueError, match="allowed"):
        reinitialize_(build_model("lenet5", 1, 10, 28), "xavier_magic")
