"""The paper's grids (sweeps/*.yaml): each composes, expands into exactly the paper's job list,
names every run directory after every key that varies, and follows the paper's protocol.

Nothing is trained here except the ``smoke`` grid (a real ``-m`` run with Hydra's basic launcher,
which checks that the directories Hydra creates are the ones :func:`expand_sweep` predicts).
"""

from __future__ import annotations

import fcntl
import json
import os
import re
import subprocess
import sys
from collections import defaultdict

import pytest
from conftest import CONF, ROOT, needs_data
from omegaconf import OmegaConf, open_dict

from sparse_exp.config.compose import compose
from sparse_exp.config.validate import validate
from sparse_exp.run.grid_status import collect, expand_sweep, sweep_names
from sparse_exp.superposers.cyclic_lr import make_budget

#: runs per grid, as in the paper (methods x sparsities x data sets x models x seeds)
EXPECTED_JOBS = {
    "smoke": 4,  # 2 sparsifiers x 2 seeds
    "table1": 2 * 3 * 6 * 3,  # data sets x sparsities x (SET/RigL/GraNet +- Sup-tickets) x seeds = 108
    "table2": 2 * 3 * 10 * 3,  # ... x (SNIP/ERK/SET/RigL/GraNet +- Sup-tickets) x seeds = 180
    "table3": 4 * 2 * 3,  # (RigL/GraNet +- Sup-tickets) x 80/90 % x seeds = 24
    "table4": 4 * 3 * 2 * 3,  # (dense + GraNet/Sup-tickets x 3 sparsities) x models x data sets x seeds = 72
    "table5": 4 * 2 * 3 * 3,  # cycle lengths x models x sparsities x seeds = 72
    "table6": 2 * 3,  # SET/RigL + Sup-tickets x seeds = 6
    "table7": 3 * 2 * 3 * 3,  # LR schedules x models x sparsities x seeds = 54
    "fig3": 7 * 3 * 3,  # CIA, CAA, CIMA x 5 betas x sparsities x seeds = 63
    "fig3_offline": 3 * 3,  # sparsities x seeds, the 7 rules superposed offline from saved tickets
    "fig4": 3 * 3 * 3,  # ticket counts x sparsities x seeds = 27
    # the any-mask paper (Jaiswal et al. ICML 2022) in its code's protocol; rows = baseline, 4 tweaks, all
    "anymask": 2 * 4 * 4 * 6 * 3,  # data sets x PaI masks x IMP levels x rows x seeds = 576
    "anymask_lth": 2 * 4 * 6 * 3,  # data sets x IMP levels x rows x seeds = 144
    "anymask_dst": 2 * 2 * 2 * 2 * 2 * 3,  # data sets x RigL/GraNet x +-Sup-tickets x +-tweaks x 2 sparsities x seeds
    # the CPU measurement of docs/measured.md (Fashion-MNIST, ResNet-32)
    "anymask_fmnist": 2 * 2 * 3,  # random/SNIP x baseline/all x seeds = 12
    "anymask_fmnist_single": 4,  # each tweak alone, SNIP, seed 0
    "fig3_fmnist": 3 * 3,  # Figure 3 the cheap way in the default experiment's protocol
    # Sup-tickets in the paper's regime on Fashion-MNIST (cycles of the paper's length in steps)
    "st_fmnist": 8 * 3,  # RigL +- Sup-tickets at 90/95 %, SET / GraNet +- Sup-tickets at 95 % x seeds = 24
    "st_fmnist_cycles": 3,  # cycle lengths 1.625 / 3.25 / 9.75 epochs (6.5 is st_fmnist's cell), seed 0
    "st_fmnist_lr": 2 * 3,  # cycle LR peak 0.02 / 0.05 (0.005 is st_fmnist's cell) x seeds
    "vit_fmnist": 3,  # model=vit: dense / RigL 90 % / RigL 90 % + Sup-tickets, seed 0 (docs/vit.md)
    "topology_fmnist": 3 * 2 * 3,  # RigL / SET / GraNet + Sup-tickets x cycle LR peak 0.005 / 0.05 x seeds
}
#: grids in the any-mask code's protocol (sweeps/anymask_protocol/tost.yaml)
ANYMASK = ("anymask", "anymask_lth", "anymask_dst")
#: small grids that run on a CPU (not a paper protocol)
CPU = ("smoke", "anymask_fmnist", "anymask_fmnist_single", "fig3_fmnist", "st_fmnist", "st_fmnist_cycles",
       "st_fmnist_lr", "vit_fmnist", "topology_fmnist")
