"""The two :class:`~sparse_exp.data.spec.Loader` implementations.

* :class:`TensorLoader` -- the whole split is one in-memory tensor on the target device; a batch is
  one index operation. Used for Fashion-MNIST: an epoch of 55k images takes a few milliseconds
  of indexing on CPU, no worker processes, no per-sample Python.
* :class:`TorchLoader` -- a ``torch.utils.data.DataLoader`` over a map-style torchvision data set
  (per-sample PIL transforms seeded per sample, optional worker processes), re-created for every epoch.

Both yield, for ``iterate(epoch, start, rank, world)``, rank ``rank``'s rows of global batches ``start, ...`` and
touch no other sample (per-rank loading and resume fast-forward: ``docs/architecture.md``).

Both order epoch ``e`` of a training loader by ``torch.randperm(n, generator=G)`` with
``G = torch.Generator().manual_seed(epoch_seed(seed, e))`` and never shuffle evaluation loaders.
Neither consumes the global torch RNG, so iterating data never changes model-side randomness.
"""

from __future__ import annotations

import math
from typing import Any, Iterator, List, Optional, Tuple

import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset

from sparse_exp.data.spec import batch_spans, check_shard, epoch_seed, shard_slice

# seeds the augmentation RNG of in-process (num_workers=0) loading; any constant != 0 decorrelates
# it from the order generator, which is seeded with epoch_seed itself
_AUG_SEED_MIX = 0x9E3779B97F4A7C15
# fixed generator seed of evaluation DataLoaders (they draw a worker base seed even when not
# shuffling; without a generator of their own they would take it from the global RNG)
_EVAL_LOADER_SEED = 0


def _num_batches(n: int, batch_size: int) -> int:
    return math.ceil(n / batch_size) if n > 0 else 0


class TensorLoader:
    """Batches by tensor indexing from tensors that already live on the target device.

    Args:
        x: float32 ``(N, C, H, W)`` images, already normalized, on the target device.
        y: int64 ``(N,)`` labels on the same device.
        indices: int64 ``(N,)`` positions of these images in the source split (for bookkeeping,
            e.g. to check train/val disjointness); not used for loading.
        batch_size: images per batch; the last batch of an epoch may be smaller.
        shuffle: order each epoch by a permutation seeded from ``(seed, epoch)`` (training) or keep
            the stored order (evaluation).
        seed: the run seed (only used when ``shuffle``).
    """

    def __init__(self, x: Tensor, y: Tensor, indices: Tensor, batch_size: int, shuffle: bool, seed: int = 0) -> None:
        if x.shape[0] != y.shape[0] or indices.shape[0] != y.shape[0]:
            raise ValueError(f"x, y and indices disagree on the number of samples: {x.shape[0]}, {y.shape[0]}, "
                             f"{indices.shape[0]}")
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.x, self.y, self.indices = x, y, indices.cpu()
        self.batch_size, self.shuffle, self.seed = int(batch_size), bool(shuffle), int(seed)
        self.num_samples = int(y.shape[0])
        self.device = x.device

    def __len__(self) -> int:
        return _num_batches(self.num_samples, self.batch_size)

    def order(self, epoch: int) -> Tensor:
        """Positions (into ``x``) in the order epoch ``epoch`` yields them, an int64 CPU tensor."""
        if not self.shuffle:
            return torch.arange(self.num_samples)
        g = torch.Generator().manual_seed(epoch_seed(self.seed, epoch))
        return torch.randperm(self.num_samples, generator=g)

    def epoch_indices(self, epoch: int) -> Tensor:
        """Source-split indices of the images of epoch ``epoch`` in yield order (int64, CPU)."""
        return self.indices[self.order(epoch)]

    def iterate(self, epoch: int, start: int = 0, rank: int = 0, world: int = 1) -> Iterator[Tuple[Tensor, Tensor]]:
        """Yield ``(x, y)``: float32 ``(B, C, H, W)`` and int64 ``(B,)`` on the loader's device, from global batch
        ``start`` on; with ``world > 1`` only rank ``rank``'s rows of each (:func:`~sparse_exp.data.spec.shard_slice`).

        Evaluation batches are views into the stored tensors: do not modify them in place.
        """
        check_shard(rank, world)
        if self.num_samples == 0:
            return
        perm = None if not self.shuffle else self.order(epoch).to(self.device)
        for lo, hi in batch_spans(self.num_samples, self.batch_size, start):
            part = shard_slice(hi - lo, rank, world)
            a, b = lo + part.start, lo + part.stop
            if perm is None:  # contiguous slices: views, no copy
                yield self.x[a:b], self.y[a:b]
            else:
                idx = perm[a:b]
                yield self.x.index_select(0, idx), self.y.index_select(0, idx)


def sample_seed(seed: int, epoch: int, index: int) -> int:
    """Seed of the augmentation RNG of sample ``index`` (its position in the data set) in epoch ``epoch`` of a run with
    seed ``seed``: a function of ``(seed, epoch, index)`` only, whichever rank or worker process loads the sample."""
    return ((epoch_seed(seed, epoch) ^ _AUG_SEED_MIX) * 1_000_003 + int(index)) & 0x7FFF_FFFF_FFFF_FFFF


