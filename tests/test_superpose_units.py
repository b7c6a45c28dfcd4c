"""Sup-tickets building blocks against hand-computed values (Yin et al. UAI 2022)."""

import pytest
import torch

from sparse_exp.superposers.averaging import TicketAverager, reprune
from sparse_exp.superposers.cyclic_lr import collect_fraction, cyclic_lr, make_budget
from sparse_exp.superposers.diversity import pairwise_diversity


# ----------------------------------------------------------------------------- Eq. 3
@pytest.mark.parametrize("i,expected", [
    (1, 0.001 + 0.008 * 1 / 10),   # t = 0.1: (1 - 0.2) * 0.001 + 0.2 * 0.005 = 0.0018
    (5, 0.005),                    # t = 0.5: peak
    (8, 0.0026),                   # t = 0.8: (2 - 1.6) * 0.005 + (1.6 - 1) * 0.001
    (10, 0.001),                   # t = 1: cycle end, lowest LR (ticket)
    (11, 0.0018),                  # next cycle restarts
])
def test_triangle_lr_eq3(i, expected):
    assert cyclic_lr("triangle", i, 10, 0.001, 0.005) == pytest.approx(expected)


def test_fge_and_swa_schedules_share_the_range():
    c = 10
    fge = [cyclic_lr("fge", i, c, 0.001, 0.005) for i in range(1, c + 1)]
    swa = [cyclic_lr("swa", i, c, 0.001, 0.005) for i in range(1, c + 1)]
    assert min(fge) == pytest.approx(0.001) and fge[4] == pytest.approx(0.001)  # FGE lowest at mid-cycle
    assert fge[-1] == pytest.approx(0.005)
    assert swa[-1] == pytest.approx(0.001) and swa[0] == pytest.approx(0.005 - 0.0004)
    assert collect_fraction("fge") == 0.5 and collect_fraction("triangle") == 1.0


def test_transition_from_normal_phase_does_not_jump():
    # paper protocol: step schedule ends at 0.1 * 0.1 * 0.1 = 0.001 = lr_low; Eq. 3 starts there
    first = cyclic_lr("triangle", 1, 1000, 0.001, 0.005)
    assert abs(first - 0.001) < 1e-5


# ----------------------------------------------------------------------------- budgets
@pytest.mark.parametrize("epochs,cycle,fraction,tickets,expected_tickets,normal_epochs", [
    (250, 8, 0.1, None, 3, 226),   # reference CIFAR: 226 normal + 3 x 8
    (100, 2, 0.08, None, 4, 92),   # reference ImageNet: 92 + 4 x 2
    (250, 2, 0.1, None, 12, 226),  # Table 5, C = 2
    (250, 12, 0.1, None, 2, 226),  # Table 5, C = 12
    (250, 8, 0.1, 7, 7, 194),      # Fig. 4: 7 tickets x 8 epochs
    (30, 1, 0.1, None, 3, 27),     # our Fashion-MNIST default
])
def test_budget(epochs, cycle, fraction, tickets, expected_tickets, normal_epochs):
    spe = 10
    b = make_budget(epochs, spe, cycle, fraction, tickets)
    assert b.num_tickets == expected_tickets
    assert b.start_step == normal_epochs * spe
    assert b.total_steps == epochs * spe, "the total budget is the base run's"
    assert b.ticket_steps() == [b.start_step + (k + 1) * cycle * spe for k in range(expected_tickets)]
    assert b.ticket_steps()[-1] == b.total_steps


def test_budget_refuses_impossible():
    with pytest.raises(ValueError, match="no ticket fits"):
        make_budget(20, 10, 8, 0.1, None)
    with pytest.raises(ValueError, match="no normal phase"):
        make_budget(20, 10, 8, 0.1, 3)


# ----------------------------------------------------------------------------- averaging
def tickets(m=4, seed=0):
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(m):
        mask = (torch.rand(6, 5, generator=g) < 0.4).float()
        w = torch.randn(6, 5, generator=g) * mask
        state = {"w": w, "b": torch.randn(5, generator=g), "bn.running_mean": torch.randn(5, generator=g),
                 "bn.num_batches_tracked": torch.tensor(len(out) + 1)}
        out.append((state, {"w": mask}))
    return out


