"""The device-resident CIFAR loader (:mod:`sparse_exp.data.device_loader`): torchvision's numbers without
augmentation, crop / flip that are exactly a padded window, determinism per (seed, epoch), and a run on
CIFAR-shaped data that resumes bitwise."""

import pytest
import torch
import torch.nn.functional as F
from conftest import compose_cfg
from torchvision import transforms as T

from sparse_exp.data import build_data
from sparse_exp.data.device_loader import DeviceImageLoader
from sparse_exp.data.vision import CIFAR_STATS

MEAN, STD = CIFAR_STATS["cifar10"]


def loader(n=10, shuffle=True, pad=4, flip=True, seed=0, bs=4):
    g = torch.Generator().manual_seed(1)
    x = torch.randint(0, 256, (n, 3, 8, 8), dtype=torch.uint8, generator=g)
    y = torch.arange(n)
    return x, DeviceImageLoader(x, y, torch.arange(n), bs, shuffle, seed, MEAN, STD, pad=pad, flip=flip)


def normalise(u8):
    return (u8.float().div(255) - torch.tensor(MEAN).view(1, 3, 1, 1)) / torch.tensor(STD).view(1, 3, 1, 1)


def test_unaugmented_batches_equal_torchvision_bitwise():
    x, ld = loader(shuffle=False)
    tf = T.Compose([T.ToTensor(), T.Normalize(MEAN, STD)])
    expected = torch.stack([tf(img.permute(1, 2, 0).numpy()) for img in x])
    got = torch.cat([b for b, _ in ld.iterate(0)])
    assert torch.equal(got, expected)
    assert torch.equal(torch.cat([y for _, y in ld.iterate(0)]), torch.arange(10))


def test_every_augmented_image_is_a_padded_window_possibly_flipped():
    x, ld = loader()
    order = ld.order(3)
    rows, cols, flips = ld.augmentation(3)
    assert flips.any() and not flips.all() and (rows > 0).any()
    images = torch.cat([b for b, _ in ld.iterate(3)])
    labels = torch.cat([y for _, y in ld.iterate(3)])
    assert torch.equal(labels, order)
    padded = F.pad(x, (4, 4, 4, 4))
    for i, src in enumerate(order.tolist()):
        r, c = int(rows[i]), int(cols[i])
        window = padded[src, :, r:r + 8, c:c + 8]
        if flips[i]:
            window = window.flip(-1)
        assert torch.equal(images[i], normalise(window[None])[0]), i


def test_epochs_are_a_function_of_seed_and_epoch_only():
    _, a = loader(seed=5)
    _, b = loader(seed=5)
    _, c = loader(seed=6)
    state = torch.get_rng_state()
    ea, eb, ec = (torch.cat([x for x, _ in ld.iterate(2)]) for ld in (a, b, c))
    assert torch.equal(torch.get_rng_state(), state), "the global RNG is untouched"
    assert torch.equal(ea, eb) and not torch.equal(ea, ec)
    assert not torch.equal(ea, torch.cat([x for x, _ in a.iterate(1)]))


def test_bad_inputs_are_refused():
    x = torch.zeros(2, 3, 4, 4, dtype=torch.uint8)
    with pytest.raises(ValueError, match="uint8"):
        DeviceImageLoader(x.float(), torch.zeros(2, dtype=torch.long), torch.arange(2), 1, True, 0, MEAN, STD)
    with pytest.raises(ValueError, match="channels"):
        DeviceImageLoader(x, torch.zeros(2, dtype=torch.long), torch.arange(2), 1, True, 0, (0.5,), (0.5,))


def test_cifar_uses_the_device_loader_and_torchvision_stays_available(fake_cifar_root):
    base = ["dataset=cifar10", f"dataset.root={fake_cifar_root}", "dataset.val_size=32", "dataset.subset_test=64"]
    fast = build_data(compose_cfg(base).dataset, seed=0, batch_size=16, eval_batch_size=64, device="cpu")
    slow = build_data(compose_cfg(base + ["dataset.loader=torchvision"]).dataset, seed=0, batch_size=16,
                      eval_batch_size=64, device="cpu")
    assert isinstance(fast.train, DeviceImageLoader) and not isinstance(slow.train, DeviceImageLoader)
    for split in ("val", "test"):  # evaluation data: bit-identical to the torchvision path
        a = [b for b in getattr(fast, split).iterate(0)]
        b = [b for b in getattr(slow, split).iterate(0)]
        assert all(torch.equal(p[0], q[0]) and torch.equal(p[1], q[1]) for p, q in zip(a, b)) and len(a) == len(b)
    assert torch.equal(fast.train.epoch_indices(4), slow.train.epoch_indices(4)), "the same epoch order"
    assert torch.equal(torch.cat([y for _, y in fast.train.iterate(4)]),
                       torch.cat([y for _, y in slow.train.iterate(4)]))


@pytest.mark.slow
def test_a_cifar_run_on_the_device_loader_resumes_bitwise(tmp_path, fake_cifar_root):
    from test_resume import assert_same_run

    from sparse_exp.run.run_dir import RunDir
    from sparse_exp.train import run

    ov = ["dataset=cifar10", f"dataset.root={fake_cifar_root}", "dataset.val_size=32", "dataset.subset_test=64",
          "batch_size=16", "eval_batch_size=64", "model=lenet5", "sparsifier=rigl", "sparsifier.delta_t=2",
          "epochs=3"]
    full, part = RunDir(tmp_path / "full"), RunDir(tmp_path / "part")
    run(compose_cfg(ov), full.path)
    assert run(compose_cfg(ov + ["stop_after_epochs=1"]), part.path)["status"] == "stopped"
    run(compose_cfg(ov), part.path)
    assert_same_run(full, part)
