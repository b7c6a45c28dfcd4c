"""Evaluation metrics: top-1 accuracy (percent), NLL (nats per example) and ECE (15 bins).

ECE is torchmetrics' ``multiclass_calibration_error`` with ``n_bins=15, norm="l1"`` (Guo et
al. 2017), the calibration metric of the Sup-tickets paper (Yin et al. 2022, Sec. 5, Fig. 5).
"""

from __future__ import annotations

from typing import Dict, List, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import nn

from sparse_exp.data.spec import batch_spans, shard_slice
from sparse_exp.engine.distributed import process_world, sync_buffers_
from sparse_exp.engine.preemption import poll


@torch.no_grad()
def predict(model: nn.Module, loader) -> Tuple[torch.Tensor, torch.Tensor]:
    """Logits ``(N, C)`` (float32, CPU) and labels ``(N,)`` over a whole loader, in eval mode, in the loader's order.

    Under DDP (an initialised process group of more than one rank) the evaluation is sharded: every rank first takes
    rank 0's BN statistics (:func:`~sparse_exp.engine.distributed.sync_buffers_`), computes only its rows of each
    batch (``loader.iterate(0, rank=, world=)``), and the rows are all-gathered back into the loader's order, so
    every rank returns the single process's logits (up to float rounding of other batch sizes). A collective:
    call it on every rank.
    """
    rank, world = process_world()
    sync_buffers_(model)
    was_training = model.training
    model.eval()
    logits, labels = [], []
    batches = loader.iterate(0) if world == 1 else loader.iterate(0, rank=rank, world=world)
    for x, y in batches:
        poll("evaluation")  # per batch: a stop request leaves the pass (sparse_exp.engine.preemption)
        logits.append(model(x).float().cpu())
        labels.append(y.cpu())
    model.train(was_training)
    if world > 1:
        return _gather_in_order(logits, labels, loader, rank, world, next(model.parameters()).device)
    if not logits:
        return torch.empty(0, 0), torch.empty(0, dtype=torch.long)
    return torch.cat(logits), torch.cat(labels)


def _gather_in_order(logits: List[torch.Tensor], labels: List[torch.Tensor], loader, rank: int, world: int,
                     device: torch.device) -> Tuple[torch.Tensor, torch.Tensor]:
    """All-gather every rank's per-batch rows and interleave them back into the loader's batch order."""
    import torch.distributed as dist

    sizes = [[shard_slice(hi - lo, r, world).stop - shard_slice(hi - lo, r, world).start for r in range(world)]
             for lo, hi in batch_spans(loader.num_samples, loader.batch_size)]
    totals = [sum(s[r] for s in sizes) for r in range(world)]
    classes = torch.tensor([logits[0].shape[1] if logits and logits[0].numel() else 0])
    comm = device if dist.get_backend() == "nccl" else torch.device("cpu")
    classes = classes.to(comm)
    dist.all_reduce(classes, op=dist.ReduceOp.MAX)
    c, longest = int(classes.item()), max(totals) if totals else 0
    if longest == 0:
        return torch.empty(0, 0), torch.empty(0, dtype=torch.long)
    local = torch.zeros(longest, c + 1)  # the label rides along as a float column (exact below 2**24)
    mine = totals[rank]
    if mine:
        local[:mine, :c] = torch.cat([t.reshape(-1, c) for t in logits])
        local[:mine, c] = torch.cat(labels).float()
    parts = [torch.empty(longest, c + 1, device=comm) for _ in range(world)]
    dist.all_gather(parts, local.to(comm))
    parts = [p.cpu() for p in parts]
    offsets, rows = [0] * world, []
    for per_rank in sizes:
        for r in range(world):
            rows.append(parts[r][offsets[r]:offsets[r] + per_rank[r]])
            offsets[r] += per_rank[r]
    out = torch.cat(rows)
    return out[:, :c].contiguous(), out[:, c].long()


def metrics_from_logits(logits: torch.Tensor, labels: torch.Tensor, num_classes: int) -> Dict[str, float]:
    """``acc`` (percent, 0-100), ``nll`` (mean cross-entropy, nats) and ``ece`` (fraction, 0-1)."""
    if labels.numel() == 0:
        return {"acc": float("nan"), "nll": float("nan"), "ece": float("nan")}
    acc = (logits.argmax(1) == labels).float().mean().item() * 100.0
    nll = F.cross_entropy(logits, labels).item()
    # imported here, not at module import: torchmetrics' package import pulls in torchvision and costs about
    # 2 s of every command's start-up (``--help``, a refused config)
    from torchmetrics.functional.classification import multiclass_calibration_error

    ece = multiclass_calibration_error(logits.softmax(1), labels, num_classes=num_classes, n_bins=15, norm="l1").item()
    return {"acc": acc, "nll": nll, "ece": ece}


def evaluate(model: nn.Module, loader, num_classes: int, prefix: Optional[str] = None) -> Dict[str, float]:
    """Metrics of ``model`` on ``loader``; keys prefixed ``"<prefix>/"`` when given."""
    logits, labels = predict(model, loader)
    out = metrics_from_logits(logits, labels, num_classes)
    return {f"{prefix}/{k}" if prefix else k: v for k, v in out.items()}
