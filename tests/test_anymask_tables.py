"""The any-mask tables (``anymask``, ``anymask_dst``; analysis/anymask.py) on hand-made run directories
(summary.json + config.yaml, no training): row order and labels, mean ± std cells, the ghost-path
note, the reporting rule, the "not available offline" statement; and the Sup-tickets paper's tables
never count a tweaked or best-validation run."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from conftest import ROOT

if str(ROOT) not in sys.path:  # `analysis` lives at the repository root
    sys.path.insert(0, str(ROOT))

ALL4 = "ghost_skip+label_smoothing+lrsi+soft_neurons"
GHOST = {"ghost/params": 46000, "ghost/params_inserted": 46000, "ghost/removed": False, "ghost/flops_train": 0.25,
         "params/nonzero": 20000}


def write_run(root: Path, name: str, *, sparsifier: str, seed: int, acc: float, tweaks: str = "none",
              superposer: str = "none", report: str = "last", model: str = "resnet32",
              dataset: str = "fashion_mnist", sparsity: float = 0.95, extra=None, legacy: bool = False) -> Path:
    """A completed run directory as sparse_exp.train writes it (the keys the analysis reads); ``legacy``: as
    it wrote it before the data set's Sup-tickets defaults moved from ``dataset.sup_*`` to
    ``superposer.dataset_defaults``."""
    d = root / name
    d.mkdir(parents=True)
    sup = {"averaging": "cia", "lr_schedule": "triangle", "cycle_epochs": 2, "num_tickets": None} \
        if superposer == "sup_tickets" else {}
    ds = {"name": dataset, "sup_cycle_epochs": 2} if legacy else {"name": dataset}
    if not legacy:
        sup["dataset_defaults"] = {"cycle_epochs": 2}
    cfg = {"model": {"name": model}, "dataset": ds,
           "sparsifier": {"name": sparsifier}, "superposer": {"name": superposer, **sup},
           "distribution": {"name": "erk"}, "sparsity": sparsity, "seed": seed, "epochs": 10, "report": report,
           "tweaks": {} if tweaks == "none" else {t: {"enabled": True} for t in tweaks.split("+")}}
    summary = {"status": "completed", "model": model, "dataset": dataset, "sparsifier": sparsifier,
               "superposer": superposer, "distribution": "erk", "sparsity": sparsity, "seed": seed, "epochs": 10,
               "test/acc": acc, "test/nll": 0.5, "test/ece": 0.02, "params/nonzero": 20000}
    if tweaks != "none":
        summary["tweaks"] = tweaks
    if report != "last":
        summary.update({"report": report, "report/epoch": 7})
    summary.update(extra or {})
    (d / "config.yaml").write_text(yaml.safe_dump(cfg))
    (d / "summary.json").write_text(json.dumps(summary))
    return d


#: (name, sparsifier, superposer, tweaks, report, [acc per seed])
STATIC = [("snip_base", "snip", "none", "none", "best_val", [80.0, 82.0]),
          ("snip_all", "snip", "none", ALL4, "best_val", [84.0, 85.0]),
          ("random_base", "random", "none", "none", "best_val", [70.0, 74.0]),
          ("random_all", "random", "none", ALL4, "best_val", [75.5, 76.5]),
          ("snip_ghost", "snip", "none", "ghost_skip", "best_val", [83.0])]
DST = [("rigl_base", "rigl", "none", "none", "last", [90.0, 91.0]),
       ("rigl_sup", "rigl", "sup_tickets", "none", "last", [91.5, 92.5]),
       ("rigl_all", "rigl", "none", ALL4, "last", [93.0, 94.0]),
       ("rigl_sup_all", "rigl", "sup_tickets", ALL4, "last", [95.0])]


@pytest.fixture()
def runs(tmp_path):
    root = tmp_path / "runs"
    paths = {}
    for name, sp, sup, tw, rep, accs in STATIC + DST:
        for seed, acc in enumerate(accs):
            extra = GHOST if "ghost_skip" in tw.split("+") else None
            paths.setdefault(name, []).append(write_run(root, f"{name}_seed{seed}", sparsifier=sp, seed=seed, acc=acc,
                                                        tweaks=tw, superposer=sup, report=rep, extra=extra))
    return root, paths


def _ms(vals):
    core = f"{np.mean(vals):.2f}" if len(vals) == 1 else f"{np.mean(vals):.2f} ± {np.std(vals, ddof=1):.2f}"
    return core


def _rows(md: str):
    """Markdown table rows (after the two header rows and the rule) as lists of stripped cells."""
    lines = [ln for ln in md.splitlines() if ln.startswith("|")]
    return [[c.strip() for c in ln.strip("|").split("|")] for ln in lines]


def _write(root, out, tables=None):
    from sparse_exp.analysis.__main__ import main

    args = ["--runs", str(root), "--out", str(out), "--no-figures", "--compare-paper"]
    return main(args + (["--tables", tables] if tables else []))


def test_anymask_table_rows_cells_and_notes(runs, tmp_path, capsys):
    root, _ = runs
    out = tmp_path / "results"
    assert _write(root, out) == 0
    stdout = capsys.readouterr().out
    md = (out / "anymask.md").read_text()
    assert md.startswith("**Table anymask.**")
    rows = _rows(md)
    assert rows[0] == ["Tweak", "SNIP", "Random"] and rows[2] == ["Sparsity", "95%", "95%"]
    assert rows[3][0] == "*ResNet-32 on Fashion-MNIST*"
    body = rows[4:]
    assert [r[0] for r in body] == ["baseline", "+ ghost skip connections", "all four"]  # the paper's order
    acc = {n: a for n, *_, a in STATIC}
    assert body[0][1:] == [f"{_ms(acc['snip_base'])} (n=2)", f"{_ms(acc['random_base'])} (n=2)"]
    assert body[0][1:] == ["81.00 ± 1.41 (n=2)", "72.00 ± 2.83 (n=2)"]  # by hand: std of (80, 82) = sqrt(2)
    assert body[1][1:] == ["83.00 (n=1)", "–"]
    assert body[2][1:] == ["**84.50 ± 0.71** (n=2)", "**76.00 ± 0.71** (n=2)"]  # best of each column: bold
    # the reporting rule, the ghost paths' parameters vs the kept weights, no published numbers offline
    assert "reported at the best-validation epoch (report=best_val" in md.split("\n")[0]
    assert "ghost paths" in md and "+2.30x the kept weights at 95%" in md and "kept in the final network" in md
    assert "46,000 dense parameters vs 20,000 non-zero weights" in md and "0.250x the dense model's" in md
    assert "paper: not available offline (the paper body is not in ../shared/papers" in md
    assert "not available offline" in stdout and "anymask.md/.tex" in stdout
    tex = (out / "anymask.tex").read_text()
    assert r"\label{tab:anymask}" in tex and r"\begin{tabular}{lcc}" in tex
    cells = pd.read_csv(out / "anymask_cells.csv")
    assert set(cells["table"]) == {"anymask", "anymask_dst"}
    hit = cells[(cells["table"] == "anymask") & (cells["method"] == "snip/tweaks=" + ALL4)]
    assert hit["mean"].item() == pytest.approx(84.5) and hit["n"].item() == 2
    status = (out / "status.md").read_text()
    assert "Table anymask (anymask.md): 5/6 cells filled" in status
    assert "Counted but in no table cell" not in status  # every run is placed


def test_anymask_dst_rows(runs, tmp_path):
    root, _ = runs
    out = tmp_path / "results"
    assert _write(root, out, "1,2,anymask_dst") == 0
    assert not (out / "anymask.md").exists()  # not asked for
    md = (out / "anymask_dst.md").read_text()
    rows = _rows(md)
    assert rows[0] == ["Method", "Fashion-MNIST (ResNet-32)"] and rows[2] == ["Sparsity", "95%"]
    acc = {n: a for n, *_, a in DST}
    assert rows[3:] == [["RigL", f"{_ms(acc['rigl_base'])} (n=2)"],
                        ["RigL + Sup-tickets", f"{_ms(acc['rigl_sup'])} (n=2)"],
                        ["RigL + all four tweaks", f"{_ms(acc['rigl_all'])} (n=2)"],
                        ["RigL + Sup-tickets + all four tweaks", "**95.00** (n=1)"]]  # no GraNet / SET runs
    assert rows[3][1] == "90.50 ± 0.71 (n=2)"
    assert "reported for the final model (report=last)" in md.split("\n")[0]
    assert "not available offline" in md and "no reference ran this combination" in md
    assert "+2.30x the kept weights at 95%" in md


def test_sup_tickets_tables_leave_out_tweaked_and_best_val_runs(runs, tmp_path):
    root, paths = runs
    out = tmp_path / "results"
    assert _write(root, out) == 0
    cells = pd.read_csv(out / "cells.csv", keep_default_na=False, na_values=[""])
    placed = {p for r in cells["runs"].dropna() for p in str(r).split(";") if p}
    paper_runs = {str(p) for n in ("rigl_base", "rigl_sup") for p in paths[n]}
    assert placed == paper_runs  # only the untweaked runs reported at the end, nothing else
    t2 = cells[(cells["table"] == 2) & (cells["dataset"] == "fashion_mnist") & (cells["sparsity"] == 0.95)]
    by = dict(zip(t2["method"], t2["markdown"]))
    assert by["rigl"] == "90.50 ± 0.71 (n=2)" and by["rigl+sup"].strip("*").startswith("92.00 ± 0.71")
    assert by["snip"] == "–"  # the SNIP runs report the best-validation epoch: not the paper's protocol


def test_no_tweaked_runs_no_anymask_tables(tmp_path):
    root = tmp_path / "runs"
    for seed, acc in enumerate((90.0, 91.0)):
        write_run(root, f"rigl{seed}", sparsifier="rigl", seed=seed, acc=acc)
        write_run(root, f"snip{seed}", sparsifier="snip", seed=seed, acc=acc)
    out = tmp_path / "results"
    out.mkdir()
    (out / "anymask.md").write_text("stale")
    assert _write(root, out) == 0
    assert not (out / "anymask.md").exists() and not (out / "anymask_dst.md").exists()
    assert not (out / "anymask_cells.csv").exists() and (out / "table1.md").exists()
    assert "anymask" not in (out / "status.md").read_text()


def test_paper_protocol_filter_and_old_runs_read_as_none():
    from sparse_exp.analysis.collect import make_record, to_frame
    from sparse_exp.analysis.selection import method_filters, select

    base = {"status": "completed", "model": "lenet5", "dataset": "fashion_mnist", "sparsifier": "rigl",
            "superposer": "none", "distribution": "erk", "sparsity": 0.9, "seed": 0, "epochs": 2, "test/acc": 50.0}
    old = make_record(None, base, source="local", path="old", name="old", time=0.0)  # from before the keys
    assert old["tweaks"] == "none" and old["report"] == "last"
    recs = [old, make_record(None, dict(base, tweaks="lrsi"), source="local", path="tw", name="tw", time=1.0),
            make_record(None, dict(base, report="best_val"), source="local", path="bv", name="bv", time=2.0)]
    df = to_frame(recs)
    assert dict(zip(df["path"], df["tweaks"])) == {"old": "none", "tw": "lrsi", "bv": "none"}
    assert list(select(df, method_filters("rigl"))["path"]) == ["old"]
    # a frame without the columns (or with gaps) reads them as their defaults
    bare = df.drop(columns=["tweaks", "report"])
    assert len(select(bare, method_filters("rigl"))) == 3
    gaps = df.assign(tweaks=df["tweaks"].replace("none", None), report=df["report"].replace("last", None))
    assert list(select(gaps, method_filters("rigl"))["path"]) == ["old"]


def test_mixed_reporting_rule_and_extra_combination(tmp_path):
    from sparse_exp.analysis.collect import collect_local
    from sparse_exp.analysis.render import to_markdown
    from sparse_exp.analysis.tables import build_anymask_tables

    root = tmp_path / "runs"
    write_run(root, "a", sparsifier="lth", seed=0, acc=60.0, report="best_val")
    write_run(root, "b", sparsifier="lth", seed=0, acc=61.0, tweaks="ghost_skip+lrsi", report="last",
              sparsity=0.790285, extra=dict(GHOST, **{"ghost/removed": True}))  # 7 IMP rounds of 20 %
    write_run(root, "c", sparsifier="grasp", seed=0, acc=62.0, tweaks="label_smoothing")
    res = {r.spec.number: r for r in build_anymask_tables(collect_local([root]).runs)}
    assert set(res) == {"anymask"}
    md = to_markdown(res["anymask"])
    rows = _rows(md)
    assert rows[0] == ["Tweak", "LTH", "", "GraSP"] and rows[2] == ["Sparsity", "95%", "79.0%", "95%"]
    assert [r[0] for r in rows[4:]] == ["baseline", "+ label smoothing", "ghost_skip + lrsi"]
    assert "reporting rule mixed (report=best_val in 1 runs, report=last in 2 runs" in md.split("\n")[0]
    assert "+2.30x the kept weights at 79.0%" in md and "removed before the end" in md