SINGLE_SEED = ("smoke", "anymask_fmnist_single", "st_fmnist_cycles", "vit_fmnist")
PAPER = [n for n in EXPECTED_JOBS if n not in CPU]
#: sweeps that write into another sweep's directory (the ablation's C = 6.5 cell is st_fmnist's run)
SHARED_DIR = {"st_fmnist_cycles": "st_fmnist", "st_fmnist_lr": "st_fmnist"}
CIFAR = {"cifar10", "cifar100"}


def test_every_sweep_is_known_and_documented():
    assert set(sweep_names()) == set(EXPECTED_JOBS), "a sweep was added or removed: update EXPECTED_JOBS"
    readme = (ROOT / "sweeps" / "README.md").read_text()
    for name in EXPECTED_JOBS:
        assert f"+sweep={name}" in readme, f"sweeps/README.md does not list {name}"


def test_sweep_group_is_the_sweeps_directory():
    """Hydra's group ``sweep`` is ``conf/sweep``: the committed relative link to ``sweeps/``."""
    link = CONF / "sweep"
    assert link.is_symlink() and os.readlink(link) == "../sweeps", \
        "conf/sweep must stay the relative symlink to ../sweeps (sweeps/README.md)"
    assert link.resolve() == (ROOT / "sweeps").resolve()
    assert sweep_names() == sorted(p.stem for p in (ROOT / "sweeps").glob("*.yaml"))


@pytest.fixture(scope="module")
def plans():
    return {name: expand_sweep(name) for name in EXPECTED_JOBS}


@pytest.mark.parametrize("name", list(EXPECTED_JOBS))
def test_sweep_expands_to_the_papers_grid(plans, name):
    plan = plans[name]
    text = (ROOT / "sweeps" / f"{name}.yaml").read_text()
    assert text.startswith("# @package _global_")
    assert f"python -m sparse_exp.train +sweep={name} -m" in text, "the header names the command"
    assert len(plan.jobs) == EXPECTED_JOBS[name]
    # one directory per run: never two runs in one directory
    subdirs = [j.subdir for j in plan.jobs]
    assert len(set(subdirs)) == len(subdirs)
    home = SHARED_DIR.get(name, name)
    assert plan.sweep_dir.endswith(f"/{home}") or plan.sweep_dir == home
    # every key that varies in the grid is in every run's directory name, seed included
    hcfg = compose([f"+sweep={name}"], return_hydra_config=True)
    excluded = set(hcfg.hydra.job.config.override_dirname.exclude_keys)
    varying = [k for k, v in plan.params.items() if "," in v]
    assert "seed" in varying or name in SINGLE_SEED
    for key in varying:
        assert key.lstrip("+~") not in excluded, f"grid key {key} is excluded from the run directory name"
    for job in plan.jobs:
        for o in job.overrides:
            key = o.split("=", 1)[0]
            if key in varying:
                assert o.replace("/", "_") in job.subdir.split(","), (o, job.subdir)
    if name not in SINGLE_SEED:
        assert plan.params["seed"] == "0,1,2", "3 seeds, as in the paper"


def _compose_job(overrides):
    return compose(overrides, return_hydra_config=True)


