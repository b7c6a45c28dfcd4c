"""Every sparsifier end to end on CIFAR-shaped input (a small generated CIFAR-10 on disk), and the
Sup-tickets BN strategies on a network with batch normalisation."""

import copy

import pytest
import torch
from conftest import compose_cfg
from test_sparsifier_contract import FAST
from torch.optim.swa_utils import update_bn

from sparse_exp.engine.loop import Trainer
from sparse_exp.run.run_dir import RunDir
from sparse_exp.sparse.sparsifiers import SPARSIFIERS
from sparse_exp.superposers.tickets import BN_PASS_EPOCH
from sparse_exp.train import run

pytestmark = pytest.mark.slow  # end-to-end training runs; still part of `make test`


def cifar_overrides(root, *extra):
    # 160 - 32 validation = 128 training images = 8 steps of 16 per epoch
    return ["dataset=cifar10", f"dataset.root={root}", "dataset.val_size=32", "dataset.subset_test=64",
            "batch_size=16", "eval_batch_size=64", *extra]


@pytest.mark.parametrize("name", sorted(n for n in SPARSIFIERS if n != "mask_file"))
def test_every_sparsifier_on_cifar_shaped_input(tmp_path, fake_cifar_root, name):
    sparsity = 0 if name == "dense" else 0.9
    fast = [o.replace("delta_t=4", "delta_t=2") for o in FAST.get(name, [])]
    cfg = compose_cfg(cifar_overrides(fake_cifar_root, f"sparsifier={name}", f"sparsity={sparsity}", "epochs=2",
                                      "model=lenet5", "check_invariants=true", *fast))
    summary = run(cfg, tmp_path / "run")
    assert summary["status"] == "completed" and summary["dataset"] == "cifar10"
    assert abs(summary["sparsity/global"] - sparsity) <= 1e-3
    assert 0 < summary["flops/test"] <= 1 and 0 < summary["flops/train"] <= 1


@pytest.mark.parametrize("bn", ["average", "recompute"])
def test_sup_tickets_bn_strategies(tmp_path, fake_cifar_root, bn):
    cfg = compose_cfg(cifar_overrides(fake_cifar_root, "model=resnet32", "sparsifier=rigl", "sparsifier.delta_t=2",
                                      "sparsity=0.8", "epochs=4", "superposer=sup_tickets",
                                      "superposer.phase_fraction=0.5", "superposer.cycle_epochs=1",
                                      f"superposer.bn={bn}"))
    rd = RunDir(tmp_path / "run")
    rd.prepare(cfg)
    trainer = Trainer(cfg, rd)
    summary = trainer.fit()
    sup = trainer.callback("sup_tickets")
    assert summary["tickets/count"] == 2
    ultimate = sup.ultimate_model()
    averaged = sup.averager.averaged()
    name = "bn1.running_mean" if "bn1.running_mean" in averaged else next(k for k in averaged if "running_mean" in k)
    got = ultimate.state_dict()[name]
    if bn == "average":
        assert torch.equal(got, averaged[name]), "BN statistics are the tickets' average"
    else:
        # by hand: the ultimate weights, BN statistics from one pass over the training data
        ref = copy.deepcopy(ultimate)
        update_bn(trainer.data.train.iterate(BN_PASS_EPOCH), ref)
        assert torch.allclose(got, ref.state_dict()[name])
        assert not torch.allclose(got, averaged[name]), "recomputed statistics differ from the average"
