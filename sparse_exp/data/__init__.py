"""Data layer: locate a data set, split it, and serve deterministic batches.

Data sets (:data:`DATASETS`): ``fashion_mnist``, ``cifar10``, ``cifar100``, ``tiny_imagenet``,
``imagenet``. :func:`build_data` returns a :class:`DataBundle` of three loaders whose
``iterate(epoch)`` yields ``(x, y)``: float32 ``(B, C, H, W)`` normalized images and int64 ``(B,)``
labels, both already on the requested device.

Splits. ``val_size`` images are held out of the official training set for validation, chosen by a
permutation with the fixed split seed 0 (:data:`~sparse_exp.data.spec.SPLIT_SEED`), so all run seeds
validate on the same images; see :func:`~sparse_exp.data.spec.split_indices`. ``subset_train`` keeps
the first N images of the remaining training pool (in that permutation's order), ``subset_test``
the first N test images (file order); both are for smoke runs (the pre-flight refuses a subset larger than
the official split, :mod:`sparse_exp.config.preflight`; the loaders clamp to what a smaller copy on disk holds).
Validation images always get the evaluation transform, never the training augmentation.

Determinism. Epoch ``e`` of the training loader is ordered (and augmented) from a
``torch.Generator`` seeded with ``seed * 100003 + e`` only, so it never depends on which epochs ran
before (bitwise resume). Validation and test loaders never shuffle. Iterating never touches the
global torch RNG.

Where the data is (:func:`resolve_root`), first match wins:

1. ``dataset.root`` if set;
2. else ``$SPARSE_EXP_DATA``;
3. else ``/usr/share/datasets/fashion-mnist`` (Debian package ``dataset-fashion-mnist``) and then
   ``./data/fashion_mnist`` for Fashion-MNIST, ``./data/<name>`` for the others.

Within such a directory the data may also sit in a conventional subfolder: ``fashion-mnist/``,
``fashion_mnist/`` or ``FashionMNIST/raw/`` (where torchvision's downloader puts it) for
Fashion-MNIST, ``<name>/`` (and ``cifar-10/``, ``cifar-100/``, ``tiny-imagenet-200/``) for the
others. Nothing is downloaded unless ``dataset.download=true`` (Fashion-MNIST and CIFAR only); a
download goes into ``dataset.root``, else ``$SPARSE_EXP_DATA``, else ``./data/<name>``.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any, List, Optional, Tuple

import torch

from sparse_exp.data import fashion_mnist as fm
from sparse_exp.data import vision
from sparse_exp.data.spec import (SPLIT_SEED, DataBundle, DataError, DatasetSpec, Loader, cfg_get, epoch_seed,
                                  split_indices)
from sparse_exp.data.device_loader import DeviceImageLoader
from sparse_exp.data.loaders import TensorLoader, TorchLoader
from sparse_exp.config.errors import one_of, require
from sparse_exp.registry import DATASETS

__all__ = [
    "DATASETS", "DatasetSpec", "DataError", "DataBundle", "Loader", "TensorLoader", "TorchLoader",
    "resolve_root", "check_data_available", "build_data", "epoch_seed", "split_indices", "SPLIT_SEED",
    "ENV_VAR",
]

log = logging.getLogger("sparse_exp")

#: environment variable naming a data directory (used when ``dataset.root`` is not set)
ENV_VAR = "SPARSE_EXP_DATA"

#: ``dataset.name`` -> :class:`DatasetSpec`; every data set shares the :class:`~sparse_exp.config.schema.DatasetConfig`
#: schema and the group checks below
for _spec in (
    DatasetSpec("fashion_mnist", in_channels=1, num_classes=10, image_size=28, default_val_size=5000,
                train_size=60000, test_size=10000),
    DatasetSpec("cifar10", in_channels=3, num_classes=10, image_size=32, default_val_size=5000,
                train_size=50000, test_size=10000),
    DatasetSpec("cifar100", in_channels=3, num_classes=100, image_size=32, default_val_size=5000,
                train_size=50000, test_size=10000),
    DatasetSpec("tiny_imagenet", in_channels=3, num_classes=200, image_size=64, default_val_size=10000,
                train_size=100000, test_size=10000),
    DatasetSpec("imagenet", in_channels=3, num_classes=1000, image_size=224, default_val_size=10000,
                train_size=1281167, test_size=50000),
):
    DATASETS.add(_spec.name, _spec)


@DATASETS.group_check
def _check_dataset(cfg: Any) -> None:
    """Split sizes and workers of the ``dataset`` group (every data set)."""
    ds = cfg.dataset
    require(ds.val_size >= 0, "dataset.val_size", ds.val_size, "must be >= 0")
    for key in ("subset_train", "subset_test"):
        require(ds[key] is None or ds[key] >= 1, f"dataset.{key}", ds[key], "must be >= 1 or null")
    require(ds.num_workers >= 0, "dataset.num_workers", ds.num_workers, "must be >= 0")
    one_of("dataset.loader", ds.loader, {"auto", "device", "torchvision"})
    if ds.loader == "device":
        require(ds.name in vision.CIFAR_NAMES or ds.name == "fashion_mnist", "dataset.loader", ds.loader,
                f"dataset={ds.name} is read through torchvision (ImageFolder); allowed: auto, torchvision")


_ALIASES = {
    "cifar10": ("cifar10", "cifar-10"),
    "cifar100": ("cifar100", "cifar-100"),
    "tiny_imagenet": ("tiny_imagenet", "tiny-imagenet-200", "tiny-imagenet"),
    "imagenet": ("imagenet",),
}
_DOWNLOADABLE = ("fashion_mnist", "cifar10", "cifar100")
_FM_FILES = ", ".join(list(fm.FILES.values())[:-1]) + " and " + list(fm.FILES.values())[-1]


def _name(cfg: Any) -> str:
    name = cfg_get(cfg, "name", None)
    if name not in DATASETS:
        raise DataError(f"dataset.name={name!r} is not allowed: must be one of {sorted(DATASETS)}")
    return name


def _bases(cfg: Any, name: str) -> Tuple[List[Path], str, Path]:
    """(directories to search, where they came from, directory a download goes to)."""
    root = cfg_get(cfg, "root", None)
    if root:
        base = Path(str(root)).expanduser().absolute()
        return [base], "dataset.root", base
    env = os.environ.get(ENV_VAR)
    if env:
        base = Path(env).expanduser().absolute()
        return [base], f"${ENV_VAR}", base
    local = (Path("data") / name).absolute()
    if name == "fashion_mnist":
        return [fm.SYSTEM_DIR, local], "default", local
    return [local], "default", local


def _find(name: str, base: Path) -> Optional[Path]:
    """The directory under ``base`` (itself or a conventional subfolder) that holds ``name``, if any."""
    if name == "fashion_mnist":
        return fm.find_dir(base)
    for d in (base, *(base / a for a in _ALIASES[name])):
        if name in vision.CIFAR_NAMES:
            if not vision.cifar_missing(name, d):
                return d
        elif (d / "train").is_dir():
            return d
    return None


def _not_found(name: str, bases: List[Path], source: str) -> DataError:
    where = " or ".join(str(b) for b in bases) + ("" if source == "default" else f" (from {source})")
    if name == "fashion_mnist":
        return DataError(f"fashion_mnist data not found in {where}: install the Debian package dataset-fashion-mnist "
                         f"(sudo apt-get install dataset-fashion-mnist), set {ENV_VAR} or dataset.root to a directory "
                         f"holding {_FM_FILES}, or pass dataset.download=true")
    if name in vision.CIFAR_NAMES:
        cls = vision.cifar_class(name)
        folder = cls.base_folder
        files = ", ".join(f.split("/", 1)[1] for f in vision.cifar_required_files(name))
        return DataError(f"{name} data not found in {where}: expected torchvision's layout <root>/{folder}/ ({files}) "
                         f"as extracted from {cls.url}; set dataset.root or {ENV_VAR} to the directory "
                         f"that contains {folder}, or pass dataset.download=true")
    return DataError(f"{name} data not found in {where}: {vision.imagefolder_instructions(name, bases[0])}")


def resolve_root(cfg: Any) -> Path:
    """The directory the data set ``cfg.name`` is read from (see the module doc for the search order).

    For Fashion-MNIST it is the directory holding the four ``.gz`` files; for CIFAR the directory
    containing ``cifar-10-batches-py`` / ``cifar-100-python``; for ImageFolder sets the one
    containing ``train/`` and ``val/``. With ``cfg.download`` true and nothing found, the directory
    the download will go to. Touches the file system only to test for files.

    Raises:
        DataError: unknown ``cfg.name``; or the data is nowhere and no (possible) download was
            requested. The message names the searched directories and how to get the data.
    """
    name = _name(cfg)
    bases, source, target = _bases(cfg, name)
    for base in bases:
        found = _find(name, base)
        if found is not None:
            return found
    if cfg_get(cfg, "download", False):
        if name not in _DOWNLOADABLE:
            raise DataError(f"{name} data not found in {' or '.join(map(str, bases))} and dataset.download=true "
                            f"cannot fetch it: {vision.imagefolder_instructions(name, bases[0])}")
        return target
    raise _not_found(name, bases, source)


def check_data_available(cfg: Any) -> None:
    """Cheap pre-flight check (file and folder names only; no decoding, no md5, no download).

    Passes when the data is present, or absent but ``cfg.download`` is true for a downloadable set.

    Raises:
        DataError: as :func:`resolve_root`, or an ImageFolder root whose ``train/`` / ``val/`` are
            not in class-subfolder layout (e.g. Tiny-ImageNet's official flat ``val/images``).
    """
    name = _name(cfg)
    root = resolve_root(cfg)
    if name in ("tiny_imagenet", "imagenet") and _find(name, root) is not None:
        problem = vision.imagefolder_problem(name, root)
        if problem:
            raise DataError(f"{name} data in {root} is not usable: {problem}; "
                            f"{vision.imagefolder_instructions(name, root)}")


def _fashion_mnist_dir(cfg: Any, root: Path) -> Path:
    found = fm.find_dir(root)
    if found is not None:
        return found
    # resolve_root only returns a directory without the files when a download was requested
    from torchvision.datasets import FashionMNIST

    log.info("downloading Fashion-MNIST into %s", root)
    try:
        FashionMNIST(str(root), train=True, download=True)
    except (OSError, RuntimeError) as exc:
        raise DataError(f"could not download Fashion-MNIST into {root}: {exc}; install the Debian package "
                        f"dataset-fashion-mnist (sudo apt-get install dataset-fashion-mnist) instead") from exc
    found = fm.find_dir(root)
    if found is None:
        raise DataError(f"Fashion-MNIST download into {root} did not produce {_FM_FILES}")
    return found


def _subset(idx: torch.Tensor, n: Optional[int]) -> torch.Tensor:
    return idx if n is None else idx[: max(int(n), 0)]


def build_data(cfg: Any, seed: int, batch_size: int, eval_batch_size: int, device: torch.device) -> DataBundle:
    """Load data set ``cfg.name`` and build its train / val / test loaders.

    Args:
        cfg: the ``dataset`` config node (``name``, ``root``, ``download``, ``val_size``,
            ``subset_train``, ``subset_test``, ``num_workers``, ``augment``).
        seed: the run seed; orders (and augments) training epochs, see :func:`epoch_seed`. The
            train/val split does not depend on it.
        batch_size: training batch size (the last batch of an epoch may be smaller).
        eval_batch_size: validation / test batch size.
        device: where every yielded batch lives (Fashion-MNIST: the whole data set is put there once).

    Returns:
        :class:`DataBundle` with the loaders, the :class:`DatasetSpec` and the number of images of
        each split (after ``subset_*``). ``val_size=0`` gives an empty validation loader (len 0).

    Raises:
        DataError: data missing / corrupted / not downloadable, or ``val_size`` not smaller than
            the training set.
    """
    name = _name(cfg)
    spec = DATASETS[name]
    device = torch.device(device)
    root = resolve_root(cfg)
    val_size = int(cfg_get(cfg, "val_size", spec.default_val_size))
    subset_train = cfg_get(cfg, "subset_train", None)
    subset_test = cfg_get(cfg, "subset_test", None)

    if name == "fashion_mnist":
        # no augmentation for Fashion-MNIST: cfg.augment is ignored
        directory = _fashion_mnist_dir(cfg, root)
        raw = fm.load_raw(directory)
        train_idx, val_idx = split_indices(raw["train_labels"].shape[0], val_size, name)
        train_idx = _subset(train_idx, subset_train)
        test_idx = _subset(torch.arange(raw["test_labels"].shape[0]), subset_test)

        def tensors(split: str, idx: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
            x, y = fm.to_tensors(raw[f"{split}_images"][idx.numpy()], raw[f"{split}_labels"][idx.numpy()])
            return x.to(device), y.to(device)

        train = TensorLoader(*tensors("train", train_idx), train_idx, batch_size, shuffle=True, seed=seed)
        val = TensorLoader(*tensors("train", val_idx), val_idx, eval_batch_size, shuffle=False)
        test = TensorLoader(*tensors("test", test_idx), test_idx, eval_batch_size, shuffle=False)
    else:
        augment = bool(cfg_get(cfg, "augment", True))
        train_tf, eval_tf = vision.transforms_for(name, augment, spec.image_size)
        if name in vision.CIFAR_NAMES:
            train_ds, val_ds, test_ds = vision.build_cifar(name, root, bool(cfg_get(cfg, "download", False)),
                                                           train_tf, eval_tf)
        else:
            train_ds, val_ds, test_ds = vision.build_imagefolder(name, root, spec.num_classes, train_tf, eval_tf)
        train_idx, val_idx = split_indices(len(train_ds), val_size, name)
        train_idx = _subset(train_idx, subset_train)
        test_idx = _subset(torch.arange(len(test_ds)), subset_test)
        if cfg_get(cfg, "loader", "auto") != "torchvision" and name in vision.CIFAR_NAMES:
            mean, std = vision.CIFAR_STATS[name]
            pad = 4 if augment else 0

            def on_device(ds: Any, idx: torch.Tensor, bs: int, shuffle: bool) -> DeviceImageLoader:
                x = torch.from_numpy(ds.data[idx.numpy()]).permute(0, 3, 1, 2).contiguous().to(device)
                y = torch.as_tensor(ds.targets, dtype=torch.long)[idx].to(device)
                return DeviceImageLoader(x, y, idx, bs, shuffle, seed, mean, std, pad=pad, flip=augment)

            train = on_device(train_ds, train_idx, batch_size, True)
            val = on_device(train_ds, val_idx, eval_batch_size, False)
            test = on_device(test_ds, test_idx, eval_batch_size, False)
        else:
            workers = int(cfg_get(cfg, "num_workers", 0))
            train = TorchLoader(train_ds, train_idx, batch_size, True, seed, workers, device)
            val = TorchLoader(val_ds, val_idx, eval_batch_size, False, seed, workers, device)
            test = TorchLoader(test_ds, test_idx, eval_batch_size, False, seed, workers, device)

    bundle = DataBundle(train=train, val=val, test=test, spec=spec, num_train=train.num_samples,
                        num_val=val.num_samples, num_test=test.num_samples)
    log.info("%s from %s: %d train / %d val / %d test images", name, root, bundle.num_train, bundle.num_val,
             bundle.num_test)
    return bundle
