"""Per-rank decoding and resume time of the ImageFolder data path (synthetic JPEGs made on the fly).

    python benchmarks/data_scaling.py                  # what `make bench` runs (about 1 min on a 2-core CPU)
    python benchmarks/data_scaling.py --quick          # tiny sizes, numbers not to quote
    python benchmarks/data_scaling.py --images 4096 --ranks 1,2,4,8 --repeats 5

1. **Images decoded per rank per epoch** with 1, 2 and 4 ranks (gloo, CPU processes): each rank builds the data with
   :func:`sparse_exp.data.build_data` and iterates one training epoch of its rank's view
   (:class:`~sparse_exp.data.spec.ShardedBatches`, as the trainer does) of the ``tiny_imagenet`` ImageFolder source,
   in-process (no workers); torchvision's ``pil_loader`` is wrapped to count the files each rank opens.
   The target is ``N / w`` per rank (each rank decodes only its rows of every global batch).
2. **Time to the first step after a resume** at 10 % and at 90 % of an epoch: a :class:`~sparse_exp.engine.loop.Trainer`
   whose checkpoint position is ``batch_in_epoch = k`` runs :meth:`~sparse_exp.engine.loop.Trainer.train_epoch` until
   its first optimizer step ends (the loader fast-forwards: nothing before ``k`` is loaded); next to it the
   reference-style resume of the earlier code, which loaded and discarded the first ``k`` batches. Best of
   ``--repeats``; the ratio 90 % / 10 % should be about 1 for ours and grow with ``k`` for the reference.
"""

from __future__ import annotations

import argparse
import os
import socket
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable, Dict, List

import torch
import torch.multiprocessing as mp

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from sparse_exp.config.compose import compose  # noqa: E402


def make_imagefolder(root: Path, images: int, classes: int, size: int, val_images: int) -> Path:
    """``root/train/c<k>/<i>.JPEG`` and ``root/val/...``: random-noise RGB JPEGs of ``size`` x ``size`` pixels."""
    from PIL import Image

    g = torch.Generator().manual_seed(0)
    for split, n in (("train", images), ("val", val_images)):
        for i in range(n):
            d = root / split / f"c{i % classes}"
            d.mkdir(parents=True, exist_ok=True)
            pixels = torch.randint(0, 256, (size, size, 3), generator=g, dtype=torch.uint8).numpy()
            Image.fromarray(pixels).save(d / f"{i}.JPEG", quality=90)
    return root


def overrides(root: Path, args: argparse.Namespace) -> List[str]:
    return ["dataset=tiny_imagenet", f"dataset.root={root}", f"dataset.val_size={args.val}",
            f"dataset.num_workers={args.workers}", "model=lenet5", f"batch_size={args.batch}", "logger=none",
            "progress=false", "device=cpu", "superposer=none", "epochs=1"]


def count_decodes() -> Callable[[], int]:
    """Wrap torchvision's ``pil_loader`` (what ``ImageFolder``'s default loader calls) to count opened files."""
    import torchvision.datasets.folder as folder

    counter = {"n": 0}
    inner = folder.pil_loader

    def counting(path: str) -> Any:
        counter["n"] += 1
        return inner(path)

    folder.pil_loader = counting
    return lambda: counter["n"]


def decode_worker(rank: int, world: int, port: int, root: str, args: argparse.Namespace, out: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), WORLD_SIZE=str(world), RANK=str(rank))
    torch.set_num_threads(1)
    torch.distributed.init_process_group("gloo")
    from sparse_exp.data import build_data
    from sparse_exp.data.spec import ShardedBatches

    cfg = compose(overrides(Path(root), args) + ["dataset.num_workers=0"])  # counted in this process
    decodes = count_decodes()
    data = build_data(cfg.dataset, seed=0, batch_size=cfg.batch_size, eval_batch_size=cfg.eval_batch_size,
                      device=torch.device("cpu"))
    before = decodes()
    rows = sum(int(y.shape[0]) for _, y in ShardedBatches(data.train, rank, world).iterate(0))
    Path(out, f"rank{rank}.txt").write_text(f"{decodes() - before} {rows} {data.num_train}")
    torch.distributed.barrier()
    torch.distributed.destroy_process_group()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def decodes_per_rank(root: Path, args: argparse.Namespace, world: int) -> List[List[int]]:
    """``[[decoded, rows yielded, training images], ...]`` per rank, one epoch, ``world`` gloo processes."""
    with tempfile.TemporaryDirectory() as out:
        mp.spawn(decode_worker, args=(world, free_port(), str(root), args, out), nprocs=world, join=True)
        return [[int(v) for v in Path(out, f"rank{r}.txt").read_text().split()] for r in range(world)]


class FirstStep(Exception):
    """Raised by :class:`StopAfterFirstStep` once the first optimizer step has run."""


