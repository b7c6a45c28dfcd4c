"""Many short Python processes at the price of one interpreter start-up: fork them from a warm parent.

    python tests/forked.py JOBS.json     # what the helpers below run; not a command for users

A refused config costs about 4 s in a fresh interpreter, almost all of it importing torch and our
modules, and the refusal tests start 78 of them. Here one launcher process imports what
``preload`` names once, then forks one child per job (two at a time: CI has 2 cores). A child is
what a fresh ``python`` would be from that point on: it takes the job's environment, working
directory and ``sys.argv``, writes its stdout / stderr to its own files, runs the job, runs the exit
handlers, and exits with the job's exit code.

* :func:`run_module_many` runs ``python -m MODULE ARGS`` per job (``runpy``, as ``-m`` does), with the
  package preloaded. Start-up is not what those tests test: the CLI's own code runs exactly as
  under ``python -m``.
* :func:`first_imports` imports each module of ours as the first one of ours in its child, with
  only third-party packages preloaded: an import cycle among our modules fails there as it would
  in a fresh interpreter.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path
from types import SimpleNamespace
from typing import Dict, List, Sequence

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
PARALLEL = 2  # children at a time (CI has 2 cores)


def _child(job: dict) -> int:
    """Run one job in this (forked) process; return its exit code."""
    import atexit
    import logging
    import runpy
    import traceback

    os.chdir(job["cwd"])
    os.environ.clear()
    os.environ.update(job["env"])
    for fd, path in ((1, job["stdout"]), (2, job["stderr"])):
        f = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        os.dup2(f, fd)
        os.close(f)
    sys.stdout = open(1, "w", closefd=False)
    sys.stderr = open(2, "w", closefd=False)
    sys.stdin = open(os.devnull)
    code: object = 0
    try:
        if job["kind"] == "module":
            sys.argv = ["-m", *job["args"]]
            runpy.run_module(job["module"], run_name="__main__", alter_sys=True)
        else:
            __import__(job["module"])
    except SystemExit as exc:
        code = exc.code
    except BaseException:  # as the interpreter would: the traceback on stderr, exit code 1
        traceback.print_exc()
        code = 1
    if code is None:
        code = 0
    elif not isinstance(code, int):
        print(code, file=sys.stderr)
        code = 1
    try:
        atexit._run_exitfuncs()
        logging.shutdown()
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
    return code


def _launch(jobs: List[dict], preload: Sequence[str]) -> Dict[str, int]:
    """(In the launcher process.) Import ``preload``, then fork each job, ``PARALLEL`` at a time."""
    for name in preload:
        __import__(name)
    for module in {j["module"] for j in jobs if j["kind"] == "module"}:
        # its imports stay warm, the module itself is not imported: ``-m`` runs it as __main__ without
        # runpy's "found in sys.modules" warning, as in a fresh interpreter
        sys.modules.pop(module, None)
        parent, _, leaf = module.rpartition(".")
        if parent in sys.modules and hasattr(sys.modules[parent], leaf):
            delattr(sys.modules[parent], leaf)
    ours = sorted(m for m in sys.modules if m.split(".")[0] in ("sparse_exp", "analysis"))
    if not any(j["kind"] == "module" for j in jobs) and ours:
        raise RuntimeError(f"a first-import check must not preload our modules; loaded: {ours}")
    codes: Dict[str, int] = {}
    running: Dict[int, str] = {}
    pending = list(jobs)
    while pending or running:
        while pending and len(running) < PARALLEL:
            job = pending.pop(0)
            sys.stdout.flush()
            sys.stderr.flush()
            pid = os.fork()
            if pid == 0:  # the child never returns into this loop, whatever happens in it
                code = 70
                try:
                    code = _child(job)
                finally:
                    os._exit(code)
            running[pid] = job["name"]
        pid, status = os.wait()
        codes[running.pop(pid)] = os.waitstatus_to_exitcode(status)
    return codes


def _run(jobs: List[dict], preload: Sequence[str], timeout: float) -> Dict[str, int]:
    with tempfile.TemporaryDirectory() as tmp:
        spec = Path(tmp) / "jobs.json"
        spec.write_text(json.dumps({"jobs": jobs, "preload": list(preload)}))
        res = subprocess.run([sys.executable, str(Path(__file__).resolve()), str(spec)], cwd=ROOT,
                             capture_output=True, text=True, timeout=timeout)
        if res.returncode != 0:
            raise RuntimeError(f"the launcher failed (rc {res.returncode}):\n{res.stderr[-3000:]}")
        return json.loads(res.stdout.strip().splitlines()[-1])


def run_module_many(module: str, jobs: Dict[str, dict], out_dir: Path, timeout: float = 1200
                    ) -> Dict[str, SimpleNamespace]:
    """Run ``python -m module *args`` for each job, forked from a launcher that has imported ``module``.

    Args:
        jobs: name -> ``{"args": [...], "env": {...}, "cwd": path}`` (the full environment, as for
            ``subprocess.run(env=...)``).
        out_dir: where each job's ``<name>.out`` / ``<name>.err`` are written.

    Returns:
        name -> an object with ``returncode``, ``stdout`` and ``stderr`` (str), as ``subprocess.run``'s.
    """
    out_dir.mkdir(parents=True, exist_ok=True)
    specs = [{"name": n, "kind": "module", "module": module, "args": list(j["args"]), "env": dict(j["env"]),
              "cwd": str(j.get("cwd", ROOT)), "stdout": str(out_dir / f"{n}.out"), "stderr": str(out_dir / f"{n}.err")}
             for n, j in jobs.items()]
    codes = _run(specs, [module], timeout)
    return {s["name"]: SimpleNamespace(returncode=codes[s["name"]], stdout=Path(s["stdout"]).read_text(),
                                       stderr=Path(s["stderr"]).read_text()) for s in specs}


def first_imports(modules: Sequence[str], preload: Sequence[str], timeout: float = 1200) -> Dict[str, str]:
    """Import each of ``modules`` first (no module of ours loaded before it) in its own forked child.

    Returns:
        module -> the last line of its error, for each module whose import failed (empty: all imported).
    """
    with tempfile.TemporaryDirectory() as tmp:
        specs = [{"name": m, "kind": "import", "module": m, "args": [], "env": dict(os.environ), "cwd": str(ROOT),
                  "stdout": f"{tmp}/{m}.out", "stderr": f"{tmp}/{m}.err"} for m in modules]
        codes = _run(specs, preload, timeout)
        return {m: ((Path(f"{tmp}/{m}.err").read_text().strip().splitlines() or [""])[-1])
                for m in modules if codes[m] != 0}


if __name__ == "__main__":
    sys.path[0] = str(ROOT)  # as under ``python -m`` from the repository root: ROOT first, not tests/
    spec = json.loads(Path(sys.argv[1]).read_text())
    result = _launch(spec["jobs"], spec["preload"])
    sys.stdout.write(json.dumps(result) + "\n")
