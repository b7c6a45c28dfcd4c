"""Epoch time of our loop (every ``fast.*`` mode) against a reference-style loop, per model; and of the data path.

    python benchmarks/epoch_time.py                    # CPU: everything at the default sizes (what `make bench` runs)
    python benchmarks/epoch_time.py --quick            # CPU: tiny sizes, one repeat, compile on LeNet-5 only (~2 min)
    python benchmarks/epoch_time.py --models resnet18,vgg16 --cifar-images 1280 --repeats 3
    python benchmarks/epoch_time.py --device cuda --workers 4 --cifar-images 45056 --repeats 3
    python benchmarks/epoch_time.py --part data        # only the data-path part
    python benchmarks/epoch_time.py --threads 1        # on a CPU shared with other work (steadier numbers)
    python benchmarks/epoch_time.py --device cuda --models resnet50 --compile none --json out.json  # (gpu_check.py)

Everything is measured side by side in one process, on the same model, data shape and device; the
configurations of a model run interleaved (repeat 1 of every row, then repeat 2, ...), the best of the repeats is
reported (the median next to it). All ratios are ratios of images per second (> 1: faster). ``cpu/wall`` is the
process's CPU seconds per wall second in the reported repeat: about the thread count when the cores were ours, well
below it when other work on the machine took them (the load average is printed at the start, per model and at the
end).

1. **Data** (CIFAR-shaped, synthetic uint8 images): one epoch of batches through torchvision's per-sample pipeline
   (``Image.fromarray`` -> ``RandomCrop(32, padding=4)`` -> ``RandomHorizontalFlip`` -> ``ToTensor`` -> ``Normalize``
   in a ``DataLoader``, batches moved to the device) against
   :class:`~sparse_exp.data.device_loader.DeviceImageLoader`. No model: what the data path costs per epoch.
2. **Training**, per model (``--models``): LeNet-5 on the real Fashion-MNIST (the default experiment: RigL at 90 %
   with ERK, SGD, batch 128), ResNet-18, VGG-16, ResNet-50 and the ViT (``--models vit``) on CIFAR-10-shaped
   synthetic uint8 images held in a
   ``DeviceImageLoader`` with the standard crop (pad 4) + flip. Each row is a run built by the project's own
   :func:`sparse_exp.engine.build.build_run` (inside :class:`sparse_exp.engine.loop.Trainer`; for the CIFAR shapes
   the data bundle that ``build_data`` would build from CIFAR files is built from the synthetic images instead, nothing
   else changes) and timed over whole epochs of :meth:`~sparse_exp.engine.loop.Trainer.train_epoch`:

   * **our loop in each mode** of :func:`sparse_exp.engine.fast_step.make_train_step`: eager fp32, ``fast.compile``,
     ``fast.cuda_graphs`` (CUDA only), ``fast.dtype=bf16`` (with ``fast.channels_last`` on CUDA), and on CUDA
     all of graphs + bf16 + channels_last; modes a device cannot run are skipped with the project's own reason
     (:func:`sparse_exp.engine.fast_step.check_fast`). Warm-up steps (compilation, graph capture) run before the
     timed epochs and are reported apart; inductor's compile workers are shut down after the compile row's warm-up;
   * **a reference-style loop** written after luuyin/Sup-tickets ``CIFAR/main_suptickets.py`` ``train()`` +
     ``sparselearning/core.py`` ``Masking.step()``: a torchvision ``DataLoader`` with per-image PIL transforms
     (CIFAR: ``RandomCrop(32, padding=4)``, flip, ``ToTensor``, ``Normalize``; Fashion-MNIST: ``ToTensor``,
     ``Normalize``) and ``--workers`` worker processes, ``loss.item()`` and ``correct.item()`` every step,
     ``optimizer.step()`` then masks applied by a Python loop over weights and momentum buffers
     (``tensor.data = tensor.data * mask``, :func:`step_time.reference_apply`), the prune-rate decay stepped
     every step, and the same RigL updates (our sparsifier) at the same steps;
   * **dense / static / SET / RigL / the Sup-tickets cyclic phase** through our eager loop: RigL and SET update
     the masks every ΔT = 100 steps (the count that falls in the timed epoch is shown); the cyclic row is an epoch
     of the cyclic phase (``superposer=sup_tickets``: its cyclic LR per step, its per-step callback work, and the
     explorations and tickets that fall in that epoch, shown; on Fashion-MNIST a cycle is one epoch, so every
     cyclic epoch holds one ticket and one exploration);
   * **events**: one RigL mask update (drop + grow) after a training step, as a fraction of one step and
     amortised over ΔT; one Sup-tickets exploration; one superposition event (the third of K = 3 tickets:
     :meth:`SupTickets.collect`, alone = averaging + global re-prune + the ultimate ticket's state with BN
     handled, as the callback times it in ``superpose_seconds``; and with the evaluations ``collect`` runs:
     ticket on val and test, ultimate ticket on val) with the default config (CIA, ``bn=average``), CIMA, and
     ``bn=recompute`` on models with BN (not with ``--quick``); each as a fraction of this benchmark's epoch and of
     an estimated full-size epoch (45k CIFAR / 55k Fashion-MNIST images at the measured rate, evaluations
     extrapolated by the measured forward time per image to the real 5k val + 10k test images).

The synthetic CIFAR val / test splits keep the real proportions (1/9 and 2/9 of the training images). Whole
epochs of full-size batches: use a multiple of 128 for ``--cifar-images`` (the Fashion-MNIST default, the real
55k split, ends with one short batch, as the real run does; a compiled step runs that one eagerly).
"""

