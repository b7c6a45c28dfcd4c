"""Contract of the model zoo (:mod:`sparse_exp.models`), checked for every registered name.

Each model is built, run forward and backward on a batch of 2 random CPU images in train mode;
the logits must have shape ``(2, num_classes)`` and be finite, and every parameter must get a
finite gradient. Also checked: the layer conventions the sparse core relies on (first prunable
layer reads the input channels, last one is the classifier, only Conv2d/Linear weight layers).
"""

from __future__ import annotations

import dataclasses
import inspect

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from sparse_exp.models import MODELS, build_model
from sparse_exp.sparse.masking import prunable_parameters

NUM_CLASSES = 10
#: models also checked on 1x28x28 inputs (MNIST / Fashion-MNIST)
GREY_28 = {"lenet5", "lenet_300_100", "vgg16", "resnet18"}

#: the zoo: every registered model but ``external`` (built only from the user's ``model.target``: tests/test_plugins.py)
ZOO = sorted(name for name in MODELS if name != "external")
CASES = [pytest.param(name, 3, 32, id=f"{name}-3x32") for name in ZOO]
CASES += [pytest.param(name, 1, 28, id=f"{name}-1x28") for name in sorted(GREY_28)]


@pytest.fixture(autouse=True)
def _few_threads():
    """Keep runtimes predictable on small CI machines."""
    before = torch.get_num_threads()
    torch.set_num_threads(min(before, 2))
    yield
    torch.set_num_threads(before)


@pytest.mark.parametrize("name, in_channels, image_size", CASES)
def test_forward_backward_contract(name, in_channels, image_size):
    torch.manual_seed(0)
    model = build_model(name, in_channels=in_channels, num_classes=NUM_CLASSES, image_size=image_size)
    model.train()
    x = torch.randn(2, in_channels, image_size, image_size)
    y = torch.tensor([0, NUM_CLASSES - 1])

    logits = model(x)
    assert logits.shape == (2, NUM_CLASSES)
    assert torch.isfinite(logits).all()

    F.cross_entropy(logits, y).backward()
    for pname, p in model.named_parameters():
        assert p.grad is not None, f"{name}: {pname} got no gradient"
        assert torch.isfinite(p.grad).all(), f"{name}: {pname} has a non-finite gradient"

    # layer conventions of the sparse core: forward registration order, Conv2d/Linear only
    weights = [m for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    first, last = weights[0], weights[-1]
    assert (first.in_channels if isinstance(first, nn.Conv2d) else first.in_features) in (
        in_channels, in_channels * image_size * image_size)
    assert isinstance(last, nn.Linear) and last.out_features == NUM_CLASSES
    assert [p for _, p in prunable_parameters(model)] == [m.weight for m in weights]
    assert not any(isinstance(m, (nn.Conv1d, nn.Conv3d, nn.ConvTranspose2d)) for m in model.modules())


@pytest.mark.parametrize("name", ZOO)
def test_constructor_signature_and_docstring(name):
    fn = MODELS[name]
    params = list(inspect.signature(fn).parameters)
    assert params[:3] == ["in_channels", "num_classes", "image_size"]
    schema = MODELS.entry(name).schema  # a model with own keys (model=vit) takes them as keyword options
    own = [f.name for f in dataclasses.fields(schema) if f.name not in ("name", "init")] if schema else []
    assert params[3:] == own
    assert fn.__doc__ and len(fn.__doc__.strip()) > 40, f"{name} needs a docstring citing its source"


def test_unknown_name_lists_allowed_names():
    with pytest.raises(ValueError, match="not a known model") as info:
        build_model("resnet1000", in_channels=3, num_classes=10, image_size=32)
    msg = str(info.value)
    assert "resnet1000" in msg
    for name in MODELS:
        assert repr(name) in msg


@pytest.mark.parametrize("bad", [{"in_channels": 0}, {"num_classes": -1}, {"image_size": 2.5}])
def test_bad_sizes_raise(bad):
    kwargs = {"in_channels": 3, "num_classes": 10, "image_size": 32, **bad}
    with pytest.raises(ValueError):
        build_model("lenet5", **kwargs)


def test_lenet5_too_small_image_raises():
    with pytest.raises(ValueError, match="image_size"):
        build_model("lenet5", in_channels=1, num_classes=10, image_size=8)


def test_lenet_flattened_sizes():
    assert build_model("lenet5", in_channels=1, num_classes=10, image_size=28).classifier[0].in_features == 400
    assert build_model("lenet5", in_channels=3, num_classes=10, image_size=32).classifier[0].in_features == 576
    assert build_model("lenet_300_100", in_channels=3, num_classes=10,
                       image_size=32).classifier[0].in_features == 3 * 32 * 32


def test_eval_mode_batch_of_one():
    """Inference on a single example works (BN, incl. the VGG classifier BatchNorm1d, uses running stats)."""
    torch.manual_seed(0)
    for name in ("vgg16", "resnet32", "mobilenet_v2"):
        model = build_model(name, in_channels=3, num_classes=NUM_CLASSES, image_size=32).eval()
        with torch.no_grad():
            assert model(torch.randn(1, 3, 32, 32)).shape == (1, NUM_CLASSES)
