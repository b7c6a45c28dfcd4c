"""Device-resident image loader: a whole split as uint8 on the training device, augmented in batches.

:class:`DeviceImageLoader` holds ``(N, C, H, W)`` uint8 images and int64 labels on the device (CIFAR-10's training
images: 150 MiB) and builds each batch with one gather: ``RandomCrop(size, padding=pad)`` (zero padding) and
``RandomHorizontalFlip`` are folded into the gather's indices, then ``ToTensor`` + ``Normalize``'s operations in
their order (an un-augmented batch is bit-identical to the torchvision path's). Epoch ``e`` is ordered by
``torch.randperm(n, generator=G)``, ``G`` seeded by ``epoch_seed(seed, e)`` (as
:class:`~sparse_exp.data.loaders.TorchLoader`); its crops and flips are drawn at the epoch's start from a CPU generator
seeded from ``(seed, e)``: a function of ``(seed, e)`` on every device, resumable mid-epoch, global RNG untouched; the
draws differ from torchvision's (same distribution). The default for CIFAR (``dataset.loader=auto``);
``dataset.loader=torchvision`` keeps the per-sample PIL pipeline, which ImageFolder data always use.
"""

from __future__ import annotations

from typing import Iterator, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor

from sparse_exp.data.spec import batch_spans, check_shard, epoch_seed, shard_slice

#: mixes the epoch seed into the augmentation generator's (decorrelates it from the order generator)
_AUG_SEED_MIX = 0x5DEECE66D


class DeviceImageLoader:
    """Batches of normalised float32 images built on the device from stored uint8 images.

    Args:
        images: uint8 ``(N, C, H, W)`` on the target device.
        labels: int64 ``(N,)`` on the same device.
        indices: int64 ``(N,)`` positions of these images in the source split (bookkeeping only).
        batch_size: images per batch; the last batch of an epoch may be smaller.
        shuffle: training order per ``(seed, epoch)`` (and augmentation), or the stored order.
        seed: the run seed.
        mean, std: per-channel normalisation (values in [0, 1] units), length ``C``.
        pad: zero padding of the random crop in pixels (0: no crop); flip: random horizontal flips.
            Both apply only when ``shuffle`` (training).

    Raises:
        ValueError: shapes or dtypes that do not fit, ``batch_size < 1``, ``pad < 0``.
    """

    def __init__(self, images: Tensor, labels: Tensor, indices: Tensor, batch_size: int, shuffle: bool, seed: int,
                 mean: Sequence[float], std: Sequence[float], pad: int = 0, flip: bool = False) -> None:
        if images.dtype != torch.uint8 or images.dim() != 4:
            raise ValueError(f"images must be uint8 (N, C, H, W), got {images.dtype} {tuple(images.shape)}")
        if labels.shape != (images.shape[0],) or indices.shape != labels.shape:
            raise ValueError(f"images, labels and indices disagree: {images.shape[0]}, {labels.shape}, {indices.shape}")
        if batch_size < 1 or pad < 0:
            raise ValueError(f"batch_size must be >= 1 and pad >= 0, got {batch_size}, {pad}")
        if len(mean) != images.shape[1] or len(std) != images.shape[1]:
            raise ValueError(f"mean / std need {images.shape[1]} channels, got {len(mean)} / {len(std)}")
        self.images, self.labels, self.indices = images, labels, indices.cpu().long()
        self.batch_size, self.shuffle, self.seed = int(batch_size), bool(shuffle), int(seed)
        self.pad, self.flip = (int(pad), bool(flip)) if shuffle else (0, False)
        self.device = images.device
        self.num_samples = int(labels.shape[0])
        shape = (1, -1, 1, 1)
        self.mean = torch.tensor(mean, dtype=torch.float32, device=self.device).view(shape)
        self.std = torch.tensor(std, dtype=torch.float32, device=self.device).view(shape)

    def __len__(self) -> int:
        return -(-self.num_samples // self.batch_size) if self.num_samples else 0

    def order(self, epoch: int) -> Tensor:
        """Positions (into ``images``) in the order epoch ``epoch`` yields them (int64, CPU)."""
        if not self.shuffle:
            return torch.arange(self.num_samples)
        return torch.randperm(self.num_samples, generator=torch.Generator().manual_seed(epoch_seed(self.seed, epoch)))

    def epoch_indices(self, epoch: int) -> Tensor:
        """Source-split indices of the images of epoch ``epoch`` in yield order (int64, CPU)."""
        return self.indices[self.order(epoch)]

    def augmentation(self, epoch: int) -> Tuple[Tensor, Tensor, Tensor]:
        """``(row offsets, column offsets, flips)`` of epoch ``epoch``, one per yielded image in yield order:
        int64 in ``[0, 2 * pad]`` and bool, on the device."""
        n = self.num_samples
        g = torch.Generator().manual_seed(epoch_seed(self.seed, epoch) ^ _AUG_SEED_MIX)
        offsets = torch.randint(0, 2 * self.pad + 1, (2, n), generator=g)
        flips = torch.rand(n, generator=g) < 0.5 if self.flip else torch.zeros(n, dtype=torch.bool)
        return offsets[0].to(self.device), offsets[1].to(self.device), flips.to(self.device)

    def _augment(self, x: Tensor, rows0: Tensor, cols0: Tensor, flips: Tensor) -> Tensor:
        """Crop (with zero padding) and flip a uint8 batch ``(B, C, H, W)`` by one gather."""
        b, _, h, w = x.shape
        p = self.pad
        padded = F.pad(x, (p, p, p, p)) if p else x
        ar_h = torch.arange(h, device=x.device)
        ar_w = torch.arange(w, device=x.device)
        rows = rows0[:, None] + ar_h  # (B, H)
        cols = cols0[:, None] + torch.where(flips[:, None], w - 1 - ar_w, ar_w)  # (B, W)
        batch = torch.arange(b, device=x.device)[:, None, None]
        out = padded.permute(0, 2, 3, 1)[batch, rows[:, :, None], cols[:, None, :]]  # (B, H, W, C)
        return out.permute(0, 3, 1, 2)

    def iterate(self, epoch: int, start: int = 0, rank: int = 0, world: int = 1) -> Iterator[Tuple[Tensor, Tensor]]:
        """Yield ``(x, y)``: float32 ``(B, C, H, W)`` normalised images and int64 ``(B,)`` labels on the device, from
        global batch ``start`` on; with ``world > 1`` only rank ``rank``'s rows of each (``spec.shard_slice``). Only
        those images are gathered and augmented; an image's crop and flip depend on ``(seed, epoch)`` and its
        position in the epoch, not on ``start``, ``rank`` or ``world``."""
        check_shard(rank, world)
        if self.num_samples == 0:
            return
        order = self.order(epoch).to(self.device)
        augment = self.pad > 0 or self.flip
        aug = self.augmentation(epoch) if augment else None
        for lo, hi in batch_spans(self.num_samples, self.batch_size, start):
            part = shard_slice(hi - lo, rank, world)
            a, b = lo + part.start, lo + part.stop
            idx = order[a:b]
            x = self.images.index_select(0, idx)
            if aug is not None:
                x = self._augment(x, *(t[a:b] for t in aug))
            x = x.float().div(255).sub_(self.mean).div_(self.std)
            yield x, self.labels.index_select(0, idx)
