"""The tweaks end to end on real Fashion-MNIST (ResNet-32, a BN model with residual blocks, tiny subsets):
every sparsifier x {none, sup_tickets} with all four tweaks, ghost paths outside the mask, removal, and a
bitwise resume in the middle of every schedule."""

import pytest
import torch
from conftest import compose_cfg, needs_data
from test_resume import assert_same_run

import sparse_exp
from sparse_exp.config.errors import UserError
from sparse_exp.engine.loop import Trainer
from sparse_exp.models import build_model
from sparse_exp.run.run_dir import RunDir
from sparse_exp.sparse.sparsifiers import SPARSIFIERS
from sparse_exp.train import run
from sparse_exp.tweaks.ghost_skip import GhostPath

pytestmark = pytest.mark.slow  # end-to-end training runs; still part of `make test`

#: 2 steps of 32 images per epoch, 64 validation and 64 test images; GradInit for 1 iteration
SMALL = ["model=resnet32", "dataset.subset_train=64", "batch_size=32", "dataset.val_size=64",
         "dataset.subset_test=64", "tweaks=tost", "tweaks.lrsi.iterations=1", "check_invariants=true"]
FAST = {"set": ["sparsifier.delta_t=1"], "rigl": ["sparsifier.delta_t=1"], "granet": ["sparsifier.delta_t=1"],
        "gmp": ["sparsifier.delta_t=1"], "lth": ["sparsifier.rounds=2", "sparsifier.round_epochs=1"],
        "synflow": ["sparsifier.iterations=10"]}
METHODS = sorted(n for n in SPARSIFIERS if n != "mask_file")  # mask_file: test_mask_file_with_every_tweak


def fit(path, overrides):
    cfg = compose_cfg(overrides)
    rd = RunDir(path)
    rd.prepare(cfg)
    trainer = Trainer(cfg, rd)
    return trainer, trainer.fit()


def check_ghosts_outside_the_mask(trainer, summary, sparsity):
    m = trainer.masking
    ghosts = [g for g in trainer.model.modules() if isinstance(g, GhostPath)]
    assert ghosts and summary["ghost/params"] == sum(p.numel() for g in ghosts for p in g.parameters())
    for g in ghosts:
        assert int((g.conv.weight == 0).sum()) == 0, "a ghost weight was pruned"
    assert not any("ghost" in n for n in m.names)
    assert m.counts() == m.target_counts, "the masked count is exactly the sparsifier's target"
    if sparsity:
        assert abs(summary["sparsity/global"] - sparsity) <= 1e-3
        assert abs(1 - sum(m.target_counts.values()) / m.total - sparsity) <= 1e-3


@needs_data
@pytest.mark.parametrize("superposer", ["none", "sup_tickets"])
@pytest.mark.parametrize("name", METHODS)
def test_every_tweak_composes_with_every_sparsifier(tmp_path, name, superposer):
    sparsity = 0.0 if name == "dense" else 0.9
    boost = ["superposer.phase_fraction=0.5", "superposer.cycle_epochs=1"] if superposer == "sup_tickets" else []
    epochs = 4 if superposer == "sup_tickets" else 2
    trainer, summary = fit(tmp_path, [*SMALL, f"sparsifier={name}", f"sparsity={sparsity}", f"epochs={epochs}",
                                      f"superposer={superposer}", *boost, *FAST.get(name, [])])
    assert summary["status"] == "completed"
    check_ghosts_outside_the_mask(trainer, summary, sparsity)
    assert summary["tweaks/soft_neurons/modules"] == 31 and summary["tweaks/lrsi/tensors"] > 0
    assert summary["ghost/flops_train"] > 0 and summary["ghost/removed"] is False
    if superposer == "sup_tickets":
        assert summary["tickets/count"] == 2
        ultimate = trainer.callback("sup_tickets").ultimate_model()
        assert sum(isinstance(g, GhostPath) for g in ultimate.modules()) == 30, "every ticket had the 30 paths"


@needs_data
def test_mask_file_with_every_tweak(tmp_path):
    first = run(compose_cfg([*SMALL, "sparsifier=snip", "sparsity=0.9", "epochs=1"]), tmp_path / "snip")
    trainer, summary = fit(tmp_path / "file", [*SMALL, "sparsifier=mask_file", "sparsity=0.9", "epochs=1",
                                               f"sparsifier.path={first['run_dir']}/masks.pt"])
    check_ghosts_outside_the_mask(trainer, summary, 0.9)


