"""Stop signals are honoured in every phase (issue 24, item 5).

* Unit: :func:`sparse_exp.engine.preemption.poll` raises :class:`StopRequested` only inside an active
  ``with PreemptionGuard()`` block that has seen a signal; :func:`polled` stops before the next fetch;
  ``except Exception`` does not swallow the stop; Ctrl-C twice is a ``KeyboardInterrupt``; ``finish()`` on SIGINT
  exits 130 without the previous handler.
* The real CLI in a subprocess (slow): SIGTERM / SIGUSR2 sent while GradInit (LRsI) or SynFlow scoring runs end
  the process within 10 s; the same command again ends bitwise equal to an uninterrupted run. Ctrl-C prints one
  line, exits 130, records ``interrupted``; the rerun resumes and completes equal to the uninterrupted run.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from conftest import ROOT, TINY, cli_run_dir, needs_data

from sparse_exp.engine import preemption
from sparse_exp.engine.preemption import PreemptionGuard, StopRequested, current, poll, polled

#: one run with a long SynFlow scoring (~2-5 s on a 2-core CPU) and a long GradInit (~3-6 s) before 3 short epochs
RUN = [o for o in TINY if not o.startswith("dataset.subset_train=")] + [
    "dataset.subset_train=4096", "superposer=none", "model=lenet5", "sparsifier=synflow", "sparsifier.iterations=2000",
    "sparsity=0.9", "tweaks=[lrsi]", "tweaks.lrsi.iterations=400", "epochs=3"]
#: the log line each phase starts with (sparse_exp/sparse/sparsifiers/pai.py, sparse_exp/tweaks/lrsi.py)
MARKERS = {"SynFlow": "synflow: scoring the weights at initialisation", "GradInit": "LRsI: GradInit"}
EXIT_WITHIN_S = 10.0
VOLATILE = ("time/", "finished_at", "run_dir", "git", "tweaks/lrsi/seconds")


# ================================================================ unit
@pytest.fixture
def restore_signals():
    saved = {s: signal.getsignal(s) for s in (signal.SIGUSR2, signal.SIGTERM, signal.SIGINT)}
    yield
    for s, h in saved.items():
        signal.signal(s, h)


def _deliver(guard, sig):
    n = len(guard.received)
    os.kill(os.getpid(), sig)
    for _ in range(400):  # the Python-level handler runs at the next bytecode boundary
        if len(guard.received) > n:
            return
        time.sleep(0.005)
    raise AssertionError(f"{sig!r} was not delivered")


def test_poll_is_a_no_op_outside_a_guard_block(restore_signals):
    assert current() is None
    poll("anything")  # no guard: nothing happens
    guard = PreemptionGuard()  # installed, but not entered: poll does not read it (library use, fit's own guard)
    _deliver(guard, signal.SIGTERM)
    poll("anything")
    guard.uninstall()


def test_poll_raises_once_a_signal_arrived_and_names_the_phase(restore_signals):
    with PreemptionGuard() as guard:
        assert current() is guard
        poll("GradInit")  # no signal yet
        _deliver(guard, signal.SIGTERM)
        with pytest.raises(StopRequested) as exc:
            poll("GradInit")
        assert exc.value.signum == signal.SIGTERM and exc.value.phase == "GradInit"
        assert str(exc.value) == "SIGTERM during GradInit"
    assert current() is None
    poll("after the block")  # the guard is gone


def test_nested_guards_restore_the_outer_one(restore_signals):
    with PreemptionGuard() as outer:
        with PreemptionGuard() as inner:
            assert current() is inner
        assert current() is outer
    assert current() is None


def test_stop_is_not_swallowed_by_except_exception(restore_signals):
    def phase():
        try:
            poll("scoring")
        except Exception:  # what a phase may do around its work
            return "swallowed"
        return "went on"

    with PreemptionGuard() as guard:
        assert phase() == "went on"
        _deliver(guard, signal.SIGUSR2)
        with pytest.raises(StopRequested):
            phase()
    assert issubclass(StopRequested, BaseException) and not issubclass(StopRequested, Exception)


def test_polled_stops_before_fetching_the_next_item(restore_signals):
    fetched = []

    def items():
        for i in range(5):
            fetched.append(i)
            yield i

    with PreemptionGuard() as guard:
        seen = []
        with pytest.raises(StopRequested) as exc:
            for i in polled(items(), "BN pass"):
                seen.append(i)
                if i == 1:
                    _deliver(guard, signal.SIGTERM)
        assert exc.value.phase == "BN pass"
    assert seen == [0, 1] and fetched == [0, 1], "item 2 must not be loaded after the stop"
    assert list(polled(range(3), "outside")) == [0, 1, 2]


def test_ctrl_c_once_is_recorded_twice_interrupts(restore_signals):
    signal.signal(signal.SIGINT, signal.default_int_handler)
    with PreemptionGuard(preemption.default_signals(interrupt=True)) as guard:
        _deliver(guard, signal.SIGINT)
        assert guard.requested and guard.signum == signal.SIGINT
        with pytest.raises(KeyboardInterrupt):
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(1)  # the handler raises at the next bytecode
        with pytest.raises(SystemExit) as exc:
            guard.finish()
        assert exc.value.code == 130, "Ctrl-C: exit 130, not the KeyboardInterrupt of the previous handler"
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


def test_sigint_is_caught_only_by_the_command_lines_guard(restore_signals):
    assert signal.SIGINT not in preemption.default_signals()
    assert preemption.default_signals(interrupt=True)[-1] == signal.SIGINT
    guard = PreemptionGuard(preemption.default_signals(interrupt=True), install=False)
    guard.received.append(signal.SIGINT)
    assert guard.reason == "SIGINT (Ctrl-C: checkpoint and exit)"


# ================================================================ the real CLI
def _env(runs):
    # one intra-op thread: the same numerics in every process, and no OpenMP spin-waiting on a shared CPU
    return {**os.environ, "SPARSE_EXP_RUNS": str(runs), "WANDB_MODE": "disabled", "PYTHONUNBUFFERED": "1",
            "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}


def _cmd():
    return [sys.executable, "-m", "sparse_exp.train", *RUN]


def _summary(run_dir: Path) -> dict:
    return json.loads((run_dir / "summary.json").read_text())


def _result(run_dir: Path):
    """What must be bitwise equal: the final checkpoint's model and masks, metrics.jsonl and summary.json (without
    times and paths)."""
    ck = torch.load(run_dir / "checkpoint.pt", map_location="cpu", weights_only=False)
    rows = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines() if x.strip()]
    rows = [{k: v for k, v in r.items() if not k.startswith(VOLATILE)} for r in rows]
    summary = {k: v for k, v in _summary(run_dir).items() if not k.startswith(VOLATILE)}
    return ck["model"], ck["masking"]["masks"], rows, summary


def _assert_same(a: Path, b: Path):
    ma, ka, ra, sa = _result(a)
    mb, kb, rb, sb = _result(b)
    assert ma.keys() == mb.keys() and all(torch.equal(ma[k], mb[k]) for k in ma), "final weights differ"
    assert ka.keys() == kb.keys() and all(torch.equal(ka[k], kb[k]) for k in ka), "final masks differ"
    assert ra == rb
    assert sa["status"] == sb["status"] == "completed" and sa == sb


def _rerun(runs: Path) -> subprocess.CompletedProcess:
    res = subprocess.run(_cmd(), cwd=ROOT, env=_env(runs), capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    return res


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """RUN uninterrupted."""
    runs = tmp_path_factory.mktemp("reference")
    _rerun(runs)
    return cli_run_dir(runs, RUN)


def _signal_at(runs: Path, marker: str, sig: int, after: float = 0.3):
    """Start RUN, wait for the log line ``marker``, send ``sig`` ``after`` s later; returns
    ``(exit code, seconds from the signal to the exit, stdout, stderr)``."""
    err_path = runs / "stderr.txt"
    runs.mkdir(parents=True, exist_ok=True)
    with open(err_path, "w") as err:
        proc = subprocess.Popen(_cmd(), cwd=ROOT, env=_env(runs), stdout=subprocess.PIPE, stderr=err, text=True)
        lines = []
        try:
            for line in proc.stdout:
                lines.append(line)
                if marker in line:
                    break
            else:
                pytest.fail(f"the run ended (rc {proc.wait()}) before {marker!r}:\n{''.join(lines)[-3000:]}"
                            f"{err_path.read_text()[-3000:]}")
            time.sleep(after)
            assert proc.poll() is None
            t0 = time.monotonic()
            proc.send_signal(sig)
            rest = proc.stdout.read()
            rc = proc.wait(timeout=120)
            elapsed = time.monotonic() - t0
        finally:
            if proc.poll() is None:
                proc.kill()
    return rc, elapsed, "".join(lines) + rest, err_path.read_text()


@needs_data
@pytest.mark.slow
@pytest.mark.parametrize("phase,sig,relaunch", [("GradInit", signal.SIGTERM, True),
                                                 ("GradInit", signal.SIGUSR2, False),
                                                 ("SynFlow", signal.SIGTERM, False),
                                                 ("SynFlow", signal.SIGUSR2, True)],
                         ids=["GradInit-TERM", "GradInit-USR2", "SynFlow-TERM", "SynFlow-USR2"])
def test_stop_signal_during_a_set_up_phase_exits_promptly(tmp_path, reference, phase, sig, relaunch):
    """No checkpoint exists yet in either phase: the run exits within 10 s with 128 + signum (what submitit's
    handler would be given; SLURM: tests/test_slurm.py), records ``stopped`` and the phase, and the same command
    starts again and ends bitwise equal to the uninterrupted run."""
    rc, elapsed, out, err = _signal_at(tmp_path, MARKERS[phase], sig)
    print(f"\n{phase} {signal.Signals(sig).name}: signal to exit {elapsed:.1f} s", file=sys.stderr)
    assert rc == 128 + sig, out[-3000:] + err[-3000:]
    assert elapsed < EXIT_WITHIN_S, f"{elapsed:.1f} s from the signal to the exit"
    assert "Traceback" not in out + err
    assert f"PreemptionGuard: {signal.Signals(sig).name}" in out
    run_dir = cli_run_dir(tmp_path, RUN)
    summary = _summary(run_dir)
    expected_phase = "GradInit" if phase == "GradInit" else "pruning-at-init scoring"
    assert summary["status"] == "stopped" and summary["phase"] == expected_phase, summary
    assert summary["signal"] == signal.Signals(sig).name and summary["step"] == 0
    assert not (run_dir / "checkpoint.pt").exists()
    if relaunch:
        res = _rerun(tmp_path)
        assert "resumed from" not in res.stdout + res.stderr, "there was nothing to resume from"
        _assert_same(run_dir, reference)


@needs_data
@pytest.mark.slow
def test_ctrl_c_during_set_up_prints_one_line_and_exits_130(tmp_path):
    rc, elapsed, out, err = _signal_at(tmp_path, MARKERS["SynFlow"], signal.SIGINT)
    assert rc == 130, out[-3000:] + err[-3000:]
    assert elapsed < EXIT_WITHIN_S
    assert err.strip().splitlines() == ["interrupted during pruning-at-init scoring at epoch 1, step 0; run the same "
                                        "command to start again; no checkpoint was written yet"], err
    assert "Traceback" not in out + err and "KeyboardInterrupt" not in out + err
    run_dir = cli_run_dir(tmp_path, RUN)
    assert _summary(run_dir)["status"] == "interrupted"

    from sparse_exp.run.grid_status import read_run
    assert read_run(run_dir, run_dir.name).status == "interrupted"


@needs_data
@pytest.mark.slow
def test_ctrl_c_mid_training_resumes_to_the_uninterrupted_result(tmp_path, reference):
    """Ctrl-C after the first epoch's checkpoint: one line saying where and from which checkpoint the same command
    resumes, exit 130, ``summary.json`` says ``interrupted`` (grid status too); the rerun resumes and ends bitwise
    equal to the uninterrupted run."""
    run_dir = cli_run_dir(tmp_path, RUN)
    rc, elapsed, out, err = _signal_at(tmp_path, "epoch 1/3", signal.SIGINT, after=0.0)
    assert rc == 130, out[-3000:] + err[-3000:]
    assert elapsed < EXIT_WITHIN_S
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in out + err, err
    assert re.fullmatch(r"interrupted (during evaluation )?at epoch [23], step \d+; run the same command to resume "
                        r"from the checkpoint (written at step \d+|of epoch [123])", lines[0]), lines[0]
    summary = _summary(run_dir)
    assert summary["status"] == "interrupted" and summary["signal"] == "SIGINT", summary

    from sparse_exp.run.grid_status import read_run
    assert read_run(run_dir, run_dir.name).status == "interrupted"
    res = _rerun(tmp_path)
    assert "resumed from" in res.stdout + res.stderr
    _assert_same(run_dir, reference)
