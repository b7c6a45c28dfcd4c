"""CUDA-only checks of the fast path and the device loader (skipped without a GPU; ``make gpu-check`` runs them
with ``pytest -m cuda``, together with ``tests/test_fast.py``'s CUDA-graph tests).

On CUDA: the compiled step gives the eager step's weights (the CPU test's tolerance); bf16 autocast with
channels_last trains a conv net close to fp32 (same static mask, fp32 master weights, accuracy within 3 points);
the device-resident loader gives on the GPU the batches it gives on the CPU; a CIFAR-shaped run through it on the
GPU resumes to the uninterrupted run (float tolerance: cuDNN may choose non-deterministic kernels).
"""

import pytest
import torch
from conftest import compose_cfg, needs_cuda, needs_data
from test_fast import CASES, SMALL, assert_close_runs, final

from sparse_exp.data.device_loader import DeviceImageLoader
from sparse_exp.data.vision import CIFAR_STATS
from sparse_exp.run.run_dir import RunDir
from sparse_exp.train import run

pytestmark = pytest.mark.slow


@needs_cuda
@needs_data
def test_compiled_step_matches_eager_on_cuda(tmp_path):
    overrides = SMALL + CASES["static"] + ["device=cuda"]
    eager, compiled = RunDir(tmp_path / "eager"), RunDir(tmp_path / "compiled")
    run(compose_cfg(overrides), eager.path)
    graphs = torch._dynamo.utils.counters["stats"]["unique_graphs"]
    run(compose_cfg(overrides + ["fast.compile=true"]), compiled.path)
    assert torch._dynamo.utils.counters["stats"]["unique_graphs"] > graphs, "the step was not compiled"
    assert_close_runs(eager, compiled, atol=1e-5)


@needs_cuda
@needs_data
def test_bf16_channels_last_trains_close_to_fp32_on_cuda(tmp_path):
    overrides = ["model=lenet5", "sparsifier=static", "epochs=2", "device=cuda"]
    fp32, bf16 = RunDir(tmp_path / "fp32"), RunDir(tmp_path / "bf16")
    run(compose_cfg(overrides), fp32.path)
    run(compose_cfg(overrides + ["fast.dtype=bf16", "fast.channels_last=true"]), bf16.path)
    ma, ka, rows_a, sa = final(fp32)
    mb, kb, rows_b, sb = final(bf16)
    assert all(v.dtype == torch.float32 for v in mb.values() if v.is_floating_point()), "master weights are fp32"
    for key, mask in ka.items():
        assert torch.equal(kb[key], mask), f"static mask {key} differs"
        assert not mb[key][~kb[key].to(mb[key].device)].any(), f"{key}: a pruned weight is non-zero"
    for ra, rb in zip(rows_a, rows_b, strict=True):
        assert rb["train/loss"] == pytest.approx(ra["train/loss"], rel=0.05)
    assert abs(sb["test/acc"] - sa["test/acc"]) <= 3.0


@needs_cuda
def test_the_device_loader_gives_the_cpu_batches_on_cuda():
    mean, std = CIFAR_STATS["cifar10"]
    x = torch.randint(0, 256, (50, 3, 32, 32), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    y = torch.arange(50)
    cpu = DeviceImageLoader(x, y, torch.arange(50), 16, True, 3, mean, std, pad=4, flip=True)
    gpu = DeviceImageLoader(x.cuda(), y.cuda(), torch.arange(50), 16, True, 3, mean, std, pad=4, flip=True)
    for epoch in (0, 5):
        a, b = list(cpu.iterate(epoch)), list(gpu.iterate(epoch))
        assert len(a) == len(b) == 4
        for (xa, ya), (xb, yb) in zip(a, b):
            assert xb.is_cuda and torch.equal(ya, yb.cpu())
            torch.testing.assert_close(xb.cpu(), xa, rtol=0, atol=1e-6)


@needs_cuda
def test_a_cifar_run_on_the_device_loader_resumes_on_cuda(tmp_path, fake_cifar_root):
    ov = ["dataset=cifar10", f"dataset.root={fake_cifar_root}", "dataset.val_size=32", "dataset.subset_test=64",
          "batch_size=16", "eval_batch_size=64", "model=lenet5", "sparsifier=rigl", "sparsifier.delta_t=2",
          "epochs=3", "device=cuda"]
    full, part = RunDir(tmp_path / "full"), RunDir(tmp_path / "part")
    run(compose_cfg(ov), full.path)
    assert run(compose_cfg(ov + ["stop_after_epochs=1"]), part.path)["status"] == "stopped"
    assert run(compose_cfg(ov), part.path)["status"] == "completed"
    assert_close_runs(full, part, atol=1e-5)
