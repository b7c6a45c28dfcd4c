"""`make tables` on a real tiny grid: cells equal the mean/std of the summary.json files, requeued
duplicates and incomplete runs are reported and not counted, figures are byte-reproducible; the
W&B source on objects shaped like ``wandb.Api().runs(...)`` returns."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import yaml
from conftest import ROOT, compose_cfg, needs_data

if str(ROOT) not in sys.path:  # `analysis` lives at the repository root (plain `pytest` runs too)
    sys.path.insert(0, str(ROOT))

COMMON = ["epochs=2", "optimizer=adam", "optimizer.lr=0.003", "sparsifier=rigl", "sparsifier.delta_t=4"]
#: two methods (rows of Table 1); seeds 0 and 1 each
GRID = {"rigl": [],
        "rigl_sup": ["superposer=sup_tickets", "superposer.phase_fraction=0.5", "superposer.cycle_epochs=1"]}
SEEDS = (0, 1)
#: which of our summaries feed which table cells (method keys of analysis.selection.method_filters)
METHOD_RUNS = {"rigl": "rigl", "rigl+sup": "rigl_sup", "rigl+sup/C=1": "rigl_sup", "rigl+sup/lr=triangle": "rigl_sup"}
FIGURES = [f"figure{n}.{ext}" for n in (2, 3, 4, 5) for ext in ("png", "pdf")]


def _set_status(run_dir: Path, status: str, seed: int) -> None:
    """Turn a copied run directory into another seed's run that is not completed."""
    cfg = yaml.safe_load((run_dir / "config.yaml").read_text())
    cfg["seed"] = seed
    (run_dir / "config.yaml").write_text(yaml.safe_dump(cfg))
    s = json.loads((run_dir / "summary.json").read_text())
    keep = ("model", "dataset", "sparsifier", "superposer", "distribution", "sparsity", "epochs")
    (run_dir / "summary.json").write_text(json.dumps({"status": status, "seed": seed, **{k: s[k] for k in keep}}))


@pytest.fixture(scope="module")
def grid(tmp_path_factory):
    """Real runs (2 methods x 2 seeds) + a requeued older copy + a running and a failed run."""
    from sparse_exp.train import run

    runs = tmp_path_factory.mktemp("grid") / "runs"
    for name, overrides in GRID.items():
        for seed in SEEDS:
            summary = run(compose_cfg(COMMON + overrides + [f"seed={seed}"]), runs / f"{name}_seed{seed}")
            assert summary["status"] == "completed"
    # a requeued run: an older completed copy of rigl_seed0 elsewhere under the root (different numbers)
    old = runs / "requeued" / "rigl_seed0"
    shutil.copytree(runs / "rigl_seed0", old)
    s = json.loads((old / "summary.json").read_text())
    s["test/acc"] = 99.0
    (old / "summary.json").write_text(json.dumps(s))
    t = time.time() - 3600
    os.utime(old / "summary.json", (t, t))
    # incomplete runs of a seed that would otherwise enter the averages
    shutil.copytree(runs / "rigl_sup_seed1", runs / "rigl_sup_seed2")
    _set_status(runs / "rigl_sup_seed2", "running", 2)
    shutil.copytree(runs / "rigl_seed1", runs / "rigl_seed3")
    _set_status(runs / "rigl_seed3", "failed", 3)
    real = {name: [runs / f"{name}_seed{s}" for s in SEEDS] for name in GRID}
    return {"runs": runs, "real": real, "requeued": old, "running": runs / "rigl_sup_seed2",
            "failed": runs / "rigl_seed3"}


def _expected(grid, method: str, metric: str):
    name = METHOD_RUNS.get(method)
    if name is None:
        return []
    vals = [json.loads((p / "summary.json").read_text()).get(metric) for p in grid["real"][name]]
    return [float(v) for v in vals if v is not None and np.isfinite(v)]