from __future__ import annotations

import argparse
import contextlib
import math
import os
import re
import statistics
import sys
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, Iterator, List, Optional, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch.utils.data import DataLoader, Dataset
from torchvision import transforms as T

sys.path.insert(0, str(Path(__file__).resolve().parent))
from step_time import reference_apply  # noqa: E402  (the same reference-style masking as step_time.py)

from sparse_exp.config.compose import compose  # noqa: E402
from sparse_exp.data.device_loader import DeviceImageLoader  # noqa: E402
from sparse_exp.data.vision import CIFAR_STATS  # noqa: E402

MEAN, STD = CIFAR_STATS["cifar10"]
BATCH = 128

#: model -> (data set, image shape, real split sizes train / val / test)
MODELS = {
    "lenet5": ("fashion_mnist", (1, 28, 28), (55000, 5000, 10000)),
    "resnet18": ("cifar10", (3, 32, 32), (45000, 5000, 10000)),
    "vgg16": ("cifar10", (3, 32, 32), (45000, 5000, 10000)),
    "resnet50": ("cifar10", (3, 32, 32), (45000, 5000, 10000)),
    "resnet32": ("cifar10", (3, 32, 32), (45000, 5000, 10000)),  # small: gpu_check.py's CPU dry run
    "vit": ("cifar10", (3, 32, 32), (45000, 5000, 10000)),  # timm ViT, width 192, 6 blocks (docs/vit.md)
}


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


#: process CPU seconds per wall second of the last :func:`timed` call (2 threads busy: about 2; lower: waiting, or
#: other work on the machine taking the cores)
LAST_CPU_PER_WALL = [float("nan")]


def timed(fn: Callable[[], Any], device: torch.device) -> float:
    """Seconds ``fn`` takes (device synchronised before and after)."""
    sync(device)
    cpu, start = time.process_time(), time.perf_counter()
    fn()
    sync(device)
    wall = time.perf_counter() - start
    LAST_CPU_PER_WALL[0] = (time.process_time() - cpu) / wall if wall > 0 else float("nan")
    return wall


def best_of(args: argparse.Namespace, device: torch.device, fns: Dict[str, Callable[[], Any]]) -> Dict[str, float]:
    times: Dict[str, List[float]] = {k: [] for k in fns}
    cpu: Dict[str, List[float]] = {k: [] for k in fns}
    for _ in range(args.repeats):
        for name, fn in fns.items():
            times[name].append(timed(fn, device))
            cpu[name].append(LAST_CPU_PER_WALL[0])
    return ({k: min(v) for k, v in times.items()} | {f"{k} (median)": statistics.median(v) for k, v in times.items()}
            | {f"{k} (cpu/wall)": cpu[k][v.index(min(v))] for k, v in times.items()})


# ================================================================================================ data part
def data_part(args: argparse.Namespace, device: torch.device) -> None:
    rng = np.random.default_rng(0)
    hwc = rng.integers(0, 256, size=(args.images, 32, 32, 3), dtype=np.uint8)
    labels = rng.integers(0, 10, size=args.images)
    tf = T.Compose([T.RandomCrop(32, padding=4), T.RandomHorizontalFlip(), T.ToTensor(), T.Normalize(MEAN, STD)])
    ref = DataLoader(PILImages(hwc, labels, tf), batch_size=BATCH, shuffle=True, num_workers=args.workers,
                     pin_memory=device.type == "cuda", generator=torch.Generator().manual_seed(0))
    ours = DeviceImageLoader(torch.from_numpy(hwc).permute(0, 3, 1, 2).contiguous().to(device),
                             torch.from_numpy(labels).long().to(device), torch.arange(args.images), BATCH, True, 0,
                             MEAN, STD, pad=4, flip=True)

    def run_ref() -> None:
        for x, y in ref:
            x.to(device, non_blocking=True), y.to(device, non_blocking=True)

    def run_ours() -> None:
        for _ in ours.iterate(0):
            pass

    res = best_of(args, device, {"torchvision per-sample pipeline": run_ref, "device loader (ours)": run_ours})
    n = args.images
    print(f"\n== data: one epoch of {n} CIFAR-shaped images, no model (workers={args.workers}) ==")
    for k in ("torchvision per-sample pipeline", "device loader (ours)"):
        print(f"  {k:<34} {res[k]:8.2f} s  {n / res[k]:10.0f} images/s  (median {res[k + ' (median)']:.2f} s, "
              f"cpu/wall {res[k + ' (cpu/wall)']:.2f})")
    print(f"  ratio ours / reference (images/s): "
          f"{res['torchvision per-sample pipeline'] / res['device loader (ours)']:.2f}x")


# ================================================================================================ runs
@dataclass
class Synthetic:
    """CIFAR-10-shaped synthetic uint8 images (HWC on the host for the reference side, a bundle for ours)."""

    train_hwc: np.ndarray
    train_labels: np.ndarray
    bundle: Any


