"""Inference speed of exported sparse Linear layers vs dense ones, measured in one process (ratios in one run).

    nice -n 19 python benchmarks/inference.py                          # CPU: CSR at 90 / 95 / 98 % sparsity
    python benchmarks/inference.py --device cuda                       # GPU sm80+: 2:4 semi-structured, fp16
    python benchmarks/inference.py --tiny                              # seconds: a smoke run (tests)

Shapes: LeNet-300-100's Linear layers (784->300->100->10, run as the network's chain with ReLU) and the default
``model=vit``'s prunable Linear layers (width 192, MLP 768, 28x28 input with 4x4 patches: 50 tokens per image, so a
batch of B images is 50*B rows), each timed alone. Latency: batch 1, median seconds per call; throughput: batch 256,
images per second. Each (dense, sparse) pair is timed alternately in rounds on the same input and the median taken.
CPU: dense ``F.linear`` with a mask-baked weight vs :class:`~sparse_exp.run.export_model.CSRLinear` (random
unstructured masks). CUDA: fp16 ``F.linear`` vs :class:`~sparse_exp.run.export_model.SemiStructuredLinear` (random
2:4 masks; LeNet's shapes are zero-padded to what the 2:4 kernels accept, the dense side is not).
Speedup = dense time / sparse time (> 1: the sparse layer is faster). Results and caveats: ``docs/export.md``.
"""

from __future__ import annotations

import argparse
import statistics
import time
from typing import Callable, Dict, List, Tuple

import torch
from torch import nn

from sparse_exp.run.export_model import CSRLinear, SemiStructuredLinear, semi_structured_missing

