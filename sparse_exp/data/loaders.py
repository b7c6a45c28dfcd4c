"""The two :class:`~sparse_exp.data.spec.Loader` implementations.

* :class:`TensorLoader` -- the whole split is one in-memory tensor on the target device; a batch is
  one index operation. Used for Fashion-MNIST: an epoch of 55k images takes a few milliseconds
  of indexing on CPU, no worker processes, no per-sample Python.
* :class:`TorchLoader` -- a ``torch.utils.data.DataLoader`` over a map-style torchvision data set
  (per-sample PIL transforms, optional worker processes), re-created for every epoch.

Both order epoch ``e`` of a training loader by ``torch.randperm(n, generator=G)`` with
``G = torch.Generator().manual_seed(epoch_seed(seed, e))`` and never shuffle evaluation loaders.
Neither consumes the global torch RNG, so iterating data never changes model-side randomness.
"""

from __future__ import annotations

import math
from typing import Iterator, Optional, Tuple

import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset, Subset

from sparse_exp.data.spec import epoch_seed

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

    def iterate(self, epoch: int) -> Iterator[Tuple[Tensor, Tensor]]:
        """Yield ``(x, y)``: float32 ``(B, C, H, W)`` and int64 ``(B,)`` on the loader's device.

        Evaluation batches are views into the stored tensors: do not modify them in place.
        """
        if self.num_samples == 0:
            return
        b = self.batch_size
        if not self.shuffle:  # contiguous slices: views, no copy
            for start in range(0, self.num_samples, b):
                yield self.x[start:start + b], self.y[start:start + b]
            return
        perm = self.order(epoch).to(self.device)
        for start in range(0, self.num_samples, b):
            idx = perm[start:start + b]
            yield self.x.index_select(0, idx), self.y.index_select(0, idx)


class TorchLoader:
    """A per-epoch ``DataLoader`` over ``Subset(dataset, indices)``.

    Training (``shuffle=True``): epoch ``e`` visits the subset in the order
    ``torch.randperm(n, generator=G)`` with ``G`` seeded by ``epoch_seed(seed, e)``; the same ``G``
    then seeds the DataLoader (its worker base seed), so random augmentations in worker processes
    are a function of ``(seed, e)`` too. With ``num_workers=0`` augmentations run in this process
    under a private RNG state seeded from ``(seed, e)``, swapped in only while a batch is being
    built, so the global torch RNG is left as it was. (The augmentations drawn with and without
    workers differ; both are reproducible.) Workers are not persistent, since persistent workers
    would carry RNG state from one epoch to the next.

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

    def __len__(self) -> int:
        return _num_batches(self.num_samples, self.batch_size)

    def _generator(self, epoch: int) -> torch.Generator:
        return torch.Generator().manual_seed(epoch_seed(self.seed, epoch) if self.shuffle else _EVAL_LOADER_SEED)

    def epoch_indices(self, epoch: int) -> Tensor:
        """Dataset indices of the images of epoch ``epoch`` in yield order (int64, CPU)."""
        if not self.shuffle:
            return self.indices.clone()
        return self.indices[torch.randperm(self.num_samples, generator=self._generator(epoch))]

    def iterate(self, epoch: int) -> Iterator[Tuple[Tensor, Tensor]]:
        """Yield ``(x, y)``: float32 ``(B, C, H, W)`` and int64 ``(B,)`` on the loader's device."""
        if self.num_samples == 0:
            return
        g = self._generator(epoch)
        order = self.indices
        if self.shuffle:
            order = self.indices[torch.randperm(self.num_samples, generator=g)]
        cuda = self.device.type == "cuda"
        loader = DataLoader(Subset(self.dataset, order.tolist()), batch_size=self.batch_size, shuffle=False,
                            drop_last=False, num_workers=self.num_workers, pin_memory=cuda, generator=g)
        aug_state: Optional[Tensor] = None
        if self.num_workers == 0:
            aug_state = torch.Generator().manual_seed(
                (epoch_seed(self.seed, epoch) ^ _AUG_SEED_MIX) & 0x7FFF_FFFF_FFFF_FFFF).get_state()
        it = iter(loader)
        while True:
            if aug_state is not None:
                outer = torch.get_rng_state()
                torch.set_rng_state(aug_state)
                try:
                    batch = next(it, None)
                finally:
                    aug_state = torch.get_rng_state()
                    torch.set_rng_state(outer)
            else:
                batch = next(it, None)
            if batch is None:
                return
            x, y = batch
            yield (x.to(self.device, non_blocking=cuda),
                   torch.as_tensor(y, dtype=torch.int64).to(self.device, non_blocking=cuda))