def synthetic_cifar(n_train: int, device: torch.device, seed: int = 0) -> Synthetic:
    """What :func:`sparse_exp.data.build_data` builds for CIFAR-10 (``dataset.loader=auto``: the splits as uint8
    :class:`DeviceImageLoader` s, crop pad 4 + flip for training), from random images; val / test keep the real
    proportions (5k / 10k against 45k training images)."""
    from sparse_exp.data import DATASETS
    from sparse_exp.data.spec import DataBundle

    n_val, n_test = max(1, n_train // 9), max(1, 2 * n_train // 9)
    rng = np.random.default_rng(seed)
    hwc = rng.integers(0, 256, size=(n_train + n_val + n_test, 32, 32, 3), dtype=np.uint8)
    labels = rng.integers(0, 10, size=hwc.shape[0])

    def loader(lo: int, hi: int, batch: int, train: bool) -> DeviceImageLoader:
        x = torch.from_numpy(hwc[lo:hi]).permute(0, 3, 1, 2).contiguous().to(device)
        y = torch.from_numpy(labels[lo:hi]).long().to(device)
        return DeviceImageLoader(x, y, torch.arange(hi - lo), batch, train, 0, MEAN, STD, pad=4 if train else 0,
                                 flip=train)

    train = loader(0, n_train, BATCH, True)
    val = loader(n_train, n_train + n_val, 1000, False)
    test = loader(n_train + n_val, hwc.shape[0], 1000, False)
    bundle = DataBundle(train=train, val=val, test=test, spec=DATASETS["cifar10"].spec, num_train=n_train,
                        num_val=n_val, num_test=n_test)
    return Synthetic(hwc[:n_train], labels[:n_train], bundle)


@contextlib.contextmanager
def data_from(bundle: Any) -> Iterator[None]:
    """``build_run`` with ``bundle`` as its data (instead of reading CIFAR files, which are not on disk here)."""
    import sparse_exp.engine.build as build

    original = build.build_data

    def build_data(cfg: Any, seed: int, batch_size: int, eval_batch_size: int, device: torch.device) -> Any:
        assert batch_size == BATCH, batch_size
        return bundle

    build.build_data = build_data
    try:
        yield
    finally:
        build.build_data = original


def model_overrides(model: str, args: argparse.Namespace) -> List[str]:
    base = ["logger=none", "progress=false", f"device={args.device}", "sparsity=0.9", "distribution=erk"]
    if model == "lenet5":  # the default experiment (30 epochs)
        return base + ["model=lenet5", "dataset=fashion_mnist", f"dataset.subset_train={args.fmnist_images}"]
    # CIFAR protocol of the paper: 250 epochs, so that the cyclic phase holds 3 tickets of 8 epochs
    return base + [f"model={model}", "dataset=cifar10", "epochs=250"]


@dataclass
class Row:
    """One timed configuration of a model."""

    key: str
    label: str
    epoch: Optional[Callable[[], Any]] = None  # one epoch
    events: Callable[[], str] = field(default_factory=lambda: (lambda: ""))
    times: List[float] = field(default_factory=list)
    cpu: List[float] = field(default_factory=list)  # CPU seconds per wall second of each repeat
    skip: Optional[str] = None
    note: str = ""
    images: int = 0

    @property
    def best(self) -> float:
        return min(self.times)

    @property
    def ips(self) -> float:
        return self.images / self.best


def stop_compile_workers() -> None:
    """Shut inductor's compile worker processes down once the compiled step exists, so that they do not share the
    cores with the timed epochs (a later recompilation, if any, compiles in this process)."""
    try:
        from torch._inductor.async_compile import shutdown_compile_workers
    except ImportError:
        return
    shutdown_compile_workers()


def make_trainer(cfg: Any, tmp: Path, name: str) -> Any:
    """A :class:`Trainer` for ``cfg`` with its initial masks, as :meth:`Trainer.fit` starts a fresh run."""
    from sparse_exp.engine.loop import Trainer
    from sparse_exp.run.run_dir import RunDir

    tr = Trainer(cfg, RunDir(tmp / name))
    tr.run.callbacks.before_init_masks(tr.state)
    tr.sparsifier.init_masks()
    return tr


def place(run: Any, epoch: int) -> None:
    """Put the run's counters and LR where the (0-based) ``epoch`` starts (each repeat times the same epoch)."""
    s = run.state
    s.epoch, s.step = epoch, s.pre_steps + epoch * s.steps_per_epoch
    sch = run.scheduler
    sch.last_epoch = s.step
    for g, base, lam in zip(run.optimizer.param_groups, sch.base_lrs, sch.lr_lambdas):
        lr = base * lam(s.step)
        if torch.is_tensor(g["lr"]):
            g["lr"].fill_(lr)
        else:
            g["lr"] = lr


def warm_up(tr: Any, steps: int, device: torch.device) -> float:
    """``steps`` train steps on full-size batches before timing (compilation, graph capture); their seconds."""
    if steps <= 0:
        return 0.0
    tr.run.train_model.train()
    loader = tr.run.train_loader
    batches = (b for e in range(steps) for b in loader.iterate(e) if b[1].shape[0] == loader.batch_size)

    def go() -> None:
        for _ in range(steps):
            x, y = next(batches)
            tr.train_step(x, y)

    return timed(go, device)


def our_epoch(tr: Any, epoch: int) -> Callable[[], None]:
    def run() -> None:
        place(tr.run, epoch)
        tr.train_epoch()

    return run


def reference_epoch(run: Any, loader: DataLoader, epoch: int, device: torch.device) -> Callable[[], None]:
    """One epoch as luuyin/Sup-tickets' ``train()`` + ``Masking.step()`` run it (module doc), on ``run``'s model,
    optimizer, masks and sparsifier, at the same global steps as our loop's ``epoch``. ``go.warm_up(k)``: ``k``
    such steps without mask updates; ``go.updates``: mask updates in the last epoch."""
    decay_opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.3)
    decay = torch.optim.lr_scheduler.CosineAnnealingLR(decay_opt, 1_000_000)  # core.py's CosineDecay
    # the reference steps this scheduler without ever stepping its optimizer (and filters UserWarnings)
    warnings.filterwarnings("ignore", message=re.escape("Detected call of `lr_scheduler.step()` before"))
    model, opt = run.model, run.optimizer
    acc = {"loss": 0.0, "correct": 0, "n": 0}

    def one(x: torch.Tensor, y: torch.Tensor) -> None:
        x, y = x.to(device), y.to(device)
        opt.zero_grad()
        output = model(x)
        loss = F.cross_entropy(output, y)  # log_softmax + nll_loss in the reference's models
        acc["loss"] += loss.item()
        pred = output.argmax(dim=1, keepdim=True)
        acc["correct"] += pred.eq(y.view_as(pred)).sum().item()
        acc["n"] += y.shape[0]
        loss.backward()
        opt.step()  # Masking.step(): optimizer step, apply_mask, prune-rate decay, then the update every k steps
        reference_apply(run.masking, opt)
        decay.step()

    def go() -> None:
        model.train()
        u0 = run.sparsifier.updates
        step = run.state.pre_steps + epoch * run.state.steps_per_epoch
        for x, y in loader:
            one(x, y)
            step += 1
            run.sparsifier.after_step(step)
        go.updates = run.sparsifier.updates - u0

    def warm_up(steps: int) -> None:
        model.train()
        for i, (x, y) in enumerate(loader):
            if i >= steps:
                break
            one(x, y)

    go.warm_up, go.updates = warm_up, 0
    return go


