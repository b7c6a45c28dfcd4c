"""Two CPU processes (gloo): masks, weights, BN statistics and the ultimate ticket stay identical on every
rank through RigL updates (compared across ranks at every mask update), SET's random regrowth, a Sup-tickets phase
and every training tweak on a BN model; only rank 0 writes. A model without BN trained by 2 ranks, each loading only
its rows, ends equal (fp32 tolerance) to one process; sharded evaluation equals unsharded."""

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


def mask_digest(masking) -> int:
    """A 63-bit hash of every mask's bytes."""
    import hashlib

    h = hashlib.sha256()
    for name in masking.names:
        h.update(masking.masks[name].to(torch.uint8).cpu().numpy().tobytes())
    return int.from_bytes(h.digest()[:8], "little") >> 1


def watch_mask_updates(trainer) -> list:
    """Wrap the sparsifier's ``after_step``: after every mask update, all-gather the ranks' mask hashes and raise
    if they differ. Returns a one-element list counting the updates checked."""
    import torch.distributed as dist

    checked = [0]
    after_step = trainer.sparsifier.after_step

    def checked_after_step(step):
        changed = after_step(step)
        if changed:
            mine = torch.tensor([mask_digest(trainer.masking)], dtype=torch.int64)
            every = [torch.zeros_like(mine) for _ in range(dist.get_world_size())]
            dist.all_gather(every, mine)
            if len({int(t) for t in every}) != 1:
                raise AssertionError(f"masks differ between ranks after the update at step {step}")
            checked[0] += 1
        return changed

    trainer.sparsifier.after_step = checked_after_step
    return checked


def _trainer(out: Path, overrides, rank: int = 0, world: int = 1, port: int = 0):
    """A prepared :class:`Trainer` for ``overrides`` in ``out``; with ``world > 1`` this process first joins the
    ``env://`` world as rank ``rank`` (one thread, as each spawned worker)."""
    if world > 1:
        sys.path.insert(0, str(TESTS))
        os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), WORLD_SIZE=str(world), RANK=str(rank),
                          LOCAL_RANK=str(rank))
        torch.set_num_threads(1)
    from conftest import compose_cfg

    from sparse_exp.engine.loop import Trainer
    from sparse_exp.run.run_dir import RunDir

    cfg = compose_cfg(overrides)
    rd = RunDir(out)
    trainer = Trainer(cfg, rd)
    rd.prepare(cfg)
    return cfg, trainer


def worker(rank, world, port, out_dir, overrides):
    cfg, trainer = _trainer(Path(out_dir) / "run", overrides, rank, world, port)
    checked = watch_mask_updates(trainer)
    summary = trainer.fit()
    state = {"model": trainer.model.state_dict(), "masks": dict(trainer.masking.masks),
             "summary": summary, "mask_updates_checked": checked[0]}
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
    assert r0["mask_updates_checked"] == r1["mask_updates_checked"] > 0, "compared after every mask update"
    written = torch.load(tmp_path / "run" / "model.pt", weights_only=True)  # rank 0's reported model
    assert written["which"] == ("ultimate" if "ultimate" in r0 else "final")
    reported = r0.get("ultimate", r0["model"])
    assert all(torch.equal(written["state"][k], reported[k].cpu()) for k in reported)
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


def equivalence_worker(rank, world, port, out_dir, overrides):
    _, trainer = _trainer(Path(out_dir) / "ddp", overrides, rank, world, port)
    from sparse_exp.training.metrics import metrics_from_logits, predict

    summary = trainer.fit()
    test = trainer.data.test
    sharded = predict(trainer.model, test)  # each rank its rows, gathered
    trainer.model.eval()
    with torch.no_grad():  # the same model on the whole split in this process
        whole = [(trainer.model(x), y) for x, y in test.iterate(0)]
    whole = torch.cat([a for a, _ in whole]), torch.cat([b for _, b in whole])
    torch.save({"model": trainer.model.state_dict(), "summary": summary, "sharded": sharded, "whole": whole,
                "metrics": (metrics_from_logits(*sharded, 10), metrics_from_logits(*whole, 10))},
               Path(out_dir) / f"eq{rank}.pt")
    torch.distributed.destroy_process_group()


@needs_data
def test_two_ranks_equal_one_process_without_bn(tmp_path):
    """LeNet-5 (no BN), static masks: 2 ranks (rows 31 and 32 of every global batch of 63; the last global
    batch has 1 row, so rank 0 trains on none there) end where one process ends with the same global batch."""
    overrides = ["sparsifier=static", "epochs=2", "batch_size=63", "dataset.subset_train=1009", "eval_batch_size=100"]
    mp.spawn(equivalence_worker, args=(2, free_port(), str(tmp_path), overrides), nprocs=2, join=True)
    r0, r1 = (torch.load(tmp_path / f"eq{r}.pt", weights_only=False) for r in (0, 1))
    _, one = _trainer(tmp_path / "one", overrides)
    summary = one.fit()
    for key, value in one.model.state_dict().items():
        assert torch.equal(r0["model"][key], r1["model"][key]), key
        assert torch.allclose(r0["model"][key], value, rtol=1e-4, atol=1e-6), key
    for key in ("test/acc", "val/acc"):
        assert abs(r0["summary"][key] - summary[key]) <= 0.2, key  # one image of 512 at most
        assert r0["summary"][key] == r1["summary"][key], key
    # sharded evaluation = the same model evaluated whole, on every rank
    for r in (r0, r1):
        assert torch.equal(r["sharded"][1], r["whole"][1])
        assert torch.allclose(r["sharded"][0], r["whole"][0], rtol=1e-5, atol=1e-6)
        assert r["metrics"][0]["acc"] == r["metrics"][1]["acc"]
    assert torch.equal(r0["sharded"][0], r1["sharded"][0])


def test_sync_bn_is_refused_on_cpu_with_the_key(tmp_path):
    """SyncBatchNorm's forward raises on CPU tensors in torch 2.x: ``dist.sync_bn=true`` is refused in one line."""
    from conftest import compose_cfg

    from sparse_exp.config.errors import ConfigError
    from sparse_exp.engine.build import build_run

    with pytest.raises(ConfigError) as info:
        build_run(compose_cfg(["dist.sync_bn=true", "model=resnet32"]))
    assert str(info.value) == ("dist.sync_bn=True is not allowed: SyncBatchNorm needs CUDA (NCCL), but the device is "
                               "cpu; allowed on this device: false (DDP broadcasts rank 0's BN statistics)")
