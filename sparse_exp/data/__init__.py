"""Data layer: locate a data set, split it, and serve deterministic batches.

Data sets (:data:`DATASETS`: ``fashion_mnist``, ``cifar10``, ``cifar100``, ``tiny_imagenet``, ``imagenet``, and
``external``, the user's callable) are :class:`~sparse_exp.data.spec.DataSource` objects registered by
:mod:`.fashion_mnist`, :mod:`.vision` and :mod:`.external_data` (plugins add theirs, docs/plugins.md); their facts
for a config: :func:`dataset_spec`.
:func:`build_data` turns the ``dataset`` config into a :class:`DataBundle` of three loaders whose ``iterate(epoch)``
yields float32 ``(B, C, H, W)`` normalized images and int64 ``(B,)`` labels, on the device. ``val_size`` training
images are held out for validation by a permutation with the fixed seed 0 (the same for every run seed) and always
get the eval transform; ``subset_train`` / ``subset_test`` keep the first N (smoke runs). Training epoch ``e`` depends
on ``seed * 100003 + e`` only (bitwise resume); the global RNG is never touched. No download without
``dataset.download=true``. Data root (:func:`resolve_root`): ``dataset.root``, else ``$SPARSE_EXP_DATA``, else
``./data/<name>`` (Fashion-MNIST: ``/usr/share/datasets/fashion-mnist`` first). More: ``docs/design-notes.md``.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any, List, Tuple

import torch

from sparse_exp.data import external_data, fashion_mnist, vision  # noqa: F401  (each registers its data sources)
from sparse_exp.data.external_data import ExternalData, FactorySource
from sparse_exp.data.spec import (ENV_VAR, SPLIT_SEED, DataBundle, DataError, DataSource, DatasetSpec, Loader,
                                  epoch_seed, split_indices)
from sparse_exp.data.loaders import TensorLoader, TorchLoader
from sparse_exp.config.errors import one_of, require
from sparse_exp.registry import DATASETS

__all__ = [
    "DATASETS", "DataSource", "DatasetSpec", "DataError", "DataBundle", "Loader", "TensorLoader", "TorchLoader",
    "resolve_root", "check_data_available", "build_data", "dataset_spec", "epoch_seed", "split_indices", "SPLIT_SEED",
    "ENV_VAR", "ExternalData", "FactorySource",
]

log = logging.getLogger("sparse_exp")


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
        require(DATASETS[ds.name].device_loader, "dataset.loader", ds.loader,
                f"dataset={ds.name} is read per sample (torchvision / a torch Dataset); allowed: auto, torchvision")


def _source(cfg: Any) -> DataSource:
    if cfg.name not in DATASETS:
        raise DataError(f"dataset.name={cfg.name!r} is not allowed: must be one of {sorted(DATASETS)}")
    return DATASETS[cfg.name]


def dataset_spec(cfg: Any) -> DatasetSpec:
    """The :class:`DatasetSpec` of the ``dataset`` node ``cfg`` (:meth:`DataSource.spec_for`: static for the built-in
    sets, from the user's callable for ``dataset=external`` and other factory sources).

    Raises:
        DataError: unknown ``cfg.name``. ConfigError: a factory source's callable breaks its contract.
    """
    return _source(cfg).spec_for(cfg)


def _bases(cfg: Any, source: DataSource) -> Tuple[List[Path], str, Path]:
    """(directories to search, where they came from, directory a download goes to)."""
    if cfg.root:
        base = Path(str(cfg.root)).expanduser().absolute()
        return [base], "dataset.root", base
    env = os.environ.get(ENV_VAR)
    if env:
        base = Path(env).expanduser().absolute()
        return [base], f"${ENV_VAR}", base
    local = (Path("data") / source.name).absolute()
    return source.default_dirs(local), "default", local


def resolve_root(cfg: Any) -> Path:
    """The directory the data set ``cfg.name`` is read from (see the module doc for the search order).

    For Fashion-MNIST it is the directory holding the four ``.gz`` files; for CIFAR the directory
    containing ``cifar-10-batches-py`` / ``cifar-100-python``; for ImageFolder sets the one
    containing ``train/`` and ``val/``. With ``cfg.download`` true and nothing found, the directory
    the download will go to. Touches the file system only to test for files.

    Args:
        cfg: the ``dataset`` config (:class:`~sparse_exp.config.schema.DatasetConfig` or its DictConfig).

    Raises:
        DataError: unknown ``cfg.name``; or the data is nowhere and no (possible) download was
            requested. The message names the searched directories and how to get the data.
    """
    source = _source(cfg)
    bases, origin, target = _bases(cfg, source)
    for base in bases:
        found = source.find(base)
        if found is not None:
            return found
    if cfg.download:
        if not source.downloadable:
            raise DataError(source.missing_message(bases, origin, download=True))
        return target
    raise DataError(source.missing_message(bases, origin))


def check_data_available(cfg: Any) -> None:
    """Cheap pre-flight check (file and folder names only; no decoding, no md5, no download).

    Passes when the data is present, or absent but ``cfg.download`` is true for a downloadable set.

    Raises:
        DataError: as :func:`resolve_root`, or an ImageFolder root whose ``train/`` / ``val/`` are
            not in class-subfolder layout (e.g. Tiny-ImageNet's official flat ``val/images``).
    """
    source = _source(cfg)
    problem = source.problem(resolve_root(cfg))
    if problem:
        raise DataError(problem)


def build_data(cfg: Any, seed: int, batch_size: int, eval_batch_size: int, device: torch.device) -> DataBundle:
    """Load data set ``cfg.name`` and build its train / val / test loaders.

    Args:
        cfg: the ``dataset`` config, a :class:`~sparse_exp.config.schema.DatasetConfig` or its DictConfig
            (``name``, ``root``, ``download``, ``val_size``, ``subset_train``, ``subset_test``, ``num_workers``,
            ``augment``, ``loader``; the schema gives the defaults).
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
    source = _source(cfg)
    root = resolve_root(cfg)
    train, val, test = source.build(cfg, root, seed, batch_size, eval_batch_size, torch.device(device))
    bundle = DataBundle(train=train, val=val, test=test, spec=source.spec_for(cfg), num_train=train.num_samples,
                        num_val=val.num_samples, num_test=test.num_samples)
    log.info("%s from %s: %d train / %d val / %d test images", source.name, root, bundle.num_train, bundle.num_val,
             bundle.num_test)
    return bundle
