"""The forking launcher of ``tests/forked.py`` reports what a fresh ``python`` would: exit codes, stdout and
stderr per job, and a failed first import with its error. The refusal and first-import tests rely on it."""

import os

from forked import first_imports, run_module_many


def test_module_jobs_report_exit_code_and_output_per_job(tmp_path):
    env = {**os.environ, "SPARSE_EXP_RUNS": str(tmp_path / "runs"), "WANDB_MODE": "disabled"}
    done = run_module_many("sparse_exp.train", {
        "help": {"args": ["--help"], "env": env},
        "bad": {"args": ["sparsity=2"], "env": env},
        "data-env": {"args": ["superposer=none", "epochs=1"], "env": {**env, "SPARSE_EXP_DATA": "/nonexistent/data"}},
    }, tmp_path / "out")
    assert done["help"].returncode == 0 and "sparsifier" in done["help"].stdout and done["help"].stderr == ""
    assert done["bad"].returncode == 2 and done["bad"].stdout == ""
    assert done["bad"].stderr.startswith("error: sparsity=2") and len(done["bad"].stderr.splitlines()) == 1
    # each job runs with its own environment: only this one looks for the data under /nonexistent/data
    assert done["data-env"].returncode == 2 and "/nonexistent/data" in done["data-env"].stderr
    assert not (tmp_path / "runs").exists()


def test_first_imports_reports_only_the_failing_module():
    failed = first_imports(["sparse_exp.engine.loop", "sparse_exp.no_such_module"], ["torch"])
    assert list(failed) == ["sparse_exp.no_such_module"]
    assert failed["sparse_exp.no_such_module"].startswith("ModuleNotFoundError")