def reference_loader(model: str, run: Any, syn: Optional[Synthetic], args: argparse.Namespace,
                     device: torch.device) -> DataLoader:
    if syn is not None:
        images, labels = syn.train_hwc, syn.train_labels
        tf = T.Compose([T.RandomCrop(32, padding=4), T.RandomHorizontalFlip(), T.ToTensor(), T.Normalize(MEAN, STD)])
    else:
        from sparse_exp.data import fashion_mnist as fm
        from sparse_exp.data import resolve_root

        raw = fm.load_raw(fm.find_dir(resolve_root(run.cfg.dataset)))
        idx = run.data.train.indices.numpy()
        images, labels = raw["train_images"][idx], raw["train_labels"][idx]
        tf = T.Compose([T.ToTensor(), T.Normalize((fm.MEAN,), (fm.STD,))])
    return DataLoader(PILImages(images, labels, tf), batch_size=BATCH, shuffle=True, num_workers=args.workers,
                      pin_memory=device.type == "cuda", generator=torch.Generator().manual_seed(0))


def window_events(tr: Any, epoch: int) -> Callable[[], str]:
    """What fell in the last timed epoch: mask updates, Sup-tickets explorations and tickets."""
    s = tr.state
    before = {"updates": tr.sparsifier.updates}

    def mark() -> None:
        before["updates"] = tr.sparsifier.updates

    def describe() -> str:
        lo = epoch * s.steps_per_epoch  # main steps of the window: (lo, lo + steps_per_epoch]
        hi = lo + s.steps_per_epoch
        out = []
        ups = tr.sparsifier.updates - before["updates"]
        if ups or tr.cfg.sparsifier.name in ("rigl", "set"):
            out.append(f"{ups} mask upd.")
        for cb in tr.run.callbacks:
            if getattr(cb, "name", "") == "sup_tickets":
                ex = sum(lo < k <= hi for k in cb.explore_steps)
                tk = sum(lo < k <= hi for k in cb.ticket_steps)
                out.append(f"{ex} explor., {tk} ticket{'s' if tk != 1 else ''}")
        return ", ".join(out)

    describe.mark = mark  # type: ignore[attr-defined]
    return describe


