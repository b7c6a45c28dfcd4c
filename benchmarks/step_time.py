"""Step time of each sparsifier relative to dense training, and the cost of one mask update.

    python benchmarks/step_time.py                         # resnet32, CIFAR-shaped input, CPU
    python benchmarks/step_time.py --model vgg16 --device cuda --steps 200

All numbers are measured in this one process on the same synthetic batches:
* per-step time of dense / static / SET / RigL / GraNet training (forward, backward, SGD step,
  fused mask application, the sparsifier's hook, with updates every ``--delta-t`` steps), as a
  ratio to dense;
* our fused ``torch._foreach_mul_`` mask application vs. a reference-style Python loop
  (``tensor.data = tensor.data * mask`` per weight and momentum buffer plus a ``.item()`` per
  step, as in GraNet / Sup-tickets ``sparselearning/core.py``);
* one prune-and-regrow update (RigL / SET) and one global magnitude pruning (GraNet) alone.
Masks are unstructured, so dense kernels still run: sparse steps are not expected to be faster.
"""

from __future__ import annotations

import argparse
import time

import torch
import torch.nn.functional as F
from omegaconf import OmegaConf

from sparse_exp.engine.context import RunState
from sparse_exp.models import build_model
from sparse_exp.sparse.masking import Masking
from sparse_exp.sparse.sparsifiers import build_sparsifier
from sparse_exp.sparse.topology import drop_and_grow, global_magnitude_prune

DIST = OmegaConf.create({"name": "erk", "erk_power_scale": 1.0, "dense_first_layer": False, "dense_last_layer": False})
METHODS = {
    "dense": {"name": "dense"},
    "static": {"name": "static"},
    "set": {"name": "set", "delta_t": 100, "drop_fraction": 0.3, "drop_decay": "cosine", "stop_fraction": 0.75},
    "rigl": {"name": "rigl", "delta_t": 100, "drop_fraction": 0.3, "drop_decay": "cosine", "stop_fraction": 0.75},
    "granet": {"name": "granet", "init_density": 0.5, "prune_start_fraction": 0.0, "prune_end_fraction": 0.5,
               "delta_t": 100, "prune_rate": 0.5, "prune_rate_decay": "cosine", "prune_rate_min": 0.005,
               "stop_fraction": 1.0},
}


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def setup(args, method, device):
    torch.manual_seed(0)
    model = build_model(args.model, in_channels=3, num_classes=10, image_size=32).to(device)
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, weight_decay=5e-4)
    masking = Masking(model)
    ctx = RunState.for_model(model, masking, opt, sparsity=0.0 if method == "dense" else args.sparsity,
                        distribution=DIST, total_steps=10 * args.delta_t, steps_per_epoch=args.steps, seed=0,
                        device=device)
    cfg = OmegaConf.create(METHODS[method])
    if "delta_t" in cfg:
        cfg.delta_t = args.delta_t
    sp = build_sparsifier(cfg, ctx)
    sp.init_masks()
    return model, opt, masking, sp


def reference_apply(masking, opt):
    """Mask application as the reference code does it: per-tensor Python loop, new tensors."""
    for name in masking.names:
        p = masking.params[name]
        p.data = p.data * masking.masks[name]
        state = opt.state.get(p, {})
        if "momentum_buffer" in state:
            state["momentum_buffer"] = state["momentum_buffer"] * masking.masks[name]


def time_steps(args, method, device, batches, reference=False):
    model, opt, masking, sp = setup(args, method, device)
    step = 0

    def one(x, y):
        nonlocal step
        loss = F.cross_entropy(model(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if reference:
            reference_apply(masking, opt)
            loss.item()  # the reference logs the loss every step
        else:
            masking.apply_(opt)
        step += 1
        sp.after_step(step)

    for x, y in batches[:args.warmup]:
        one(x, y)
    sync(device)
    start = time.perf_counter()
    for i in range(args.steps):
        x, y = batches[i % len(batches)]
        one(x, y)
    sync(device)
    return (time.perf_counter() - start) / args.steps


def time_update(args, device, fn):
    model, opt, masking, sp = setup(args, "static", device)
    x = torch.randn(args.batch, 3, 32, 32, device=device)
    y = torch.randint(0, 10, (args.batch,), device=device)
    F.cross_entropy(model(x), y).backward()
    times = []
    for _ in range(5):
        sync(device)
        t0 = time.perf_counter()
        fn(masking, opt)
        sync(device)
        times.append(time.perf_counter() - t0)
    return sorted(times)[len(times) // 2]


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="resnet32")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--warmup", type=int, default=5)
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--sparsity", type=float, default=0.9)
    ap.add_argument("--delta-t", dest="delta_t", type=int, default=100, help="update interval of SET/RigL/GraNet")
    args = ap.parse_args()
    device = torch.device(args.device)
    g = torch.Generator().manual_seed(0)
    batches = [(torch.randn(args.batch, 3, 32, 32, generator=g).to(device),
                torch.randint(0, 10, (args.batch,), generator=g).to(device)) for _ in range(8)]
    print(f"model {args.model}, batch {args.batch}, sparsity {args.sparsity}, device {device}, "
          f"torch {torch.__version__}, {torch.get_num_threads()} threads")
    # round-robin repeats, median per method: slow drifts of the machine hit every method alike
    runs = {m: [] for m in ("dense", "static", "set", "rigl", "granet", "reference", "ours")}
    for _ in range(args.repeats):
        for method in ("dense", "static", "set", "rigl", "granet"):
            runs[method].append(time_steps(args, method, device, batches))
        runs["reference"].append(time_steps(args, "static", device, batches, reference=True))
        runs["ours"].append(time_steps(args, "static", device, batches))
    med = {m: sorted(v)[len(v) // 2] for m, v in runs.items()}
    dense = med["dense"]
    print(f"{'method':<28} {'ms/step':>9} {'vs dense':>9}   (median of {args.repeats} interleaved runs)")
    for method in ("dense", "static", "set", "rigl", "granet"):
        print(f"{method:<28} {med[method] * 1e3:>9.2f} {med[method] / dense:>9.3f}")
    ours = min(med["ours"], med["static"])
    print(f"{'static, reference-style loop':<28} {med['reference'] * 1e3:>9.2f} {med['reference'] / dense:>9.3f}"
          f"   (ours / reference: {ours / med['reference']:.3f})")
    upd = {
        "RigL update (drop+grow)": lambda m, o: drop_and_grow(m, o, 0.3, "gradient"),
        "SET update (drop+grow)": lambda m, o: drop_and_grow(m, o, 0.3, "random", torch.Generator().manual_seed(0)),
        "GraNet global prune": lambda m, o: global_magnitude_prune(m, o, int(0.9 * sum(m.target_counts.values()))),
    }
    for name, fn in upd.items():
        t = time_update(args, device, fn)
        print(f"{name:<28} {t * 1e3:>9.2f} ms = {t / dense:.2f} dense steps "
              f"({t / dense / args.delta_t:.4f} per step amortised over delta_t={args.delta_t})")


if __name__ == "__main__":
    main()
