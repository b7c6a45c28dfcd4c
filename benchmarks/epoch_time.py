"""Epoch time of our training loop against a reference-style loop, and of the device-resident data path.

    python benchmarks/epoch_time.py                    # CPU: both parts, default sizes
    python benchmarks/epoch_time.py --device cuda --images 45000 --repeats 3

Measured side by side in one process (interleaved repeats, the best of each reported):

1. **Data** (CIFAR-shaped, synthetic uint8 images): one training epoch of batches through torchvision's
   per-sample pipeline (``Image.fromarray`` -> ``RandomCrop(32, padding=4)`` -> ``RandomHorizontalFlip`` ->
   ``ToTensor`` -> ``Normalize`` in a ``DataLoader``, batches moved to the device) against
   :class:`~sparse_exp.data.device_loader.DeviceImageLoader` (the split on the device as uint8, crop / flip
   as one gather). No model: what the data path costs per epoch.
2. **Training** (the default experiment: LeNet-5 on the real Fashion-MNIST, RigL at 90 % with ERK, SGD,
   batch 128): one epoch of :meth:`sparse_exp.loop.Trainer.train_epoch` against a reference-style loop as in
   luuyin/Sup-tickets / GraNet ``main.py`` + ``sparselearning/core.py``: a ``DataLoader`` over a
   per-sample ``ToTensor`` + ``Normalize`` data set, ``loss.item()`` every step, masks applied by a Python
   loop over weights and momentum buffers (``tensor.data = tensor.data * mask``), the same RigL updates.
   Same model, initialisation, masks and data order source; the ratio is images per second.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path
from typing import Callable, Dict, List

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch.utils.data import DataLoader, Dataset
from torchvision import transforms as T

sys.path.insert(0, str(Path(__file__).resolve().parent))
from step_time import reference_apply  # noqa: E402  (the same reference-style masking as step_time.py)

from sparse_exp.compose import compose  # noqa: E402
from sparse_exp.data.device_loader import DeviceImageLoader  # noqa: E402
from sparse_exp.data.vision import CIFAR_STATS  # noqa: E402

MEAN, STD = CIFAR_STATS["cifar10"]


class PILImages(Dataset):
    """What a torchvision data set does per sample: uint8 array -> PIL image -> transform."""

    def __init__(self, images: np.ndarray, labels: np.ndarray, transform: Callable) -> None:
        self.images, self.labels, self.transform = images, labels, transform

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int):
        return self.transform(Image.fromarray(self.images[i])), int(self.labels[i])


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def timed(fn: Callable[[], int], device: torch.device) -> float:
    """Seconds ``fn`` takes (device synchronised before and after)."""
    sync(device)
    start = time.perf_counter()
    fn()
    sync(device)
    return time.perf_counter() - start


def data_part(args: argparse.Namespace, device: torch.device) -> Dict[str, float]:
    rng = np.random.default_rng(0)
    hwc = rng.integers(0, 256, size=(args.images, 32, 32, 3), dtype=np.uint8)
    labels = rng.integers(0, 10, size=args.images)
    tf = T.Compose([T.RandomCrop(32, padding=4), T.RandomHorizontalFlip(), T.ToTensor(), T.Normalize(MEAN, STD)])
    ref = DataLoader(PILImages(hwc, labels, tf), batch_size=128, shuffle=True, num_workers=args.workers,
                     generator=torch.Generator().manual_seed(0))
    ours = DeviceImageLoader(torch.from_numpy(hwc).permute(0, 3, 1, 2).contiguous().to(device),
                             torch.from_numpy(labels).long().to(device), torch.arange(args.images), 128, True, 0,
                             MEAN, STD, pad=4, flip=True)

    def run_ref() -> int:
        for x, y in ref:
            x.to(device, non_blocking=True), y.to(device, non_blocking=True)
        return 0

    def run_ours() -> int:
        for _ in ours.iterate(0):
            pass
        return 0

    return best_of(args, device, {"torchvision per-sample pipeline": run_ref, "device loader (ours)": run_ours})


def training_part(args: argparse.Namespace, device: torch.device) -> Dict[str, float]:
    from sparse_exp.build import build_run
    from sparse_exp.data import fashion_mnist as fm
    from sparse_exp.loop import Trainer
    from sparse_exp.rundir import RunDir

    overrides = ["superposer=none", "logger=none", "progress=false", f"device={device}",
                 f"dataset.subset_train={args.fmnist_images}"]
    cfg = compose(overrides)
    runs = {}

    def ours() -> int:
        trainer = Trainer(cfg, RunDir(Path(args.tmp) / "ours"))
        trainer.sparsifier.init_masks()
        runs["ours"] = lambda: trainer.train_epoch()
        return 0

    ours()
    run = build_run(cfg)  # the same model, masks and sparsifier, trained by the reference-style loop
    run.sparsifier.init_masks()
    data = run.data.train
    raw = fm.load_raw(Path("/usr/share/datasets/fashion-mnist"))
    idx = data.indices.numpy()
    tf = T.Compose([T.ToTensor(), T.Normalize((fm.MEAN,), (fm.STD,))])
    loader = DataLoader(PILImages(raw["train_images"][idx], raw["train_labels"][idx], tf), batch_size=128,
                        shuffle=True, num_workers=args.workers, generator=torch.Generator().manual_seed(0))

    def reference() -> int:
        run.model.train()
        step = 0
        for x, y in loader:
            x, y = x.to(device), y.to(device)
            loss = F.cross_entropy(run.model(x), y)
            run.optimizer.zero_grad()
            loss.backward()
            run.optimizer.step()
            reference_apply(run.masking, run.optimizer)
            step += 1
            run.sparsifier.after_step(step)
            loss.item()  # the reference logs the loss every step
        return step

    return best_of(args, device, {"reference-style loop": reference, "our loop": lambda: runs["ours"]()})


def best_of(args: argparse.Namespace, device: torch.device, fns: Dict[str, Callable[[], int]]) -> Dict[str, float]:
    times: Dict[str, List[float]] = {k: [] for k in fns}
    for _ in range(args.repeats):
        for name, fn in fns.items():
            times[name].append(timed(fn, device))
    return {k: min(v) for k, v in times.items()} | {f"{k} (median)": statistics.median(v) for k, v in times.items()}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", default="cpu")
    p.add_argument("--images", type=int, default=10000, help="CIFAR-shaped images per data epoch")
    p.add_argument("--fmnist-images", type=int, default=55000, help="Fashion-MNIST training images per epoch")
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--workers", type=int, default=0, help="DataLoader workers of the torchvision / reference side")
    p.add_argument("--part", choices=["all", "data", "training"], default="all")
    p.add_argument("--tmp", default="/tmp/sparse_exp_epoch_bench")
    args = p.parse_args()
    device = torch.device(args.device)
    print(f"device {device}, {torch.get_num_threads()} threads, torch {torch.__version__}, best of {args.repeats}")
    parts = [("data", data_part, args.images), ("training", training_part, args.fmnist_images)]
    for name, fn, n in parts:
        if args.part not in ("all", name):
            continue
        res = fn(args, device)
        (ref_name, ref), (our_name, ours) = list(res.items())[:2]
        print(f"\n{name}: one epoch of {n} images")
        for k in (ref_name, our_name):
            print(f"  {k:<34} {res[k]:8.2f} s  {n / res[k]:10.0f} images/s  (median {res[k + ' (median)']:.2f} s)")
        print(f"  ratio ours / reference (images/s): {ref / ours:.2f}x")


if __name__ == "__main__":
    main()
