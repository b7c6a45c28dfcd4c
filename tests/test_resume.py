"""A run interrupted after epoch k and resumed ends exactly like the uninterrupted run (CPU, bitwise)."""

import json

import pytest
import torch

from conftest import compose_cfg, needs_data
from sparse_exp.rundir import RunDir
from sparse_exp.train import run

VOLATILE = ("time/epoch_s",)


def metrics(rd):
    return [{k: v for k, v in row.items() if k not in VOLATILE} for row in rd.metrics()]


def finished_state(rd):
    return rd.load_checkpoint()


def assert_same_run(a: RunDir, b: RunDir):
    sa, sb = finished_state(a), finished_state(b)
    for key, value in sa["model"].items():
        assert torch.equal(value, sb["model"][key]), key
    for key, value in sa["masking"]["masks"].items():
        assert torch.equal(value, sb["masking"]["masks"][key]), key
    assert metrics(a) == metrics(b)
    ja, jb = a.summary(), b.summary()
    for key in ja:
        if key.startswith(("test/", "val/", "last/", "tickets/", "sparsity/", "diversity/", "itop")):
            assert ja[key] == jb[key], key


@needs_data
@pytest.mark.parametrize("overrides", [
    ["sparsifier=rigl", "sparsifier.delta_t=10", "epochs=3"],
    ["sparsifier=set", "sparsifier.delta_t=10", "epochs=3", "model=lenet_300_100", "optimizer=adam"],
    # Sup-tickets: 4 normal epochs, then two 2-epoch cycles; interrupted after epoch 5 = mid-cycle
    ["sparsifier=rigl", "sparsifier.delta_t=10", "epochs=8", "superposer=sup_tickets",
     "superposer.phase_fraction=0.5", "superposer.cycle_epochs=2"],
], ids=["rigl", "set-adam", "sup_tickets-mid-cycle"])
def test_resume_equals_uninterrupted(tmp_path, overrides):
    full = RunDir(tmp_path / "full")
    run(compose_cfg(overrides), full.path)
    cut_epoch = 5 if "superposer=sup_tickets" in overrides else 1
    part = RunDir(tmp_path / "part")
    out = run(compose_cfg(overrides + [f"stop_after_epochs={cut_epoch}"]), part.path)
    assert out["status"] == "stopped" and part.summary()["status"] == "stopped"
    assert len(part.metrics()) == cut_epoch
    summary = run(compose_cfg(overrides), part.path)
    assert summary["status"] == "completed"
    assert_same_run(full, part)
    epochs = [row["epoch"] for row in part.metrics()]
    assert epochs == list(range(1, len(epochs) + 1)), "the epoch counter continued, it did not start over"
