"""The Python API (``sparse_exp.sparsify``, docs/api.md): the example's loop equals the CLI's run bitwise, a bad
option is refused with the CLI's own line, a resume through ``state_dict`` equals the uninterrupted loop, LR ownership
is enforced, the masks hold after every ``step()`` at the exact sparsity."""

import importlib.util
import io

import pytest
import torch
from conftest import ROOT, needs_data
from torch import nn

import sparse_exp
from sparse_exp.config.compose import compose
from sparse_exp.config.errors import ConfigError, UserError
from sparse_exp.config.refusal import one_line, preflight_cli
from sparse_exp.run.run_dir import RunDir
from sparse_exp.train import run

STEPS_PER_EPOCH = 4


def load_example():
    spec = importlib.util.spec_from_file_location("own_loop", ROOT / "examples" / "own_loop.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def tiny_model() -> nn.Module:
    return nn.Sequential(nn.Conv2d(1, 8, 3), nn.ReLU(), nn.Conv2d(8, 8, 3), nn.ReLU(), nn.Flatten(),
                         nn.Linear(8 * 4 * 4, 32), nn.ReLU(), nn.Linear(32, 10))


def batches(epoch: int):
    g = torch.Generator().manual_seed(1000 + epoch)
    return [(torch.randn(16, 1, 8, 8, generator=g), torch.randint(0, 10, (16,), generator=g))
            for _ in range(STEPS_PER_EPOCH)]


def make(epochs=6, seed=0, **kw):
    torch.manual_seed(seed)
    model = tiny_model()
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=5e-4)
    kw.setdefault("sparsifier", "rigl")
    kw.setdefault("superposer", "none")
    kw.setdefault("overrides", ["sparsifier.delta_t=2"])
    sparse = sparse_exp.sparsify(model, opt, total_steps=epochs * STEPS_PER_EPOCH, steps_per_epoch=STEPS_PER_EPOCH,
                                 **kw)
    return model, opt, sparse