@pytest.mark.parametrize("name", list(EXPECTED_JOBS))
def test_every_cell_composes_validates_and_follows_the_protocol(plans, name):
    """Compose and validate every distinct cell (seeds only change ``seed``: one seed per cell)."""
    plan = plans[name]
    first_seed = plan.jobs[0].overrides[[o.split("=")[0] for o in plan.jobs[0].overrides].index("seed")]
    cells = [j for j in plan.jobs if first_seed in j.overrides]
    assert len(cells) * len(plan.params["seed"].split(",")) == len(plan.jobs)
    seen = {}
    tickets = defaultdict(set)
    for job in cells:
        cfg = _compose_job(job.overrides)
        assert cfg.hydra.sweep.subdir == job.subdir, "expand_sweep names directories as Hydra does"
        with open_dict(cfg):
            del cfg["hydra"]
        validate(cfg)  # the checks `python -m sparse_exp.train` runs before loading data
        key = OmegaConf.to_yaml(cfg, resolve=True)
        assert key not in seen, f"{job.overrides} and {seen.get(key)} are the same experiment"
        seen[key] = job.overrides
        ds = cfg.dataset.name
        if name == "smoke":
            assert (cfg.epochs, ds, cfg.logger.name, cfg.schedule.warmup_epochs) == (2, "fashion_mnist", "none", 1)
            continue
        if name in ("anymask_fmnist", "anymask_fmnist_single"):
            assert (cfg.model.name, ds, cfg.epochs, cfg.sparsity, cfg.report) == ("resnet32", "fashion_mnist", 10,
                                                                                  0.95, "best_val")
            assert cfg.superposer.name == "none" and cfg.dataset.subset_train == 3072
            continue
        if name == "fig3_fmnist":  # the default experiment's protocol, with saved tickets
            default = compose([f"sparsity={cfg.sparsity}", f"seed={cfg.seed}", "logger=none", "progress=false",
                               "superposer.save_tickets=true"])
            for key in ("model", "dataset", "sparsifier", "distribution", "optimizer", "schedule", "epochs"):
                assert cfg[key] == default[key], key
            continue
        if name == "vit_fmnist":  # Adam: the cyclic LR at 1-5 % of its LR, as 0.001-0.005 is of SGD's 0.1
            assert (cfg.model.name, ds, cfg.epochs, cfg.optimizer.name, cfg.dataset.subset_train) == \
                ("vit", "fashion_mnist", 8, "adam", 12800)
            if cfg.superposer.name == "sup_tickets":
                sp = cfg.superposer
                budget = make_budget(cfg.epochs, 100, sp.cycle_epochs, sp.phase_fraction, sp.num_tickets)
                assert budget.num_tickets == 4 and (sp.lr_low, sp.lr_high) == (1e-5, 5e-5)
            continue
        if name == "topology_fmnist":  # st_fmnist's protocol shortened: 14 normal epochs + 3 tickets of 2 epochs
            sp = cfg.superposer
            assert (cfg.model.name, ds, cfg.epochs, cfg.batch_size, cfg.sparsity, cfg.distribution.name) == \
                ("lenet_300_100", "fashion_mnist", 20, 128, 0.95, "erk")
            assert (sp.name, sp.num_tickets, sp.cycle_epochs, sp.lr_low, sp.ticket_eval) == \
                ("sup_tickets", 3, 2, 0.001, "val_test") and sp.lr_high in (0.005, 0.05)
            assert cfg.sparsifier.name in ("rigl", "set", "granet")
            continue
        if name.startswith("st_fmnist"):  # the paper's CIFAR structure, counted in steps
            assert (cfg.model.name, ds, cfg.epochs, cfg.batch_size, cfg.dataset.val_size) == \
                ("lenet_300_100", "fashion_mnist", 195, 128, 5000)
            assert list(cfg.schedule.milestones) == [0.5, 0.75] and cfg.distribution.name == "erk"
            steps = 55_000 // 128 + 1  # 430 steps per epoch
            if cfg.superposer.name == "sup_tickets":
                sp = cfg.superposer
                budget = make_budget(cfg.epochs, steps, sp.cycle_epochs, sp.phase_fraction, sp.num_tickets)
                tickets[(ds, sp.cycle_epochs)].add(budget.num_tickets)
                peaks = (0.02, 0.05) if name == "st_fmnist_lr" else (0.005,)  # the paper's peak is 0.005
                assert (sp.lr_low, sp.averaging, sp.phase_fraction) == (0.001, "cia", 0.1) and sp.lr_high in peaks
                phase = budget.total_steps - budget.start_step  # the last 10 % in whole cycles of whole steps
                assert abs(phase - round(0.1 * 195 * steps)) <= budget.num_tickets, (phase, budget)
            continue
        if name in ANYMASK:  # the ToST code's protocol (../shared/notes/any-mask-tweaks.md sec. 5)
            assert (cfg.model.name, cfg.epochs, cfg.batch_size, cfg.report) == ("resnet18", 182, 128, "best_val")
            assert list(cfg.schedule.milestones) == [0.494505, 0.741758] and cfg.schedule.warmup_epochs == 0
            assert round(0.494505 * 182 * 352) == 90 * 352 and round(0.741758 * 182 * 352) == 135 * 352
            assert (cfg.optimizer.lr, cfg.optimizer.momentum, cfg.optimizer.weight_decay) == (0.1, 0.9, 2e-4)
            assert cfg.dataset.val_size == 5000 and cfg.distribution.dense_last_layer and ds in CIFAR
            if cfg.sparsifier.name == "lth":
                assert abs(cfg.sparsity - (1 - 0.8 ** cfg.sparsifier.rounds)) < 1e-6, "20 % per IMP round"
            else:
                assert round(cfg.sparsity, 6) in {0.790285, 0.892626, 0.945024, 0.971853, 0.9, 0.95}
            if "lrsi" in cfg.tweaks:
                assert cfg.tweaks.lrsi.iterations == 180, "GradInit with the ToST README's settings"
            if cfg.superposer.name == "sup_tickets":  # the paper's CIFAR setting: 8-epoch cycles in the last 10 %
                sp = cfg.superposer
                budget = make_budget(cfg.epochs, 352, sp.cycle_epochs, sp.phase_fraction, sp.num_tickets)
                assert (sp.cycle_epochs, sp.phase_fraction, budget.num_tickets) == (8, 0.1, 2)
            continue
        assert cfg.schedule.warmup_epochs == 0, "the paper's protocols have no LR warm-up"
        if ds in CIFAR:
            assert cfg.epochs == 250 and list(cfg.schedule.milestones) == [0.5, 0.75]
        else:
            assert ds == "imagenet" and cfg.epochs == 100
            assert list(cfg.schedule.milestones) == [0.3, 0.6, 0.85]
        assert cfg.schedule.name == "step" and cfg.optimizer.name == "sgd" and cfg.optimizer.lr == 0.1
        assert cfg.optimizer.momentum == 0.9 and cfg.schedule.gamma == 0.1
        assert cfg.distribution.name == "erk"
        if cfg.superposer.name == "sup_tickets":
            sp = cfg.superposer
            budget = make_budget(cfg.epochs, 100, sp.cycle_epochs, sp.phase_fraction, sp.num_tickets)
            tickets[(ds, sp.cycle_epochs)].add(budget.num_tickets)
            if ds in CIFAR:
                assert (sp.lr_low, sp.lr_high) == (0.001, 0.005)
            else:
                assert (sp.lr_low, sp.lr_high, sp.cycle_epochs) == (0.0001, 0.0005, 2)
    # cheap-ticket counts of the paper
    if name in ("table1", "table2", "table4", "table6", "table7", "fig3", "fig3_offline"):
        assert set(tickets) <= {("cifar10", 8), ("cifar100", 8)} and all(t == {3} for t in tickets.values())
    if name == "table3":
        assert tickets == {("imagenet", 2): {4}}, "4 cheap tickets in the last 8 epochs"
    if name == "table5":
        assert {c: t for (_, c), t in tickets.items()} == {2: {12}, 4: {6}, 8: {3}, 12: {2}}
    if name == "fig4":
        assert tickets == {("cifar100", 8): {2, 4, 7}}
    if name == "st_fmnist":  # 3 cycles of 2,795 steps: the paper's 8 epochs x 352 steps = 2,816
        assert tickets == {("fashion_mnist", 6.5): {3}} and round(6.5 * 430) == 2795
    if name == "st_fmnist_lr":
        assert tickets == {("fashion_mnist", 6.5): {3}}
    if name == "st_fmnist_cycles":  # Table 5's C = 2 / 12 epochs, scaled by 6.5 / 8
        assert tickets == {("fashion_mnist", 1.625): {12}, ("fashion_mnist", 3.25): {6},
                           ("fashion_mnist", 9.75): {2}}


