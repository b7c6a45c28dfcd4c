"""Contract over every sparsifier and superposer in the registries: each one runs end to end
through the real entrypoint code on real Fashion-MNIST, keeps the invariants at every step and
ends at the target sparsity."""

import math

import pytest
from conftest import compose_cfg, needs_data

from sparse_exp.sparse.sparsifiers import SPARSIFIERS
from sparse_exp.train import run

pytestmark = pytest.mark.slow  # end-to-end training runs; still part of `make test`

#: make schedules fit in a 2-epoch run of 16 steps per epoch
FAST = {
    "set": ["sparsifier.delta_t=4"],
    "rigl": ["sparsifier.delta_t=4"],
    "granet": ["sparsifier.delta_t=4"],
    "gmp": ["sparsifier.delta_t=4"],
    "lth": ["sparsifier.rounds=2", "sparsifier.round_epochs=1"],
}
EXTRA = {"mask_file": None}  # needs a mask from an earlier run: tests/test_mask_file.py

SPARSE_METHODS = sorted(n for n in SPARSIFIERS if n != "dense" and n not in EXTRA)


@needs_data
@pytest.mark.parametrize("sparsity", [0.8, 0.9, 0.95])
@pytest.mark.parametrize("name", SPARSE_METHODS)
def test_sparsifier_reaches_target_sparsity(tmp_path, name, sparsity):
    cfg = compose_cfg([f"sparsifier={name}", f"sparsity={sparsity}", "epochs=2", "check_invariants=true",
                       *FAST.get(name, [])])
    summary = run(cfg, tmp_path / "run")
    assert summary["status"] == "completed"
    assert abs(summary["sparsity/global"] - sparsity) <= 1e-3
    assert summary["sparsifier"] == name
    assert 0 < summary["itop_rate"] <= 1
    assert math.isfinite(summary["test/nll"]) and 0 <= summary["test/acc"] <= 100


@needs_data
def test_dense_has_no_zeros(tmp_path):
    summary = run(compose_cfg(["sparsifier=dense", "sparsity=0", "epochs=1"]), tmp_path / "run")
    assert summary["sparsity/global"] == 0.0 and summary["itop_rate"] == 1.0
    assert summary["params/nonzero"] == summary["params/prunable"]


@needs_data
@pytest.mark.parametrize("name", SPARSE_METHODS)
def test_sup_tickets_composes_with_every_sparsifier(tmp_path, name):
    cfg = compose_cfg([f"sparsifier={name}", "sparsity=0.9", "epochs=4", "superposer=sup_tickets",
                       "superposer.phase_fraction=0.5", "superposer.cycle_epochs=1", "check_invariants=true",
                       *FAST.get(name, [])])
    summary = run(cfg, tmp_path / "run")
    assert summary["tickets/count"] == 2
    assert abs(summary["sparsity/global"] - 0.9) <= 1e-3, "the ultimate ticket is at the target sparsity"
    assert abs(summary["last/sparsity/global"] - 0.9) <= 1e-3
    for key in ("test/acc", "test/nll", "test/ece", "last/test/acc", "tickets/1/test/acc", "tickets/2/val/acc",
                "diversity/disagreement", "diversity/kl", "superpose/epoch_fraction"):
        assert key in summary, key