class StopAfterFirstStep:
    """Wraps a Trainer's train step: runs the first call, then raises :class:`FirstStep`."""

    def __init__(self, step: Any) -> None:
        self.step = step

    def refresh(self) -> None:
        self.step.refresh()

    def __call__(self, x: torch.Tensor, y: torch.Tensor, weight: Any = None) -> Any:
        self.step(x, y)
        raise FirstStep


def resume_seconds(trainer: Any, k: int) -> float:
    """Seconds from :meth:`Trainer.train_epoch` at checkpoint position ``k`` to the end of its first step."""
    trainer.batch_in_epoch = k
    t0 = time.perf_counter()
    try:
        trainer.train_epoch()
    except FirstStep:
        return time.perf_counter() - t0
    raise AssertionError("train_epoch ended without a step")


def reference_seconds(trainer: Any, k: int) -> float:
    """The earlier resume: load and discard the first ``k`` batches of the epoch, then one step."""
    t0 = time.perf_counter()
    for i, (x, y) in enumerate(trainer.run.train_loader.iterate(0)):
        if i < k:
            continue
        try:
            trainer.train_step(x, y)
        except FirstStep:
            return time.perf_counter() - t0
    raise AssertionError("no batch after the skipped ones")


def resume_times(root: Path, args: argparse.Namespace) -> Dict[str, Dict[float, float]]:
    from sparse_exp.engine.loop import Trainer
    from sparse_exp.run.run_dir import RunDir

    cfg = compose(overrides(root, args))
    with tempfile.TemporaryDirectory() as tmp:
        trainer = Trainer(cfg, RunDir(Path(tmp) / "run"))
        trainer.sparsifier.init_masks()
        trainer.train_step = StopAfterFirstStep(trainer.train_step)
        steps = len(trainer.run.train_loader)
        out: Dict[str, Dict[float, float]] = {"ours": {}, "reference": {}}
        for _ in range(args.repeats):  # interleaved repeats, best of them
            for frac in (0.1, 0.9):
                k = min(steps - 1, round(frac * steps))
                for name, fn in (("ours", resume_seconds), ("reference", reference_seconds)):
                    t = fn(trainer, k)
                    out[name][frac] = min(out[name].get(frac, float("inf")), t)
        return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--images", type=int, default=2048, help="training JPEGs (default 2048)")
    p.add_argument("--val", type=int, default=128, help="of them held out for validation (default 128)")
    p.add_argument("--size", type=int, default=96, help="JPEG side in pixels (default 96)")
    p.add_argument("--batch", type=int, default=32, help="global batch (default 32)")
    p.add_argument("--ranks", default="1,2,4", help="world sizes of the decode count (default 1,2,4)")
    p.add_argument("--workers", type=int, default=0, help="DataLoader workers per rank (default 0)")
    p.add_argument("--repeats", type=int, default=3, help="repeats of each resume time, best reported")
    p.add_argument("--quick", action="store_true", help="256 images, 1 repeat: checks the path, not the numbers")
    args = p.parse_args()
    if args.quick:
        args.images, args.val, args.repeats = 256, 32, 1
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        root = make_imagefolder(Path(tmp) / "imagefolder", args.images, classes=8, size=args.size,
                                val_images=max(8, args.images // 16))
        print(f"synthetic ImageFolder: {args.images} training JPEGs ({args.size}x{args.size}), "
              f"{args.val} held out for validation; made in {time.perf_counter() - t0:.1f}s; global batch "
              f"{args.batch}, {args.workers} workers per rank, torch {torch.__version__}, "
              f"{os.cpu_count()} CPUs\n")
        print(f"{'ranks':>5} {'decoded per rank (one epoch)':>30} {'max x world / train images (target 1)':>38}")
        for w in [int(v) for v in args.ranks.split(",")]:
            per_rank = decodes_per_rank(root, args, w)
            decoded = [d for d, _, _ in per_rank]
            n_train = per_rank[0][2]
            assert all(d == rows for d, rows, _ in per_rank), f"decoded != rows trained on: {per_rank}"
            assert sum(decoded) == n_train, f"ranks decoded {sum(decoded)} images, the epoch has {n_train}"
            print(f"{w:>5} {' / '.join(map(str, decoded)):>30} {max(decoded) * w / n_train:>38.3f}")
        times = resume_times(root, args)
        print(f"\n{'time to the first step after a resume':<40} {'at 10%':>9} {'at 90%':>9} "
              f"{'90% / 10% (target ~1)':>22}")
        for name, label in (("ours", "fast-forward (sampler starts at k)"),
                            ("reference", "reference: load and discard k batches")):
            t10, t90 = times[name][0.1], times[name][0.9]
            print(f"{label:<40} {t10 * 1e3:>7.1f}ms {t90 * 1e3:>7.1f}ms {t90 / t10:>22.2f}")


if __name__ == "__main__":
    main()
