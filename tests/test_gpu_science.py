"""``make gpu-science ARGS=--dry-run``: both grids of benchmarks/gpu_science.py at tiny sizes on the CPU, packed as
separate processes, and the report with ``make tables``' output for each grid."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import needs_data

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.slow
@needs_data
def test_the_gpu_science_dry_run_completes_both_grids_and_their_tables(tmp_path):
    out = tmp_path / "out"
    res = subprocess.run([sys.executable, "benchmarks/gpu_science.py", "--dry-run", "--runs", str(tmp_path / "runs"),
                          "--out", str(out)], cwd=ROOT, capture_output=True, text=True, timeout=400)
    assert res.returncode == 0, res.stdout[-4000:] + res.stderr[-2000:]
    js = sorted(out.glob("*-science-dry-run.json"))
    assert len(js) == 1
    report = json.loads(js[0].read_text())
    cells = {(r["grid"], r["cell"], r["seed"]): r for r in report["runs"]}
    assert sorted(cells) == [("A", "rigl_95", 0), ("A", "rigl_sup_95", 0), ("A", "rigl_sup_95_peak0.05", 0),
                             ("B", "all_four_annealed", 0), ("B", "baseline", 0)]
    for r in cells.values():
        assert r["status"] == "completed" and r["exit_code"] == 0 and 0 <= r["test/acc"] <= 100, r
    assert report["meta"]["stopped_at_s"] is None
    st, anymask = report["tables"]["st_regime"], report["tables"]["anymask"]
    assert "RigL + Sup-tickets" in st and "cycle LR peak 0.05" in st
    assert "| baseline |" in anymask and "| all four |" in anymask
    md = js[0].with_suffix(".md").read_text()
    assert "## Grid A" in md and "## Grid B" in md and "| A | rigl_sup_95_peak0.05 | 0 | completed |" in md
