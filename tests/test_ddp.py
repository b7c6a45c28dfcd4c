"""Two CPU processes (gloo): masks, weights, BN statistics and the ultimate ticket stay identical on every
rank through RigL updates, SET's random regrowth, a Sup-tickets phase and every training tweak on a BN
model; only rank 0 writes."""

import os
import socket
import sys
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp
from conftest import needs_data

pytestmark = pytest.mark.slow  # end-to-end training runs; still part of `make test`

TESTS = Path(__file__).resolve().parent


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def worker(rank, world, port, out_dir, overrides):
    sys.path.insert(0, str(TESTS))
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), WORLD_SIZE=str(world), RANK=str(rank),
                      LOCAL_RANK=str(rank))
    torch.set_num_threads(1)
    from conftest import compose_cfg

    from sparse_exp.engine.loop import Trainer
    from sparse_exp.run.run_dir import RunDir

    cfg = compose_cfg(overrides)
    rd = RunDir(Path(out_dir) / "run")
    trainer = Trainer(cfg, rd)
    rd.prepare(cfg)
    summary = trainer.fit()
    state = {"model": trainer.model.state_dict(), "masks": dict(trainer.masking.masks),
             "summary": summary}
    if cfg.superposer.name == "sup_tickets":
        state["ultimate"] = trainer.callback("sup_tickets").ultimate_model().state_dict()
    torch.save(state, Path(out_dir) / f"rank{rank}.pt")
    torch.distributed.destroy_process_group()


@needs_data
@pytest.mark.parametrize("overrides", [
    ["sparsifier=rigl", "sparsifier.delta_t=4", "epochs=4", "superposer=sup_tickets",
     "superposer.phase_fraction=0.5", "superposer.cycle_epochs=1"],
    ["sparsifier=set", "sparsifier.delta_t=4", "epochs=2"],
    # every tweak (ghost paths: a dense parameter group outside the mask; GradInit on each rank)
    ["sparsifier=rigl", "sparsifier.delta_t=2", "epochs=2", "model=resnet32", "dataset.subset_train=128",
     "tweaks=tost", "tweaks.lrsi.iterations=1", "dataset.val_size=64", "dataset.subset_test=64"],
], ids=["rigl+sup_tickets", "set", "rigl+tweaks"])
def test_ranks_stay_identical(tmp_path, overrides):
    mp.spawn(worker, args=(2, free_port(), str(tmp_path), overrides), nprocs=2, join=True)
    r0, r1 = (torch.load(tmp_path / f"rank{r}.pt", weights_only=False) for r in (0, 1))
    for key in r0["model"]:
        assert torch.equal(r0["model"][key], r1["model"][key]), key
    for key in r0["masks"]:
        assert torch.equal(r0["masks"][key], r1["masks"][key]), key
    for key in r0.get("ultimate", {}):
        assert torch.equal(r0["ultimate"][key], r1["ultimate"][key]), key
    assert r0["summary"]["test/acc"] == r1["summary"]["test/acc"]
    assert abs(r0["summary"]["sparsity/global"] - 0.9) <= 1e-3
    assert r0["summary"]["itop_rate"] > 0.1, "masks did change (and identically)"
    # only rank 0 wrote: one metrics line per epoch, not two
    lines = (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()
    assert len(lines) == int(overrides[2].split("=")[1])


def locked_worker(rank, world, port, run_dir, out_dir):
    sys.path.insert(0, str(TESTS))
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), WORLD_SIZE=str(world), RANK=str(rank),
                      LOCAL_RANK=str(rank))
    torch.set_num_threads(1)
    from conftest import compose_cfg

    from sparse_exp.config.errors import UserError
    from sparse_exp.train import run

    try:
        run(compose_cfg(["epochs=1", "sparsifier.delta_t=4"]), run_dir)
        outcome = "trained"
    except UserError as exc:
        outcome = str(exc)
    Path(out_dir, f"rank{rank}.txt").write_text(outcome)
    torch.distributed.destroy_process_group()


@needs_data
def test_every_rank_is_refused_when_another_process_holds_the_run(tmp_path):
    """A torchrun job whose run directory is locked by another process: rank 0 is refused and so is
    every other rank (they agree with one all-reduce), instead of waiting for rank 0 forever."""
    from sparse_exp.run.run_dir import RunDir

    run_dir = tmp_path / "run"
    with RunDir(run_dir).exclusive():
        ctx = mp.get_context("spawn")
        procs = [ctx.Process(target=locked_worker, args=(r, 2, port, str(run_dir), str(tmp_path)))
                 for port in [free_port()] for r in range(2)]
        for p in procs:
            p.start()
        for p in procs:
            p.join(timeout=180)
        alive = [p for p in procs if p.is_alive()]
        for p in alive:
            p.kill()
        assert not alive, "a rank hung"
    outcomes = [(tmp_path / f"rank{r}.txt").read_text() for r in range(2)]
    assert outcomes[0].startswith(f"run directory {run_dir} is in use by another process (pid {os.getpid()} on")
    assert outcomes[1] == f"run directory {run_dir} is in use by another process (refused on rank 0)"
    assert sorted(p.name for p in run_dir.iterdir()) == [".lock"], "nothing but the lock file was written"