# ================================================================================================ one model
def model_part(model: str, args: argparse.Namespace, device: torch.device) -> Dict[str, Any]:
    from sparse_exp.config.errors import ConfigError
    from sparse_exp.config.validate import validate
    from sparse_exp.engine.build import build_run
    from sparse_exp.engine.fast_step import check_fast

    dataset, _, (full_train, full_val, full_test) = MODELS[model]
    syn = synthetic_cifar(args.cifar_images, device) if dataset == "cifar10" else None
    ctx = data_from(syn.bundle) if syn is not None else contextlib.nullcontext()
    base = model_overrides(model, args)
    tmp = Path(args.tmp) / model
    cuda = device.type == "cuda"
    compile_here = (args.compile == "all" or (args.compile == "small" and model == "lenet5")
                    or model in args.compile.split(","))
    if cuda:
        torch.cuda.reset_peak_memory_stats(device)
    warmup = args.warmup_steps if args.warmup_steps is not None else (0 if args.quick and model != "lenet5" else 1)

    modes = [("eager", "our loop, eager fp32", [])]
    modes.append(("compile", "our loop, fast.compile", ["fast.compile=true"]))
    modes.append(("graphs", "our loop, fast.cuda_graphs", ["fast.cuda_graphs=true"]))
    bf16 = ["fast.dtype=bf16"] + (["fast.channels_last=true"] if cuda else [])
    modes.append(("bf16", "our loop, fast.dtype=bf16" + (" +channels_last" if cuda else ""), bf16))
    if cuda:
        modes.append(("graphs_bf16", "our loop, graphs+bf16+channels_last", ["fast.cuda_graphs=true"] + bf16))
    methods = [("dense", "dense", ["sparsifier=dense", "sparsity=0", "superposer=none"]),
               ("static", "static 90%", ["sparsifier=static", "superposer=none"]),
               ("set", "SET 90%", ["sparsifier=set", "superposer=none"]),
               ("cyclic", "Sup-tickets cyclic phase (RigL)", ["sparsifier=rigl", "superposer=sup_tickets"])]

    rows: List[Row] = []
    trainers: Dict[str, Any] = {}
    info: Dict[str, Any] = {}
    print(f"\n== {model}: building runs ...", flush=True)
    t_build = time.perf_counter()
    with ctx:
        for key, label, extra, is_mode in [m + (True,) for m in modes] + [m + (False,) for m in methods]:
            over = base + (["sparsifier=rigl", "superposer=none"] + extra if is_mode else extra)
            row = Row(key, label)
            rows.append(row)
            if key == "compile" and not compile_here:
                row.skip = (f"skipped on {model} by --compile {args.compile} (compiling a big model's step costs "
                            "~10 s to minutes, on 2 CPU cores as on a GPU cold); --compile all times it")
                continue
            cfg = compose(over)
            try:
                check_fast(cfg)
                validate(cfg)
            except ConfigError as exc:
                row.skip = f"skipped: {exc}"
                continue
            tr = make_trainer(cfg, tmp, key)
            trainers[key] = tr
            if key == "cyclic":
                cb = tr.callback("sup_tickets")
                epoch = cb.budget.start_step // tr.state.steps_per_epoch + 1
                row.note = f"epoch {epoch + 1} of {tr.run.total_epochs}"
            else:
                epoch = 1  # the second epoch (past Fashion-MNIST's warm-up epoch), same for every row
            ev = window_events(tr, epoch)
            run_epoch = our_epoch(tr, epoch)

            def epoch_fn(run_epoch=run_epoch, ev=ev) -> None:
                ev.mark()
                run_epoch()

            row.epoch, row.events, row.images = epoch_fn, ev, tr.run.data.num_train
            steps = max(warmup, 1) if key == "eager" else warmup  # the first row also warms the process's kernels
            if key in ("graphs", "graphs_bf16"):
                steps = max(steps, int(cfg.fast.graph_warmup_steps) + 2)
            if key == "compile":
                steps = max(steps, 3)
            row.warm_s = warm_up(tr, steps, device)
            row.warm_steps = steps
            if key == "compile":
                row.note = f"compile + warm-up: {steps} steps in {row.warm_s:.1f} s"
                stop_compile_workers()
        # the reference-style loop: a run of the eager row's config, trained by the authors' loop
        eager_cfg = trainers["eager"].cfg
        ref_run = build_run(eager_cfg)
        ref_run.callbacks.before_init_masks(ref_run.state)
        ref_run.sparsifier.init_masks()
    loader = reference_loader(model, ref_run, syn, args, device)
    go = reference_epoch(ref_run, loader, 1, device)
    ref = Row("reference", f"reference-style loop (workers={args.workers})", epoch=go,
              events=lambda: f"{go.updates} mask upd.", images=ref_run.data.num_train)
    ref.warm_steps = warmup
    ref.warm_s = timed(lambda: go.warm_up(warmup), device)
    rows.insert(len(modes), ref)
    info["build_s"] = time.perf_counter() - t_build

    # interleaved repeats
    live = [r for r in rows if r.skip is None]
    for _ in range(args.repeats):
        for r in live:
            r.times.append(timed(r.epoch, device))
            r.cpu.append(LAST_CPU_PER_WALL[0])
            r.last_events = r.events()
    info["rows"] = rows
    info["events"] = events_part(model, args, device, trainers, rows, (full_train, full_val, full_test))
    info["syn"] = syn
    info["trainers"] = trainers
    info["summary"] = print_model(model, args, device, info, ref_run)
    sm = info["summary"]
    sm["peak_mem_gib"] = torch.cuda.max_memory_allocated(device) / 2**30 if cuda else None
    sm["images_per_epoch"] = by_key(rows)["eager"].images
    sm["rows"] = {r.key: {"label": r.label, "skip": r.skip, "s_per_epoch": r.best if r.times else None,
                          "images_per_s": r.ips if r.times else None, "warm_up_s": getattr(r, "warm_s", None),
                          "events": getattr(r, "last_events", "")} for r in rows}
    timed_modes = {k: v["images_per_s"] for k, v in sm["rows"].items()
                   if k in ("eager", "compile", "graphs", "bf16", "graphs_bf16") and v["images_per_s"]}
    sm["best_mode"] = max(timed_modes, key=timed_modes.get)
    sm["best/ref"] = timed_modes[sm["best_mode"]] / sm["rows"]["reference"]["images_per_s"]
    ev = info["events"]
    sm["update_ms"], sm["explore_ms"] = 1e3 * ev["update_s"], 1e3 * ev.get("explore_s", float("nan"))
    if cuda:
        print(f"  peak GPU memory (all rows of {model}): {sm['peak_mem_gib']:.2f} GiB; best mode {sm['best_mode']}: "
              f"{sm['best/ref']:.2f}x the reference-style loop")
    return info


def by_key(rows: List[Row]) -> Dict[str, Row]:
    return {r.key: r for r in rows}


