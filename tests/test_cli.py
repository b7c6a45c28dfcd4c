"""The entrypoint as a user runs it: bad configs refused cleanly, finished runs never overwritten."""

import json
import os
import subprocess
import sys

import pytest
from conftest import ROOT, TINY, cli_run_dir, needs_data


def run_cli(args, runs_dir, extra_env=None):
    env = {**os.environ, "SPARSE_EXP_RUNS": str(runs_dir), "WANDB_MODE": "disabled", **(extra_env or {})}
    return subprocess.run([sys.executable, "-m", "sparse_exp.train", *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=600)


@pytest.mark.parametrize("override,key", [
    ("sparsity=1.5", "sparsity"),
    ("sparsity=-0.1", "sparsity"),
    ("epochs=0", "epochs"),
    ("optimizer.lr=-1", "optimizer.lr"),
    ("dataset.root=/nonexistent/fmnist", "/nonexistent/fmnist"),
    ("superposer=sup_tickets superposer.cycle_epochs=50", "superposer.cycle_epochs"),
    ("superposer=sup_tickets superposer.lr_low=0.01 superposer.lr_high=0.001", "superposer.lr_low"),
    ("superposer=sup_tickets superposer.phase_fraction=1.5", "superposer.phase_fraction"),
    ("superposer=sup_tickets superposer.num_tickets=0", "superposer.num_tickets"),
    ("sparsifier=dense", "sparsity"),
])
def test_bad_value_is_refused_with_one_clear_line(tmp_path, override, key):
    existing = tmp_path / "runs" / override.replace("/", "_").replace(" ", ",")
    res = run_cli(override.split() + ["logger=none"], tmp_path / "runs")
    assert res.returncode == 2, res.stderr
    err = res.stderr.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and key in err[0], res.stderr
    assert "Traceback" not in res.stderr + res.stdout
    assert not any((tmp_path / "runs").rglob("*.yaml")), "nothing may be written for a refused config"
    assert not existing.exists() or not any(existing.iterdir())


def test_unknown_model_lists_the_allowed_names(tmp_path):
    res = run_cli(["model=resnet9000"], tmp_path / "runs")
    assert res.returncode != 0
    assert "Traceback" not in res.stderr
    assert "resnet9000" in res.stderr and "lenet5" in res.stderr


def test_unknown_key_is_refused(tmp_path):
    res = run_cli(["optimizer.lrr=0.1"], tmp_path / "runs")
    assert res.returncode != 0 and "Traceback" not in res.stderr and "lrr" in res.stderr


def test_a_moved_key_is_refused_with_its_new_name(tmp_path):
    res = run_cli(["dataset.sup_cycle_epochs=2", "logger=none"], tmp_path / "runs")
    assert res.returncode == 2 and "Traceback" not in res.stderr
    assert "dataset.sup_cycle_epochs=2 is not allowed" in res.stderr
    assert "moved to superposer.dataset_defaults.cycle_epochs" in res.stderr, res.stderr
    assert not any((tmp_path / "runs").rglob("*.yaml"))


def test_missing_data_root_says_how_to_get_it(tmp_path):
    res = run_cli(["logger=none"], tmp_path / "runs", {"SPARSE_EXP_DATA": str(tmp_path / "nodata")})
    assert res.returncode == 2
    assert "dataset-fashion-mnist" in res.stderr and "Traceback" not in res.stderr


def test_bad_value_writes_nothing_into_an_existing_run_dir(tmp_path):
    runs = tmp_path / "runs"
    run_dir = cli_run_dir(runs, ["epochs=0", "logger=none"])
    assert run_dir.name == "epochs=0", "logger is left out of run directory names"
    run_dir.mkdir(parents=True)
    (run_dir / "summary.json").write_text('{"status": "completed", "test/acc": 1.0}')
    before = {p.name: p.read_bytes() for p in run_dir.iterdir()}
    res = run_cli(["epochs=0", "logger=none"], runs)
    assert res.returncode == 2
    assert {p.name: p.read_bytes() for p in run_dir.iterdir()} == before


@needs_data
def test_finished_run_is_not_overwritten(tmp_path):
    runs = tmp_path / "runs"
    # RigL with an update every 4 steps (the default delta_t=100 does not fit in 16 steps and is refused)
    args = TINY + ["epochs=1", "model=lenet_300_100", "superposer=none", "sparsifier.delta_t=4"]
    first = run_cli(args, runs)
    assert first.returncode == 0, first.stderr[-2000:]
    (run_dir,) = [p.parent for p in runs.rglob("summary.json")]
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["status"] == "completed"
    assert (run_dir / "config.yaml").exists() and (run_dir / "git.json").exists()
    assert (run_dir / "masks.pt").exists() and (run_dir / "checkpoint.pt").exists() and (run_dir / "model.pt").exists()
    assert (run_dir / "curves.png").exists(), "every completed run draws its learning curves"
    stamps = {p.name: (p.stat().st_mtime_ns, p.read_bytes()) for p in run_dir.iterdir() if p.is_file()}
    second = run_cli(args, runs)
    assert second.returncode == 0
    assert "already completed" in second.stdout + second.stderr
    assert {p.name: (p.stat().st_mtime_ns, p.read_bytes()) for p in run_dir.iterdir() if p.is_file()} == stamps


def test_multirun_flag_anywhere():
    from sparse_exp.train import _multirun_flag_first

    assert _multirun_flag_first(["train.py", "+sweep=smoke", "-m", "hydra/launcher=slurm"]) == \
        ["train.py", "-m", "+sweep=smoke", "hydra/launcher=slurm"]
    assert _multirun_flag_first(["train.py", "sparsity=0.9"]) == ["train.py", "sparsity=0.9"]


HOLD_LOCK = """
import sys, time
from sparse_exp.run.run_dir import RunDir
with RunDir(sys.argv[1]).exclusive():
    print("locked", flush=True)
    time.sleep(600)
"""


@needs_data
def test_second_process_is_refused_while_a_run_trains(tmp_path):
    """Two processes never train into one directory: while one holds the run (here a process that
    took the lock and hangs), the same command exits 2 naming the holder's pid and touches nothing;
    once the holder is killed (SIGKILL: no clean-up code runs), the command trains normally."""
    runs = tmp_path / "runs"
    # RigL with an update every 4 steps (the default delta_t=100 does not fit in 16 steps and is refused)
    args = TINY + ["epochs=1", "model=lenet_300_100", "superposer=none", "sparsifier.delta_t=4"]
    run_dir = cli_run_dir(runs, args)
    holder = subprocess.Popen([sys.executable, "-c", HOLD_LOCK, str(run_dir)], cwd=ROOT, stdout=subprocess.PIPE,
                              text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        before = {p.name: p.read_bytes() for p in run_dir.iterdir()}
        res = run_cli(args, runs)
        assert res.returncode == 2, res.stdout[-2000:] + res.stderr[-2000:]
        assert f"run directory {run_dir} is in use by another process (pid {holder.pid} on" in res.stderr
        assert "Traceback" not in res.stderr
        assert {p.name: p.read_bytes() for p in run_dir.iterdir()} == before
    finally:
        holder.kill()
        holder.wait()
    res = run_cli(args, runs)
    assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-2000:]
    assert json.loads((run_dir / "summary.json").read_text())["status"] == "completed"


@needs_data
def test_log_outside_a_terminal_has_one_line_per_epoch_and_no_progress_bar(tmp_path):
    """``make train > log 2>&1``, SLURM and CI logs: stderr is not a terminal, so no tqdm bar (which writes
    carriage-return updates) even with ``progress=true``; one log line per epoch."""
    args = [o for o in TINY if not o.startswith("progress")] + [
        "progress=true", "epochs=3", "model=lenet_300_100", "superposer=none", "sparsifier.delta_t=4", "log_every=2"]
    out = run_cli(args, tmp_path / "runs")
    assert out.returncode == 0, out.stderr[-2000:]
    log = out.stdout + out.stderr
    assert "\r" not in log, "a progress bar was drawn into a log that is not a terminal"
    epoch_lines = [line for line in log.splitlines() if " epoch " in f" {line}" and "/3 " in line]
    assert len(epoch_lines) == 3, epoch_lines
    assert len(log.splitlines()) < 60, log


def test_help_is_the_project_page_with_every_option_and_no_internal_group(tmp_path):
    from sparse_exp.config.help import USER_GROUPS

    out = run_cli(["--help"], tmp_path / "runs")
    assert out.returncode == 0, out.stderr[-2000:]
    page = out.stdout
    assert page.startswith("sparse_exp: sparse neural network training")
    for group in USER_GROUPS:
        for option in sorted(p.stem for p in (ROOT / "conf" / group).glob("*.yaml")):
            assert option in page, f"{group}={option} is missing from --help"
    assert "schema/" not in page and "fig3_averaging" not in page and "table3_method" not in page
    assert "fast.*" in page and "python -m sparse_exp.train +sweep=table1 -m hydra/launcher=slurm" in page
    assert not (tmp_path / "runs").exists(), "--help wrote a run directory"
