# make gpu-science   (= python benchmarks/gpu_science.py; ARGS='--dry-run' on CPU, ARGS='--out DIR' for a copy)
"""The real-data questions a CPU cannot reach, as packed runs sharing one GPU, in at most 10 minutes.

    PYTHONPATH=/tmp/site:. SPARSE_EXP_DATA=$PWD/data/fashion-mnist python benchmarks/gpu_science.py --out $OUT
    python benchmarks/gpu_science.py --dry-run --out /tmp/gs     # tiny sizes on CPU (CI test)

Grids (every run a separate ``python -m sparse_exp.train`` process, all started together on the one GPU):

A. **Sup-tickets on a BN ResNet in the paper's regime**: ResNet-32 on the full Fashion-MNIST with the
   ``st_fmnist`` protocol (``sweeps/st_fmnist_protocol/default.yaml``: 195 epochs, three 6.5-epoch cycles of
   2,795 steps, the last 10 % cyclic), RigL 95 % against RigL 95 % + Sup-tickets at the paper's cycle LR
   (0.001 -> 0.005) and at peak 0.05; ``fast.cuda_graphs=true`` (eager on CPU).
B. **Any-mask tweaks on full data**: ResNet-32, SNIP 95 %, best-validation reporting, ``--epochs-b`` epochs:
   the baseline against all four tweaks with annealed schedules (ghost skip alpha 1 -> 0 over the first half,
   then removed; soft neurons blended back to ReLU over the first half; label smoothing 0.1; LRsI before
   training); eager (their steps change during training, so graphs are refused).

What is cut to fit 10 minutes on one H200 (estimates in docs/gpu.md): grid A runs seed 0 only by default
(``--seeds-a 0,1,2`` for all three), grid B 30 epochs instead of ToST's 182. At the deadline every run still
training is sent SIGTERM: it checkpoints and stops, the report lists it, and the same command later resumes it
(runs live under ``--runs``, default ``runs/gpu_science``). The report, ``<date>-science.md`` + ``.json``
(``docs/measured/gpu``; with ``--dry-run`` ``runs/gpu_science``; and ``--out``), holds ``make tables``' output
for both grids (``st_regime.md``, ``anymask.md``) and each run's status and time.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Dict, List, Optional

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(Path(__file__).resolve().parent))
from gpu_check import find_data, git_commit  # noqa: E402  (the same data lookup and commit stamp)

A_CELLS = {  # name -> overrides on top of sweeps/gpu_science/st_resnet32.yaml (st_dry.yaml in a dry run)
    "rigl_95": ["superposer=none"],
    "rigl_sup_95": [],
    "rigl_sup_95_peak0.05": ["superposer.lr_high=0.05"],
}
B_CELLS = {"baseline": "anymask_resnet32", "all_four_annealed": "anymask_resnet32_annealed"}  # sweeps/gpu_science/
B_DRY = {"baseline": "anymask_dry", "all_four_annealed": "anymask_dry_annealed"}


def grid(args: argparse.Namespace) -> List[Dict[str, Any]]:
    """Every run: its grid, cell, seed and command-line overrides (the protocols are config files, so run
    directory names stay short: ``sweeps/gpu_science/``)."""
    dev = ["device=cpu"] if args.dry_run else ["device=cuda"]
    runs = []
    for seed in args.seeds_a if "A" in args.grids else []:
        for cell, extra in A_CELLS.items():
            proto = "st_dry" if args.dry_run else "st_resnet32"
            runs.append({"grid": "A", "cell": cell, "seed": seed,
                         "overrides": [f"+sweep/gpu_science={proto}", *dev, *extra, f"seed={seed}"]})
    for seed in args.seeds_b if "B" in args.grids else []:
        for cell, proto in (B_DRY if args.dry_run else B_CELLS).items():
            over = [f"+sweep/gpu_science={proto}", *dev, f"seed={seed}"]
            if args.epochs_b is not None:
                over.append(f"epochs={args.epochs_b}")
            runs.append({"grid": "B", "cell": cell, "seed": seed, "overrides": over})
    return runs


def ints(text: str) -> List[int]:
    return [int(x) for x in text.split(",") if x.strip()]


def main(argv: Optional[List[str]] = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dry-run", action="store_true", help="tiny sizes on the CPU (CI)")
    p.add_argument("--grids", default="A,B", help="A, B or A,B (default both, started together)")
    p.add_argument("--seeds-a", type=ints, default=None, help="grid A seeds (default 0)")
    p.add_argument("--seeds-b", type=ints, default=None, help="grid B seeds (default 0,1,2; dry run 0)")
    p.add_argument("--epochs-b", type=int, default=None,
                   help="grid B epochs (default: the protocol's, 30; dry run 2; the schedules end at epoch 15 / 1)")
    p.add_argument("--budget", type=float, default=570.0,
                   help="seconds until still-running runs are stopped (default 570: 10 min with start-up and tables)")
    p.add_argument("--runs", default=None, help="run directories (default runs/gpu_science[_dry])")
    p.add_argument("--report-dir", default=None, help="default docs/measured/gpu; --dry-run: the runs directory")
    p.add_argument("--out", action="append", default=[], help="also copy the report here (repeatable)")
    args = p.parse_args(argv)
    args.grids = [g.strip().upper() for g in args.grids.split(",") if g.strip()]
    if not args.grids or set(args.grids) - {"A", "B"}:
        p.error("--grids takes A, B or A,B")
    t0 = time.monotonic()
    args.seeds_a = args.seeds_a if args.seeds_a is not None else [0]
    args.seeds_b = args.seeds_b if args.seeds_b is not None else ([0] if args.dry_run else [0, 1, 2])
    runs_dir = Path(args.runs or ROOT / ("runs/gpu_science_dry" if args.dry_run else "runs/gpu_science")).resolve()
    data = find_data()
    if data is None:
        print("error: Fashion-MNIST not found: set SPARSE_EXP_DATA to the four files' directory", file=sys.stderr)
        return 2
    env = dict(os.environ, SPARSE_EXP_DATA=str(data), WANDB_MODE=os.environ.get("WANDB_MODE", "disabled"))
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT)] + [x for x in env.get("PYTHONPATH", "").split(os.pathsep) if x])
    if args.dry_run:
        env["OMP_NUM_THREADS"] = "1"
    plan = grid(args)
    print(f"gpu_science: {len(plan)} runs together ({'dry run on CPU' if args.dry_run else 'GPU'}), budget "
          f"{args.budget:.0f} s, runs in {runs_dir}", flush=True)
    logs = runs_dir / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    procs = []
    for r in plan:
        r["runs_root"] = str(runs_dir / r["grid"])
        name = f"{r['grid']}_{r['cell']}_s{r['seed']}"
        log = open(logs / f"{name}.log", "w")
        cmd = [sys.executable, "-m", "sparse_exp.train", *r["overrides"]]
        r["started"] = time.monotonic()
        procs.append((r, subprocess.Popen(cmd, cwd=ROOT, env=dict(env, SPARSE_EXP_RUNS=r["runs_root"]), stdout=log,
                                          stderr=subprocess.STDOUT), log))
    stopped_at = None
    while any(pr.poll() is None for _, pr, _ in procs):
        if stopped_at is None and time.monotonic() - t0 > args.budget:
            stopped_at = time.monotonic() - t0
            for _, pr, _ in procs:
                if pr.poll() is None:
                    pr.send_signal(signal.SIGTERM)  # checkpoint and stop; the same command resumes
        if stopped_at is not None and time.monotonic() - t0 > args.budget + 25:
            for _, pr, _ in procs:
                if pr.poll() is None:
                    pr.kill()
        for r, pr, _ in procs:
            if pr.poll() is not None and "seconds" not in r:
                r["seconds"], r["exit_code"] = time.monotonic() - r["started"], pr.returncode
        time.sleep(0.5)
    for r, pr, log in procs:
        log.close()
        r.setdefault("seconds", time.monotonic() - r["started"])
        r["exit_code"] = pr.returncode
        path = Path(r["runs_root"]) / _dirname(r) / "summary.json"
        found = json.loads(path.read_text()) if path.exists() else None
        r["status"] = found.get("status") if found else "missing"
        r["test/acc"] = found.get("test/acc") if found else None
        r["train_s"] = found.get("time/train_s") if found else None
        if r["exit_code"] not in (0, None) and r["status"] != "stopped":
            r["log_tail"] = (logs / f"{r['grid']}_{r['cell']}_s{r['seed']}.log").read_text(errors="replace")[-1500:]
    tables = {}
    tab_dir = runs_dir / "tables"
    res = subprocess.run([sys.executable, "-m", "sparse_exp.analysis", "--source", "local", "--runs", str(runs_dir),
                          "--out", str(tab_dir), "--compare-paper"], cwd=ROOT, env=env, capture_output=True, text=True,
                         timeout=300)
    for name in ("st_regime", "anymask"):
        f = tab_dir / f"{name}.md"
        tables[name] = f.read_text() if f.exists() else None
    report = {"meta": {"date": dt.date.today().isoformat(), "dry_run": args.dry_run, "commit": git_commit(),
                       "command": "python benchmarks/gpu_science.py "
                                  + " ".join(argv if argv is not None else sys.argv[1:]),
                       "budget_s": args.budget, "stopped_at_s": stopped_at, "seconds": time.monotonic() - t0,
                       "seeds_a": args.seeds_a, "seeds_b": args.seeds_b,
                       "epochs_b": args.epochs_b or (2 if args.dry_run else 30),
                       "tables_exit_code": res.returncode},
              "runs": [{k: v for k, v in r.items() if k not in ("started",)} for r in plan], "tables": tables}
    if res.returncode:
        report["tables_log"] = (res.stdout + res.stderr)[-3000:]
    md = markdown(report)
    name = f"{report['meta']['date']}-science" + ("-dry-run" if args.dry_run else "")
    report_dir = Path(args.report_dir or (runs_dir if args.dry_run else ROOT / "docs/measured/gpu"))
    for d in [report_dir] + [Path(o) for o in args.out]:
        d.mkdir(parents=True, exist_ok=True)
        (d / f"{name}.md").write_text(md)
        (d / f"{name}.json").write_text(json.dumps(report, indent=1, default=str) + "\n")
        print(f"report: {d / name}.md (+ .json)")
    done = sum(r["status"] == "completed" for r in plan)
    print(f"gpu_science: {done} of {len(plan)} runs completed in {report['meta']['seconds']:.0f} s")
    return 0 if done == len(plan) and not res.returncode else 1


def _dirname(r: Dict[str, Any]) -> str:
    """The run directory's name ``python -m sparse_exp.train <overrides>`` uses (Hydra's override_dirname)."""
    from sparse_exp.config.compose import compose, run_name  # the CLI's own directory naming

    if "_dir" not in r:
        from hydra._internal.config_loader_impl import get_overrides_dirname
        from hydra.core.override_parser.overrides_parser import OverridesParser

        cfg = compose(r["overrides"], return_hydra_config=True)
        od = cfg.hydra.job.config.override_dirname
        r["_dir"] = run_name(get_overrides_dirname(OverridesParser.create().parse_overrides(r["overrides"]),
                                                   list(od.exclude_keys), od.item_sep, od.kv_sep))
    return r["_dir"]


def markdown(report: Dict[str, Any]) -> str:
    m = report["meta"]
    out = [f"# GPU science {m['date']}{' (dry run on CPU: tiny sizes, numbers not to quote)' if m['dry_run'] else ''}",
           "", f"`{m['command']}`; commit `{m['commit']}`; {len(report['runs'])} runs started together; total "
           f"{m['seconds']:.0f} s" + (f"; runs still training were stopped at {m['stopped_at_s']:.0f} s (rerun the "
                                      "command to resume them)" if m["stopped_at_s"] else "") + ".", "",
           ("Dry run: grid A is LeNet-5 on 768 images for 10 epochs, grid B ResNet-32 on 512 images "
            "(sweeps/gpu_science/st_dry.yaml, anymask_dry*.yaml). At GPU sizes, " if m["dry_run"] else "")
           + "A: ResNet-32, full Fashion-MNIST, st_fmnist protocol (195 epochs, 3 cycles of 2,795 steps), RigL 95 % "
           f"± Sup-tickets (cycle LR peak 0.005, and 0.05); seeds {m['seeds_a']}. B: ResNet-32, SNIP 95 %, "
           f"{m['epochs_b']} epochs, best-validation report, baseline vs all four tweaks annealed (the table's row "
           f"'all four'); seeds {m['seeds_b']}.",
           "", "| grid | cell | seed | status | s | training s | test acc % |", "|---|---|---|---|---|---|---|"]
    for r in report["runs"]:
        acc = f"{r['test/acc']:.2f}" if isinstance(r.get("test/acc"), (int, float)) else "-"
        ts = f"{r['train_s']:.0f}" if isinstance(r.get("train_s"), (int, float)) else "-"
        out.append(f"| {r['grid']} | {r['cell']} | {r['seed']} | {r['status']} | {r['seconds']:.0f} | {ts} | {acc} |")
    out.append("")
    for name, title in (("st_regime", "Grid A: `make tables` st_regime.md"),
                        ("anymask", "Grid B: `make tables` anymask.md")):
        out += [f"## {title}", "", report["tables"].get(name) or "(no table: no completed run of this grid)", ""]
    fails = [r for r in report["runs"] if r.get("log_tail")]
    if fails or report.get("tables_log"):
        out += ["## Failures", ""]
        for r in fails:
            out += [f"- {r['grid']} {r['cell']} seed {r['seed']}: exit code {r['exit_code']}", "", "```", r["log_tail"],
                    "```"]
        if report.get("tables_log"):
            out += ["- make tables:", "", "```", report["tables_log"], "```"]
    return "\n".join(out) + "\n"


if __name__ == "__main__":
    sys.exit(main())