def test_grid_contents(plans):
    """Spot checks of what each table compares (beyond the counts)."""
    def values(name, key):
        out = set()
        for j in plans[name].jobs:
            for o in j.overrides:
                if o.split("=", 1)[0] == key:
                    out.add(o.split("=", 1)[1])
        return out

    assert values("table1", "sparsifier") == {"set", "rigl", "granet"}
    assert values("table2", "sparsifier") == {"snip", "static", "set", "rigl", "granet"}
    for t in ("table1", "table2"):
        assert values(t, "superposer") == {"none", "sup_tickets"}
        assert values(t, "sparsity") == {"0.95", "0.9", "0.8"}
        assert values(t, "dataset") == {"cifar10", "cifar100"}
    assert values("table3", "sparsity") == {"0.8", "0.9"}
    assert values("table4", "model") == {"vgg16", "resnet50", "wrn28_10"}
    assert values("table5", "superposer.cycle_epochs") == {"2", "4", "8", "12"}
    assert values("table7", "superposer.lr_schedule") == {"triangle", "fge", "swa"}
    assert values("fig4", "superposer.num_tickets") == {"2", "4", "7"}
    cfg = _compose_job(["+sweep=fig3", "+sweep/fig3_averaging=cima_b20"])
    assert (cfg.superposer.averaging, cfg.superposer.beta) == ("cima", 0.2)
    for name in ("fig3_offline", "fig3_fmnist"):  # one CIA run per cell, the other six rules offline
        cfg = _compose_job([f"+sweep={name}"])
        assert cfg.superposer.averaging == "cia" and cfg.superposer.save_tickets
        rules = {(v.averaging, v.beta) for v in cfg.superposer.offline}
        assert rules == {("caa", None)} | {("cima", b) for b in (0.9, 0.8, 0.5, 0.2, 0.1)}
    cfg = _compose_job(["+sweep=table4", "+sweep/table4_method=dense"])
    assert (cfg.sparsifier.name, cfg.sparsity, cfg.superposer.name) == ("dense", 0, "none")