# ================================================================================================ events
def one_step(tr: Any) -> None:
    """Make sure ``p.grad`` holds a training step's gradients (the timed epochs' last step left them there; else one
    training step of ``tr`` on a full-size batch)."""
    if all(tr.masking.params[n].grad is not None for n in tr.masking.names):
        return
    tr.run.train_model.train()
    x, y = next(iter(tr.run.train_loader.iterate(0)))
    tr.train_step(x, y)


def events_part(model: str, args: argparse.Namespace, device: torch.device, trainers: Dict[str, Any],
                rows: List[Row], full: Sequence[int]) -> Dict[str, Any]:
    from omegaconf import OmegaConf

    from sparse_exp.superposers.sup_tickets import SupTickets
    from sparse_exp.training.metrics import predict

    out: Dict[str, Any] = {}
    eager = trainers["eager"]
    row = next(r for r in rows if r.key == "eager")
    steps = eager.state.steps_per_epoch
    out["step_s"] = row.best / steps
    out["epoch_s"] = row.best
    out["ips"] = row.ips
    n = max(3, args.repeats)
    # one RigL update right after a training step (the loop's order): the dense gradient is that step's p.grad
    # (the last timed step's; drop_and_grow leaves p.grad alone, so the n tries follow one step)
    sp = eager.sparsifier
    dt = int(eager.cfg.sparsifier.delta_t)
    one_step(eager)
    times = []
    for _ in range(n):
        changed: List[bool] = []
        times.append(timed(lambda c=changed: c.append(sp.after_step(dt)), device))  # step dt: an update step
        assert changed == [True], "the RigL update did not run"
    out["update_s"] = min(times)
    out["delta_t"] = dt
    cyc = trainers.get("cyclic")
    if cyc is None:
        return out
    cb = cyc.callback("sup_tickets")
    one_step(cyc)
    out["explore_s"] = min(timed(cb.explore, device) for _ in range(n))
    out["cycle_epochs"] = float(cyc.cfg.superposer.cycle_epochs)
    # superposition events: the third of K = 3 tickets, on a fresh callback per try
    s = cyc.state
    variants = [("default config (" + str(cyc.cfg.superposer.averaging) + ", " + str(cyc.cfg.superposer.reprune)
                 + " re-prune, bn=" + str(cyc.cfg.superposer.bn) + ")", {})]
    if cyc.cfg.superposer.averaging != "cima":
        variants.append((f"CIMA (beta={cyc.cfg.superposer.beta})", {"averaging": "cima"}))
    has_bn = any(isinstance(m, torch.nn.modules.batchnorm._BatchNorm) for m in cyc.model.modules())
    if has_bn and cyc.cfg.superposer.bn != "recompute" and not args.quick:
        variants.append(("bn=recompute (BN statistics re-estimated on the train split)", {"bn": "recompute"}))
    eval_images = 2 * s.data.num_val + s.data.num_test  # ticket on val + test, ultimate ticket on val
    full_eval = 2 * full[1] + full[2]

    def forward_passes() -> None:
        for loader in (s.data.val, s.data.test, s.data.val):
            predict(cyc.model, loader)

    out["predict_per_image_s"] = min(timed(forward_passes, device) for _ in range(args.event_repeats)) / eval_images
    out["extra_eval_images"] = full_eval - eval_images
    sup = []
    for label, change in variants:
        node = OmegaConf.merge(cyc.cfg.superposer, change)
        alone, total = [], []
        for _ in range(args.event_repeats):
            st = SupTickets(node)
            st.setup(s)
            masks = {k: cyc.masking.masks[k] for k in cyc.masking.names}
            for _ in range(2):  # tickets 1 and 2 (their evaluations are not this event)
                st.averager.add(cyc.model.state_dict(), masks)
            st.ultimate_masks = st._reprune()
            st.ultimate_model()  # the ultimate model's copy exists after the first ticket
            total.append(timed(lambda st=st: st.collect(index=3), device))
            alone.append(st.superpose_seconds[-1])
        sup.append({"label": label, "alone": min(alone), "total": min(total), "recompute": "bn" in change})
    out["superpose"] = sup
    out["full_train"] = full[0]
    return out