class _EpochSamples(Dataset):
    """Position ``p`` of one epoch -> ``dataset[order[p]]``; with ``seed`` set, the sample's random transforms draw
    from the global torch RNG seeded by :func:`sample_seed` inside ``torch.random.fork_rng`` (the caller's RNG state,
    in this process or a worker, is left as it was)."""

    def __init__(self, dataset: Dataset, order: Tensor, seed: Optional[Tuple[int, int]]) -> None:
        self.dataset, self.order, self.seed = dataset, order, seed

    def __len__(self) -> int:
        return int(self.order.shape[0])

    def __getitem__(self, pos: int) -> Any:
        index = int(self.order[pos])
        if self.seed is None:
            return self.dataset[index]
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(sample_seed(*self.seed, index))
            return self.dataset[index]


class TorchLoader:
    """A per-epoch ``DataLoader`` over ``Subset(dataset, indices)``.

    Training (``shuffle=True``): epoch ``e`` visits the subset in the order
    ``torch.randperm(n, generator=G)`` with ``G`` seeded by ``epoch_seed(seed, e)``; each sample's random
    augmentation is seeded by ``(seed, e, index)`` (:func:`sample_seed`), so it is the same with or without worker
    processes, on any rank, and when an epoch is entered mid-way. ``iterate(epoch, start, rank, world)`` builds
    the DataLoader over rank ``rank``'s rows of global batches ``start, ...`` only: nothing else is read, decoded
    or augmented. The global torch RNG is left as it was. Workers are not persistent.

    Args:
        dataset: map-style data set yielding ``(tensor image (C, H, W), int label)``.
        indices: int64 positions into ``dataset`` that make up this split, in stored order.
        batch_size: images per batch (the last one may be smaller).
        shuffle: training order (see above) or stored order.
        seed: the run seed.
        num_workers: DataLoader worker processes (0 = load in this process).
        device: where the batches are moved; pinned memory and non-blocking copies when CUDA.
    """

    def __init__(self, dataset: Dataset, indices: Tensor, batch_size: int, shuffle: bool, seed: int,
                 num_workers: int, device: torch.device) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.dataset, self.indices = dataset, indices.cpu().long()
        self.batch_size, self.shuffle, self.seed = int(batch_size), bool(shuffle), int(seed)
        self.num_workers = int(num_workers)
        self.device = torch.device(device)
        self.num_samples = int(self.indices.shape[0])
        self._sample_shape: Optional[torch.Size] = None

    def __len__(self) -> int:
        return _num_batches(self.num_samples, self.batch_size)

    def _generator(self, epoch: int) -> torch.Generator:
        return torch.Generator().manual_seed(epoch_seed(self.seed, epoch) if self.shuffle else _EVAL_LOADER_SEED)

    def epoch_indices(self, epoch: int) -> Tensor:
        """Dataset indices of the images of epoch ``epoch`` in yield order (int64, CPU)."""
        if not self.shuffle:
            return self.indices.clone()
        return self.indices[torch.randperm(self.num_samples, generator=self._generator(epoch))]

    def _empty(self) -> Tuple[Tensor, Tensor]:
        """A batch of no rows (a rank's share of a global batch smaller than the world)."""
        if self._sample_shape is None:
            self._sample_shape = self.dataset[int(self.indices[0])][0].shape
        return (torch.empty((0, *self._sample_shape), device=self.device),
                torch.empty(0, dtype=torch.int64, device=self.device))

    def iterate(self, epoch: int, start: int = 0, rank: int = 0, world: int = 1) -> Iterator[Tuple[Tensor, Tensor]]:
        """Yield ``(x, y)``: float32 ``(B, C, H, W)`` and int64 ``(B,)`` on the loader's device, from global batch
        ``start`` on; with ``world > 1`` only rank ``rank``'s rows of each (``spec.shard_slice``)."""
        check_shard(rank, world)
        if self.num_samples == 0:
            return
        g = self._generator(epoch)
        order = self.epoch_indices(epoch)
        batches: List[List[int]] = []
        for lo, hi in batch_spans(self.num_samples, self.batch_size, start):
            part = shard_slice(hi - lo, rank, world)
            batches.append(list(range(lo + part.start, lo + part.stop)))
        cuda = self.device.type == "cuda"
        samples = _EpochSamples(self.dataset, order, (self.seed, epoch) if self.shuffle else None)
        loader = DataLoader(samples, batch_sampler=[b for b in batches if b], num_workers=self.num_workers,
                            pin_memory=cuda, generator=g)
        it = iter(loader)
        for rows in batches:
            if not rows:
                yield self._empty()
                continue
            x, y = next(it)
            if self._sample_shape is None:
                self._sample_shape = x.shape[1:]
            yield (x.to(self.device, non_blocking=cuda),
                   torch.as_tensor(y, dtype=torch.int64).to(self.device, non_blocking=cuda))
