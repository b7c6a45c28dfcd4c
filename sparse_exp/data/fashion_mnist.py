"""Fashion-MNIST (Xiao, Rasul & Vollgraf 2017) from the original idx ``.gz`` files, all in memory.

Source: the Debian package ``dataset-fashion-mnist`` (``/usr/share/datasets/fashion-mnist``), any
directory holding the four files, or torchvision's downloader (``dataset.download=true``, which
stores them under ``<root>/FashionMNIST/raw``). The files are read here with ``gzip`` + numpy
(big-endian idx header), not through torchvision.

Images are 28x28 grey, uint8 -> ``(x / 255 - 0.2860) / 0.3530`` float32 ``(N, 1, 28, 28)``, put on
the target device once; batches are served by tensor indexing (:class:`TensorLoader`). No
augmentation: ``dataset.augment`` is ignored for this data set.

:class:`FashionMNISTSource` is the data set's entry in :data:`sparse_exp.registry.DATASETS`.
"""

from __future__ import annotations

import gzip
import logging
import os
from functools import lru_cache
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

import numpy as np
import torch

from sparse_exp.data.loaders import TensorLoader
from sparse_exp.data.spec import ENV_VAR, DataError, DataSource, DatasetSpec
from sparse_exp.registry import DATASETS

FILES = {
    "train_images": "train-images-idx3-ubyte.gz",
    "train_labels": "train-labels-idx1-ubyte.gz",
    "test_images": "t10k-images-idx3-ubyte.gz",
    "test_labels": "t10k-labels-idx1-ubyte.gz",
}
#: the Debian package's directory
SYSTEM_DIR = Path("/usr/share/datasets/fashion-mnist")
#: subdirectories of a data root that may hold the files (``FashionMNIST/raw``: torchvision's download)
SUBDIRS = ("fashion-mnist", "fashion_mnist", "FashionMNIST/raw")
MEAN, STD = 0.2860, 0.3530
NUM_TRAIN, NUM_TEST = 60000, 10000
IMAGE_MAGIC, LABEL_MAGIC = 0x00000803, 0x00000801


def missing_files(directory: Path) -> List[str]:
    """Names of the four ``.gz`` files that are not regular files in ``directory``."""
    return [f for f in FILES.values() if not (directory / f).is_file()]


def find_dir(base: Path) -> Optional[Path]:
    """``base`` or the first of ``base/{fashion-mnist, fashion_mnist, FashionMNIST/raw}`` holding all four files."""
    for d in (base, *(base / s for s in SUBDIRS)):
        if not missing_files(d):
            return d
    return None


def _read_idx(path: Path, magic: int, ndim: int) -> np.ndarray:
    """One idx file: big-endian int32 magic and dims, then uint8 data. Raises DataError if malformed."""
    try:
        with gzip.open(path, "rb") as f:
            raw = f.read()
    except (OSError, EOFError) as exc:
        raise DataError(f"cannot read {path}: {exc} (re-install dataset-fashion-mnist or replace the file)") from exc
    header = 4 * (1 + ndim)
    if len(raw) < header:
        raise DataError(f"{path} is truncated ({len(raw)} bytes after decompression)")
    ints = np.frombuffer(raw, dtype=">i4", count=1 + ndim)
    if int(ints[0]) != magic:
        raise DataError(f"{path} is not an idx file of {ndim}-d uint8 data: magic {int(ints[0]):#010x}, "
                        f"expected {magic:#010x}")
    dims = tuple(int(d) for d in ints[1:])
    count = int(np.prod(dims))
    if len(raw) - header != count:
        raise DataError(f"{path} is corrupted: header says {dims} = {count} bytes, found {len(raw) - header}")
    return np.frombuffer(raw, dtype=np.uint8, offset=header).reshape(dims)


@lru_cache(maxsize=2)
def _load_cached(directory: str, stamp: Tuple) -> Dict[str, np.ndarray]:
    d = Path(directory)
    out = {
        "train_images": _read_idx(d / FILES["train_images"], IMAGE_MAGIC, 3),
        "train_labels": _read_idx(d / FILES["train_labels"], LABEL_MAGIC, 1),
        "test_images": _read_idx(d / FILES["test_images"], IMAGE_MAGIC, 3),
        "test_labels": _read_idx(d / FILES["test_labels"], LABEL_MAGIC, 1),
    }
    for split in ("train", "test"):
        n_img, n_lab = out[f"{split}_images"].shape[0], out[f"{split}_labels"].shape[0]
        if n_img != n_lab:
            raise DataError(f"Fashion-MNIST in {d}: {split} has {n_img} images but {n_lab} labels")
        if out[f"{split}_images"].shape[1:] != (28, 28):
            raise DataError(f"Fashion-MNIST in {d}: {split} images are {out[f'{split}_images'].shape[1:]}, "
                            "expected (28, 28)")
        if n_lab and int(out[f"{split}_labels"].max()) >= 10:
            raise DataError(f"Fashion-MNIST in {d}: {split} labels exceed 9")
    return out


