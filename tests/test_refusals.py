"""Every refusal is one line, exit code 2, before anything is written: for single runs and for every cell of a
grid (issue 10). Each case runs the real CLI (``python -m sparse_exp.train``, forked from a warm launcher:
``tests/forked.py``) and asserts: exit code 2, exactly one non-empty line on stderr, starting with ``error:``
and naming the key or file, no traceback, and no file or directory created or changed under the runs
directory (nor next to it). A grid prints one ``error:`` line and then one line per bad cell, and launches
nothing.
"""

import hashlib
import os
from pathlib import Path

import pytest
import torch
from conftest import TINY, cli_run_dir, needs_data
from forked import run_module_many

BASE = [o for o in TINY if not o.startswith("logger")] + ["logger=none"]
NONE = ["superposer=none"]


def with_base(args):
    """``args`` plus the tiny-run settings of ``BASE`` for every key ``args`` does not set (so a case that
    unexpectedly passes trains for seconds, not for the default experiment's minutes)."""
    keys = {a.split("=", 1)[0].lstrip("+~") for a in args if not a.startswith("-")}
    return [o for o in BASE if o.split("=", 1)[0] not in keys] + list(args)


def _mask_file(path: Path, model: str = "lenet5", sparsity: float = 0.9, fmt: str = "sparse_exp.masks/v1",
               drop: int = 0) -> Path:
    from sparse_exp.config.compose import compose
    from sparse_exp.config.preflight import plan_run

    plan = plan_run(compose([f"model={model}", f"sparsity={sparsity}"]))
    masks = {}
    for n, shape in list(plan.shapes.items())[drop:]:
        m = torch.zeros(shape, dtype=torch.bool).reshape(-1)
        m[: max(1, round((1 - sparsity) * m.numel()))] = True
        masks[n] = m.reshape(shape)
    torch.save({"format": fmt, "masks": masks, "meta": {}}, path)
    return path


def _bytes(data: bytes):
    def make(d: Path) -> Path:
        p = d / "mask.pt"
        p.write_bytes(data)
        return p
    return make


