"""``make gpu-check ARGS=--dry-run``: every step of benchmarks/gpu_check.py at tiny sizes on the CPU, and the
report it writes (so the GPU check cannot rot between GPU sessions)."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import needs_data

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.slow
@needs_data
def test_the_gpu_check_dry_run_writes_every_step_and_figure(tmp_path):
    out, rep = tmp_path / "out", tmp_path / "report"
    res = subprocess.run([sys.executable, "benchmarks/gpu_check.py", "--dry-run", "--out", str(out), "--report-dir",
                          str(rep), "--work", str(tmp_path / "work")], cwd=ROOT, capture_output=True, text=True,
                         timeout=400)
    assert res.returncode == 0, res.stdout[-4000:] + res.stderr[-2000:]
    js = sorted(out.glob("*-dry-run.json"))
    assert len(js) == 1 and (rep / js[0].name).exists() and js[0].with_suffix(".md").exists()
    report = json.loads(js[0].read_text())
    steps = report["steps"]
    assert sorted(steps) == list("abcdef")
    assert {k: s["status"] for k, s in steps.items()} == dict.fromkeys("abcdef", "ok")
    assert report["meta"]["dry_run"] and report["meta"]["seconds"] < 300

    env = steps["a"]["figures"]
    assert env["torch"] and env["cuda_available"] is False
    assert Path(env["modules"]["sparse_exp"]["from"]).resolve() == ROOT / "sparse_exp"
    assert Path(env["modules"]["hydra_plugins.sparse_exp_sweeper"]["from"]).resolve().is_relative_to(ROOT)

    b = steps["b"]["figures"]
    assert "tests/test_cuda.py" in b["files"] and "tests/test_fast.py" in b["files"]
    assert b["counts"]["skipped"] >= 8 and "passed" not in b["counts"] and "skipped" in b["summary"]

    for model, m in steps["c"]["figures"].items():
        assert m["ips"] > 0 and m["rows"]["reference"]["images_per_s"] > 0, model
        assert m["best_mode"] in m["rows"] and m["best/ref"] > 0
        assert m["update"] > 0 and len(m["superpose"]) == 2 and m["static"] > 0 and m["cyclic"] > 0
        assert "skipped" in m["rows"]["graphs"]["skip"]  # CUDA-only on CPU

    d = steps["d"]["figures"]
    for name in ("eager", "fast"):
        assert 0 <= d[name]["test/acc"] <= 100 and d[name]["train_s"] > 0 and d[name]["wall_s"] > d[name]["train_s"]
    assert d["fast"]["overrides"] == ["fast.dtype=bf16"]

    runs = steps["e"]["figures"]["runs"]
    assert sorted(runs, key=int) == ["1", "2", "4"]
    for n, row in runs.items():
        assert len(row["test/acc"]) == int(n) and row["images_per_s_sum"] > 0 and row["wall_vs_n_times_one"] > 0

    f = steps["f"]["figures"]
    assert f["interrupted"] == {"exit_code": 143, "status": "stopped"}
    assert 2 * 9 <= f["stopped_at_step"] < 4 * 9  # in epoch 3 of 4 (9 steps each) or, at worst, 4
    assert all(f["checks"].values()) and f["tickets"] == [2, 2] and f["status"] == ["completed", "completed"]
    assert f["bitwise_equal"]  # CPU resume is bitwise (README "Resuming")

    md = js[0].with_suffix(".md").read_text()
    for heading in ("## a. Environment", "## b. CUDA tests", "## c. Epoch time", "## d. The default experiment",
                    "## e. Packed runs", "## f. Sup-tickets run killed and resumed"):
        assert heading in md, heading
