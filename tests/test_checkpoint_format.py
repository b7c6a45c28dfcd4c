"""``checkpoint.pt`` format: written with ``format``, older formats migrated (:func:`migrate_checkpoint`), unknown
refused.

The fixture ``fixtures/checkpoint_v1_sup_tickets/`` is a run directory written by the code before the format key
(commit c69b6a9, see its ``git.json``): ``FIXTURE_OVERRIDES`` on the tiny data of ``conftest.TINY``, stopped
after epoch 2 of 3 (``stop_after_epochs=2``), in the Sup-tickets cycles with one ticket taken. Its checkpoint is
gzip'd (978 KB -> 162 KB).
"""

from __future__ import annotations

import gzip
import shutil
from pathlib import Path

import pytest
import torch
from conftest import compose_cfg, needs_data

from sparse_exp.config.errors import UserError
from sparse_exp.run.run_dir import CHECKPOINT_FORMAT, CHECKPOINT_FORMATS, RunDir, migrate_checkpoint

FIXTURE = Path(__file__).resolve().parent / "fixtures" / "checkpoint_v1_sup_tickets"
FIXTURE_OVERRIDES = ["sparsifier=rigl", "sparsifier.delta_t=5", "epochs=3", "superposer=sup_tickets",
                     "superposer.phase_fraction=0.67", "superposer.cycle_epochs=1"]
V2_KEYS = {"format", "model", "optimizer", "scheduler", "masking", "sparsifier", "callbacks", "rng", "epoch", "step",
           "elapsed", "batch_in_epoch", "epoch_accumulators"}


def fixture_run_dir(dest: Path) -> RunDir:
    """The fixture's run directory copied to ``dest``, its checkpoint unzipped."""
    dest.mkdir(parents=True)
    for f in FIXTURE.iterdir():
        if f.name == "checkpoint.pt.gz":
            with gzip.open(f, "rb") as src, open(dest / "checkpoint.pt", "wb") as out:
                shutil.copyfileobj(src, out)
        else:
            shutil.copy(f, dest / f.name)
    return RunDir(dest)


def test_v1_fixture_migrates_to_current_format(tmp_path):
    rd = fixture_run_dir(tmp_path / "run")
    raw = torch.load(rd.checkpoint_path, weights_only=False)
    assert "format" not in raw, "the fixture is a v1 checkpoint"
    state = rd.load_checkpoint()
    assert state["format"] == CHECKPOINT_FORMAT and set(state) == V2_KEYS
    assert state["epoch"] == 2 and state["batch_in_epoch"] == 0
    assert len(state["callbacks"]["sup_tickets"]["tickets"]) == 1
    for key, value in raw["model"].items():
        assert torch.equal(value, state["model"][key]), key


def test_older_v1_checkpoints_are_filled(tmp_path):
    """A v1 checkpoint of the engine before the callback protocol, mid-epoch checkpoints, ITOP tracking, the
    sparsifiers' update counter and ``ticket_eval``: filled with what those engines meant."""
    rd = fixture_run_dir(tmp_path / "run")
    state = torch.load(rd.checkpoint_path, weights_only=False)
    callbacks = state.pop("callbacks")
    state["flops"], state["superposer"] = callbacks["flops"], callbacks["sup_tickets"]
    for key in ("batch_in_epoch", "epoch_accumulators"):
        del state[key]
    del state["masking"]["ever_active"], state["sparsifier"]["updates"], state["superposer"]["ticket_seconds"]
    new = migrate_checkpoint(state, rd.checkpoint_path)
    assert set(new) == V2_KEYS and new["format"] == CHECKPOINT_FORMAT
    assert set(new["callbacks"]) == {"flops", "sup_tickets"}  # the superposer is named by config.yaml
    assert new["callbacks"]["flops"] == callbacks["flops"]
    assert new["callbacks"]["sup_tickets"]["ticket_seconds"] == []
    assert new["batch_in_epoch"] == 0 and tuple(new["epoch_accumulators"]) == (0.0, 0, 0)
    assert new["sparsifier"]["updates"] == 0
    masks = new["masking"]["masks"]
    assert all(torch.equal(new["masking"]["ever_active"][n], masks[n]) for n in masks)

    rd.config_path.unlink()
    old = {"flops": callbacks["flops"], "superposer": {}, "masking": {"masks": {}}, "sparsifier": {}}
    with pytest.raises(UserError, match="before the callback protocol.*config.yaml"):
        migrate_checkpoint(old, rd.checkpoint_path)


@pytest.mark.parametrize("fmt", ["sparse_exp.checkpoint/v99", "something-else"])
def test_unknown_format_is_refused(tmp_path, fmt):
    rd = RunDir(tmp_path / "run")
    rd.path.mkdir()
    torch.save({"format": fmt, "epoch": 1}, rd.checkpoint_path)
    with pytest.raises(UserError) as err:
        rd.load_checkpoint()
    msg = str(err.value)
    assert "\n" not in msg and str(rd.checkpoint_path) in msg and repr(fmt) in msg
    assert all(f in msg for f in CHECKPOINT_FORMATS)


def test_not_a_dict_is_refused(tmp_path):
    rd = RunDir(tmp_path / "run")
    rd.path.mkdir()
    torch.save(torch.zeros(3), rd.checkpoint_path)
    with pytest.raises(UserError, match="not a sparse_exp checkpoint.*Tensor"):
        rd.load_checkpoint()


def test_written_checkpoint_carries_current_format(tmp_path):
    rd = RunDir(tmp_path / "run")
    rd.path.mkdir()
    rd.save_checkpoint({"epoch": 1})
    assert torch.load(rd.checkpoint_path, weights_only=False) == {"format": CHECKPOINT_FORMAT, "epoch": 1}


@pytest.mark.slow
@needs_data
def test_resume_from_v1_fixture_completes(tmp_path):
    from sparse_exp.train import run

    rd = fixture_run_dir(tmp_path / "run")
    summary = run(compose_cfg(FIXTURE_OVERRIDES), rd.path)
    assert summary["status"] == "completed" and rd.summary()["status"] == "completed"
    assert [row["epoch"] for row in rd.metrics()] == [1, 2, 3], "resumed at epoch 3, epochs 1-2 kept"
    state = torch.load(rd.checkpoint_path, weights_only=False)
    assert state["format"] == CHECKPOINT_FORMAT and state["epoch"] == 3
    assert len(state["callbacks"]["sup_tickets"]["tickets"]) == 2, "the second ticket was taken after resuming"