def test_cia_running_mean_equals_batch_mean():
    ts = tickets(5)
    avg = TicketAverager("cia")
    for state, mask in ts:
        avg.add(state, mask)
    res = avg.averaged()
    for key in ("w", "b", "bn.running_mean"):
        assert torch.allclose(res[key], torch.stack([s[key] for s, _ in ts]).mean(0), atol=1e-6)
    assert res["bn.num_batches_tracked"] == 5  # integer buffers: latest ticket
    assert len(avg.running) == 4, "one extra copy of the state, not M"


def test_caa_divides_by_activation_counts():
    ts = tickets(4)
    avg = TicketAverager("caa")
    for state, mask in ts:
        avg.add(state, mask)
    res = avg.averaged()
    total = torch.stack([s["w"] for s, _ in ts]).sum(0)
    n = torch.stack([m["w"] for _, m in ts]).sum(0)
    expected = torch.where(n > 0, total / n.clamp(min=1), torch.zeros_like(total))
    assert torch.allclose(res["w"], expected, atol=1e-6)
    assert torch.allclose(res["b"], torch.stack([s["b"] for s, _ in ts]).mean(0), atol=1e-6)


def test_cima_moving_average():
    ts = tickets(3)
    avg = TicketAverager("cima", beta=0.8)
    for state, mask in ts:
        avg.add(state, mask)
    w = [s["w"] for s, _ in ts]
    expected = 0.8 * (0.8 * w[0] + 0.2 * w[1]) + 0.2 * w[2]
    assert torch.allclose(avg.averaged()["w"], expected, atol=1e-6)


def test_bn_statistics_are_averaged():
    ts = tickets(3)
    avg = TicketAverager("cia")
    for state, mask in ts:
        avg.add(state, mask)
    assert torch.allclose(avg.averaged()["bn.running_mean"],
                          sum(s["bn.running_mean"] for s, _ in ts) / 3, atol=1e-6)


def test_state_round_trip():
    ts = tickets(3)
    a = TicketAverager("caa")
    for state, mask in ts[:2]:
        a.add(state, mask)
    b = TicketAverager("caa")
    b.load_state_dict(a.state_dict())
    a.add(*ts[2])
    b.add(*ts[2])
    assert all(torch.equal(a.averaged()[k], b.averaged()[k]) for k in a.running)


# ----------------------------------------------------------------------------- re-pruning
def test_reprune_exact_global_and_layerwise():
    g = torch.Generator().manual_seed(0)
    w = {"a": torch.randn(10, 10, generator=g), "b": torch.randn(20, 5, generator=g) * 3}
    counts = {"a": 30, "b": 10}
    glob = reprune(w, counts, "global")
    assert sum(int(m.sum()) for m in glob.values()) == 40
    allv = torch.cat([w["a"].abs().flatten(), w["b"].abs().flatten()])
    thr = allv.sort(descending=True).values[39]
    assert all(torch.all(w[n].abs()[glob[n]] >= thr) for n in w)
    lw = reprune(w, counts, "layerwise")
    assert {n: int(m.sum()) for n, m in lw.items()} == counts
    assert torch.all(w["a"].abs()[lw["a"]].min() >= w["a"].abs()[~lw["a"]].max())


# ----------------------------------------------------------------------------- diversity
def test_diversity_by_hand():
    p1 = torch.tensor([[0.9, 0.1], [0.2, 0.8]])
    p2 = torch.tensor([[0.4, 0.6], [0.3, 0.7]])
    out = pairwise_diversity([p1, p2])
    assert out["diversity/disagreement"] == pytest.approx(0.5)
    kl12 = (p1 * (p1 / p2).log()).sum(1).mean()
    kl21 = (p2 * (p2 / p1).log()).sum(1).mean()
    assert out["diversity/kl"] == pytest.approx(((kl12 + kl21) / 2).item(), rel=1e-6)
