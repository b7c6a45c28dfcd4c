"""Sup-tickets options end to end (tiny Fashion-MNIST runs): every ablation key of the paper's
tables is a config value and does what it says."""

import pytest
import torch
from conftest import compose_cfg, needs_data

from sparse_exp.engine.loop import Trainer
from sparse_exp.run.run_dir import RunDir

pytestmark = pytest.mark.slow  # end-to-end training runs; still part of `make test`

BASE = ["sparsifier=rigl", "sparsifier.delta_t=4", "sparsity=0.9", "epochs=4", "superposer=sup_tickets",
        "superposer.phase_fraction=0.5", "superposer.cycle_epochs=1"]


def train(tmp_path, *extra):
    cfg = compose_cfg(BASE + list(extra))
    rd = RunDir(tmp_path / "run")
    rd.prepare(cfg)
    trainer = Trainer(cfg, rd)
    return trainer, trainer.fit()


@needs_data
def test_count_normal_phase_ticket(tmp_path):
    trainer, s = train(tmp_path, "superposer.count_normal_phase_ticket=true")
    assert s["tickets/count"] == 3 and "tickets/0/test/acc" in s
    assert [r["index"] for r in trainer.callback("sup_tickets").tickets] == [0, 1, 2]


@needs_data
def test_num_tickets_fixes_the_cycle_and_varies_the_phase(tmp_path):
    trainer, s = train(tmp_path, "superposer.num_tickets=3")
    b = trainer.callback("sup_tickets").budget
    assert (b.num_tickets, b.cycle_steps, b.start_step, b.total_steps) == (3, 16, 16, 64)
    assert s["tickets/count"] == 3 and s["steps"] == 64


@needs_data
def test_fge_takes_tickets_at_mid_cycle_lowest_lr(tmp_path):
    trainer, s = train(tmp_path, "superposer.lr_schedule=fge")
    assert [r["step"] for r in trainer.callback("sup_tickets").tickets] == [32 + 8, 48 + 8]


@needs_data
def test_layerwise_reprune_keeps_per_layer_counts(tmp_path):
    trainer, s = train(tmp_path, "superposer.reprune=layerwise")
    masks = trainer.callback("sup_tickets").ultimate_ticket_masks()
    assert {n: int(masks[n].sum()) for n in masks} == trainer.masking.target_counts


@needs_data
def test_dst_updates_can_be_switched_off_in_cycles(tmp_path):
    on, _ = train(tmp_path / "on")
    off, _ = train(tmp_path / "off", "superposer.dst_updates_in_cycles=false")
    # 64 steps, delta_t 4, RigL stops at 75% = 48: updates at 4..48 (12); the cyclic phase starts at 32
    assert on.sparsifier.updates == 12 and off.sparsifier.updates == 8


@needs_data
@pytest.mark.parametrize("averaging", ["cia", "caa", "cima"])
def test_averaging_methods_run_and_hit_the_target(tmp_path, averaging):
    trainer, s = train(tmp_path, f"superposer.averaging={averaging}")
    assert abs(s["sparsity/global"] - 0.9) <= 1e-3
    assert trainer.callback("sup_tickets").averager.method == averaging


@needs_data
def test_prune_running_average_feeds_the_pruned_average_forward(tmp_path):
    trainer, _ = train(tmp_path, "superposer.prune_running_average=true")
    sup = trainer.callback("sup_tickets")
    for name, mask in sup.ultimate_masks.items():
        assert torch.all(sup.averager.running[name][~mask] == 0)


@needs_data
def test_exploration_follows_the_base_growth(tmp_path):
    rigl, _ = train(tmp_path / "rigl")
    assert rigl.callback("sup_tickets").growth == "gradient"
    cfg = compose_cfg([o.replace("rigl", "set") for o in BASE])
    trainer = Trainer(cfg, RunDir(tmp_path / "set"))
    assert trainer.callback("sup_tickets").growth == "random", \
        "SET explores with random growth (the reference's SET did not)"
    cfg = compose_cfg(BASE[2:] + ["sparsifier=static"])
    assert Trainer(cfg, RunDir(tmp_path / "static")).callback("sup_tickets").growth == "gradient"


@needs_data
def test_ticket_eval_changes_what_is_measured_never_the_ultimate_ticket(tmp_path):
    runs = {m: train(tmp_path / m, f"superposer.ticket_eval={m}")[1] for m in ("val_test", "val", "none")}
    full, val, none = runs["val_test"], runs["val"], runs["none"]
    for s in (val, none):  # the same ultimate ticket and last individual model, bit for bit
        assert {k: s[k] for k in ("test/acc", "test/nll", "val/acc", "last/test/acc")} == \
            {k: full[k] for k in ("test/acc", "test/nll", "val/acc", "last/test/acc")}
    assert {"tickets/1/test/acc", "tickets/mean/test/acc", "diversity/kl"} <= set(full)
    assert "tickets/1/val/acc" in val and "tickets/1/test/acc" not in val and "diversity/kl" not in val
    assert val["tickets/mean/val/acc"] == full["tickets/mean/val/acc"]
    assert not any(k.startswith("tickets/1/") for k in none)
    for s in runs.values():  # the superposition alone is never more than superposition + evaluations
        assert 0 < s["superpose/seconds"] <= s["superpose/eval_seconds"]
    assert none["superpose/eval_seconds"] == none["superpose/seconds"]
