"""``sparse_exp.training.lr_schedules.remove_param_group``: a group leaves the optimizer (with its state) and
the LR scheduler mid-run; the other groups' LRs, the optimizer's and the scheduler's checkpoints are those
of a run that never had it (``tweaks.ghost_skip.remove_at_end`` relies on it)."""

import copy

import pytest
import torch

from sparse_exp.training.lr_schedules import remove_param_group

LAMBDAS = [lambda k: 0.9 ** k, lambda k: 1.0 / (k + 1), lambda k: 0.5 if k >= 3 else 1.0]


def setup(groups=(0, 1, 2), lr=0.1):
    """Three 2x2 weights, one group each (``groups`` picks which), SGD with momentum, one lambda per group."""
    torch.manual_seed(0)
    params = [torch.nn.Parameter(torch.randn(2, 2)) for _ in range(3)]
    opt = torch.optim.SGD([{"params": [params[i]], "name": f"g{i}", "lr": lr * (i + 1)} for i in groups],
                          lr=lr, momentum=0.9)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, [LAMBDAS[i] for i in groups])
    return params, opt, sched


def step(params, opt, sched, k):
    opt.zero_grad()
    sum((p * (k + 1)).square().sum() for p in params).backward()
    opt.step()
    sched.step()


def old_removal(opt, sched, index):
    """What ghost_skip did before the helper (private attribute edits), kept as the reference."""
    for p in opt.param_groups[index]["params"]:
        opt.state.pop(p, None)
    del opt.param_groups[index]
    for attr in ("base_lrs", "lr_lambdas", "_last_lr"):
        del getattr(sched, attr)[index]


@pytest.mark.parametrize("index", [0, 1, 2, -1])
def test_remaining_groups_follow_their_trajectory_bitwise(index):
    params, opt, sched = setup()
    kept = [i for i in range(3) if i != index % 3]
    ref_params, ref_opt, ref_sched = setup(kept)
    for k in range(4):
        step(params, opt, sched, k)
        step([ref_params[i] for i in kept], ref_opt, ref_sched, k)
    removed = params[index]
    remove_param_group(opt, sched, index)
    assert [g["name"] for g in opt.param_groups] == [f"g{i}" for i in kept]
    assert removed not in opt.state and len(opt.state) == 2
    assert sched.get_last_lr() == ref_sched.get_last_lr()
    assert sched.state_dict() == ref_sched.state_dict()
    for k in range(4, 9):
        step([params[i] for i in kept], opt, sched, k)
        step([ref_params[i] for i in kept], ref_opt, ref_sched, k)
        assert [g["lr"] for g in opt.param_groups] == [g["lr"] for g in ref_opt.param_groups]
        assert all(torch.equal(params[i], ref_params[i]) for i in kept)
    assert sched.state_dict() == ref_sched.state_dict()
    a, b = opt.state_dict(), ref_opt.state_dict()
    assert a["param_groups"] == b["param_groups"]
    assert all(torch.equal(a["state"][i]["momentum_buffer"], b["state"][i]["momentum_buffer"]) for i in a["state"])


def test_same_result_as_the_former_private_edit():
    params, opt, sched = setup()
    old_params, old_opt, old_sched = setup()
    for k in range(3):
        step(params, opt, sched, k)
        step(old_params, old_opt, old_sched, k)
    remove_param_group(opt, sched, 1)
    old_removal(old_opt, old_sched, 1)
    assert sched.state_dict() == old_sched.state_dict()
    assert sched.lr_lambdas == old_sched.lr_lambdas
    for k in range(3, 7):
        step([params[0], params[2]], opt, sched, k)
        step([old_params[0], old_params[2]], old_opt, old_sched, k)
        assert [g["lr"] for g in opt.param_groups] == [g["lr"] for g in old_opt.param_groups]


def test_a_checkpoint_after_removal_resumes_bitwise():
    """Resume: a fresh run removes the group first (as GhostSkip.load_state_dict does), then loads the states."""
    params, opt, sched = setup()
    for k in range(3):
        step(params, opt, sched, k)
    remove_param_group(opt, sched, 1)
    step([params[0], params[2]], opt, sched, 3)
    # a deep copy, as torch.save / torch.load make (state_dict() shares the momentum buffers)
    ckpt = copy.deepcopy({"opt": opt.state_dict(), "sched": sched.state_dict(), "params": list(params)})
    new_params, new_opt, new_sched = setup()
    remove_param_group(new_opt, new_sched, 1)
    with torch.no_grad():
        for p, q in zip(new_params, ckpt["params"]):
            p.copy_(q)
    new_opt.load_state_dict(ckpt["opt"])
    new_sched.load_state_dict(ckpt["sched"])
    for k in range(4, 8):
        step([params[0], params[2]], opt, sched, k)
        step([new_params[0], new_params[2]], new_opt, new_sched, k)
        assert [g["lr"] for g in opt.param_groups] == [g["lr"] for g in new_opt.param_groups]
        assert all(torch.equal(params[i], new_params[i]) for i in (0, 2))


def test_without_a_scheduler_and_a_bad_index():
    params, opt, sched = setup()
    step(params, opt, sched, 0)
    remove_param_group(opt, None, 0)
    assert [g["name"] for g in opt.param_groups] == ["g1", "g2"] and params[0] not in opt.state
    with pytest.raises(IndexError, match="no group 2"):
        remove_param_group(opt, None, 2)