def _cli(args, seed: str, out: Path):
    env = dict(os.environ, PYTHONHASHSEED=seed, MPLBACKEND="Agg")
    proc = subprocess.run(args, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc.stdout


def _md_cell(md: str, row_label: str, group: str, sub: str) -> str:
    """The text of a Markdown table cell by row label, column group (first header) and sub-header."""
    lines = [ln for ln in md.splitlines() if ln.startswith("|")]
    split = [[c.strip() for c in ln.strip("|").split("|")] for ln in lines]
    top, second = split[0], split[2]
    groups, cur = [], ""
    for c in top:
        cur = c or cur
        groups.append(cur)
    col = next(j for j in range(1, len(top)) if groups[j] == group and second[j] == sub)
    row = next(r for r in split if r[0] == row_label)
    return row[col]


@needs_data
def test_make_tables_on_real_grid(grid, tmp_path):
    runs, out1, out2 = grid["runs"], tmp_path / "results", tmp_path / "results_again"
    if shutil.which("make"):  # the Makefile target (its install prerequisite is not remade here)
        stdout = _cli(["make", "-s", "-o", "install", "tables", f"RUNS={runs}", f"OUT={out1}",
                       f"PY={sys.executable}"], "1", out1)
    else:
        stdout = _cli([sys.executable, "-m", "sparse_exp.analysis", "--runs", str(runs), "--out", str(out1),
                       "--compare-paper"], "1", out1)
    # the checkout's older name of the same command (the top-level analysis/ folder): the same code
    stdout2 = _cli([sys.executable, "-m", "analysis", "--runs", str(runs), "--out", str(out2)], "2", out2)

    # --- what is counted: the 4 real runs, each once
    counted = pd.read_csv(out1 / "runs.csv")
    assert sorted(counted["path"]) == sorted(str(p) for ps in grid["real"].values() for p in ps)
    excluded = pd.read_csv(out1 / "excluded.csv").set_index("path")
    assert set(excluded.index) == {str(grid["requeued"]), str(grid["running"]), str(grid["failed"])}
    assert excluded.loc[str(grid["requeued"]), "reason"].startswith("superseded duplicate")
    assert "'running'" in excluded.loc[str(grid["running"]), "reason"]
    assert "'failed'" in excluded.loc[str(grid["failed"]), "reason"]
    for p in (grid["requeued"], grid["running"], grid["failed"]):
        assert str(p) in stdout  # reported
    assert "Table 1: incomplete" in stdout and "missing" in stdout
    assert "Paper comparison" in stdout

    # --- every table cell equals mean and std computed from the summary.json files
    cells = pd.read_csv(out1 / "cells.csv", keep_default_na=False, na_values=[""])
    filled = 0
    for _, c in cells.iterrows():
        want = _expected(grid, c["method"], c["metric"]) if (c["dataset"], c["model"], c["sparsity"]) == (
            "fashion_mnist", "lenet5", 0.9) else []
        if not want:
            assert c["status"] != "ok" and c["markdown"] == "–", c.to_dict()
            continue
        filled += 1
        assert c["status"] == "ok" and c["n"] == len(want) == 2, c.to_dict()
        assert c["mean"] == pytest.approx(np.mean(want), abs=1e-9)
        assert c["std"] == pytest.approx(np.std(want, ddof=1), abs=1e-9)
        d = 3 if c["metric"].startswith("diversity/") else 2
        core = f"{np.mean(want):.{d}f}×" if c["metric"].startswith("flops/") else \
            f"{np.mean(want):.{d}f} ± {np.std(want, ddof=1):.{d}f}"
        assert c["markdown"] in (f"{core} (n=2)", f"**{core}** (n=2)"), c.to_dict()
    # Tables 1, 2 (test acc: 2 methods), 3 (acc + 2 FLOPs: 2 methods), 5 (C=1), 7 (triangle)
    assert filled == 2 + 2 + 6 + 1 + 1
    # diversity is NaN with one ticket: Table 6's cells stay missing and say why
    t6 = cells[(cells["table"] == 6) & (cells["method"] == "rigl+sup") & (cells["dataset"] == "fashion_mnist")
               & (cells["sparsity"] == 0.9)]
    assert len(t6) == 2 and (t6["status"] == "missing").all() and t6["note"].str.contains("non-finite").all()

    # --- the Markdown tables hold the same text where the paper's layout puts it
    md1 = (out1 / "table1.md").read_text()
    rigl, sup = _expected(grid, "rigl", "test/acc"), _expected(grid, "rigl+sup", "test/acc")
    best = max(round(np.mean(rigl), 2), round(np.mean(sup), 2))
    for label, vals in (("RigL [Evci et al., 2020]", rigl), ("RigL+Sup-tickets (ours)", sup)):
        core = f"{np.mean(vals):.2f} ± {np.std(vals, ddof=1):.2f}"
        text = f"**{core}**" if round(np.mean(vals), 2) == best else core
        assert _md_cell(md1, label, "Fashion-MNIST (LeNet-5)", "90%") == f"{text} (n=2)"
        assert _md_cell(md1, label, "CIFAR-10", "95%") == "–"
    md5 = (out1 / "table5.md").read_text()
    assert f"| C=1 | – | {np.mean(sup):.2f} ± {np.std(sup, ddof=1):.2f} (n=2) | – |" in md5
    for n in range(1, 8):
        assert (out1 / f"table{n}.md").stat().st_size > 0
        tex = (out1 / f"table{n}.tex").read_text()
        assert r"\begin{tabular}" in tex and r"\bottomrule" in tex
    assert (out1 / "compare_paper.md").exists() and (out1 / "status.md").exists()

    # --- figures: written, and byte-identical across two invocations (different hash seeds)
    for name in FIGURES:
        a, b = (out1 / name).read_bytes(), (out2 / name).read_bytes()
        assert len(a) > 1000, name
        assert a[:4] == (b"\x89PNG" if name.endswith(".png") else b"%PDF"), name
        assert hashlib.sha256(a).digest() == hashlib.sha256(b).digest(), f"{name} differs between invocations"
    assert "Figures:" in stdout2

    # --- the mask-topology heatmap across the grid's counted runs: global IoU of every pair from their masks.pt
    from sparse_exp.sparse.mask_distance import mask_distance

    stem = "mask_iou_fashion_mnist_lenet5_90"
    for ext in ("png", "pdf", "md"):
        assert (out1 / f"{stem}.{ext}").read_bytes() == (out2 / f"{stem}.{ext}").read_bytes(), ext
    md = (out1 / f"{stem}.md").read_text()
    labels = {"rigl s0": grid["real"]["rigl"][0], "rigl s1": grid["real"]["rigl"][1],
              "rigl+sup_tickets s0": grid["real"]["rigl_sup"][0], "rigl+sup_tickets s1": grid["real"]["rigl_sup"][1]}
    order = sorted(labels)
    assert f"| run | {' | '.join(order)} |" in md  # the requeued, running and failed runs are not in it
    masks = {k: torch.load(p / "masks.pt", weights_only=True)["masks"] for k, p in labels.items()}
    for a in order:
        row = [1.0 if a == b else mask_distance(masks[a], masks[b]).iou for b in order]
        assert f"| {a} | {' | '.join(f'{v:.3f}' for v in row)} |" in md, (a, md)
    assert all(0.0 < mask_distance(masks[a], masks[b]).iou < 1.0 for a in order for b in order if a < b)


# ---------------------------------------------------------------------------- W&B source
class FakeSummary:
    """Dict-like like ``wandb.apis.public.HTTPSummary`` (keys/items/get/[] but not a dict)."""

    def __init__(self, d):
        self._d = dict(d)

    def keys(self):
        return self._d.keys()

    def items(self):
        return iter(self._d.items())

    def get(self, k, default=None):
        return self._d.get(k, default)

    def __getitem__(self, k):
        return self._d[k]

    def __contains__(self, k):
        return k in self._d


class FakeRun:
    def __init__(self, run_id, name, config, summary, state, created_at):
        self.id, self.name, self.state, self.created_at = run_id, name, state, created_at
        self.config = config
        self.summary = FakeSummary(summary)


class FakeApi:
    calls = []
    runs_to_return = []

    def __init__(self, *args, **kwargs):
        pass

    def runs(self, path=None, filters=None, order="+created_at", per_page=50, **kwargs):
        FakeApi.calls.append((path, filters))
        return list(FakeApi.runs_to_return)


def _iso(t: float) -> str:
    return datetime.fromtimestamp(t, tz=timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def _wandb_runs(grid):
    """The grid as W&B would hold it: config (with ``_wandb`` and a wrapped value), summary with
    W&B's own keys; plus a crashed run, a running one (no summary status) and an older duplicate."""
    out, t0 = [], 1_700_000_000.0
    for k, p in enumerate(p for ps in grid["real"].values() for p in ps):
        cfg = yaml.safe_load((p / "config.yaml").read_text())
        cfg["_wandb"] = {"value": {"cli_version": "0.17.0"}}
        cfg["seed"] = {"value": cfg["seed"], "desc": None}
        cfg["logger"] = {"name": "wandb", "project": "proj", "mode": "online"}  # volatile: not identity
        summary = json.loads((p / "summary.json").read_text())
        summary.update({"_timestamp": t0 + 100 * k + 50, "_runtime": 12.0, "_step": 32, "train/loss": 1.0})
        out.append(FakeRun(f"id{k}", p.name, cfg, summary, "finished", _iso(t0 + 100 * k)))
    first = out[0]
    dup_summary = dict(first.summary._d, **{"test/acc": 99.0, "_timestamp": t0 - 500})
    out.append(FakeRun("old0", first.name, dict(first.config), dup_summary, "finished", _iso(t0 - 1000)))
    crashed = dict(first.config, seed=5)
    out.append(FakeRun("crash", "crashed", crashed, {"_step": 3}, "crashed", _iso(t0 + 900)))
    running = dict(first.config, seed=6)
    out.append(FakeRun("live", "running", running, {"_step": 3, "train/loss": 2.0}, "running", _iso(t0 + 950)))
    return out


@needs_data
def test_wandb_source_matches_local(grid, tmp_path, monkeypatch):
    import wandb

    from sparse_exp.analysis.__main__ import main
    from sparse_exp.analysis.collect import collect_local, collect_wandb
    from sparse_exp.analysis.tables import build_tables, cells_frame

    FakeApi.calls, FakeApi.runs_to_return = [], _wandb_runs(grid)
    monkeypatch.setattr(wandb, "Api", FakeApi)
    filters = {"config.dataset.value.name": "fashion_mnist"}
    coll = collect_wandb("ent/proj", filters=filters)
    assert FakeApi.calls == [("ent/proj", filters)]

    assert len(coll.runs) == 4 and set(coll.runs["status"]) == {"completed"}
    reasons = dict(zip(coll.excluded["name"] + "/" + coll.excluded["path"], coll.excluded["reason"]))
    assert len(reasons) == 3
    assert any(k.endswith("wandb:ent/proj/old0") and v.startswith("superseded") for k, v in reasons.items())
    assert any(k.endswith("wandb:ent/proj/crash") and "'failed'" in v for k, v in reasons.items())
    assert any(k.endswith("wandb:ent/proj/live") and "'running'" in v for k, v in reasons.items())

    # same run identities and the same table cells as the local run directories
    local = collect_local([grid["runs"]])
    assert sorted(coll.runs["run_id"]) == sorted(local.runs["run_id"])
    key = ["table", "method", "dataset", "model", "sparsity", "metric", "status", "n", "markdown"]
    a = cells_frame(build_tables(coll.runs))[key]
    b = cells_frame(build_tables(local.runs))[key]
    pd.testing.assert_frame_equal(a.reset_index(drop=True), b.reset_index(drop=True))

    # the CLI with --source wandb
    out = tmp_path / "wb"
    assert main(["--source", "wandb", "--project", "ent/proj", "--out", str(out), "--no-figures",
                 "--filters", json.dumps(filters)]) == 0
    assert len(pd.read_csv(out / "runs.csv")) == 4
    assert (out / "table1.md").exists()


def test_dedupe_keeps_latest_completed():
    """Unit check of the dedupe rules on hand-made records (no training)."""
    from sparse_exp.analysis.collect import dedupe, make_record, to_frame

    cfg = {"model": {"name": "lenet5"}, "dataset": {"name": "fashion_mnist"}, "sparsifier": {"name": "rigl"},
           "superposer": {"name": "none"}, "distribution": {"name": "erk"}, "sparsity": 0.9, "seed": 0,
           "epochs": 2, "device": "cpu"}
    done = {"status": "completed", "test/acc": 50.0}
    recs = [make_record(cfg, done, source="local", path="a", name="a", time=1.0),
            make_record(dict(cfg, device="cuda"), dict(done, **{"test/acc": 60.0}), source="local", path="b",
                        name="b", time=2.0),  # same run (device is volatile), later: counted
            make_record(dict(cfg, seed=1), {"status": "stopped"}, source="local", path="c", name="c", time=3.0),
            make_record(dict(cfg, seed=0), None, source="local", path="d", name="d", time=4.0)]
    coll = dedupe(to_frame(recs))
    assert list(coll.runs["path"]) == ["b"] and list(coll.runs["test/acc"]) == [60.0]
    reasons = dict(zip(coll.excluded["path"], coll.excluded["reason"]))
    assert reasons["a"].startswith("superseded duplicate")
    assert "'stopped'" in reasons["c"] and "'no summary'" in reasons["d"]
    assert recs[0]["run_id"] == recs[1]["run_id"] != recs[2]["run_id"]
    assert recs[0]["cell_id"] == recs[2]["cell_id"]  # seeds share a cell


def test_paper_numbers_transcription_and_keys():
    """The published numbers are consistent where the paper repeats them, and every one of them
    has a cell of the same key in our tables (so --compare-paper can match it)."""
    from sparse_exp.analysis.paper_numbers import compare, load_paper_numbers
    from sparse_exp.analysis.tables import build_tables, cells_frame

    p = load_paper_numbers()
    assert set(p["table"]) == {1, 2, 3, 4, 5, 6, 7}
    key = ["table", "method", "dataset", "model", "sparsity", "metric"]
    assert not p.duplicated(key).any()

    def val(table, method, ds, model, s, metric="test/acc"):
        r = p[(p["table"] == table) & (p["method"] == method) & (p["dataset"] == ds) & (p["model"] == model)
              & (p["sparsity"] == s) & (p["metric"] == metric)]
        assert len(r) == 1, (table, method, ds, model, s)
        return float(r["mean"].iloc[0]), float(r["std"].iloc[0])

    assert val(1, "rigl+sup", "cifar100", "vgg16", 0.95) == (71.31, 0.21)
    assert val(2, "set", "cifar100", "resnet50", 0.8) == (78.45, 0.50)
    assert val(3, "rigl", "imagenet", "resnet50_imagenet", 0.9, "flops/train")[0] == 0.25
    for model, t in (("vgg16", 1), ("resnet50", 2)):
        for s in (0.95, 0.9, 0.8):  # Table 5 C=8 = Table 7 "ours" = the main table's RigL+Sup-tickets
            assert val(5, "rigl+sup/C=8", "cifar100", model, s) == val(t, "rigl+sup", "cifar100", model, s) \
                == val(7, "rigl+sup/lr=triangle", "cifar100", model, s)
            for ds in ("cifar10", "cifar100"):  # Table 4 = the main tables' GraNet+Sup-tickets and dense
                assert val(4, "granet+sup", ds, model, s) == val(t, "granet+sup", ds, model, s)
        for ds in ("cifar10", "cifar100"):
            assert val(4, "dense", ds, model, 0.0) == val(t, "dense", ds, model, 0.0)

    cells = cells_frame(build_tables(pd.DataFrame()))
    ours = set(map(tuple, cells[cells["paper_cell"]][key].astype(str).values))
    theirs = set(map(tuple, p[key].astype(str).values))
    assert theirs <= ours, sorted(theirs - ours)[:5]
    # ours next to theirs, with the difference
    fake = cells[cells["paper_cell"]].copy()
    hit = (fake["table"] == 1) & (fake["method"] == "rigl") & (fake["dataset"] == "cifar10") & (fake["sparsity"] == 0.9)
    fake.loc[hit, ["n", "mean", "std"]] = [3, 93.0, 0.1]
    cmp = compare(fake)
    row = cmp[(cmp["table"] == 1) & (cmp["method"] == "rigl") & (cmp["dataset"] == "cifar10")
              & (cmp["sparsity"] == 0.9)]
    assert row["n"].item() == 3 and row["diff"].item() == pytest.approx(93.0 - 93.48)
    assert (cmp["n"] > 0).sum() == 1


def test_sweeps_fill_their_tables():
    """Every run of the paper's sweeps (sweeps/*.yaml, seed 0) lands in its table's cells, the
    cells hold one config variant each, and each sweep fills its table's paper cells completely."""
    from omegaconf import OmegaConf

    from sparse_exp.analysis.collect import dedupe, make_record, to_frame
    from sparse_exp.analysis.figures import AVERAGING, _avg_filters
    from sparse_exp.analysis.selection import method_filters, select
    from sparse_exp.analysis.tables import build_tables
    from sparse_exp.config.compose import compose
    from sparse_exp.run.grid_status import expand_sweep

    tables = {f"table{n}": n for n in range(1, 8)}
    names = list(tables) + ["fig3", "fig4", "smoke"]
    plans = {n: expand_sweep(n, ["seed=0"]) for n in names}
    metrics = {"status": "completed", "test/acc": 50.0, "test/ece": 0.05, "test/nll": 1.0, "flops/train": 0.5,
               "flops/test": 0.4, "diversity/disagreement": 0.01, "diversity/kl": 0.02, "tickets/count": 3,
               "tickets/mean/test/acc": 49.0}
    records = []
    for n, plan in plans.items():
        for job in plan.jobs:
            cfg = OmegaConf.to_container(compose(job.overrides), resolve=True)
            records.append(make_record(cfg, metrics, source="local", path=f"{n}/{job.subdir}", name=job.subdir,
                                       time=float(len(records))))
    coll = dedupe(to_frame(records))
    assert set(coll.excluded["reason"].str.slice(0, 20)) <= {"superseded duplicate"}  # same run in two sweeps
    results = {r.spec.number: r for r in build_tables(coll.runs)}
    run_ids = pd.DataFrame(records).groupby(pd.DataFrame(records)["path"].str.split("/").str[0])["run_id"]
    placed_ids = {}
    for n, res in results.items():
        assert res.complete, (n, [c.spec.where + " " + c.spec.method for c in res.required(True) if not c.values])
        assert all(not c.note for c in res.values()), [(c.spec.method, c.spec.where, c.note)
                                                       for c in res.values() if c.note]
        paths = {p for c in res.required(True) for p in c.paths}
        placed_ids[n] = set(coll.runs.loc[coll.runs["path"].isin(paths), "run_id"])
    for name, n in tables.items():
        assert set(run_ids.get_group(name)) <= placed_ids[n], name
    # the smoke grid lands in Table 1's layout (Fashion-MNIST columns)
    smoke = [c for c in results[1].required(False) if c.values]
    assert {(c.spec.method, c.spec.dataset, c.spec.sparsity) for c in smoke} == {
        ("set", "fashion_mnist", 0.9), ("rigl", "fashion_mnist", 0.9)}
    # Figure 3: every averaging rule at every sparsity; Figure 4: 2 / 4 / 7 tickets
    for avg, beta, label in AVERAGING:
        got = select(coll.runs, _avg_filters(avg, beta))
        got = got[(got["dataset"] == "cifar100") & (got["model"] == "vgg16")]
        assert sorted(got["sparsity"]) == [0.8, 0.9, 0.95], label
    fig4 = select(coll.runs, method_filters("rigl+sup/any_tickets"))
    fig4 = fig4[fig4["model"] == "wrn28_10"]
    assert sorted(set(fig4["cfg.superposer.num_tickets"].dropna().astype(int))) == [2, 4, 7]
