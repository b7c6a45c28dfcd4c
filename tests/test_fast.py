"""The fast path of the train step (``fast.*``, :mod:`sparse_exp.engine.fast_step`).

On CPU: the compiled step gives the eager step's weights (fp32, float-rounding tolerance) for a static, a DST
and a Sup-tickets run; channels_last matches eager the same way; bf16 autocasts the forward and keeps fp32
master weights; every option that runs on CPU resumes bitwise; :class:`GraphSafeSGD` with a tensor LR is
PyTorch's SGD up to rounding; what cannot be compiled or captured is refused before training.
On CUDA (skipped without one, e.g. in CI): the CUDA-graph step matches eager within tolerance.

The compiled runs use LeNet-300-100 (an MLP: inductor compiles it in ~15 s cold, ~3 s from its on-disk cache).
"""

import pytest
import torch
from conftest import compose_cfg, needs_cuda, needs_data

from sparse_exp.config.errors import ConfigError
from sparse_exp.engine.fast_step import GraphSafeSGD, TrainStep, make_train_step, preflight_fast, tensor_lr_
from sparse_exp.run.run_dir import RunDir
from sparse_exp.train import run

pytestmark = pytest.mark.slow  # end-to-end training runs (compiled ones among them); still part of `make test`

VOLATILE = ("time/epoch_s",)
CUDA = needs_cuda  # CUDA graphs are CUDA-only: skipped without a GPU, run by make gpu-check (-m cuda)

#: 1000 images, batch 64: 15 full batches and a short one of 40 (which runs eagerly in compiled / graph mode)
SMALL = ["dataset.subset_train=1000", "model=lenet_300_100", "epochs=2"]
CASES = {
    "static": ["sparsifier=static"],
    "rigl": ["sparsifier=rigl", "sparsifier.delta_t=5"],
    # 2 normal epochs, then two 1-epoch cycles with a ticket each
    "sup_tickets": ["sparsifier=rigl", "sparsifier.delta_t=5", "epochs=4", "superposer=sup_tickets",
                    "superposer.phase_fraction=0.5", "superposer.cycle_epochs=1"],
}


def final(rd: RunDir):
    state = rd.load_checkpoint()
    return state["model"], state["masking"]["masks"], rd.metrics(), rd.summary()


def assert_close_runs(a: RunDir, b: RunDir, atol: float):
    ma, ka, rows_a, sa = final(a)
    mb, kb, rows_b, sb = final(b)
    for key, value in ma.items():
        if value.is_floating_point():
            torch.testing.assert_close(mb[key], value, rtol=1e-4, atol=atol, msg=key)
        else:
            assert torch.equal(mb[key], value), key
    for key, value in ka.items():
        assert torch.equal(kb[key], value), f"mask {key} differs"
    for ra, rb in zip(rows_a, rows_b, strict=True):
        assert rb["train/loss"] == pytest.approx(ra["train/loss"], rel=1e-4)
        assert rb["lr"] == pytest.approx(ra["lr"], rel=1e-12)
    for key in ("test/acc", "val/acc"):
        assert sb[key] == pytest.approx(sa[key], abs=0.5), key


@needs_data
@pytest.mark.parametrize("case", list(CASES))
def test_compiled_step_matches_eager(tmp_path, case):
    overrides = SMALL + CASES[case]
    eager, compiled = RunDir(tmp_path / "eager"), RunDir(tmp_path / "compiled")
    run(compose_cfg(overrides), eager.path)
    graphs = torch._dynamo.utils.counters["stats"]["unique_graphs"]
    run(compose_cfg(overrides + ["fast.compile=true"]), compiled.path)
    assert torch._dynamo.utils.counters["stats"]["unique_graphs"] > graphs, "the step was not compiled"
    assert_close_runs(eager, compiled, atol=1e-5)
    if case == "sup_tickets":
        assert compiled.summary()["tickets/count"] == eager.summary()["tickets/count"] == 2


@needs_data
def test_channels_last_matches_eager(tmp_path):
    overrides = ["model=lenet5", "sparsifier=rigl", "sparsifier.delta_t=5", "epochs=2"]
    eager, nhwc = RunDir(tmp_path / "eager"), RunDir(tmp_path / "nhwc")
    run(compose_cfg(overrides), eager.path)
    run(compose_cfg(overrides + ["fast.channels_last=true"]), nhwc.path)
    assert_close_runs(eager, nhwc, atol=1e-5)


@needs_data
@pytest.mark.parametrize("options", [
    SMALL + ["sparsifier=rigl", "sparsifier.delta_t=5", "fast.compile=true"],
    ["model=lenet5", "sparsifier=rigl", "sparsifier.delta_t=5", "epochs=2", "fast.dtype=bf16",
     "fast.channels_last=true"],
], ids=["compile", "bf16-channels_last"])
def test_fast_options_resume_bitwise(tmp_path, options):
    full, part = RunDir(tmp_path / "full"), RunDir(tmp_path / "part")
    run(compose_cfg(options), full.path)
    assert run(compose_cfg(options + ["stop_after_epochs=1"]), part.path)["status"] == "stopped"
    ckpt = part.load_checkpoint()
    assert isinstance(ckpt["optimizer"]["param_groups"][0]["lr"], float), "checkpoints hold the LR as a float"
    assert run(compose_cfg(options), part.path)["status"] == "completed"
    ma, ka, rows_a, _ = final(full)
    mb, kb, rows_b, _ = final(part)
    for key in ma:
        assert torch.equal(ma[key], mb[key]), key
    for key in ka:
        assert torch.equal(ka[key], kb[key]), key
    strip = [{k: v for k, v in r.items() if k not in VOLATILE} for r in rows_a]
    assert strip == [{k: v for k, v in r.items() if k not in VOLATILE} for r in rows_b]


