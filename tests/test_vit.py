"""``model=vit`` (timm's VisionTransformer): what is prunable, what the model keeps dense and how every sparsifier,
Sup-tickets and every tweak either trains it or refuses it in one line (docs/vit.md)."""

import json

import pytest
import torch
from conftest import compose_cfg, needs_data
from torch import nn

from sparse_exp import flops
from sparse_exp.config.errors import ConfigError
from sparse_exp.config.preflight import preflight
from sparse_exp.config.validate import validate
from sparse_exp.engine.context import RunState, plan_run
from sparse_exp.models import build_model
from sparse_exp.sparse.masking import Masking, declared_dense, prunable_parameters
from sparse_exp.sparse.sparsifiers import SPARSIFIERS
from sparse_exp.train import run

#: a tiny ViT on a few hundred Fashion-MNIST images (3 steps of 64 per epoch): a run takes seconds on a CPU core
TINY_VIT = ["model=vit", "model.width=32", "model.depth=2", "model.heads=2", "optimizer=adam", "optimizer.lr=1e-3",
            "schedule=constant", "dataset.subset_train=192", "dataset.val_size=64", "dataset.subset_test=64",
            "check_invariants=true"]
FAST = {"set": ["sparsifier.delta_t=2"], "rigl": ["sparsifier.delta_t=2"], "granet": ["sparsifier.delta_t=2"],
        "gmp": ["sparsifier.delta_t=2"], "lth": ["sparsifier.rounds=2", "sparsifier.round_epochs=1"],
        "synflow": ["sparsifier.iterations=10"]}
EMBED_HEAD = ["patch_embed.proj.weight", "head.weight"]


def test_vit_shapes_and_prunable_layers():
    torch.manual_seed(0)
    model = build_model("vit", in_channels=1, num_classes=10, image_size=28, width=32, depth=2, heads=2)
    assert model(torch.zeros(3, 1, 28, 28)).shape == (3, 10)
    names = [n for n, _ in prunable_parameters(model)]
    blocks = [f"blocks.{b}.{layer}.weight" for b in range(2) for layer in ("attn.qkv", "attn.proj", "mlp.fc1",
                                                                          "mlp.fc2")]
    assert names == [EMBED_HEAD[0], *blocks, EMBED_HEAD[1]], "forward order: embedding, 4 linears per block, head"
    assert declared_dense(model) == EMBED_HEAD
    pruned = build_model("vit", 1, 10, 28, width=32, depth=2, heads=2, dense_embed_head=False)
    assert declared_dense(pruned) == []
    assert not any(isinstance(m, nn.ReLU) for m in model.modules()) and any(isinstance(m, nn.GELU)
                                                                            for m in model.modules())


def test_vit_initialisation_follows_the_seed():
    def weights(seed):
        torch.manual_seed(seed)
        return build_model("vit", 3, 10, 32, width=32, depth=2, heads=2).state_dict()

    a, b, c = weights(0), weights(0), weights(1)
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not torch.equal(a["blocks.0.attn.qkv.weight"], c["blocks.0.attn.qkv.weight"])


def test_plan_keeps_embedding_and_head_dense_and_erk_covers_the_linears():
    plan = plan_run(compose_cfg(TINY_VIT + ["sparsity=0.9", "distribution=erk"]))
    assert list(plan.dense_layers) == EMBED_HEAD
    torch.manual_seed(0)
    model = build_model("vit", 1, 10, 28, width=32, depth=2, heads=2)
    masking = Masking(model)
    state = RunState.for_model(model, masking, None, sparsity=0.9, total_steps=10, steps_per_epoch=5,
                               distribution={"name": "erk", "erk_power_scale": 1.0, "dense_first_layer": False,
                                             "dense_last_layer": False})
    assert list(state.dense_layers) == EMBED_HEAD
    counts = state.target_counts()
    sizes = masking.sizes
    assert all(counts[n] == sizes[n] for n in EMBED_HEAD)
    assert sum(counts.values()) == round(0.1 * masking.total), "the dense layers count against the budget"
    linear = [n for n in masking.names if n not in EMBED_HEAD]
    dens = {n: counts[n] / sizes[n] for n in linear}
    assert all(0 < d < 1 for d in dens.values())
    assert dens["blocks.0.attn.proj.weight"] > dens["blocks.0.mlp.fc1.weight"], "ERK: smaller layers denser"
    pruned = plan_run(compose_cfg(TINY_VIT + ["sparsity=0.9", "model.dense_embed_head=false"]))
    assert pruned.dense_layers == ()


