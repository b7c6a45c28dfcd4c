"""Runs that go wrong are named, never counted: a diverged run ends ``failed`` with the epoch and step and
keeps its last good checkpoint; ``make tables`` counts neither it nor a completed run whose result is not a
finite number; a run killed while writing leaves a temporary file that the next run of it removes."""

import json
import math
import os
import subprocess
import sys

import pytest
from conftest import ROOT, TINY, cli_run_dir, compose_cfg, needs_data

from sparse_exp.analysis.collect import collect_local
from sparse_exp.run.run_dir import RunDir
from sparse_exp.train import run

pytestmark = pytest.mark.slow  # end-to-end training runs; still part of `make test`

#: an LR that makes LeNet-5's loss overflow to inf / NaN within its first steps (lr=inf itself is refused)
DIVERGING = ["sparsifier=static", "superposer=none", "optimizer.lr=1e30", "epochs=3", "schedule=constant",
             "schedule.warmup_epochs=0"]


@needs_data
def test_a_diverged_run_fails_loudly_and_keeps_its_last_good_checkpoint(tmp_path):
    summary = run(compose_cfg(DIVERGING), tmp_path / "run")
    assert summary["status"] == "failed" and summary["reason"] == "diverged"
    assert summary["error"].startswith(f"diverged at epoch {summary['epoch']}, step {summary['step']}")
    assert 1 <= summary["step"] <= 16 * summary["epoch"]
    rd = RunDir(tmp_path / "run")
    assert rd.summary()["status"] == "failed"
    assert len(rd.metrics()) == summary["epoch"] - 1, "the diverged epoch wrote no metrics row"
    if summary["epoch"] > 1:
        state = rd.load_checkpoint()
        assert state["epoch"] == summary["epoch"] - 1
        assert all(bool(v.isfinite().all()) for v in state["model"].values() if v.is_floating_point())
    else:
        assert not rd.has_checkpoint(), "no good checkpoint exists before the first epoch"
    assert not (tmp_path / "run" / "masks.pt").exists() and not (tmp_path / "run" / "model.pt").exists()
    # make tables does not count it
    col = collect_local([tmp_path])
    assert col.runs.empty
    assert "status 'failed'" in col.excluded["reason"].iloc[0]


@needs_data
def test_the_cli_exits_non_zero_for_a_diverged_run(tmp_path):
    env = {**os.environ, "SPARSE_EXP_RUNS": str(tmp_path / "runs"), "WANDB_MODE": "disabled"}
    args = [*TINY, *DIVERGING]
    res = subprocess.run([sys.executable, "-m", "sparse_exp.train", *args], cwd=ROOT, env=env, capture_output=True,
                         text=True, timeout=300)
    assert res.returncode == 1, res.stderr[-2000:]
    errors = [line for line in res.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "diverged at epoch" in errors[0], res.stderr[-2000:]
    assert "Traceback" not in res.stderr
    summary = json.loads((cli_run_dir(tmp_path / "runs", args) / "summary.json").read_text())
    assert summary["status"] == "failed"


def test_tables_never_count_a_non_finite_result(tmp_path):
    for name, acc in (("good", 91.0), ("nan", None)):
        d = tmp_path / name
        d.mkdir()
        (d / "summary.json").write_text(json.dumps({"status": "completed", "test/acc": acc, "model": "lenet5",
                                                    "dataset": "fashion_mnist", "sparsifier": "rigl",
                                                    "superposer": "none", "distribution": "erk", "sparsity": 0.9,
                                                    "seed": 0 if name == "good" else 1, "epochs": 30}))
        (d / "config.yaml").write_text(f"seed: {0 if name == 'good' else 1}\n")
    col = collect_local([tmp_path])
    assert list(col.runs["test/acc"]) == [91.0]
    (reason,) = col.excluded["reason"]
    assert "not a finite number" in reason and not math.isnan(col.runs["test/acc"].iloc[0])


@needs_data
def test_a_stale_temporary_file_is_removed_when_the_run_next_takes_its_lock(tmp_path):
    rd = tmp_path / "run"
    rd.mkdir()
    stale = rd / ".checkpoint.pt.k3x9a.tmp"  # what a kill -9 during an atomic write leaves
    stale.write_bytes(b"partial")
    summary = run(compose_cfg(["sparsifier=static", "superposer=none", "epochs=1"]), rd)
    assert summary["status"] == "completed"
    assert not stale.exists()
    assert not list(rd.glob(".*.tmp"))
