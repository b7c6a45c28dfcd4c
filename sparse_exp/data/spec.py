"""Shared types of the data layer: data set specs, the data source base class, the loader protocol, the bundle,
the error.

Kept apart from :mod:`sparse_exp.data` so the per-source modules can import them without a cycle;
everything here is re-exported by :mod:`sparse_exp.data`.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, List, Optional, Protocol, Tuple, runtime_checkable

import torch
from torch import Tensor

from sparse_exp.config.errors import UserError

#: the train/val split permutation is drawn from ``torch.Generator().manual_seed(SPLIT_SEED)``,
#: independent of the run's seed, so every seed of a sweep is validated on the same images.
SPLIT_SEED = 0

#: environment variable naming a data directory (used when ``dataset.root`` is not set)
ENV_VAR = "SPARSE_EXP_DATA"

#: multiplier that mixes the run seed and the epoch into one generator seed (a prime, larger than
#: any epoch index used in practice, so ``(seed, epoch)`` pairs do not collide).
EPOCH_SEED_MULTIPLIER = 100003


class DataError(UserError):
    """The data set cannot be found, read or split; the message is one line saying how to fix it.

    A :class:`sparse_exp.config.errors.UserError`, so the CLI prints it without a traceback (exit code 2).
    """


@dataclass(frozen=True)
class DatasetSpec:
    """Static facts about one data set, known without touching the disk.

    Attributes:
        name: key in :data:`sparse_exp.data.DATASETS` (and ``dataset.name`` in the config).
        in_channels: channels ``C`` of the images the loaders yield (1 grey, 3 RGB).
        num_classes: number of labels; the loaders' labels are in ``[0, num_classes)``.
        image_size: height = width ``H = W`` in pixels of the images the loaders yield.
        default_val_size: images held out of the official training set for validation by default.
        train_size: images of the official training split (before the validation hold-out).
        test_size: images of the official test split (ImageNet / Tiny-ImageNet: their validation split).
    """

    name: str
    in_channels: int
    num_classes: int
    image_size: int
    default_val_size: int
    train_size: int = 0
    test_size: int = 0



class DataSource:
    """One data set, registered once in :data:`sparse_exp.registry.DATASETS` under its ``dataset.name``: its
    static :attr:`spec`, where its files are (:meth:`find`), what to say when they are missing
    (:meth:`missing_message`), and how to build its loaders (:meth:`build`). Nothing outside a source
    branches on a data set's name. Subclasses: :class:`sparse_exp.data.fashion_mnist.FashionMNISTSource`,
    :class:`sparse_exp.data.vision.CifarSource`, :class:`sparse_exp.data.vision.ImageFolderSource`.

    Attributes:
        spec: the data set's static facts.
        downloadable: ``dataset.download=true`` can fetch it.
        device_loader: ``dataset.loader=device`` is allowed (the split held on the training device).
    """

    downloadable = False
    device_loader = False

    def __init__(self, spec: DatasetSpec) -> None:
        self.spec = spec

    @property
    def name(self) -> str:
        return self.spec.name

    def spec_for(self, cfg: Any) -> DatasetSpec:
        """The spec of the data set the ``dataset`` node ``cfg`` configures: :attr:`spec` for a data set whose facts
        are static; a source configured by its keys (:class:`sparse_exp.data.external_data.FactorySource`) answers
        from them. Every caller that needs sizes or shapes (pre-flight plan, build, FLOPs) asks here.

        Raises:
            ConfigError: the node configures no usable data set (sources configured by their keys).
        """
        return self.spec

    def default_dirs(self, local: Path) -> List[Path]:
        """The directories searched when neither ``dataset.root`` nor the environment variable is set
        (``local`` is ``./data/<name>``, where a download goes)."""
        return [local]

    def find(self, base: Path) -> Optional[Path]:
        """The directory under ``base`` (itself or a conventional subfolder) that holds the data set, if any."""
        raise NotImplementedError

    def missing_message(self, bases: List[Path], origin: str, download: bool = False) -> str:
        """One line: the data set is in none of ``bases`` (searched because of ``origin``: ``dataset.root``,
        ``$SPARSE_EXP_DATA`` or ``default``) and how to get it; with ``download``, why a download cannot help."""
        raise NotImplementedError

    def problem(self, root: Path) -> Optional[str]:
        """Why the data found in ``root`` is not usable, from names only (None: fine); see
        :func:`sparse_exp.data.check_data_available`."""
        return None

    def build(self, cfg: Any, root: Path, seed: int, batch_size: int, eval_batch_size: int,
              device: Any) -> Tuple["Loader", "Loader", "Loader"]:
        """The ``(train, val, test)`` loaders of the data in ``root`` (:func:`sparse_exp.data.build_data`).

        Raises:
            DataError: data missing / corrupted / not downloadable, or ``cfg.val_size`` leaves no training image.
        """
        raise NotImplementedError

    def split(self, cfg: Any, pool_size: int, test_size: int) -> Tuple[Tensor, Tensor, Tensor]:
        """``(train_idx, val_idx, test_idx)``: :func:`split_indices` of the training pool with ``cfg.val_size``,
        then the first ``cfg.subset_train`` / ``cfg.subset_test`` images (all when null)."""
        train_idx, val_idx = split_indices(pool_size, int(cfg.val_size), self.name)
        return _subset(train_idx, cfg.subset_train), val_idx, _subset(torch.arange(test_size), cfg.subset_test)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.name!r})"


def _subset(idx: Tensor, n: Optional[int]) -> Tensor:
    return idx if n is None else idx[: max(int(n), 0)]

@runtime_checkable
class Loader(Protocol):
    """A re-iterable source of batches; one pass of :meth:`iterate` is one epoch."""

    def __len__(self) -> int:
        """Batches per epoch: ``ceil(num_samples / batch_size)`` (the last batch may be short; 0 if empty)."""
        ...

    def iterate(self, epoch: int, start: int = 0, rank: int = 0, world: int = 1) -> Iterator[Tuple[Tensor, Tensor]]:
        """Yield ``(x, y)`` batches of epoch ``epoch``, from batch ``start`` on (nothing before it is loaded).

        ``x`` is float32 ``(B, C, H, W)``, normalized per channel; ``y`` is int64 ``(B,)``; both on
        the loader's device. The order (and, for training, the augmentation) depends only on the
        run seed and ``epoch``, never on what was iterated before. With ``world > 1`` only rank ``rank``'s
        rows of each global batch (:func:`shard_slice`) are loaded and yielded (possibly none: ``B = 0``).
        """
        ...


@dataclass
class DataBundle:
    """The three loaders of a run and their sizes (numbers of images, not batches)."""

    train: Loader
    val: Loader
    test: Loader
    spec: DatasetSpec
    num_train: int
    num_val: int
    num_test: int


def check_shard(rank: int, world: int) -> None:
    """Raise ValueError unless ``world >= 1`` and ``0 <= rank < world``."""
    if int(world) < 1 or not 0 <= int(rank) < int(world):
        raise ValueError(f"rank {rank} of world {world}: need world >= 1 and 0 <= rank < world")


def shard_slice(rows: int, rank: int, world: int) -> slice:
    """Rank ``rank``'s rows of a global batch of ``rows`` rows: the contiguous block
    ``[rows * rank // world, rows * (rank + 1) // world)``. Blocks differ in size by at most one row, may be empty
    (``rows < world``), and their union in rank order is the whole batch in its order.

    Raises:
        ValueError: ``rank`` / ``world`` out of range (:func:`check_shard`).
    """
    check_shard(rank, world)
    return slice(rows * rank // world, rows * (rank + 1) // world)


def batch_spans(num_samples: int, batch_size: int, start: int = 0) -> Iterator[Tuple[int, int]]:
    """``(lo, hi)`` epoch positions of global batches ``start, start + 1, ...`` (the last may be short)."""
    for lo in range(int(start) * batch_size, num_samples, batch_size):
        yield lo, min(lo + batch_size, num_samples)


class ShardedBatches:
    """Rank ``rank`` of ``world``'s view of a :class:`Loader`: ``iterate(epoch, start)`` yields only this rank's
    rows (:func:`shard_slice`) of global batches ``start, start + 1, ...``; the loader loads and augments only
    those rows. :meth:`global_rows` gives the size of a global batch (to scale the rank's loss).

    Raises:
        ValueError: ``rank`` / ``world`` out of range.
    """

    def __init__(self, loader: "Loader", rank: int, world: int) -> None:
        check_shard(rank, world)
        self.loader, self.rank, self.world = loader, int(rank), int(world)

    def __len__(self) -> int:
        return len(self.loader)

    @property
    def num_samples(self) -> int:
        return self.loader.num_samples

    def global_rows(self, batch: int) -> int:
        """Rows of global batch ``batch`` (0-based) summed over all ranks."""
        b = self.loader.batch_size
        return max(0, min(b, self.loader.num_samples - batch * b))

    def iterate(self, epoch: int, start: int = 0) -> Iterator[Tuple[Tensor, Tensor]]:
        return self.loader.iterate(epoch, start=start, rank=self.rank, world=self.world)


def epoch_seed(seed: int, epoch: int) -> int:
    """Seed of the generator that orders (and augments) epoch ``epoch`` of a run with seed ``seed``.

    ``seed * 100003 + epoch``: a function of ``(seed, epoch)`` only, so resuming at epoch ``k``
    replays exactly the batches a run without interruption would have seen.
    """
    # invariant: pseudo-epochs 1_000_000 (init batches) / 2_000_000 + i (GradInit, BN) never collide with epochs < 99_943
    return int(seed) * EPOCH_SEED_MULTIPLIER + int(epoch)


def split_indices(pool_size: int, val_size: int, name: str = "dataset") -> Tuple[Tensor, Tensor]:
    """Split ``range(pool_size)`` into (train, val) index tensors with the fixed split seed.

    A permutation drawn from ``torch.Generator().manual_seed(SPLIT_SEED)`` (seed 0, whatever the
    run seed): its first ``val_size`` entries, sorted, are the validation images; the remaining
    entries, in permutation order, are the training pool (so "the first N of the pool" for
    ``subset_train`` is a random, roughly class-balanced subset).

    Returns:
        ``(train_idx, val_idx)``, int64 CPU tensors of lengths ``pool_size - val_size`` and ``val_size``.

    Raises:
        DataError: ``val_size`` is negative or leaves no training image.
    """
    if val_size < 0 or val_size >= pool_size:
        raise DataError(f"{name}: dataset.val_size={val_size} is not allowed: the training set has {pool_size} "
                        f"images, so val_size must be in [0, {pool_size - 1}]")
    perm = torch.randperm(pool_size, generator=torch.Generator().manual_seed(SPLIT_SEED))
    return perm[val_size:].clone(), perm[:val_size].sort().values