@needs_data
def test_bf16_autocasts_the_forward_and_keeps_fp32_master_weights():
    from sparse_exp.engine.build import build_run

    run_ = build_run(compose_cfg(["model=lenet5", "fast.dtype=bf16"]))
    run_.sparsifier.init_masks()
    step = make_train_step(run_)
    assert isinstance(step, TrainStep)
    seen = []
    first_conv = next(m for m in run_.model.modules() if isinstance(m, torch.nn.Conv2d))
    first_conv.register_forward_hook(lambda m, a, out: seen.append(out.dtype))
    x, y = next(iter(run_.data.train.iterate(0)))
    loss, logits = step(x, y)
    assert seen == [torch.bfloat16] and logits.dtype == torch.bfloat16
    assert loss.dtype == torch.float32 and torch.isfinite(loss)
    assert all(p.dtype == torch.float32 for p in run_.model.parameters())
    assert all(p.grad.dtype == torch.float32 for p in run_.model.parameters() if p.grad is not None)
    for name, mask in run_.masking.masks.items():
        w = run_.masking.params[name]
        assert torch.equal(w.detach() * mask, w.detach()), f"{name} has weights off its mask after a bf16 step"


@pytest.mark.parametrize("options", [
    dict(momentum=0.9, weight_decay=5e-4),
    dict(momentum=0.9, weight_decay=5e-4, nesterov=True),
    dict(momentum=0.9, dampening=0.1),
    dict(momentum=0.0, weight_decay=1e-3),
])
def test_graph_safe_sgd_with_a_tensor_lr_is_pytorch_sgd(options):
    torch.manual_seed(0)
    ref = [torch.randn(7, 5, requires_grad=True), torch.randn(3, requires_grad=True)]
    ours = [p.detach().clone().requires_grad_() for p in ref]
    opt_ref = torch.optim.SGD(ref, lr=0.1, **options)
    opt_ours = GraphSafeSGD(ours, lr=0.1, **options)
    sched_ref = torch.optim.lr_scheduler.LambdaLR(opt_ref, lambda s: 0.5 ** s)
    sched_ours = torch.optim.lr_scheduler.LambdaLR(opt_ours, lambda s: 0.5 ** s)
    tensor_lr_(opt_ours, torch.device("cpu"), capturable=False)
    lr_tensor = opt_ours.param_groups[0]["lr"]
    for _ in range(6):
        g = [torch.randn_like(p) for p in ref]
        for p, q, gi in zip(ref, ours, g):
            p.grad, q.grad = gi.clone(), gi.clone()
        opt_ref.step()
        opt_ours.step()
        sched_ref.step()
        sched_ours.step()
        assert opt_ours.param_groups[0]["lr"] is lr_tensor, "the scheduler updates the LR tensor in place"
        assert float(lr_tensor) == opt_ref.param_groups[0]["lr"]
        for p, q in zip(ref, ours):
            torch.testing.assert_close(q, p, rtol=1e-6, atol=1e-7)


def test_compile_and_graphs_refuse_a_step_that_changes_during_training():
    cfg = compose_cfg(["model=resnet32", "tweaks=[soft_neurons]", "tweaks.soft_neurons.schedule=linear_blend",
                       "tweaks.soft_neurons.end_epoch=1", "epochs=2", "fast.compile=true"])
    with pytest.raises(ConfigError, match=r"fast\.compile.*soft_neurons: schedule=linear_blend"):
        preflight_fast(cfg)
    preflight_fast(compose_cfg(["model=resnet32", "tweaks=[soft_neurons,label_smoothing]", "fast.compile=true"]))


# ---------------------------------------------------------------------------------------------- CUDA only
@CUDA
@needs_data
@pytest.mark.parametrize("case", list(CASES))
def test_cuda_graph_step_matches_eager(tmp_path, case):
    overrides = SMALL + CASES[case] + ["device=cuda"]
    eager, graphed = RunDir(tmp_path / "eager"), RunDir(tmp_path / "graphed")
    run(compose_cfg(overrides), eager.path)
    run(compose_cfg(overrides + ["fast.cuda_graphs=true"]), graphed.path)
    assert_close_runs(eager, graphed, atol=1e-4)


@CUDA
@needs_data
def test_cuda_graph_step_resumes_to_the_uninterrupted_run(tmp_path):
    options = SMALL + CASES["rigl"] + ["device=cuda", "fast.cuda_graphs=true"]
    full, part = RunDir(tmp_path / "full"), RunDir(tmp_path / "part")
    run(compose_cfg(options), full.path)
    run(compose_cfg(options + ["stop_after_epochs=1"]), part.path)
    run(compose_cfg(options), part.path)
    assert_close_runs(full, part, atol=1e-6)
