"""Saved cheap tickets and offline superposition (:mod:`sparse_exp.superposers.tickets`, ``python -m
sparse_exp.superpose``): the tickets of same-seed runs that differ only in how they superpose are bitwise the
same, and offline superposition of one run's tickets reproduces every such run's ultimate ticket bitwise (masks,
weights) with its metrics -- so Figure 3's variants need one training run per (sparsity, seed)."""

import json
import os
import subprocess
import sys

import pytest
import torch
from conftest import ROOT, compose_cfg, needs_data

from sparse_exp.config.errors import UserError
from sparse_exp.run.run_dir import RunDir
from sparse_exp.superpose import main as superpose_main
from sparse_exp.superposers.averaging import TicketAverager
from sparse_exp.superposers.tickets import load_tickets, run_offline, superposed_state
from sparse_exp.train import run

pytestmark = pytest.mark.slow  # end-to-end training runs; still part of `make test`

#: ResNet-32 (BN), 256 images of 64: 4 steps per epoch; 2 normal epochs, then two 1-epoch cycles
BASE = ["model=resnet32", "dataset.subset_train=256", "dataset.subset_test=256", "dataset.val_size=128", "epochs=4",
        "sparsifier=rigl",
        "sparsifier.delta_t=2",
        "superposer=sup_tickets", "superposer.phase_fraction=0.5", "superposer.cycle_epochs=1",
        "superposer.save_tickets=true"]
#: every superposition setting changed at once (none of them may feed back into training)
OTHER = ["superposer.averaging=cima", "superposer.beta=0.5", "superposer.reprune=layerwise", "superposer.bn=recompute",
         "superposer.prune_running_average=true", "superposer.count_normal_phase_ticket=true"]
OTHER_ARGS = {"averaging": "cima", "beta": 0.5, "reprune": "layerwise", "bn": "recompute",
              "prune_running_average": True, "count_normal_phase_ticket": True}
RESULT_KEYS = ("test/acc", "test/nll", "test/ece", "val/acc", "val/nll", "val/ece", "sparsity/global")


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("tickets")
    a, b = RunDir(root / "a"), RunDir(root / "b")
    run(compose_cfg(BASE + ["superposer.offline=[{averaging: caa}, {averaging: cima, beta: 0.5, reprune: layerwise, "
                            "bn: recompute, prune_running_average: true, count_normal_phase_ticket: true}]"]), a.path)
    run(compose_cfg(BASE + OTHER), b.path)
    a.end_of_run = {p.name: json.loads(p.read_text()) for p in (a.path / "superposed").glob("*.json")}
    return a, b


def run_ultimate(rd: RunDir):
    """The run's own ultimate ticket: (state before any BN re-estimation, masks), from its checkpoint."""
    cb = rd.load_checkpoint()["callbacks"]["sup_tickets"]
    averager = TicketAverager("cia")
    averager.load_state_dict(cb["averager"])
    masks = cb["ultimate_masks"]
    return superposed_state(averager, masks), masks


def saved(rd: RunDir, name: str):
    return torch.load(rd.path / "superposed" / f"{name}.pt", weights_only=False)


def assert_same_tensors(a, b, what):
    assert set(a) == set(b), what
    for key in a:
        assert torch.equal(a[key], b[key]), f"{what}: {key}"


@needs_data
def test_tickets_of_runs_that_differ_only_in_superposition_are_bitwise_equal(runs):
    a, b = runs
    ta, tb = load_tickets(a.path), load_tickets(b.path)
    assert [t["index"] for t in ta] == [t["index"] for t in tb] == [0, 1, 2]
    for x, y in zip(ta, tb):
        assert x["step"] == y["step"] and x["metrics"] == y["metrics"] and x["target_counts"] == y["target_counts"]
        assert_same_tensors(x["state"], y["state"], f"ticket {x['index']} state")
        assert_same_tensors(x["masks"], y["masks"], f"ticket {x['index']} masks")
    # and so is the individual model they end with
    assert_same_tensors(a.load_checkpoint()["model"], b.load_checkpoint()["model"], "final individual model")