# ================================================================================================ output
def print_model(model: str, args: argparse.Namespace, device: torch.device, info: Dict[str, Any], ref_run) -> None:
    rows: List[Row] = info["rows"]
    by = {r.key: r for r in rows}
    dataset, shape, full = MODELS[model]
    n = by["eager"].images
    data = ("real Fashion-MNIST" if dataset == "fashion_mnist" else "synthetic uint8 CIFAR-10-shaped images, "
            "DeviceImageLoader crop+flip")
    steps = ref_run.state.steps_per_epoch
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(f"\n== {model} {shape}: one epoch of {n} images ({steps} steps of batch {BATCH}), {data}; "
          f"best of {args.repeats} interleaved (building + warm-up {info['build_s']:.0f} s; 1-min load now "
          f"{load:.2f}) ==")
    summary: Dict[str, Any] = {"model": model}

    def ratio(a: str, b: str) -> Optional[float]:
        ra, rb = by.get(a), by.get(b)
        if ra is None or rb is None or ra.skip or rb.skip:
            return None
        return ra.ips / rb.ips

    summary.update({"ours/ref": ratio("eager", "reference"), "compile": ratio("compile", "eager"),
                    "graphs": ratio("graphs", "eager"), "bf16": ratio("bf16", "eager"),
                    "graphs_bf16": ratio("graphs_bf16", "eager"), "static": ratio("static", "dense"),
                    "set": ratio("set", "dense"), "rigl": ratio("eager", "dense"), "cyclic": ratio("cyclic", "dense"),
                    "ips": by["eager"].ips if by["eager"].times else None})
    eager, dense, refr = by["eager"], by.get("dense"), by["reference"]
    print(f"  {'row':<40} {'s/epoch':>8} {'median':>8} {'images/s':>9} {'ratio':>7}  {'vs':<6} {'cpu/wall':>8}  "
          "in the timed epoch / notes")

    def line(r: Row, versus: Optional[Row], vs_name: str, label: Optional[str] = None) -> None:
        label = label or r.label
        if r.skip:
            print(f"  {label:<40} {r.skip}")
            return
        have = versus is not None and not versus.skip and versus is not r
        ratio = f"{r.ips / versus.ips:7.3f}" if have else f"{'':>7}"
        notes = "; ".join(x for x in (getattr(r, "last_events", ""), r.note) if x)
        cpu = r.cpu[r.times.index(r.best)] if r.cpu else float("nan")
        print(f"  {label:<40} {r.best:8.3f} {statistics.median(r.times):8.3f} {r.ips:9.0f} {ratio}  "
              f"{vs_name if have else '':<6} {cpu:8.2f}  {notes}")

    print("  -- our loop per fast.* mode (RigL 90 %), and the reference-style loop")
    for r in rows:
        if r.key in ("eager", "compile", "graphs", "bf16", "graphs_bf16"):
            line(r, eager, "eager")
    line(refr, eager, "eager")
    print(f"  {'ratio ours (eager) / reference':<40} {eager.ips / refr.ips:.2f}x images/s")
    print("  -- sparsity (our eager loop), ratio to dense")
    for key in ("dense", "static", "set", "eager", "cyclic"):
        if key in by:
            line(by[key], dense, "dense", "RigL 90% (the eager row)" if key == "eager" else None)
    ev = info["events"]
    print("  -- events (our code, after a training step)")
    step_s, dt = ev["step_s"], ev["delta_t"]
    full_train = full[0]
    full_steps = math.ceil(full_train / BATCH)
    u = ev["update_s"]
    summary["update"] = 100 * u / (dt * step_s)
    print(f"  RigL mask update (drop+grow)     {u * 1e3:8.1f} ms = {u / step_s:.3f} eager steps; amortised over "
          f"ΔT={dt}: {100 * u / (dt * step_s):.3f} % of training time")
    if "explore_s" in ev:
        e = ev["explore_s"]
        cyc_steps = ev["cycle_epochs"] * full_steps
        print(f"  Sup-tickets exploration          {e * 1e3:8.1f} ms = {e / step_s:.3f} eager steps; once per cycle "
              f"({ev['cycle_epochs']:g} epochs of {full_train}): {100 * e / (cyc_steps * step_s):.4f} % of the cycle")
        full_epoch = full_train / ev["ips"]
        print(f"  superposition event (3rd of K=3 tickets; this epoch {ev['epoch_s']:.2f} s, full-size "
              f"{full_train}-image epoch est. {full_epoch:.1f} s at the eager rate):")
        for sp in ev["superpose"]:
            a, t = sp["alone"], sp["total"]
            if sp["recompute"]:
                est = "(scales with the train split: see this epoch)"
            else:
                t_full = t + ev["predict_per_image_s"] * ev["extra_eval_images"]
                est = f"full epoch: alone {100 * a / full_epoch:.3f} %, with evals {100 * t_full / full_epoch:.2f} %"
                if "superpose" not in summary:
                    summary["superpose"] = (100 * a / full_epoch, 100 * t_full / full_epoch)
            print(f"    {sp['label']:<62} alone {a:7.3f} s ({100 * a / ev['epoch_s']:6.2f} % of this epoch), with "
                  f"evaluations {t:7.3f} s ({100 * t / ev['epoch_s']:6.2f} %); {est}")
        print(f"    (full-size estimate: evaluations extrapolated by the measured forward time per image, "
              f"{1e3 * ev['predict_per_image_s']:.3f} ms, to the real val + test sizes)")
    return summary


def print_summary(summaries: List[Dict[str, Any]]) -> None:
    """One line per model: every ratio (images/s) and the events' share of training time."""
    cols = [("ours/ref", "ours/ref"), ("compile", "compile"), ("graphs", "graphs"), ("bf16", "bf16"),
            ("graphs_bf16", "gr+bf16"), ("best/ref", "best/ref"), ("static", "static"), ("set", "SET"),
            ("rigl", "RigL"), ("cyclic", "cyclic")]
    print("\n== summary: ratios of images/s (ours/ref: our eager loop / reference-style loop; compile, graphs, bf16: "
          "/ eager; static, SET, RigL, cyclic: / dense); mask update amortised over ΔT and one superposition "
          "(default config, alone / with evaluations) as % of a full-size epoch ==")
    print(f"  {'model':<9} {'eager img/s':>11} " + " ".join(f"{h:>8}" for _, h in cols)
          + f" {'upd %':>7} {'sup. %':>13}")
    for sm in summaries:
        vals = " ".join(f"{sm[k]:8.3f}" if sm.get(k) is not None else f"{'-':>8}" for k, _ in cols)
        sup = sm.get("superpose")
        sup_s = f"{sup[0]:.3f} / {sup[1]:.2f}" if sup else "-"
        ips = f"{sm['ips']:11.0f}" if sm.get("ips") else f"{'-':>11}"
        print(f"  {sm['model']:<9} {ips} {vals} {sm.get('update', float('nan')):7.3f} {sup_s:>13}")