def _truncated_mask(d: Path) -> Path:
    p = _mask_file(d / "full.pt")
    data = p.read_bytes()
    (d / "mask.pt").write_bytes(data[: len(data) // 2])
    return d / "mask.pt"


def _run_dir_with(files: dict, overrides):
    """A pre-existing run directory (of the CLI's name for ``overrides``) holding ``files``."""
    def make(case: Path):
        rd = cli_run_dir(case / "runs", overrides)
        rd.mkdir(parents=True)
        for name, data in files.items():
            (rd / name).write_bytes(data)
    return make


GOOD_CKPT_PREFIX = b"PK\x03\x04"  # a zip header, then garbage: looks like a checkpoint, is not one
RUN = NONE + ["sparsifier=static", "epochs=1"]

#: id -> (command-line args, the key / file the message must name, extra env, setup(case_dir) -> optional path)
CASES = {
    # 1. types (Hydra's own errors, translated)
    "type-float": (["sparsity=abc"], "sparsity=abc", {}, None),
    "type-int-from-float": (["epochs=2.5"], "epochs=2.5", {}, None),
    "type-batch-size": (["batch_size=1.5"], "batch_size=1.5", {}, None),
    "type-null": (["sparsity=null"], "sparsity=null", {}, None),
    "type-bool": (["progress=maybe"], "progress=maybe", {}, None),
    "type-nested-int": (["dataset.subset_train=x"], "dataset.subset_train=x", {}, None),
    "parse-error": (["optimizer.lr=[1"], "optimizer.lr=[1", {}, None),
    # 2. unknown names
    "unknown-sparsifier": (["sparsifier=foo"], "sparsifier=foo", {}, None),
    "unknown-model": (["model=foo"], "model=foo", {}, None),
    "unknown-dataset": (["dataset=foo"], "dataset=foo", {}, None),
    "unknown-distribution": (["distribution=foo"], "distribution=foo", {}, None),
    "unknown-superposer": (["superposer=foo"], "superposer=foo", {}, None),
    "unknown-optimizer": (["optimizer=foo"], "optimizer=foo", {}, None),
    "unknown-top-key": (["foo=1"], "foo=1", {}, None),
    "unknown-nested-key": (["sparsifier.nonexistent=1"], "sparsifier.nonexistent=1", {}, None),
    "key-of-another-method": (["sparsifier.init_density=0.5"], "sparsifier.init_density=0.5", {}, None),
    "plus-unknown-key": (["+foo=1"], "+foo=1", {}, None),
    "force-add-unknown-key": (["++foo=1"], "++foo=1", {}, None),
    "plus-key-another-method-has": (["+sparsifier.path=x.pt"], "+sparsifier.path=x.pt", {}, None),
    "key-given-twice": (["sparsity=0.9", "sparsity=0.95"], "sparsity", {}, None),
    "sweep-value-without-m": (["sparsity=0.9,0.95"], "sparsity=0.9,0.95", {}, None),
    "unknown-tweak": (["tweaks=[ghost_skip,nope]"], "tweaks=nope", {}, None),
    "tweak-on-a-model-without-bn": (["tweaks=[ghost_skip]"], "model=lenet5", {}, None),
    "tweak-schedule-without-end": (["model=resnet32", "tweaks=[soft_neurons]", "tweaks.soft_neurons.schedule=step"],
                                   "tweaks.soft_neurons.end_epoch", {}, None),
    "delete-a-schema-key": (["~sparsity"], "~sparsity", {}, None),
    "fast-dtype-unknown": (["fast.dtype=fp16"], "fast.dtype", {}, None),
    "cuda-graphs-on-cpu": (["fast.cuda_graphs=true"], "fast.cuda_graphs", {}, None),
    # 3. ranges, non-finite numbers, values never silently changed
    "sparsity-above-1": (["sparsity=1.5"], "sparsity=1.5", {}, None),
    "sparsity-negative": (["sparsity=-0.1"], "sparsity=-0.1", {}, None),
    "epochs-zero": (["epochs=0"], "epochs=0", {}, None),
    "lr-inf": (["optimizer.lr=inf"], "optimizer.lr=inf", {}, None),
    "lr-nan": (["optimizer.lr=nan"], "optimizer.lr=nan", {}, None),
    "lr-negative": (["optimizer.lr=-1"], "optimizer.lr=-1", {}, None),
    "momentum-one": (["optimizer.momentum=1.0"], "optimizer.momentum=1.0", {}, None),
    "beta-inf": (["superposer.beta=inf"], "superposer.beta=inf", {}, None),
    "ticket-eval-unknown": (["superposer.ticket_eval=test"], "superposer.ticket_eval='test'", {}, None),
    "milestones-unsorted": (["schedule.milestones=[0.75,0.5]"], "schedule.milestones", {}, None),
    "gamma-zero": (["schedule.gamma=0"], "schedule.gamma=0", {}, None),
    "device-unknown": (["device=tpu"], "device='tpu'", {}, None),
    "device-absent": (["device=cuda:99"], "device='cuda:99'", {}, None),
    "sync-bn-on-cpu": (["device=cpu", "dist.sync_bn=true"], "dist.sync_bn=True", {}, None),
    "fewer-weights-than-layers": (["sparsity=0.99995"], "sparsity=0.99995", {}, None),
    "logger-mode": (["logger.mode=sometimes"], "logger.mode='sometimes'", {}, None),
    "model-init": (["model.init=xavier"], "model.init='xavier'", {}, None),
    "warmup-longer-than-run": (["schedule.warmup_epochs=100"], "schedule.warmup_epochs=100", {}, None),
    "granet-init-density-below-target": (["sparsifier=granet", "sparsifier.init_density=0.05", "sparsity=0.9"],
                                         "sparsifier.init_density=0.05", {}, None),
    "dense-with-sparsity": (["sparsifier=dense"], "sparsity=0.9", {}, None),
    # 4. budgets in steps
    "cycle-shorter-than-a-step": (["superposer.cycle_epochs=0.001"], "superposer.cycle_epochs=0.001", {}, None),
    "cycle-longer-than-phase": (["superposer.cycle_epochs=50"], "superposer.cycle_epochs=50", {}, None),
    "no-ticket": (["superposer.num_tickets=0"], "superposer.num_tickets=0", {}, None),
    "tickets-fill-the-run": (["superposer.num_tickets=30"], "superposer.num_tickets=30", {}, None),
    "gmp-delta-t-longer-than-window": (NONE + ["sparsifier=gmp", "sparsifier.delta_t=100000", "epochs=2"],
                                       "sparsifier.delta_t=100000", {}, None),
    "rigl-no-update-in-the-run": (NONE + ["epochs=1"], "sparsifier.delta_t=100", {}, None),
    # 5. mask files
    "mask-file-missing": (RUN[:-2] + ["sparsifier=mask_file", "sparsifier.path=/nonexistent/masks.pt", "epochs=1"],
                          "sparsifier.path", {}, None),
    "mask-file-text": (RUN[:-2] + ["sparsifier=mask_file", "epochs=1"], "sparsifier.path", {},
                       _bytes(b"this is not a torch file\n")),
    "mask-file-empty": (RUN[:-2] + ["sparsifier=mask_file", "epochs=1"], "sparsifier.path", {}, _bytes(b"")),
    "mask-file-random-bytes": (RUN[:-2] + ["sparsifier=mask_file", "epochs=1"], "sparsifier.path", {},
                               _bytes(bytes(range(256)) * 8)),
    "mask-file-truncated": (RUN[:-2] + ["sparsifier=mask_file", "epochs=1"], "sparsifier.path", {}, _truncated_mask),
    "mask-file-other-model": (RUN[:-2] + ["sparsifier=mask_file", "epochs=1"], "sparsifier.path", {},
                              lambda d: _mask_file(d / "mask.pt", model="lenet_300_100")),
    "mask-file-missing-layers": (RUN[:-2] + ["sparsifier=mask_file", "epochs=1"], "sparsifier.path", {},
                                 lambda d: _mask_file(d / "mask.pt", drop=2)),
    "mask-file-other-sparsity": (RUN[:-2] + ["sparsifier=mask_file", "epochs=1"], "sparsity=0.9", {},
                                 lambda d: _mask_file(d / "mask.pt", sparsity=0.5)),
    "mask-file-other-format": (RUN[:-2] + ["sparsifier=mask_file", "epochs=1"], "sparsifier.path", {},
                               lambda d: _mask_file(d / "mask.pt", fmt="sparse_exp.masks/v9")),
    # 6. distributions
    "distribution-infeasible": (["distribution=uniform", "distribution.dense_first_layer=true",
                                 "distribution.dense_last_layer=true", "sparsity=0.99"],
                                "distribution.dense_last_layer", {}, None),
    # 7. data
    "subset-larger-than-data": (NONE + ["dataset.subset_train=100000"], "dataset.subset_train=100000", {}, None),
    "val-size-larger-than-data": (NONE + ["dataset.val_size=100000"], "dataset.val_size=100000", {}, None),
    "data-missing-cifar": (["dataset=cifar10", "superposer=none", "epochs=1"], "cifar10", {}, None),
    "data-root-missing": (["dataset.root=/nonexistent/fmnist"], "/nonexistent/fmnist", {}, None),
    "data-env-missing": ([], "dataset-fashion-mnist", {"SPARSE_EXP_DATA": "/nonexistent/data"}, None),
    # 8. run directories and corrupt files
    "runs-dir-not-writable": (RUN, "/proc/x", {"SPARSE_EXP_RUNS": "/proc/x"}, None),
    "runs-dir-name-too-long": (RUN, "NAME_MAX", {"SPARSE_EXP_RUNS": "/tmp/" + "x" * 300 + "/runs"}, None),
    "runs-dir-path-too-long": (RUN, "PATH_MAX", {"SPARSE_EXP_RUNS": "/tmp/" + "/".join(["y" * 250] * 17)}, None),
    "checkpoint-truncated": (RUN, "checkpoint.pt", {},
                             _run_dir_with({"checkpoint.pt": GOOD_CKPT_PREFIX + b"\x00" * 50,
                                            "summary.json": b'{"status": "running"}'}, with_base(RUN))),
    "checkpoint-empty": (RUN, "checkpoint.pt", {}, _run_dir_with({"checkpoint.pt": b""}, with_base(RUN))),
    "checkpoint-random-bytes": (RUN, "checkpoint.pt", {},
                                _run_dir_with({"checkpoint.pt": bytes(range(256)) * 16}, with_base(RUN))),
    "summary-truncated": (RUN, "summary.json", {},
                          _run_dir_with({"summary.json": b'{"status": "compl'}, with_base(RUN))),
    "summary-not-an-object": (RUN, "summary.json", {}, _run_dir_with({"summary.json": b"[1, 2]"}, with_base(RUN))),
}

#: grids: (args, the bad cell's overrides, setup)
GRIDS = {
    "grid-data-missing": (["-m", "dataset=fashion_mnist,cifar10", "model=lenet5", "superposer=none", "epochs=2",
                           "logger=none"], "dataset=cifar10", None),
    "grid-bad-value": (["-m", *RUN, "sparsity=0.9,1.5"], "sparsity=1.5", None),
    "grid-unknown-option": (["-m", *RUN, "model=lenet5,resnet9000"], "model=resnet9000", None),
    "grid-unknown-key": (["-m", *RUN, "sparsifier.nonexistent=1,2"], "sparsifier.nonexistent=1", None),
    "grid-corrupt-summary": (["-m", *RUN, "seed=0,1"], "seed=1",
                             _run_dir_with({"summary.json": b'{"status": "compl'}, with_base(RUN) + ["seed=1"])),
}


def snapshot(root: Path) -> dict:
    """Every path below ``root``: directories as "dir", files as their size and content hash."""
    out = {}
    for p in sorted(root.rglob("*")):
        out[str(p.relative_to(root))] = "dir" if p.is_dir() else (p.stat().st_size,
                                                                  hashlib.sha256(p.read_bytes()).hexdigest())
    return out


def _prepare(case_dir: Path, args, setup):
    """The case's directory, its pre-existing files and its full command line (in the main thread)."""
    case_dir.mkdir(parents=True)
    args = with_base(args)
    if setup is not None:
        made = setup(case_dir)
        if made is not None:
            args.append(f"sparsifier.path={made}")
    return args


@pytest.fixture(scope="module")
def results(tmp_path_factory):
    """name -> (completed process, snapshot before, snapshot after, args) for every case and grid.

    Each case is ``python -m sparse_exp.train ARGS`` forked from one warm launcher (``tests/forked.py``):
    the CLI's code runs as under ``python -m``, without paying torch's import 78 times.
    """
    root = tmp_path_factory.mktemp("refusals")
    jobs = {**{k: v for k, v in CASES.items()}, **{k: (a, c, {}, s) for k, (a, c, s) in GRIDS.items()}}
    commands = {name: _prepare(root / name, args, setup) for name, (args, _, _, setup) in jobs.items()}
    before = {name: snapshot(root / name) for name in jobs}
    env = {**os.environ, "WANDB_MODE": "disabled"}
    done = run_module_many("sparse_exp.train", {
        name: {"args": commands[name], "env": {**env, "SPARSE_EXP_RUNS": str(root / name / "runs"), **jobs[name][2]}}
        for name in jobs}, tmp_path_factory.mktemp("refusals_output"))
    return {name: (done[name], before[name], snapshot(root / name), commands[name]) for name in jobs}


def test_at_least_forty_distinct_bad_inputs():
    assert len(CASES) + len(GRIDS) >= 40


@needs_data
@pytest.mark.parametrize("name", list(CASES))
def test_single_run_is_refused_in_one_line(results, name):
    res, before, after, args = results[name]
    must_name = CASES[name][1]
    lines = [line for line in res.stderr.splitlines() if line.strip()]
    assert res.returncode == 2, f"{args}: rc {res.returncode}\n{res.stderr[-3000:]}"
    assert len(lines) == 1 and lines[0].startswith("error: "), res.stderr
    assert must_name in lines[0], lines[0]
    assert "Traceback" not in res.stderr + res.stdout
    assert after == before, "a refused run created or changed files"


@needs_data
@pytest.mark.parametrize("name", list(GRIDS))
def test_grid_is_refused_before_any_cell_launches(results, name):
    res, before, after, args = results[name]
    lines = [line for line in res.stderr.splitlines() if line.strip()]
    assert res.returncode == 2, f"{args}: rc {res.returncode}\n{res.stderr[-3000:]}"
    errors = [line for line in lines if line.startswith("error:")]
    assert len(errors) == 1 and lines[0] == errors[0] and "nothing was launched" in errors[0], res.stderr
    bad = [line for line in lines[1:] if GRIDS[name][1] in line]
    assert bad, res.stderr
    assert all(len(line.split("] ", 1)) == 2 for line in lines[1:]), "one line per bad cell: [overrides] message"
    assert "Traceback" not in res.stderr + res.stdout and "Launching" not in res.stdout
    assert after == before, "a refused grid created or changed files"
