"""Run-directory names that always fit (issue 24): a name over 255 bytes becomes a readable prefix + ``--`` + 12 hex
digits of the SHA-1 of the full override string, short names are unchanged, and the pre-flight refuses in one line a
run path the file system cannot hold. The real CLI trains the issue's command (whose name is over 255 bytes) to
``completed``, resumes and skips it in the same directory; a grid cell with 400+ characters of overrides completes
and ``status``, the tables' collector and the sweeper's skip-completed map it.
"""

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import ROOT, needs_data

from analysis.collect import collect_local
from sparse_exp.config.compose import HASH_HEX, HASH_SEPARATOR, MAX_NAME_BYTES, run_name
from sparse_exp.config.errors import UserError
from sparse_exp.config.preflight import RUN_FILES_MARGIN, check_path_fits
from sparse_exp.run.grid_status import collect, expand_sweep

#: the command of issue 24 that crashed with "File name too long" (its name is 279 bytes)
ISSUE_CMD = ["model=resnet32", "dataset.subset_train=256", "dataset.subset_test=256", "dataset.val_size=256",
             "epochs=2", "superposer=none", "logger=none", "progress=false", "sparsifier=snip", "sparsity=0.95",
             "tweaks=[ghost_skip]", "tweaks.ghost_skip.alpha.end=0", "tweaks.ghost_skip.alpha.end_epoch=1",
             "tweaks.ghost_skip.remove_at_end=true", "device=cpu"]

#: a tiny grid (smoke's LeNet-5, 1 epoch on 256 images, seeds 0 and 1) whose cells' overrides exceed 400 characters
LONG_GRID = ["epochs=1", "dataset.subset_train=256", "dataset.val_size=128", "dataset.subset_test=128",
             "dataset.lr_warmup_epochs=0", "sparsifier=set", "sparsifier.delta_t=2", "sparsifier.drop_fraction=0.3",
             "sparsifier.drop_decay=cosine", "sparsifier.stop_fraction=0.75", "distribution=erk",
             "distribution.erk_power_scale=1.0", "distribution.dense_first_layer=false",
             "distribution.dense_last_layer=false", "optimizer.lr=0.1", "optimizer.momentum=0.9",
             "optimizer.weight_decay=0.0005", "optimizer.nesterov=false", "schedule.gamma=0.1", "sparsity=0.9",
             "seed=0,1", "device=cpu"]


def _cli(args, runs, timeout=300):
    env = {**os.environ, "SPARSE_EXP_RUNS": str(runs), "WANDB_MODE": "disabled"}
    res = subprocess.run([sys.executable, "-m", "sparse_exp.train", *args], cwd=ROOT, env=env, capture_output=True,
                         text=True, timeout=timeout)
    return res, res.stdout + res.stderr


def _dirs(root: Path):
    return sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))


# ---------------------------------------------------------------------------- the name function
def test_short_names_are_unchanged():
    """Every name that could be created before keeps its name (users' run directories are found again)."""
    assert run_name("") == "default"
    assert run_name("epochs=2,sparsifier=rigl") == "epochs=2,sparsifier=rigl"
    assert run_name("sparsifier.path=runs/a/masks.pt") == "sparsifier.path=runs_a_masks.pt"
    exact = "a=" + "x" * (MAX_NAME_BYTES - 2)
    assert run_name(exact) == exact and len(exact.encode()) == MAX_NAME_BYTES


def test_long_names_are_a_prefix_and_the_hash_of_the_full_overrides():
    full = ",".join(f"tweaks.ghost_skip.key{i}=value/{i}" for i in range(20))
    name = run_name(full)
    digest = hashlib.sha1(full.encode()).hexdigest()[:HASH_HEX]
    assert len(name.encode()) == MAX_NAME_BYTES
    assert name == full.replace("/", "_")[:MAX_NAME_BYTES - len(HASH_SEPARATOR) - HASH_HEX] + HASH_SEPARATOR + digest
    assert run_name(full) == name  # deterministic: the same command finds the same directory


def test_long_names_differing_after_the_cut_differ():
    a, b = "k=" + "v" * 400 + ",seed=0", "k=" + "v" * 400 + ",seed=1"
    assert run_name(a) != run_name(b)
    assert run_name(a)[:-HASH_HEX] == run_name(b)[:-HASH_HEX]


def test_multibyte_characters_are_not_split():
    full = "tag=" + "é" * 300  # 2 bytes each
    name = run_name(full)
    assert len(name.encode("utf-8")) <= MAX_NAME_BYTES
    assert name.endswith(HASH_SEPARATOR + hashlib.sha1(full.encode()).hexdigest()[:HASH_HEX])
    name.encode("utf-8").decode("utf-8")  # valid UTF-8