def test_command_line_narrows_a_grid():
    plan = expand_sweep("table1", ["seed=0", "dataset=cifar100"])
    assert len(plan.jobs) == 108 // 6
    assert all("seed=0" in j.subdir.split(",") and "dataset=cifar100" in j.subdir.split(",") for j in plan.jobs)


@needs_data
def test_hydra_multirun_creates_exactly_the_predicted_directories(tmp_path, monkeypatch):
    """Sweeper params do reach ``hydra.job.override_dirname``: real ``-m`` runs of the smoke grid
    create the 4 predicted run directories, all completed. Launching half the grid first, then the
    whole grid, launches only the missing half; a third launch launches nothing and touches nothing."""
    env = {**os.environ, "SPARSE_EXP_RUNS": str(tmp_path), "WANDB_MODE": "disabled", "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "sparse_exp.train", "-m", "+sweep=smoke", "device=cpu"]
    res = subprocess.run(cmd + ["seed=0"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=400)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    assert "grid of 2 runs checked" in res.stdout + res.stderr
    res = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=400)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    out = res.stdout + res.stderr
    assert "grid of 4 runs checked" in out and "2 already completed (not launched), 2 to launch" in out, out[-3000:]
    assert re.findall(r"#\d+ : (.*)", out) == ["sparsifier=set seed=1 +sweep=smoke device=cpu",
                                                "sparsifier=rigl seed=1 +sweep=smoke device=cpu"], out[-3000:]
    monkeypatch.setenv("SPARSE_EXP_RUNS", str(tmp_path))
    plan = expand_sweep("smoke", ["device=cpu"])
    sweep_dir = tmp_path / "smoke"
    assert plan.sweep_dir == str(sweep_dir)
    made = sorted(p.name for p in sweep_dir.iterdir() if p.is_dir() and not p.name.startswith("."))
    assert made == sorted(j.subdir for j in plan.jobs)
    for name in made:
        assert json.loads((sweep_dir / name / "summary.json").read_text())["status"] == "completed"
    res_status = collect(sweep_dir, plan)
    assert res_status["counts"]["completed"] == 4 and res_status["extra"] == []

    stamps = {p: p.stat().st_mtime_ns for p in sweep_dir.rglob("*") if p.is_file() and ".submitit" not in p.parts}
    res = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=400)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    out = res.stdout + res.stderr
    assert "4 already completed (not launched), 0 to launch" in out, out[-3000:]
    assert "Launching" not in out and "run already completed" not in out, "a job was launched"
    assert {p: p.stat().st_mtime_ns for p in stamps} == stamps, "a completed run was touched"


