"""Data layer: real Fashion-MNIST, root resolution and errors, CIFAR and ImageFolder on fake data.

Fashion-MNIST tests read the Debian package's files (/usr/share/datasets/fashion-mnist). Outside CI
they are skipped when it is missing; with CI=true they fail instead. CIFAR and ImageFolder tests
write tiny fake data sets into tmp_path. Nothing here touches the network.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import bypass_cifar_md5, write_fake_cifar10
from omegaconf import OmegaConf
from PIL import Image
from torchvision import transforms as T

import sparse_exp.data as data
from sparse_exp.config.errors import UserError
from sparse_exp.config.schema import DatasetConfig
from sparse_exp.data import DATASETS, DataError, build_data, check_data_available, resolve_root, vision
from sparse_exp.data import fashion_mnist as fm

FMNIST_DIR = Path("/usr/share/datasets/fashion-mnist")
HAVE_FMNIST = all((FMNIST_DIR / f).is_file() for f in fm.FILES.values())
IN_CI = os.environ.get("CI") == "true"
requires_fmnist = pytest.mark.skipif(
    not HAVE_FMNIST and not IN_CI,
    reason=f"Fashion-MNIST not installed in {FMNIST_DIR} (sudo apt-get install dataset-fashion-mnist); "
           "with CI=true this test fails instead")
CPU = torch.device("cpu")


def make_cfg(name="fashion_mnist", **kw):
    """The typed ``dataset`` node (as composed from conf/dataset/<name>.yaml: the schema's defaults apply)."""
    base = dict(name=name, root=None, download=False, subset_train=None, subset_test=None,
                val_size=DATASETS[name].spec.default_val_size if name in DATASETS else 0, num_workers=0, augment=False)
    base.update(kw)
    return OmegaConf.structured(DatasetConfig(**base))


def collect(loader, epoch=0):
    xs, ys = [], []
    for x, y in loader.iterate(epoch):
        xs.append(x)
        ys.append(y)
    if not xs:
        return torch.empty(0), torch.empty(0, dtype=torch.long), 0
    return torch.cat(xs), torch.cat(ys), len(xs)


def same_batches(it_a, it_b) -> bool:
    """Batch-by-batch equality of two epochs without keeping them in memory."""
    for (xa, ya), (xb, yb) in zip(it_a, it_b, strict=True):
        if not (torch.equal(xa, xb) and torch.equal(ya, yb)):
            return False
    return True


@pytest.fixture(autouse=True)
def _no_env(monkeypatch):
    monkeypatch.delenv(data.ENV_VAR, raising=False)


@pytest.fixture(scope="module")
def fmnist():
    if not HAVE_FMNIST:
        pytest.fail(f"CI=true but Fashion-MNIST is missing from {FMNIST_DIR}: 'make install' should have installed "
                    "the Debian package dataset-fashion-mnist")
    return build_data(make_cfg(root=str(FMNIST_DIR)), seed=0, batch_size=128, eval_batch_size=1000, device=CPU)


def test_specs():
    assert set(DATASETS) == {"fashion_mnist", "cifar10", "cifar100", "tiny_imagenet", "imagenet", "external"}
    assert all(DATASETS[n].spec.name == n for n in DATASETS)
    s = DATASETS["fashion_mnist"].spec
    assert (s.in_channels, s.num_classes, s.image_size, s.default_val_size) == (1, 10, 28, 5000)
    assert (DATASETS["cifar100"].spec.num_classes, DATASETS["cifar100"].spec.image_size) == (100, 32)
    assert (DATASETS["tiny_imagenet"].spec.num_classes, DATASETS["tiny_imagenet"].spec.image_size,
            DATASETS["tiny_imagenet"].spec.default_val_size) == (200, 64, 10000)
    assert (DATASETS["imagenet"].spec.num_classes, DATASETS["imagenet"].spec.image_size) == (1000, 224)
    assert issubclass(DataError, UserError) and issubclass(DataError, Exception)


# -- real Fashion-MNIST ------------------------------------------------------------------------------

@requires_fmnist
def test_fmnist_shapes_sizes_and_normalization(fmnist):
    assert fmnist.spec is DATASETS["fashion_mnist"].spec
    assert (fmnist.num_train, fmnist.num_val, fmnist.num_test) == (55000, 5000, 10000)
    assert fmnist.num_train + fmnist.num_val == 60000
    x, y = next(fmnist.train.iterate(0))
    assert x.shape == (128, 1, 28, 28) and x.dtype == torch.float32 and x.device.type == "cpu"
    assert y.shape == (128,) and y.dtype == torch.int64
    assert abs(x.mean().item()) < 0.2 and abs(x.std().item() - 1.0) < 0.2
    for loader, n, bs in ((fmnist.train, 55000, 128), (fmnist.val, 5000, 1000), (fmnist.test, 10000, 1000)):
        xs, ys, batches = collect(loader, 0)
        assert batches == len(loader) == -(-n // bs)
        assert xs.shape == (n, 1, 28, 28) and ys.shape == (n,)
        assert set(ys.unique().tolist()) == set(range(10))
    # the last training batch is the remainder, not dropped
    *_, (x_last, _) = fmnist.train.iterate(0)
    assert x_last.shape[0] == 55000 % 128


@requires_fmnist
def test_fmnist_split_disjoint_fixed_and_exact(fmnist):
    tr, va = fmnist.train.indices, fmnist.val.indices
    assert len(set(tr.tolist()) & set(va.tolist())) == 0
    assert set(tr.tolist()) | set(va.tolist()) == set(range(60000))
    # the split is fixed (split seed 0), whatever the run seed
    other = build_data(make_cfg(root=str(FMNIST_DIR), subset_test=10), seed=7, batch_size=128, eval_batch_size=1000,
                       device=CPU)
    assert torch.equal(other.val.indices, va) and torch.equal(other.train.indices, tr)
    assert not torch.equal(other.train.epoch_indices(0), fmnist.train.epoch_indices(0))
    # loaders serve exactly the raw images at those indices, normalized; val without any augmentation
    raw = fm.load_raw(FMNIST_DIR)
    xv, yv, _ = collect(fmnist.val)
    ref = (torch.from_numpy(raw["train_images"][va.numpy()].copy()).float() / 255 - 0.2860) / 0.3530
    assert torch.allclose(xv[:, 0], ref, atol=1e-6)
    assert torch.equal(yv, torch.from_numpy(raw["train_labels"][va.numpy()].astype(np.int64)))
    order = fmnist.train.epoch_indices(5)
    xt, yt, _ = collect(fmnist.train, 5)
    assert torch.equal(yt, torch.from_numpy(raw["train_labels"][order.numpy()].astype(np.int64)))
    assert torch.allclose(xt[:300, 0], (torch.from_numpy(raw["train_images"][order[:300].numpy()].copy()).float()
                                        / 255 - 0.2860) / 0.3530, atol=1e-6)


@requires_fmnist
def test_fmnist_epoch_determinism(fmnist):
    assert same_batches(fmnist.train.iterate(3), fmnist.train.iterate(3))
    assert not same_batches(fmnist.train.iterate(3), fmnist.train.iterate(4))
    assert not torch.equal(fmnist.train.epoch_indices(3), fmnist.train.epoch_indices(4))
    # epoch 3 does not depend on what ran before, nor on the global RNG, and leaves it alone
    fresh = build_data(make_cfg(root=str(FMNIST_DIR)), seed=0, batch_size=128, eval_batch_size=1000, device=CPU)
    torch.manual_seed(12345)
    state = torch.get_rng_state()
    assert same_batches(fresh.train.iterate(3), fmnist.train.iterate(3))
    assert torch.equal(torch.get_rng_state(), state)
    # val / test never shuffle
    assert same_batches(fmnist.val.iterate(0), fmnist.val.iterate(9))
    assert same_batches(fmnist.test.iterate(0), fmnist.test.iterate(9))


@requires_fmnist
def test_fmnist_val_size_and_subsets(fmnist):
    b = build_data(make_cfg(root=str(FMNIST_DIR), val_size=1000, subset_train=2000, subset_test=300), seed=1,
                   batch_size=64, eval_batch_size=128, device=CPU)
    assert (b.num_train, b.num_val, b.num_test) == (2000, 1000, 300)
    assert (len(b.train), len(b.val), len(b.test)) == (32, 8, 3)
    assert [collect(ld)[0].shape[0] for ld in (b.train, b.val, b.test)] == [2000, 1000, 300]
    assert set(b.train.indices.tolist()).isdisjoint(b.val.indices.tolist())
    # subset_train = the first N of the pool left after the split
    pool, _ = data.split_indices(60000, 1000)
    assert torch.equal(b.train.indices, pool[:2000])
    z = build_data(make_cfg(root=str(FMNIST_DIR), val_size=0, subset_train=100, subset_test=10), seed=0,
                   batch_size=64, eval_batch_size=128, device=CPU)
    assert z.num_val == 0 and len(z.val) == 0 and list(z.val.iterate(0)) == []
    with pytest.raises(DataError, match="val_size=60000"):
        build_data(make_cfg(root=str(FMNIST_DIR), val_size=60000), seed=0, batch_size=64, eval_batch_size=64,
                   device=CPU)


@requires_fmnist
def test_fmnist_default_root_and_env_var(tmp_path, monkeypatch):
    assert resolve_root(make_cfg()) == FMNIST_DIR
    check_data_available(make_cfg())
    # $SPARSE_EXP_DATA holding the files directly ...
    flat = tmp_path / "flat"
    flat.mkdir()
    for f in fm.FILES.values():
        (flat / f).symlink_to(FMNIST_DIR / f)
    monkeypatch.setenv(data.ENV_VAR, str(flat))
    assert resolve_root(make_cfg()) == flat
    b = build_data(make_cfg(subset_train=256, subset_test=64, val_size=128), seed=0, batch_size=64,
                   eval_batch_size=64, device=CPU)
    assert (b.num_train, b.num_val, b.num_test) == (256, 128, 64)
    # ... or in a fashion-mnist/ subfolder
    nested = tmp_path / "nested"
    (nested / "fashion-mnist").mkdir(parents=True)
    for f in fm.FILES.values():
        (nested / "fashion-mnist" / f).symlink_to(FMNIST_DIR / f)
    monkeypatch.setenv(data.ENV_VAR, str(nested))
    assert resolve_root(make_cfg()) == nested / "fashion-mnist"
    # dataset.root wins over the environment variable
    assert resolve_root(make_cfg(root=str(flat))) == flat


# -- errors -------------------------------------------------------------------------------------------

def test_missing_root_error_names_path_and_fix(tmp_path, monkeypatch):
    missing = tmp_path / "nowhere"
    for fn in (resolve_root, check_data_available):
        with pytest.raises(DataError) as e:
            fn(make_cfg(root=str(missing)))
        msg = str(e.value)
        assert "\n" not in msg
        assert str(missing) in msg and "dataset.root" in msg
        assert "sudo apt-get install dataset-fashion-mnist" in msg
        assert "train-images-idx3-ubyte.gz" in msg and "SPARSE_EXP_DATA" in msg and "dataset.download=true" in msg
    with pytest.raises(DataError, match="nowhere"):
        build_data(make_cfg(root=str(missing)), seed=0, batch_size=8, eval_batch_size=8, device=CPU)
    # an empty $SPARSE_EXP_DATA is named as such
    empty = tmp_path / "empty"
    empty.mkdir()
    monkeypatch.setenv(data.ENV_VAR, str(empty))
    with pytest.raises(DataError, match=f"{empty}.*SPARSE_EXP_DATA"):
        resolve_root(make_cfg())
    # download requested: no error before the download (which would go to the root)
    assert resolve_root(make_cfg(root=str(missing), download=True)) == missing


def test_missing_cifar_and_imagefolder_errors(tmp_path):
    with pytest.raises(DataError) as e:
        check_data_available(make_cfg("cifar10", root=str(tmp_path)))
    assert str(tmp_path) in str(e.value) and "cifar-10-batches-py" in str(e.value)
    assert "dataset.download=true" in str(e.value)
    check_data_available(make_cfg("cifar100", root=str(tmp_path), download=True))  # would download
    with pytest.raises(DataError) as e:
        check_data_available(make_cfg("imagenet", root=str(tmp_path)))
    assert str(tmp_path) in str(e.value) and "<root>/train/<class>/*.JPEG" in str(e.value)
    with pytest.raises(DataError, match="cannot fetch"):
        check_data_available(make_cfg("tiny_imagenet", root=str(tmp_path), download=True))
    with pytest.raises(DataError, match="dataset.name='mnist'"):
        resolve_root(make_cfg("mnist", val_size=0))


# -- CIFAR-10 on a fake data set in torchvision's pickle layout ---------------------------------------

PER_BATCH = 16  # 5 x 16 = 80 training images, 24 test images


def _write_fake_cifar10(root: Path) -> dict:
    return write_fake_cifar10(root, per_batch=PER_BATCH)


@pytest.fixture
def fake_cifar(tmp_path, monkeypatch):
    """A fake CIFAR-10 root; torchvision's md5 checks are bypassed.

    torchvision 0.29's CIFAR10 verifies every batch file's md5 in ``_check_integrity`` and the
    meta file's in ``_load_meta``, both through the module-level ``check_integrity(path, md5)`` of
    ``torchvision.datasets.cifar``; patching that one name to a plain existence test bypasses both.
    """
    raw = _write_fake_cifar10(tmp_path)
    bypass_cifar_md5(monkeypatch)
    return tmp_path, raw


def _eval_tf_cifar(images_hwc):
    tf = T.Compose([T.ToTensor(), T.Normalize(*vision.CIFAR_STATS["cifar10"])])
    return torch.stack([tf(Image.fromarray(im)) for im in images_hwc])


def test_cifar_md5_failure_is_a_data_error(tmp_path):
    _write_fake_cifar10(tmp_path)  # not patched: torchvision's md5 check rejects the fake files
    check_data_available(make_cfg("cifar10", root=str(tmp_path)))  # the cheap check only looks at names
    with pytest.raises(DataError, match="corrupted"):
        build_data(make_cfg("cifar10", root=str(tmp_path), val_size=8), seed=0, batch_size=8, eval_batch_size=8,
                   device=CPU)


def test_cifar10_loaders(fake_cifar):
    root, raw = fake_cifar
    assert resolve_root(make_cfg("cifar10", root=str(root))) == root
    cfg = make_cfg("cifar10", root=str(root), val_size=16, augment=True, subset_test=20)
    b = build_data(cfg, seed=3, batch_size=10, eval_batch_size=7, device=CPU)
    assert (b.num_train, b.num_val, b.num_test) == (64, 16, 20)
    assert (len(b.train), len(b.val), len(b.test)) == (7, 3, 3)
    x, y = next(b.train.iterate(0))
    assert x.shape == (10, 3, 32, 32) and x.dtype == torch.float32 and y.dtype == torch.int64
    assert set(b.train.indices.tolist()).isdisjoint(b.val.indices.tolist())

    # validation: exactly the eval transform of the held-out training images, in index order
    xv, yv, nb = collect(b.val)
    assert nb == len(b.val)
    vi = b.val.indices.numpy()
    assert torch.allclose(xv, _eval_tf_cifar(raw["train_x"][vi]), atol=1e-6)
    assert yv.tolist() == [raw["train_y"][i] for i in vi]

    # training: augmented (most images differ from their un-augmented version), labels in epoch order
    order = b.train.epoch_indices(0).numpy()
    xt, yt, nb = collect(b.train, 0)
    assert nb == len(b.train) and xt.shape == (64, 3, 32, 32)
    assert yt.tolist() == [raw["train_y"][i] for i in order]
    plain = _eval_tf_cifar(raw["train_x"][order])
    same = sum(torch.allclose(a, p, atol=1e-6) for a, p in zip(xt, plain))
    assert same < len(order) // 2

    # determinism: same epoch -> same batches (order and augmentation), other epoch differs;
    # the global RNG is neither used nor advanced
    torch.manual_seed(0)
    state = torch.get_rng_state()
    xt2, yt2, _ = collect(b.train, 0)
    assert torch.equal(torch.get_rng_state(), state)
    assert torch.equal(xt, xt2) and torch.equal(yt, yt2)
    xt3, _, _ = collect(b.train, 1)
    assert not torch.equal(xt, xt3)
    fresh = build_data(cfg, seed=3, batch_size=10, eval_batch_size=7, device=CPU)
    collect(fresh.train, 5)
    assert torch.equal(collect(fresh.train, 0)[0], xt)

    # without augmentation the training images are exactly the eval transform
    b0 = build_data(make_cfg("cifar10", root=str(root), val_size=16, augment=False), seed=3, batch_size=10,
                    eval_batch_size=7, device=CPU)
    order = b0.train.epoch_indices(2).numpy()
    assert torch.allclose(collect(b0.train, 2)[0], _eval_tf_cifar(raw["train_x"][order]), atol=1e-6)
    assert torch.equal(b0.val.indices, b.val.indices)


def test_cifar10_workers_deterministic(fake_cifar):
    root, _ = fake_cifar
    cfg = make_cfg("cifar10", root=str(root), val_size=16, augment=True, num_workers=2)
    b = build_data(cfg, seed=0, batch_size=16, eval_batch_size=16, device=CPU)
    a1, y1, _ = collect(b.train, 4)
    a2, y2, _ = collect(b.train, 4)
    assert torch.equal(a1, a2) and torch.equal(y1, y2)
    assert collect(b.val)[0].shape == (16, 3, 32, 32)


# -- ImageFolder (tiny_imagenet, imagenet) on generated PNGs --------------------------------------------

def _write_imagefolder(root: Path, classes=("n01", "n02", "n03"), per_class=6, val_classes=None, size=64):
    rng = np.random.default_rng(1)
    for split, cls_list, n in (("train", classes, per_class), ("val", val_classes or classes, 2)):
        for c in cls_list:
            d = root / split / c
            d.mkdir(parents=True)
            for i in range(n):
                Image.fromarray(rng.integers(0, 256, size=(size, size, 3), dtype=np.uint8)).save(d / f"{c}_{i}.png")


def test_tiny_imagenet_imagefolder(tmp_path):
    _write_imagefolder(tmp_path, val_classes=("n02", "n03"))
    check_data_available(make_cfg("tiny_imagenet", root=str(tmp_path)))
    cfg = make_cfg("tiny_imagenet", root=str(tmp_path), val_size=4, augment=True)
    b = build_data(cfg, seed=0, batch_size=5, eval_batch_size=3, device=CPU)
    assert b.spec.num_classes == 200
    assert (b.num_train, b.num_val, b.num_test) == (14, 4, 4)
    xt, yt, nb = collect(b.train, 0)
    assert xt.shape == (14, 3, 64, 64) and nb == len(b.train) == 3
    assert set(yt.tolist()) <= {0, 1, 2}
    assert torch.equal(collect(b.train, 0)[0], xt) and not torch.equal(collect(b.train, 1)[0], xt)
    # val: eval transform (no augmentation) of the held-out training files
    from torchvision.datasets import ImageFolder

    files = ImageFolder(str(tmp_path / "train")).samples
    tf = T.Compose([T.ToTensor(), T.Normalize(*vision.IMAGENET_STATS)])
    ref = torch.stack([tf(Image.open(files[i][0]).convert("RGB")) for i in b.val.indices.tolist()])
    assert torch.allclose(collect(b.val)[0], ref, atol=1e-6)
    # test = val/ folder, labels in the training folder's class indices (n02 -> 1, n03 -> 2)
    xs, ys, _ = collect(b.test)
    assert xs.shape == (4, 3, 64, 64) and ys.tolist() == [1, 1, 2, 2]


def test_tiny_imagenet_flat_val_layout_is_refused(tmp_path):
    _write_imagefolder(tmp_path)
    for c in ("n01", "n02", "n03"):
        for p in (tmp_path / "val" / c).iterdir():
            p.unlink()
        (tmp_path / "val" / c).rmdir()
    (tmp_path / "val" / "images").mkdir()
    (tmp_path / "val" / "val_annotations.txt").write_text("val_0.JPEG\tn01\t0\t0\t64\t64\n")
    with pytest.raises(DataError, match="class-subfolder layout") as e:
        check_data_available(make_cfg("tiny_imagenet", root=str(tmp_path)))
    assert "val_annotations.txt" in str(e.value)


def test_imagenet_imagefolder(tmp_path):
    _write_imagefolder(tmp_path / "imagenet", classes=("a", "b"), per_class=3, size=40)
    cfg = make_cfg("imagenet", root=str(tmp_path), val_size=2, augment=True)  # found in the imagenet/ subfolder
    assert resolve_root(cfg) == tmp_path / "imagenet"
    b = build_data(cfg, seed=0, batch_size=4, eval_batch_size=4, device=CPU)
    assert (b.num_train, b.num_val, b.num_test) == (4, 2, 4)
    assert next(b.train.iterate(0))[0].shape == (4, 3, 224, 224)
    assert collect(b.val)[0].shape == (2, 3, 224, 224)
    assert collect(b.test)[1].tolist() == [0, 0, 1, 1]