def train(model, opt, sparse, stop_at=None, each_step=None):
    """The loop from where ``sparse`` stands to the end (or global step ``stop_at``)."""
    for epoch in range(sparse.epoch, sparse.total_steps // STEPS_PER_EPOCH):
        for x, y in batches(epoch)[sparse.batch_in_epoch:]:
            if stop_at is not None and sparse.global_step == stop_at:
                return
            loss = sparse.loss(model(x), y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            sparse.step()
            if each_step is not None:
                each_step()


@needs_data
@pytest.mark.slow
def test_the_example_equals_the_cli_bitwise(tmp_path):
    """examples/own_loop.py (plain loop, sparsify) and ``python -m sparse_exp.train <its --print-cli overrides>``:
    the same final weights, the same reported masks, the same reported (ultimate ticket) test accuracy."""
    example = load_example()
    args = example.parse([])
    out = example.train(args)
    assert out["which"] == "ultimate"
    rd = RunDir(tmp_path / "cli")
    summary = run(compose(example.cli_overrides(args)), rd.path)
    assert summary["status"] == "completed"
    final = rd.load_checkpoint()["model"]
    ours = out["model"].state_dict()
    assert final.keys() == ours.keys()
    for key, value in final.items():
        assert torch.equal(value, ours[key]), key
    masks = torch.load(rd.masks_path, weights_only=True)["masks"]
    assert masks.keys() == out["masks"].keys()
    for key, value in masks.items():
        assert torch.equal(value, out["masks"][key].cpu().bool()), key
    assert out["test"]["test/acc"] == summary["test/acc"]
    assert out["test"]["test/nll"] == summary["test/nll"]


def test_the_examples_command_line_is_accepted(capsys):
    example = load_example()
    assert example.main(["--print-cli"]) == 0
    line = capsys.readouterr().out.strip()
    assert line.startswith("python -m sparse_exp.train ")
    assert preflight_cli(line.split()[3:]) == 0


@pytest.mark.parametrize("kw,cli", [
    ({"sparsity": 1.5}, ["sparsity=1.5"]),
    ({"sparsifier": "rigel"}, ["sparsifier=rigel"]),
    ({"overrides": ["sparsifier.delta_t=0"]}, ["sparsifier.delta_t=0"]),
    ({"tweaks": ["label_smoothing"], "tweaks__label_smoothing__alpha": 2.0},
     ["tweaks=[label_smoothing]", "tweaks.label_smoothing.alpha=2.0"]),
], ids=["range", "unknown-option", "group-check", "tweak-key"])
def test_a_bad_option_is_refused_with_the_cli_line(kw, cli, capsys):
    with pytest.raises(UserError) as exc:
        make(**{"overrides": [], **kw})
    assert preflight_cli(cli + ["superposer=none", "logger=none"]) == 2
    err = capsys.readouterr().err
    assert err == f"error: {one_line(str(exc.value))}\n"
    assert "\n" not in str(exc.value)


def test_what_the_api_cannot_do_is_refused_in_one_line():
    with pytest.raises(ConfigError, match=r"superposer='sup_tickets' is not allowed: owns the LR schedule"):
        make(superposer="sup_tickets", lr="user", overrides=["superposer.phase_fraction=0.5"])
    with pytest.raises(ConfigError, match=r"tweaks='\[ghost_skip\]' is not allowed: changes the network"):
        make(tweaks=["ghost_skip"])
    with pytest.raises(ConfigError, match=r"^epochs=3 is not allowed: is decided by the objects"):
        make(overrides=["epochs=3"])
    with pytest.raises(ConfigError, match=r"^report='best_val' is not allowed"):
        make(overrides=["report=best_val"])
    with pytest.raises(ConfigError, match=r"^superposer.ticket_eval='val' is not allowed"):
        make(superposer="sup_tickets", overrides=["superposer.phase_fraction=0.5", "superposer.ticket_eval=val"])
    with pytest.raises(ConfigError, match=r"^steps_per_epoch=4 is not allowed: must divide total_steps=10"):
        sparse_exp.sparsify(tiny_model(), torch.optim.SGD(tiny_model().parameters(), lr=0.1), 10, steps_per_epoch=4)
    with pytest.raises(UserError, match=r"initial mask is scored on"):  # pruning at init needs data=
        make(sparsifier="snip", overrides=[])


def test_lr_user_leaves_the_lr_to_the_callers_scheduler():
    model, opt, sparse = make(lr="user", overrides=["sparsifier.delta_t=2"])
    assert sparse.state.scheduler is None
    assert opt.param_groups[0]["lr"] == 0.1  # sparsify() did not set it either
    mine = torch.optim.lr_scheduler.StepLR(opt, step_size=5, gamma=0.5)
    train(model, opt, sparse, each_step=mine.step)
    assert opt.param_groups[0]["lr"] == 0.1 * 0.5 ** (sparse.total_steps // 5)
    model, opt, sparse = make(overrides=["sparsifier.delta_t=2"])  # lr="config": the config's step schedule
    train(model, opt, sparse)
    assert opt.param_groups[0]["lr"] == pytest.approx(0.1 * 0.1 ** 2)  # x0.1 at 1/2 and 3/4 of the steps


def test_methods_that_read_data_work_with_data_given():
    """GradInit (LRsI) and SNIP's scores read training batches: a plain DataLoader as ``data.train`` serves them."""
    from types import SimpleNamespace

    from torch.utils.data import DataLoader, TensorDataset

    g = torch.Generator().manual_seed(0)
    loader = DataLoader(TensorDataset(torch.randn(64, 1, 8, 8, generator=g), torch.randint(0, 10, (64,), generator=g)),
                        batch_size=16)
    _, _, sparse = make(sparsifier="static", tweaks=["lrsi"], overrides=["tweaks.lrsi.iterations=2"],
                        data=SimpleNamespace(train=loader))
    assert sparse.callbacks.callbacks[0].done
    _, _, sparse = make(sparsifier="snip", overrides=[], data=SimpleNamespace(train=loader))
    assert sum(sparse.masking.counts().values()) == sum(sparse.state.target_counts().values())  # global, exact


def test_masks_hold_after_every_step_at_the_exact_sparsity():
    model, opt, sparse = make(tweaks=["label_smoothing"])
    m = sparse.masking
    target = sparse.state.target_counts()
    updates = []

    def check():
        m.check_invariants(opt)  # masked weights and their momentum are zero
        assert {n: int(m.masks[n].sum()) for n in m.names} == target
        for name in m.names:
            assert not bool(m.params[name][m.masks[name] == 0].any()), name
        updates.append(m.masks[m.names[1]].clone())

    train(model, opt, sparse, each_step=check)
    assert len(updates) == sparse.total_steps
    assert any(not torch.equal(a, b) for a, b in zip(updates, updates[1:])), "RigL never changed a mask"
    assert sparse.finalize() is model and sparse.reported == "final"
    assert 1 - sum(target.values()) / m.total == pytest.approx(0.9, abs=1 / m.total)


def test_resume_through_state_dict_equals_the_uninterrupted_loop():
    """RigL + Sup-tickets + label smoothing: stopped mid-epoch inside the cyclic phase, saved with torch.save,
    loaded into a fresh sparsify() of the same config, trained on: the same weights, masks, LR and ultimate ticket."""
    kw = dict(superposer="sup_tickets", tweaks=["label_smoothing"],
              overrides=["sparsifier.delta_t=2", "superposer.phase_fraction=0.5"])
    model_a, opt_a, a = make(**kw)
    train(model_a, opt_a, a)
    ultimate_a = a.finalize()

    model_b, opt_b, b = make(**kw)
    train(model_b, opt_b, b, stop_at=18)  # epoch 5 of 6, batch 3 of 4: the second cycle
    buf = io.BytesIO()
    torch.save(b.state_dict(), buf)
    buf.seek(0)
    saved = torch.load(buf, weights_only=False)
    model_c, opt_c, c = make(seed=1, **kw)  # another init: everything must come from the saved state
    c.load_state_dict(saved)
    assert (c.epoch, c.batch_in_epoch) == (4, 2)
    train(model_c, opt_c, c)
    ultimate_c = c.finalize()
    assert c.reported == a.reported == "ultimate"
    for (name, pa), pc in zip(model_a.state_dict().items(), model_c.state_dict().values()):
        assert torch.equal(pa, pc), name
    for name, pa in ultimate_a.state_dict().items():
        assert torch.equal(pa, ultimate_c.state_dict()[name]), name
    for name in a.masking.names:
        assert torch.equal(a.masking.masks[name], c.masking.masks[name]), name
        assert torch.equal(a.reported_masks[name], c.reported_masks[name]), name
    assert opt_a.param_groups[0]["lr"] == opt_c.param_groups[0]["lr"]
    assert len(a.callbacks.state_dict()["sup_tickets"]["tickets"]) == 3
