"""Lottery tickets: IMP rounds prune to d^(r/R) globally and rewind the survivors exactly."""

import pytest
import torch
from omegaconf import OmegaConf
from torch import nn

from sparse_exp.engine.context import RunState
from sparse_exp.sparse.masking import Masking
from sparse_exp.sparse.sparsifiers import build_sparsifier

DIST = OmegaConf.create({"name": "erk", "erk_power_scale": 1.0, "dense_first_layer": False, "dense_last_layer": False})


def setup(rewind_epoch=0, rounds=3, round_epochs=2, sparsity=0.9):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(10, 30), nn.BatchNorm1d(30), nn.ReLU(), nn.Linear(30, 4))
    masking = Masking(model)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    ctx = RunState.for_model(model, masking, opt, sparsity=sparsity, distribution=DIST,
                        total_steps=100, steps_per_epoch=5, seed=0, device=torch.device("cpu"))
    cfg = OmegaConf.create({"name": "lth", "rounds": rounds, "round_epochs": round_epochs,
                            "rewind_epoch": rewind_epoch})
    sp = build_sparsifier(cfg, ctx)
    sp.init_masks()
    return model, masking, opt, sp


def train_epoch(model, masking, opt, gen):
    for _ in range(5):
        x, y = torch.randn(16, 10, generator=gen), torch.randint(0, 4, (16,), generator=gen)
        opt.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        opt.step()
        masking.apply_(opt)


@pytest.mark.parametrize("rewind_epoch", [0, 1])
def test_imp_rounds_prune_and_rewind(rewind_epoch):
    model, m, opt, sp = setup(rewind_epoch)
    assert sp.lr_phases() == [("round1", 2), ("round2", 2), ("round3", 2)], "3 IMP rounds of 2 epochs before the ticket"
    assert m.global_density() == 1.0, "IMP starts dense"
    init = {k: v.clone() for k, v in model.state_dict().items()}
    gen = torch.Generator().manual_seed(0)
    saved = None
    for epoch in range(1, 7):
        train_epoch(model, m, opt, gen)
        before = {k: v.clone() for k, v in model.state_dict().items()}
        changed = sp.on_epoch_end(epoch)
        if epoch == rewind_epoch:
            saved = before
        assert changed == (epoch % 2 == 0)
        if changed:
            r = epoch // 2
            assert sum(m.counts().values()) == round(0.1 ** (r / 3) * m.total)
            reference = init if rewind_epoch == 0 else saved
            for name in m.names:
                mask = m.masks[name].bool()
                assert torch.equal(model.state_dict()[name][mask], reference[name][mask]), "survivors rewound"
                assert torch.all(model.state_dict()[name][~mask] == 0)
            assert torch.equal(model.state_dict()["1.running_mean"], reference["1.running_mean"])
            assert not opt.state, "optimizer state restarts each round"
            m.check_invariants(opt)
    assert sp.round == 3
    assert sum(m.counts().values()) == round(0.1 * m.total)
    assert not sp.on_epoch_end(8)


def test_pruning_is_global_magnitude_of_trained_weights():
    model, m, opt, sp = setup(rounds=1, round_epochs=1, sparsity=0.5)
    gen = torch.Generator().manual_seed(0)
    train_epoch(model, m, opt, gen)
    trained = torch.cat([m.params[n].detach().abs().flatten() for n in m.names])
    k = round(0.5 * m.total)
    threshold = trained.sort(descending=True).values[k - 1]
    # remember which positions were largest before rewinding
    largest = {n: m.params[n].detach().abs() >= threshold for n in m.names}
    sp.on_epoch_end(1)
    for n in m.names:
        assert torch.equal(m.masks[n].bool(), largest[n])


def test_state_round_trip_resumes_in_the_right_round():
    model, m, opt, sp = setup()
    gen = torch.Generator().manual_seed(0)
    for epoch in (1, 2, 3):
        train_epoch(model, m, opt, gen)
        sp.on_epoch_end(epoch)
    state = sp.state_dict()
    _, _, _, sp2 = setup()
    sp2.load_state_dict(state)
    assert sp2.round == 1 and sp2.rewind_state is not None