def test_invalid_cells_stop_the_grid_before_anything_is_launched(tmp_path):
    """One bad cell anywhere in a grid: every bad cell is named (overrides + key + allowed values),
    exit code 2, no job launched, no directory created."""
    env = {**os.environ, "SPARSE_EXP_RUNS": str(tmp_path / "runs"), "WANDB_MODE": "disabled"}
    cmd = [sys.executable, "-m", "sparse_exp.train", "-m", "+sweep=smoke", "device=cpu",
           "sparsifier=set,rigl,nosuch", "sparsity=0.9,1.5", "seed=0"]
    res = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert res.returncode == 2, res.stdout[-3000:] + res.stderr[-3000:]
    err = res.stderr
    assert "error: 4 of 6 runs in the grid are invalid; nothing was launched" in err, err
    bad = re.findall(r"^  \[(.*?)\] (.*)$", err, re.M)
    assert len(bad) == 4, err
    for cell, message in bad:
        if "sparsifier=nosuch" in cell:
            assert message.startswith("sparsifier=nosuch is not allowed: no such option") and "rigl" in message, message
        else:
            assert "sparsity=1.5" in cell and message.startswith("sparsity=1.5 is not allowed: must be in [0, 1)")
    assert "Traceback" not in err and "Launching" not in res.stdout
    assert not (tmp_path / "runs").exists(), "a directory was created for a refused grid"


def test_status_cli_reports_not_started(tmp_path):
    out = subprocess.run([sys.executable, "-m", "sparse_exp.status", str(tmp_path), "--sweep", "table3", "--json"],
                         cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    res = json.loads(out.stdout)
    assert res["total"] == 24 and res["counts"]["not started"] == 24
    # a run directory in each state
    names = [r["name"] for r in res["runs"]]
    for name, status in zip(names, ["completed", "running", "stopped", "failed", "running"]):
        (tmp_path / name).mkdir()
        (tmp_path / name / "summary.json").write_text(json.dumps({"status": status, "epochs": 100}))
    (tmp_path / names[5]).mkdir()
    (tmp_path / names[5] / "summary.json").write_text('{"status": "runn')  # truncated
    (tmp_path / "stray-run").mkdir()
    (tmp_path / "stray-run" / "config.yaml").write_text("seed: 0\n")
    with open(tmp_path / names[1] / ".lock", "a+") as lock:  # names[1] is being trained; names[4] was killed
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        out = subprocess.run([sys.executable, "-m", "sparse_exp.status", str(tmp_path), "--sweep", "table3"],
                             cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    text = out.stdout
    for state, n in [("completed", 1), ("running", 1), ("interrupted", 1), ("stopped", 1), ("failed", 1),
                     ("unreadable", 1), ("not started", 18)]:
        assert re.search(rf"^  {state}\s+{n}$", text, re.M), text
    assert "stray-run" in text and names[1] in text and names[0] not in text.split("not completed:")[1]