# ---------------------------------------------------------------------------- the pre-flight
def test_preflight_refuses_a_component_over_name_max(tmp_path):
    name_max = os.pathconf(tmp_path, "PC_NAME_MAX")
    with pytest.raises(UserError, match=rf"is {name_max + 1} bytes, over this file system's NAME_MAX of {name_max}"):
        check_path_fits(tmp_path / ("x" * (name_max + 1)) / "run")
    check_path_fits(tmp_path / ("x" * name_max) / "run")  # at the limit: fits


def test_preflight_refuses_a_path_over_path_max(tmp_path):
    path_max = os.pathconf(tmp_path, "PC_PATH_MAX")
    deep = tmp_path
    while len(os.fsencode(str(deep))) + RUN_FILES_MARGIN <= path_max:
        deep = deep / ("d" * 200)
    with pytest.raises(UserError, match=rf"over this file system's PATH_MAX of {path_max}") as exc:
        check_path_fits(deep)
    assert "\n" not in str(exc.value)
    check_path_fits(tmp_path / "runs" / run_name("k=" + "v" * 1000))  # a shortened name fits


# ---------------------------------------------------------------------------- the real CLI
@needs_data
@pytest.mark.slow
def test_issue_command_trains_resumes_and_skips_in_one_directory(tmp_path):
    """The issue's command (name over 255 bytes): stopped after epoch 1, the same command resumes it in the same
    directory to ``completed``, and a third run finds it completed; one directory, whose ``config.yaml`` keeps the
    full overrides."""
    res, out = _cli(ISSUE_CMD + ["stop_after_epochs=1"], tmp_path)
    assert res.returncode == 0, out[-3000:]
    (run_dir,) = _dirs(tmp_path)
    assert json.loads((run_dir / "summary.json").read_text())["status"] == "stopped"
    first = (run_dir / "config.yaml").read_text().splitlines()[0]
    assert first.startswith("# overrides: ") and "tweaks.ghost_skip.remove_at_end=true" in first
    full = first[len("# overrides: "):]
    assert len(full.encode()) > MAX_NAME_BYTES and run_dir.name == run_name(full)
    assert len(run_dir.name.encode()) == MAX_NAME_BYTES

    res, out = _cli(ISSUE_CMD, tmp_path)
    assert res.returncode == 0, out[-3000:]
    assert "resumed from" in out and _dirs(tmp_path) == [run_dir], out[-3000:]
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["status"] == "completed" and summary["epochs"] == 2

    res, out = _cli(ISSUE_CMD, tmp_path)
    assert res.returncode == 0 and "run already completed, not retraining" in out, out[-3000:]
    assert _dirs(tmp_path) == [run_dir]


@needs_data
@pytest.mark.slow
def test_grid_cell_with_400_characters_of_overrides_is_mapped_like_any_other(tmp_path, monkeypatch):
    """A 2-cell grid whose cells' overrides are over 400 characters: both complete in their shortened directories;
    ``status --sweep`` expects exactly those, the tables' collector reads both (one cell, seeds 0 and 1), and
    launching the grid again skips both."""
    cmd = ["-m", "+sweep=smoke", *LONG_GRID]
    res, out = _cli(cmd, tmp_path)
    assert res.returncode == 0, out[-3000:]
    sweep_dir = tmp_path / "smoke"
    made = _dirs(sweep_dir)
    assert len(made) == 2
    for d in made:
        full = (d / "config.yaml").read_text().splitlines()[0][len("# overrides: "):]
        assert len(full) >= 400 and d.name == run_name(full) and len(d.name.encode()) <= MAX_NAME_BYTES
        assert json.loads((d / "summary.json").read_text())["status"] == "completed"

    monkeypatch.setenv("SPARSE_EXP_RUNS", str(tmp_path))
    plan = expand_sweep("smoke", LONG_GRID)
    assert sorted(j.subdir for j in plan.jobs) == [d.name for d in made]
    state = collect(sweep_dir, plan)
    assert state["counts"]["completed"] == 2 and state["total"] == 2 and state["extra"] == []
    status = subprocess.run([sys.executable, "-m", "sparse_exp.status", "--sweep", "smoke", *LONG_GRID, "--json"],
                            cwd=ROOT, env={**os.environ, "SPARSE_EXP_RUNS": str(tmp_path)}, capture_output=True,
                            text=True, timeout=120)
    assert status.returncode == 0, status.stderr[-3000:]
    assert json.loads(status.stdout)["counts"]["completed"] == 2

    runs = collect_local([sweep_dir]).runs
    assert sorted(runs["path"]) == sorted(str(d) for d in made)
    assert sorted(runs["seed"]) == [0, 1] and runs["cell_id"].nunique() == 1
    assert set(runs["status"]) == {"completed"}

    res, out = _cli(cmd, tmp_path)
    assert res.returncode == 0 and "2 already completed (not launched), 0 to launch" in out, out[-3000:]
