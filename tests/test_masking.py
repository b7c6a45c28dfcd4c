"""The masking core: exact masks, fused in-place application, invariants, checkpointing."""

import pytest
import torch
from torch import nn

from sparse_exp.sparse.distributions import layer_counts
from sparse_exp.sparse.masking import InvariantError, Masking, exact_random_mask, masks_from_counts, topk_mask


def tiny_net():
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 6 * 6, 10))


def sparse_setup(density=0.3, opt="sgd"):
    net = tiny_net()
    m = Masking(net)
    counts = layer_counts(m.shapes, density, "erk")
    m.set_masks_(masks_from_counts(m.shapes, counts, torch.Generator().manual_seed(0)))
    m.target_counts = counts
    if opt == "sgd":
        o = torch.optim.SGD(net.parameters(), lr=0.1, momentum=0.9, weight_decay=5e-4)
    else:
        o = torch.optim.Adam(net.parameters(), lr=1e-2)
    m.apply_(o)
    return net, m, o


def train_steps(net, m, o, n=5):
    for _ in range(n):
        x, y = torch.randn(8, 1, 8, 8), torch.randint(0, 10, (8,))
        o.zero_grad()
        nn.functional.cross_entropy(net(x), y).backward()
        o.step()
        m.apply_(o)


def test_prunable_layers_are_conv_and_linear_weights_only():
    m = Masking(tiny_net())
    assert m.names == ["0.weight", "4.weight"]
    assert m.first_layer == "0.weight" and m.last_layer == "4.weight"


def test_exact_random_mask_count():
    g = torch.Generator().manual_seed(1)
    for k in (0, 1, 17, 100):
        assert int(exact_random_mask(torch.Size([10, 10]), k, g).sum()) == k
    with pytest.raises(ValueError):
        exact_random_mask(torch.Size([3]), 4, g)


def test_topk_mask_selects_largest():
    s = torch.tensor([[0.1, 5.0], [3.0, -1.0]])
    assert topk_mask(s, 2).tolist() == [[False, True], [True, False]]


@pytest.mark.parametrize("opt", ["sgd", "adam"])
def test_invariants_hold_after_training_steps(opt):
    net, m, o = sparse_setup(opt=opt)
    train_steps(net, m, o)
    m.check_invariants(o)
    assert sum(m.counts().values()) == sum(m.target_counts.values())
    for name in m.names:
        off = m.masks[name] == 0
        assert torch.all(m.params[name][off] == 0)
        for buf in o.state[m.params[name]].values():
            if torch.is_tensor(buf) and buf.shape == off.shape:
                assert torch.all(buf[off] == 0)


def test_masks_updated_in_place_never_replaced():
    net, m, o = sparse_setup()
    ptrs = {n: m.masks[n].data_ptr() for n in m.names}
    ids = {n: id(m.masks[n]) for n in m.names}
    m.set_masks_({n: torch.ones_like(m.masks[n], dtype=torch.bool) for n in m.names})
    assert {n: m.masks[n].data_ptr() for n in m.names} == ptrs
    assert {n: id(m.masks[n]) for n in m.names} == ids
    assert all(m.masks[n].dtype == m.params[n].dtype for n in m.names)


def test_invariant_violation_is_detected():
    net, m, o = sparse_setup()
    train_steps(net, m, o, 1)
    name = m.names[0]
    off = (m.masks[name] == 0).nonzero()[0]
    with torch.no_grad():
        m.params[name][tuple(off)] = 1.0
    with pytest.raises(InvariantError, match="off the mask"):
        m.check_invariants(o)
    m.apply_(o)
    m.check_invariants(o)
    m.target_counts[name] += 1
    with pytest.raises(InvariantError, match="expected"):
        m.check_invariants(o)


def test_state_dict_round_trip():
    net, m, o = sparse_setup()
    state = m.state_dict()
    net2 = tiny_net()
    m2 = Masking(net2)
    m2.load_state_dict(state)
    for n in m.names:
        assert torch.equal(m.masks[n], m2.masks[n])
    assert m2.target_counts == m.target_counts


def test_dense_masking_is_noop():
    net = tiny_net()
    m = Masking(net, enabled=False)
    before = [p.clone() for p in net.parameters()]
    m.apply_()
    assert all(torch.equal(a, b) for a, b in zip(before, net.parameters()))
