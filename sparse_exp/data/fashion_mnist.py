"""Fashion-MNIST (Xiao, Rasul & Vollgraf 2017) from the original idx ``.gz`` files, all in memory.

Source: the Debian package ``dataset-fashion-mnist`` (``/usr/share/datasets/fashion-mnist``), any
directory holding the four files, or torchvision's downloader (``dataset.download=true``, which
stores them under ``<root>/FashionMNIST/raw``). The files are read here with ``gzip`` + numpy
(big-endian idx header), not through torchvision.

Images are 28x28 grey, uint8 -> ``(x / 255 - 0.2860) / 0.3530`` float32 ``(N, 1, 28, 28)``, put on
the target device once; batches are served by tensor indexing (:class:`TensorLoader`). No
augmentation: ``dataset.augment`` is ignored for this data set.
"""

from __future__ import annotations

import gzip
import os
from functools import lru_cache
from pathlib import Path
from typing import Dict, List, Optional, Tuple

import numpy as np
import torch

from sparse_exp.data.spec import DataError

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