@needs_data
@pytest.mark.parametrize("which", ["own", "other"])
def test_offline_superposition_reproduces_the_runs_ultimate_ticket(runs, which):
    a, b = runs
    target = a if which == "own" else b
    result = run_offline(a.path, {} if which == "own" else OTHER_ARGS)
    state, masks = run_ultimate(target)
    out = saved(a, result["variant"])
    assert_same_tensors(out["masks"], {k: v.bool() for k, v in masks.items()}, "ultimate masks")
    assert_same_tensors(out["state"], state, "ultimate state")
    reported = torch.load(target.path / "masks.pt", weights_only=False)["masks"]
    assert_same_tensors(out["masks"], reported, "masks.pt")
    summary = target.summary()
    for key in RESULT_KEYS:
        assert result[key] == summary[key], key
    assert result["tickets/count"] == summary["tickets/count"]


@needs_data
def test_end_of_run_variants_equal_the_offline_command(runs):
    a, b = runs
    assert sorted(a.end_of_run) == ["caa_global_bn-average.json",
                                    "cima_b0.5_layerwise_bn-recompute_t0_prune-running.json"]
    doc = a.end_of_run["cima_b0.5_layerwise_bn-recompute_t0_prune-running.json"]
    assert doc["source"] == "offline (end of run)"
    for key in RESULT_KEYS:
        assert doc[key] == b.summary()[key], key


@needs_data
def test_offline_command_prints_the_metrics_and_refuses_bad_input(runs, tmp_path, capsys):
    a, _ = runs
    env = {**os.environ, "WANDB_MODE": "disabled"}

    def cli(*args):
        return subprocess.run([sys.executable, "-m", "sparse_exp.superpose", *map(str, args)], cwd=ROOT, env=env,
                              capture_output=True, text=True, timeout=300)

    out = cli(a.path, "--averaging", "cima", "--beta", "0.5")
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.startswith("cima_b0.5_global_bn-average: 2 tickets [1, 2]")
    assert "test  acc" in out.stdout and (a.path / "superposed" / "cima_b0.5_global_bn-average.json").exists()
    # a run without saved tickets
    bare = tmp_path / "bare"
    bare.mkdir()
    (bare / "config.yaml").write_text((a.path / "config.yaml").read_text())
    for args, needle in [((bare,), "no saved cheap tickets"), ((tmp_path,), "not a run directory"),
                         ((a.path, "--beta", "1.5"), "beta=1.5")]:  # in-process: the same main() as the command
        assert superpose_main([str(x) for x in args]) == 2
        lines = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
        assert len(lines) == 1 and lines[0].startswith("error:") and needle in lines[0], lines
    # tickets of another model
    other = torch.nn.Sequential(torch.nn.Linear(3, 2))
    with pytest.raises(UserError, match="ticket of another model"):
        load_tickets(a.path, other)


@needs_data
def test_tables_read_offline_variants_as_runs_and_figure3_marks_them(runs, tmp_path):
    from sparse_exp.analysis.collect import collect_local
    from sparse_exp.analysis.figures import figure3

    a, b = runs
    col = collect_local([a.path.parent])
    offline = col.runs[col.runs["source"] == "offline"]
    caa = offline[offline["cfg.superposer.averaging"] == "caa"]
    assert len(caa) == 1 and caa.iloc[0]["superposed/offline"] == 1
    assert caa.iloc[0]["test/acc"] == a.end_of_run["caa_global_bn-average.json"]["test/acc"]
    assert caa.iloc[0]["last/test/acc"] == a.summary()["last/test/acc"], "the individual model is the run's"
    # a's offline copy of b's variant has b's identity (saving tickets changes no result): counted once
    b_like = col.runs[col.runs["cfg.superposer.reprune"] == "layerwise"]
    assert len(b_like) == 1 and "superseded duplicate" in " ".join(col.excluded["reason"])
    assert not (col.runs["path"] == str(a.path / "superposed" / "cia_global_bn-average.json")).any()
    png, _ = figure3(col.runs, tmp_path)
    assert png.exists() and png.stat().st_size > 10_000


@needs_data
def test_curves_png_is_written_at_the_end_and_the_plot_command_redraws_it_identically(runs, tmp_path):
    a, _ = runs
    png = a.path / "curves.png"
    assert png.exists() and png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 20_000
    out = subprocess.run([sys.executable, "-m", "sparse_exp.plot", str(a.path), "--out", str(tmp_path / "again.png")],
                         cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert (tmp_path / "again.png").read_bytes() == png.read_bytes(), "the same run must give the same bytes"
    bad = subprocess.run([sys.executable, "-m", "sparse_exp.plot", str(tmp_path)], cwd=ROOT, capture_output=True,
                         text=True, timeout=300)
    assert bad.returncode == 2 and bad.stderr.startswith("error:") and "not a run directory" in bad.stderr
