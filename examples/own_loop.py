# python examples/own_loop.py                  # small by default: 4 epochs on 1,024 Fashion-MNIST images (seconds, CPU)
# python examples/own_loop.py --epochs 30 --subset-train 0 --val-size 5000 --subset-test 0 --batch-size 128 \
#     --delta-t 100 --phase-fraction 0.1      # the default experiment's size (`python -m sparse_exp.train`)
# python examples/own_loop.py --print-cli      # the command-line run of the same config (same result: docs/api.md)
"""LeNet-5 on Fashion-MNIST with RigL (90 % sparse) + Sup-tickets in a plain PyTorch loop (``sparse_exp.sparsify``).

The model, the optimizer and the loop are ordinary PyTorch; the package gives the data (its loaders, so that the
batch order is the CLI's), the seed, and the sparse training. With the same options, ``--print-cli``'s command trains
the same network: the final weights, masks and the reported (ultimate) ticket's test accuracy are equal, bitwise on
CPU (``tests/test_api.py``).
"""

from __future__ import annotations

import argparse
import sys
from typing import Any, Dict, List, Optional, Sequence

import torch

import sparse_exp
from sparse_exp.config.compose import compose
from sparse_exp.data import build_data
from sparse_exp.engine.seeding import seed_everything
from sparse_exp.models import build_model, reinitialize_
from sparse_exp.training.metrics import evaluate


def parse(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--epochs", type=int, default=4)
    p.add_argument("--subset-train", type=int, default=1024, help="training images (0: all 55,000)")
    p.add_argument("--val-size", type=int, default=500, help="held out of train (the CLI validates on it)")
    p.add_argument("--subset-test", type=int, default=1000, help="test images (0: all 10,000)")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--sparsity", type=float, default=0.9)
    p.add_argument("--delta-t", type=int, default=10, help="steps between RigL's mask updates")
    p.add_argument("--phase-fraction", type=float, default=0.5, help="Sup-tickets' cyclic share of the epochs")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--print-cli", action="store_true", help="print the equivalent command line and exit")
    return p.parse_args(argv)


def data_overrides(a: argparse.Namespace) -> List[str]:
    """The data set's keys (the CLI reads them; here they build the loaders)."""
    out = [f"dataset.val_size={a.val_size}", f"batch_size={a.batch_size}"]
    out += [f"dataset.subset_train={a.subset_train}"] if a.subset_train else []
    return out + ([f"dataset.subset_test={a.subset_test}"] if a.subset_test else [])


def method_overrides(a: argparse.Namespace) -> List[str]:
    """The sparse-training keys, given to sparsify() and to the CLI alike."""
    return [f"sparsifier.delta_t={a.delta_t}", f"superposer.phase_fraction={a.phase_fraction}", f"seed={a.seed}"]


def cli_overrides(a: argparse.Namespace) -> List[str]:
    """``python -m sparse_exp.train <these>`` trains what :func:`train` trains."""
    return ["sparsifier=rigl", "superposer=sup_tickets", f"sparsity={a.sparsity}", f"epochs={a.epochs}",
            *method_overrides(a), *data_overrides(a), "logger=none", "device=cpu"]


def train(a: argparse.Namespace) -> Dict[str, Any]:
    """Train as the module doc says; returns the individual model, the reported model, its masks and test metrics."""
    seed_everything(a.seed)  # as the CLI: the global RNG is seeded first and drawn from by the model's init only
    data = build_data(compose(data_overrides(a)).dataset, seed=a.seed, batch_size=a.batch_size,
                      eval_batch_size=1000, device=torch.device("cpu"))
    spec = data.spec
    model = reinitialize_(build_model("lenet5", spec.in_channels, spec.num_classes, spec.image_size),
                          "kaiming_normal")  # conf/model/lenet5.yaml's init
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=5e-4)
    steps = len(data.train)
    sparse = sparse_exp.sparsify(model, optimizer, total_steps=a.epochs * steps, steps_per_epoch=steps,
                                 sparsifier="rigl", sparsity=a.sparsity, superposer="sup_tickets",
                                 overrides=method_overrides(a))
    for epoch in range(a.epochs):
        model.train()
        for x, y in data.train.iterate(epoch):  # the package's order for (seed, epoch)
            loss = sparse.loss(model(x), y)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            sparse.step()
        print(f"epoch {epoch + 1}/{a.epochs}  loss {loss.item():.4f}  lr {optimizer.param_groups[0]['lr']:.4g}  "
              f"sparsity {sparse.masking.global_sparsity():.4f}", flush=True)
    reported = sparse.finalize(data.train)
    test = evaluate(reported, data.test, spec.num_classes, prefix="test")
    return {"model": model, "reported": reported, "which": sparse.reported, "masks": sparse.reported_masks,
            "test": test, "sparse": sparse}


def main(argv: Optional[Sequence[str]] = None) -> int:
    a = parse(argv)
    if a.print_cli:
        print("python -m sparse_exp.train " + " ".join(cli_overrides(a)))
        return 0
    out = train(a)
    ones = sum(int(m.sum()) for m in out["masks"].values())
    total = sum(m.numel() for m in out["masks"].values())
    print(f"reported model: {out['which']}  test acc {out['test']['test/acc']:.2f} %  "
          f"sparsity {1 - ones / total:.4f} ({ones:,} of {total:,} prunable weights)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