LENET = [(784, 300), (300, 100), (100, 10)]
#: default model=vit (width 192, mlp_ratio 4): qkv, attention proj, fc1, fc2; rows per image = tokens
VIT = {"qkv": (192, 576), "proj": (192, 192), "fc1": (192, 768), "fc2": (768, 192)}
VIT_TOKENS = (28 // 4) ** 2 + 1


def random_mask(out_f: int, in_f: int, sparsity: float, two_four: bool, gen: torch.Generator) -> torch.Tensor:
    """A bool mask ``(out_f, in_f)``: unstructured with ``sparsity`` zeros, or 2:4 along ``in_f`` (2 of every 4)."""
    if not two_four:
        return torch.rand(out_f, in_f, generator=gen) >= sparsity
    keep = torch.rand(out_f, in_f // 4, 4, generator=gen).argsort(-1) < 2
    return keep.reshape(out_f, in_f)


def make_layers(shapes: List[Tuple[int, int]], sparsity: float, two_four: bool, device: str, dtype: torch.dtype,
                seed: int) -> Tuple[nn.Module, nn.Module]:
    """``(dense, sparse)`` chains of the Linear ``shapes`` (ReLU between), same masked weights."""
    gen = torch.Generator().manual_seed(seed)
    dense, sparse = [], []
    for i, (in_f, out_f) in enumerate(shapes):
        lin = nn.Linear(in_f, out_f)
        with torch.no_grad():
            lin.weight.mul_(random_mask(out_f, in_f, sparsity, two_four, gen))
        lin = lin.to(device, dtype)
        dense.append(lin)
        make = SemiStructuredLinear if two_four else CSRLinear
        sparse.append(make(lin.weight, lin.bias))
        if i < len(shapes) - 1:
            dense.append(nn.ReLU())
            sparse.append(nn.ReLU())
    return nn.Sequential(*dense).eval(), nn.Sequential(*sparse).eval()


def _timer(device: str) -> Callable[[Callable[[], object], int], float]:
    def run(fn: Callable[[], object], reps: int) -> float:
        if device == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        for _ in range(reps):
            fn()
        if device == "cuda":
            torch.cuda.synchronize()
        return (time.perf_counter() - t0) / reps
    return run


def pair_times(dense: nn.Module, sparse: nn.Module, x: torch.Tensor, reps: int, rounds: int,
               device: str) -> Tuple[float, float, float]:
    """Median seconds per call of ``dense(x)`` and ``sparse(x)``, timed alternately, and max |difference|."""
    timer = _timer(device)
    with torch.inference_mode():
        diff = float((dense(x).float() - sparse(x).float()).abs().max())
        for _ in range(2):  # warm-up (allocators, CSR / cuSPARSELt plans)
            dense(x), sparse(x)
        td, ts = [], []
        for _ in range(rounds):
            td.append(timer(lambda: dense(x), reps))
            ts.append(timer(lambda: sparse(x), reps))
    return statistics.median(td), statistics.median(ts), diff


def cases(tiny: bool) -> List[Tuple[str, List[Tuple[int, int]], int]]:
    """``(name, Linear shapes, rows per image)`` of the benchmarked layers."""
    if tiny:
        return [("lenet300100", [(64, 32), (32, 16)], 1), ("vit.fc1", [(64, 128)], 2)]
    return [("lenet300100", LENET, 1)] + [(f"vit.{k}", [v], VIT_TOKENS) for k, v in VIT.items()]


def measure(device: str, sparsities: List[float], batches: Tuple[int, int], reps: int, rounds: int,
            tiny: bool) -> List[Dict[str, object]]:
    """One row per (layers, sparsity, batch): dense and sparse seconds per call, speedup, max |difference|."""
    two_four = device == "cuda"
    dtype = torch.float16 if two_four else torch.float32
    rows = []
    for name, shapes, per_image in cases(tiny):
        for sparsity in ([0.5] if two_four else sparsities):
            dense, sparse = make_layers(shapes, sparsity, two_four, device, dtype, seed=0)
            for batch in batches:
                x = torch.randn(batch * per_image, shapes[0][0], generator=torch.Generator().manual_seed(1))
                x = x.to(device, dtype)
                td, ts, diff = pair_times(dense, sparse, x, reps, rounds, device)
                rows.append({"layers": name, "shapes": " -> ".join(f"{i}x{o}" for i, o in shapes),
                             "sparsity": sparsity, "batch": batch, "rows": batch * per_image,
                             "dense_s": td, "sparse_s": ts, "speedup": td / ts, "max_abs_diff": diff})
    return rows


def table(rows: List[Dict[str, object]], kind: str) -> str:
    head = ("| layers | in x out | sparsity | batch (rows) | dense | " + kind + " | speedup (dense/" + kind + ") |\n"
            "|---|---|---|---|---|---|---|")
    lines = [head]
    for r in rows:
        if r["batch"] == 1:
            d, s = f"{r['dense_s'] * 1e6:.0f} us", f"{r['sparse_s'] * 1e6:.0f} us"
        else:
            d, s = f"{r['batch'] / r['dense_s']:,.0f} img/s", f"{r['batch'] / r['sparse_s']:,.0f} img/s"
        lines.append(f"| {r['layers']} | {r['shapes']} | {r['sparsity']:.0%} | {r['batch']} ({r['rows']}) | "
                     f"{d} | {s} | {r['speedup']:.2f}x |")
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    ap.add_argument("--sparsity", type=float, nargs="+", default=[0.9, 0.95, 0.98], help="CPU (CSR) only")
    ap.add_argument("--threads", type=int, default=1, help="torch.set_num_threads (CPU)")
    ap.add_argument("--reps", type=int, default=0, help="calls per timing (default: 200 at batch 1, 10 at 256)")
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--tiny", action="store_true", help="tiny shapes, few repetitions (a smoke run)")
    args = ap.parse_args(argv)
    if args.device == "cuda" and (why := semi_structured_missing()):
        ap.exit(2, f"error: --device cuda needs a CUDA GPU of compute capability >= 8.0 for 2:4 kernels; {why}\n")
    torch.set_num_threads(args.threads)
    kind = "2:4 semi-structured (fp16)" if args.device == "cuda" else "CSR (fp32)"
    batches = (1, 4) if args.tiny else (1, 256)
    print(f"torch {torch.__version__}, device {args.device}"
          + (f" ({torch.cuda.get_device_name()})" if args.device == "cuda" else f", {args.threads} thread(s)"))
    rounds = 2 if args.tiny else args.rounds
    rows = []
    for batch in batches:
        reps = args.reps or (2 if args.tiny else 200 if batch == 1 else 10)
        rows += measure(args.device, args.sparsity, (batch,), reps, rounds, args.tiny)
    rows.sort(key=lambda r: (r["layers"], r["sparsity"], r["batch"]))
    print(table(rows, kind))
    print(f"max |dense - sparse| over all rows: {max(r['max_abs_diff'] for r in rows):.2g}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