#: every schedule changes in epochs 0-3 of 4: blend 0 -> 1 over epochs 0-2, alpha 1 -> 0 over 0-2 then
#: removal, smoothing until epoch 3, GradInit at the start
SCHEDULES = [*SMALL, "sparsifier=rigl", "sparsifier.delta_t=1", "sparsity=0.9", "epochs=4",
             "tweaks.soft_neurons.schedule=linear_blend", "tweaks.soft_neurons.end_epoch=2",
             "tweaks.ghost_skip.alpha.end=0", "tweaks.ghost_skip.alpha.end_epoch=2",
             "tweaks.ghost_skip.remove_at_end=true", "tweaks.label_smoothing.end_epoch=3"]


@needs_data
def test_annealed_tweaks_end_as_the_plain_relu_architecture(tmp_path):
    trainer, summary = fit(tmp_path, SCHEDULES)
    plain = build_model("resnet32", in_channels=1, num_classes=10, image_size=28)
    assert list(trainer.model.state_dict()) == list(plain.state_dict())
    assert summary["ghost/removed"] is True and summary["ghost/params"] == 0
    assert summary["tweaks/soft_neurons/final_activation"] == "relu"
    assert len(trainer.run.optimizer.param_groups) == 1 and len(trainer.run.scheduler.base_lrs) == 1
    masks = torch.load(tmp_path / "masks.pt", weights_only=False)
    assert list(masks["masks"]) == [n for n, _ in trainer.masking.params.items()]
    rows = RunDir(tmp_path).metrics()
    assert [r["ghost/alpha"] for r in rows] == [0.5, 0.0, 0.0, 0.0]
    assert [r["tweaks/soft_neurons/blend"] for r in rows] == [0.5, 1.0, 1.0, 1.0]
    assert [r["tweaks/label_smoothing/active"] for r in rows] == [True, True, True, False]
    x = torch.randn(2, 1, 28, 28)
    plain.load_state_dict(trainer.model.state_dict())
    assert torch.equal(plain.eval()(x), trainer.model.eval()(x)), "the final network is the plain ReLU ResNet-32"
    loaded, meta = sparse_exp.load(tmp_path)  # model.pt: rebuilt as the plain network it ended as
    assert meta["which"] == "final" and torch.equal(loaded(x), trainer.model(x))


@needs_data
@pytest.mark.parametrize("cut", [1, 3], ids=["mid-schedules", "after-removal"])
def test_resume_mid_schedule_is_bitwise(tmp_path, cut):
    full = RunDir(tmp_path / "full")
    run(compose_cfg(SCHEDULES), full.path)
    part = RunDir(tmp_path / "part")
    assert run(compose_cfg(SCHEDULES + [f"stop_after_epochs={cut}"]), part.path)["status"] == "stopped"
    assert run(compose_cfg(SCHEDULES), part.path)["status"] == "completed"
    assert_same_run(full, part)
    for key in ("ghost/flops_train", "tweaks/lrsi/scale_min", "tweaks/lrsi/scale_max", "flops/train"):
        assert full.summary()[key] == part.summary()[key], key


@needs_data
@pytest.mark.parametrize("scores", ["plain", "trained"])
def test_a_pruning_at_init_mask_is_the_methods_own_whatever_is_trained_on_it(tmp_path, scores):
    """SNIP scores the plain ReLU network by default (as the code's separate models): the mask with the
    ghost paths and soft neurons is bit-identical to the mask without them; ``scores_network=trained``
    scores the tweaked network, and the mask differs."""
    base = [o for o in SMALL if not o.startswith("tweaks")] + ["sparsifier=snip", "sparsity=0.95", "epochs=1"]
    plain, _ = fit(tmp_path / "plain", base)
    tweaked, summary = fit(tmp_path / "tweaked", base + [
        "tweaks=[ghost_skip,soft_neurons]", f"tweaks.ghost_skip.scores_network={scores}",
        f"tweaks.soft_neurons.scores_network={scores}"])
    same = all(torch.equal(plain.masking.masks[n], tweaked.masking.masks[n]) for n in plain.masking.names)
    assert same == (scores == "plain")
    assert summary["ghost/scores_network"] == scores
    assert summary["tweaks/soft_neurons/scores_network"] == ("relu" if scores == "plain" else "swish")
    assert sum(isinstance(m, torch.nn.ReLU) for m in tweaked.model.modules()) == 0, "trained with soft neurons"
    with pytest.raises(UserError, match=r"changed by ghost_skip, soft_neurons \(transform_model\)"):
        sparse_exp.load(tmp_path / "tweaked")  # the network the tweaks keep is not rebuilt from the config