def load_raw(directory: Path) -> Dict[str, np.ndarray]:
    """The four arrays of ``directory``: ``{train,test}_images`` uint8 ``(N, 28, 28)`` and
    ``{train,test}_labels`` uint8 ``(N,)`` (N = 60000 / 10000 for the real files).

    Read-only numpy arrays, cached per (directory, file sizes and mtimes) so repeated builds in
    one process decompress once.

    Raises:
        DataError: a file is missing, unreadable or not a well-formed idx file.
    """
    directory = Path(directory).resolve()
    missing = missing_files(directory)
    if missing:
        raise DataError(f"Fashion-MNIST directory {directory} lacks {', '.join(missing)}")
    stamp = tuple((st.st_size, st.st_mtime_ns) for st in (os.stat(directory / f) for f in FILES.values()))
    return _load_cached(str(directory), stamp)


def to_tensors(images: np.ndarray, labels: np.ndarray) -> Tuple[torch.Tensor, torch.Tensor]:
    """uint8 ``(N, 28, 28)`` / ``(N,)`` -> normalized float32 ``(N, 1, 28, 28)`` and int64 ``(N,)`` on CPU."""
    x = torch.from_numpy(np.array(images, copy=True)).unsqueeze(1).float().div_(255.0).sub_(MEAN).div_(STD)
    y = torch.from_numpy(np.array(labels, copy=True)).long()
    return x, y


# -- the data source ---------------------------------------------------------------------------------

log = logging.getLogger("sparse_exp")
#: the four file names, as a message lists them
_FILES_TEXT = ", ".join(list(FILES.values())[:-1]) + " and " + list(FILES.values())[-1]


class FashionMNISTSource(DataSource):
    """Fashion-MNIST: searched in the Debian package's directory before ``./data/fashion_mnist``; held in memory
    on the training device and batched by :class:`~sparse_exp.data.loaders.TensorLoader` (no augmentation)."""

    downloadable = True
    device_loader = True

    def default_dirs(self, local: Path) -> List[Path]:
        return [SYSTEM_DIR, local]

    def find(self, base: Path) -> Optional[Path]:
        return find_dir(base)

    def missing_message(self, bases: List[Path], origin: str, download: bool = False) -> str:
        where = " or ".join(str(b) for b in bases) + ("" if origin == "default" else f" (from {origin})")
        return (f"fashion_mnist data not found in {where}: install the Debian package dataset-fashion-mnist "
                f"(sudo apt-get install dataset-fashion-mnist), set {ENV_VAR} or dataset.root to a directory "
                f"holding {_FILES_TEXT}, or pass dataset.download=true")

    def directory(self, root: Path) -> Path:
        """The directory under ``root`` holding the four files; downloads them there first if absent (the
        resolved root lacks them only when ``dataset.download=true`` was given)."""
        found = find_dir(root)
        if found is not None:
            return found
        from torchvision.datasets import FashionMNIST

        log.info("downloading Fashion-MNIST into %s", root)
        try:
            FashionMNIST(str(root), train=True, download=True)
        except (OSError, RuntimeError) as exc:
            raise DataError(f"could not download Fashion-MNIST into {root}: {exc}; install the Debian package "
                            f"dataset-fashion-mnist (sudo apt-get install dataset-fashion-mnist) instead") from exc
        found = find_dir(root)
        if found is None:
            raise DataError(f"Fashion-MNIST download into {root} did not produce {_FILES_TEXT}")
        return found

    def build(self, cfg: Any, root: Path, seed: int, batch_size: int, eval_batch_size: int,
              device: Any) -> Tuple[TensorLoader, TensorLoader, TensorLoader]:
        # no augmentation for Fashion-MNIST: cfg.augment is ignored
        raw = load_raw(self.directory(root))
        train_idx, val_idx, test_idx = self.split(cfg, raw["train_labels"].shape[0], raw["test_labels"].shape[0])

        def tensors(split: str, idx: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
            x, y = to_tensors(raw[f"{split}_images"][idx.numpy()], raw[f"{split}_labels"][idx.numpy()])
            return x.to(device), y.to(device)

        train = TensorLoader(*tensors("train", train_idx), train_idx, batch_size, shuffle=True, seed=seed)
        val = TensorLoader(*tensors("train", val_idx), val_idx, eval_batch_size, shuffle=False)
        test = TensorLoader(*tensors("test", test_idx), test_idx, eval_batch_size, shuffle=False)
        return train, val, test


DATASETS.add("fashion_mnist", FashionMNISTSource(DatasetSpec(
    "fashion_mnist", in_channels=1, num_classes=10, image_size=28, default_val_size=5000, train_size=60000,
    test_size=10000)))
