"""Per-rank loading and the resume fast-forward (issue 24, items 1-2), loader by loader, in one process.

For every loader (in-memory ``TensorLoader``, device-resident ``DeviceImageLoader``, per-sample ``TorchLoader`` with
and without worker processes): the ranks' rows of a step, concatenated in rank order, are exactly the
single-process global batch (bitwise, augmentation included); ``iterate(epoch, start=k)`` yields exactly batches
k, k+1, ... of the full epoch; and the per-sample loader reads only the rows it yields.
"""

from __future__ import annotations

import pytest
import torch
from torch.utils.data import Dataset
from torchvision import transforms as T

from sparse_exp.data.device_loader import DeviceImageLoader
from sparse_exp.data.loaders import TensorLoader, TorchLoader
from sparse_exp.data.spec import ShardedBatches, shard_slice
from sparse_exp.data.vision import CIFAR_STATS

MEAN, STD = CIFAR_STATS["cifar10"]
N, BS = 23, 6  # 4 batches, the last of 5 rows


class Images(Dataset):
    """Random uint8 images with a torchvision crop + flip; counts the samples it is asked for."""

    def __init__(self, n: int = N) -> None:
        g = torch.Generator().manual_seed(7)
        self.x = torch.randint(0, 256, (n, 3, 8, 8), dtype=torch.uint8, generator=g)
        self.tf = T.Compose([T.RandomCrop(8, padding=2), T.RandomHorizontalFlip()])
        self.loaded: list = []

    def __len__(self) -> int:
        return self.x.shape[0]

    def __getitem__(self, i: int):
        self.loaded.append(i)
        return self.tf(self.x[i].float() / 255), i


def loaders(workers: int = 0):
    g = torch.Generator().manual_seed(3)
    x = torch.randn(N, 1, 4, 4, generator=g)
    u8 = torch.randint(0, 256, (N, 3, 8, 8), dtype=torch.uint8, generator=g)
    idx = torch.arange(N)
    return {
        "tensor": TensorLoader(x, idx.clone(), idx, BS, shuffle=True, seed=5),
        "tensor-eval": TensorLoader(x, idx.clone(), idx, BS, shuffle=False),
        "device": DeviceImageLoader(u8, idx.clone(), idx, BS, True, 5, MEAN, STD, pad=4, flip=True),
        "torch": TorchLoader(Images(), idx, BS, True, 5, workers, torch.device("cpu")),
    }


def epoch(loader, e, **kw):
    return [(x.clone(), y.clone()) for x, y in loader.iterate(e, **kw)]


def test_shard_slices_partition_every_batch_in_order():
    for rows in range(0, 11):
        for world in range(1, 5):
            parts = [shard_slice(rows, r, world) for r in range(world)]
            covered = [i for p in parts for i in range(rows)[p]]
            assert covered == list(range(rows)), (rows, world)
            sizes = [p.stop - p.start for p in parts]
            assert max(sizes) - min(sizes) <= 1
    with pytest.raises(ValueError, match="rank 2 of world 2"):
        shard_slice(4, 2, 2)
    with pytest.raises(ValueError, match="rank 0 of world 0"):
        ShardedBatches(loaders()["tensor"], 0, 0)


@pytest.mark.parametrize("name", ["tensor", "tensor-eval", "device", "torch"])
@pytest.mark.parametrize("world", [2, 3])
def test_union_of_rank_rows_is_the_global_batch(name, world):
    full = epoch(loaders()[name], 2)
    shards = [epoch(ShardedBatches(loaders()[name], r, world), 2) for r in range(world)]
    assert all(len(s) == len(full) for s in shards)
    for step, (x, y) in enumerate(full):
        assert torch.equal(torch.cat([s[step][0] for s in shards]), x), (name, step)
        assert torch.equal(torch.cat([s[step][1] for s in shards]), y), (name, step)
    sb = ShardedBatches(loaders()[name], 0, world)
    assert [sb.global_rows(i) for i in range(len(sb))] == [6, 6, 6, 5]


@pytest.mark.parametrize("name", ["tensor", "device", "torch"])
def test_fast_forward_yields_the_rest_of_the_epoch_bitwise(name):
    full = epoch(loaders()[name], 1)
    for start in (1, 3, 4):
        rest = epoch(loaders()[name], 1, start=start)
        assert len(rest) == len(full) - start
        for (xa, ya), (xb, yb) in zip(rest, full[start:]):
            assert torch.equal(xa, xb) and torch.equal(ya, yb), (name, start)
    rest = epoch(loaders()[name], 1, start=2, rank=1, world=2)
    assert torch.equal(rest[0][0], full[2][0][3:]), "rank 1's rows of batch 2"


def test_torch_loader_reads_only_its_rows_and_nothing_it_skips():
    ld = loaders()["torch"]
    order = ld.epoch_indices(0).tolist()
    epoch(ld, 0, start=3, rank=1, world=2)
    assert ld.dataset.loaded == order[18 + 2:23], "rank 1 of batch 3 (rows 2..4 of 5) only"
    ld.dataset.loaded.clear()
    epoch(ld, 0, rank=0, world=2)
    assert sorted(ld.dataset.loaded) == sorted(order[0:3] + order[6:9] + order[12:15] + order[18:20])


def test_torch_loader_augmentation_is_the_same_with_worker_processes():
    state = torch.get_rng_state()
    a = epoch(loaders(workers=0)["torch"], 4)
    assert torch.equal(torch.get_rng_state(), state), "the global RNG is untouched"
    b = epoch(loaders(workers=2)["torch"], 4)
    c = epoch(ShardedBatches(loaders(workers=2)["torch"], 1, 2), 4)
    for (xa, ya), (xb, yb), (xc, _) in zip(a, b, c):
        assert torch.equal(xa, xb) and torch.equal(ya, yb)
        assert torch.equal(xc, xa[shard_slice(xa.shape[0], 1, 2)])
    assert not torch.equal(a[0][0], epoch(loaders()["torch"], 5)[0][0]), "another epoch, other crops"


@pytest.mark.parametrize("name", ["tensor", "device", "torch"])
def test_a_rank_may_get_no_rows_of_a_short_last_batch(name):
    ld = loaders()[name]
    ld.batch_size = 11  # 23 = 11 + 11 + 1: the last batch has one row
    shards = [epoch(ld, 0, rank=r, world=2) for r in range(2)]
    assert shards[0][-1][0].shape[0] == 0 and shards[1][-1][0].shape[0] == 1  # shard_slice(1, r, 2): rank 1's
    assert shards[0][-1][0].shape[1:] == shards[1][-1][0].shape[1:] and shards[0][-1][1].dtype == torch.int64