# ================================================================================================ main
def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cpu")
    p.add_argument("--quick", action="store_true",
                   help="small sizes, one repeat, compile on LeNet-5 only (explicit options still win)")
    p.add_argument("--models", default="lenet5,resnet18,vgg16", help="comma-separated: " + ", ".join(MODELS))
    p.add_argument("--images", type=int, default=None, help="CIFAR-shaped images per data epoch (default 10000)")
    p.add_argument("--fmnist-images", type=int, default=None,
                   help="Fashion-MNIST training images per epoch (default 55000, the real split)")
    p.add_argument("--cifar-images", type=int, default=None,
                   help="synthetic CIFAR training images per epoch for ResNet-18 / VGG-16 (default 512; --quick "
                        "128; a multiple of 128)")
    p.add_argument("--repeats", type=int, default=None, help="interleaved repeats per row (default 2)")
    p.add_argument("--event-repeats", type=int, default=None, help="tries per superposition variant (default 2)")
    p.add_argument("--warmup-steps", type=int, default=None,
                   help="untimed train steps per row before timing (default 1; --quick: 0 on the CIFAR models); "
                        "fast.compile rows take "
                        "at least 3, CUDA-graph rows graph_warmup_steps + 2")
    p.add_argument("--compile", default=None,
                   help="where to time fast.compile: all models, LeNet-5 only (small), nowhere (none), or a "
                        "comma-separated list of models (default all; --quick: small)")
    p.add_argument("--workers", type=int, default=None,
                   help="DataLoader workers of the torchvision / reference side (default 0 on CPU, 4 on CUDA: "
                        "the reference's -j default)")
    p.add_argument("--threads", type=int, default=None,
                   help="torch intra-op threads (default: torch's, one per core); on a machine shared with other "
                        "work --threads 1 is steadier (a descheduled OpenMP thread stalls every kernel)")
    p.add_argument("--part", choices=["all", "data", "training"], default="all")
    p.add_argument("--tmp", default="/tmp/sparse_exp_epoch_bench")
    p.add_argument("--json", default=None, help="also write every model's figures (the summary, each row, events, "
                                                 "peak GPU memory) to this JSON file")
    args = p.parse_args()
    q = args.quick
    defaults = {"images": (10000, 2048), "fmnist_images": (55000, 5120), "cifar_images": (512, 128),
                "repeats": (2, 1), "event_repeats": (2, 1), "compile": ("all", "small")}
    for k, (full, quick) in defaults.items():
        if getattr(args, k) is None:
            setattr(args, k, quick if q else full)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    if args.workers is None:
        args.workers = 4 if device.type == "cuda" else 0
    models = [m.strip() for m in args.models.split(",") if m.strip()]
    unknown = [m for m in models if m not in MODELS]
    if unknown:
        p.error(f"unknown model(s) {unknown}; choose from {list(MODELS)}")
    if device.type == "cuda" and not torch.cuda.is_available():
        p.error("--device cuda but torch.cuda.is_available() is False")
    if args.cifar_images % BATCH:
        print(f"note: --cifar-images {args.cifar_images} is not a multiple of {BATCH}: the last batch is short")
    gpu = f", {torch.cuda.get_device_name(device)}" if device.type == "cuda" else ""
    load = os.getloadavg() if hasattr(os, "getloadavg") else ()
    print(f"device {device}{gpu}, {torch.get_num_threads()} threads, {os.cpu_count()} CPUs, torch {torch.__version__}, "
          f"best of {args.repeats}{' (--quick)' if q else ''}; load average at start "
          + " ".join(f"{x:.2f}" for x in load))
    if device.type != "cuda":
        print("CUDA-only modes (fast.cuda_graphs; channels_last with bf16) are skipped on this device")
    cache = Path(os.environ.get("TORCHINDUCTOR_CACHE_DIR") or
                 Path(os.environ.get("TMPDIR", "/tmp")) / f"torchinductor_{os.environ.get('USER', 'root')}")
    size = sum(f.stat().st_size for f in cache.rglob("*") if f.is_file()) / 2**20 if cache.is_dir() else 0.0
    print(f"inductor cache {cache}: {size:.0f} MiB before this run (a warm cache shortens fast.compile's warm-up)")
    if q:
        print("--quick: tiny epochs and one repeat: a smoke check of every path, not numbers to quote")
    t0 = time.perf_counter()
    if args.part in ("all", "data"):
        data_part(args, device)
    summaries = []
    if args.part in ("all", "training"):
        for m in models:
            summaries.append(model_part(m, args, device)["summary"])
    if summaries:
        print_summary(summaries)
    if args.json:
        import json

        meta = {"device": str(device), "gpu": torch.cuda.get_device_name(device) if device.type == "cuda" else None,
                "torch": torch.__version__, "repeats": args.repeats, "cifar_images": args.cifar_images,
                "fmnist_images": args.fmnist_images, "quick": q, "seconds": time.perf_counter() - t0}
        Path(args.json).write_text(json.dumps({"meta": meta, "models": summaries}, indent=1, default=str) + "\n")
    load = os.getloadavg() if hasattr(os, "getloadavg") else ()
    print(f"\ntotal {time.perf_counter() - t0:.0f} s; load average at end " + " ".join(f"{x:.2f}" for x in load))


if __name__ == "__main__":
    main()
