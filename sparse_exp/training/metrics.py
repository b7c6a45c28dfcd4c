"""Evaluation metrics: top-1 accuracy (percent), NLL (nats per example) and ECE (15 bins).

ECE is torchmetrics' ``multiclass_calibration_error`` with ``n_bins=15, norm="l1"`` (Guo et
al. 2017), the calibration metric of the Sup-tickets paper (Yin et al. 2022, Sec. 5, Fig. 5).
"""

from __future__ import annotations

from typing import Dict, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import nn

from sparse_exp.engine.preemption import poll


@torch.no_grad()
def predict(model: nn.Module, loader) -> Tuple[torch.Tensor, torch.Tensor]:
    """Logits ``(N, C)`` (float32, CPU) and labels ``(N,)`` over a whole loader, in eval mode."""
    was_training = model.training
    model.eval()
    logits, labels = [], []
    for x, y in loader.iterate(0):
        poll("evaluation")  # per batch: a stop request leaves the pass (sparse_exp.engine.preemption)
        logits.append(model(x).float().cpu())
        labels.append(y.cpu())
    model.train(was_training)
    if not logits:
        return torch.empty(0, 0), torch.empty(0, dtype=torch.long)
    return torch.cat(logits), torch.cat(labels)


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