def test_flops_cli_counts_the_vit(capsys):
    assert flops.main(["model=vit", "model.width=32", "model.depth=2", "model.heads=2", "sparsity=0.9",
                       "superposer=none"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["layers"]["head.weight"] == 1.0 and report["layers"]["patch_embed.proj.weight"] == 1.0
    assert 0.05 < report["flops/test"] < 0.3 and report["flops/dense_forward"] > 0


@pytest.mark.parametrize("overrides, key", [(["model.heads=3"], "model.heads"),
                                            (["model.patch_size=5"], "model.patch_size"),
                                            (["model.depth=0"], "model.depth")])
def test_bad_vit_sizes_are_refused(overrides, key):
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        validate(compose_cfg(TINY_VIT + overrides))


@pytest.mark.parametrize("tweak, why", [("ghost_skip", "no conv -> BatchNorm -> activation unit"),
                                        ("soft_neurons", r"no nn.ReLU module to soften \(its activation modules: "
                                                         r"GELU\)")])
def test_tweaks_without_their_structure_are_refused_in_one_line(tweak, why):
    with pytest.raises(ConfigError, match=why) as err:
        preflight(compose_cfg(TINY_VIT + [f"tweaks=[{tweak}]", "sparsity=0.9", "epochs=1", *FAST["rigl"]]),
                  local=False)
    assert "\n" not in str(err.value)


@needs_data
@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(n for n in SPARSIFIERS if n != "mask_file"))
def test_every_sparsifier_trains_the_vit(tmp_path, name):
    sparsity = 0.0 if name == "dense" else 0.9
    summary = run(compose_cfg(TINY_VIT + [f"sparsifier={name}", f"sparsity={sparsity}", "epochs=1",
                                          *FAST.get(name, [])]), tmp_path / "run")
    assert summary["status"] == "completed" and summary["sparsifier"] == name
    assert abs(summary["sparsity/global"] - sparsity) <= 1e-3
    masks = torch.load(tmp_path / "run" / "masks.pt", weights_only=True)["masks"]
    assert all(bool(masks[n].all()) for n in EMBED_HEAD), "the embedding and the head stay dense"
    if name == "rigl":  # the mask of this run feeds sparsifier=mask_file
        again = run(compose_cfg(TINY_VIT + ["sparsifier=mask_file", f"sparsifier.path={tmp_path / 'run/masks.pt'}",
                                            "sparsity=0.9", "epochs=1"]), tmp_path / "from_file")
        assert again["status"] == "completed" and abs(again["sparsity/global"] - 0.9) <= 1e-3


@needs_data
@pytest.mark.slow
def test_sup_tickets_superposes_vit_tickets(tmp_path):
    summary = run(compose_cfg(TINY_VIT + ["sparsifier=rigl", "sparsity=0.9", "epochs=4", *FAST["rigl"],
                                          "superposer=sup_tickets", "superposer.phase_fraction=0.5",
                                          "superposer.cycle_epochs=1", "superposer.lr_low=1e-4",
                                          "superposer.lr_high=1e-3"]), tmp_path / "run")
    assert summary["tickets/count"] == 2
    assert abs(summary["sparsity/global"] - 0.9) <= 1e-3, "the ultimate ticket is at the target sparsity"


@needs_data
@pytest.mark.slow
@pytest.mark.parametrize("tweak", ["label_smoothing", "lrsi"])
def test_tweaks_that_apply_train_the_vit(tmp_path, tweak):
    extra = ["tweaks.lrsi.iterations=2"] if tweak == "lrsi" else []
    summary = run(compose_cfg(TINY_VIT + ["sparsifier=rigl", "sparsity=0.9", "epochs=1", *FAST["rigl"],
                                          f"tweaks=[{tweak}]", *extra]), tmp_path / "run")
    assert summary["status"] == "completed" and abs(summary["sparsity/global"] - 0.9) <= 1e-3
    if tweak == "lrsi":
        assert summary["tweaks/lrsi/tensors"] > 0
