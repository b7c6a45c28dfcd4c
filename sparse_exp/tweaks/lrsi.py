"""Layer-wise rescaled initialization (LRsI): GradInit once, before training, on the masked (or dense) network.

Source: Jaiswal et al., ICML 2022; reference code VITA-Group/ToST runs GradInit (Zhu et al., NeurIPS 2021;
:mod:`sparse_exp.tweaks.gradinit`) with the README's settings, the defaults here: 180 iterations, lr 1e-2, eta 0.1,
gamma 1, normalised look-ahead, minimum scale 0.01, gradient clip 1. One learned scalar per parameter tensor (masked
weights stay exactly 0). ``when=after_mask`` (default, the code's variant): once at the start of the run's own
training, after the initial mask (``sparsifier=lth``: on the ticket, after the last round's rewinding);
``mask_lookahead=false`` (the code) takes the look-ahead step with the dense gradient, ``true`` masks it.
``when=before_mask``: on the dense network, before the initial mask is chosen. The run's data order and RNG are
unchanged; cost: ``~3 x iterations`` forward/backward passes on two batches each (``tweaks/lrsi/seconds`` in
``summary.json``). Example: ``tweaks=[lrsi] tweaks.lrsi.when=before_mask``. Details: ``docs/design-notes.md``.
"""

from __future__ import annotations

import itertools
import logging
import time
from dataclasses import dataclass, fields
from typing import Any, Dict, Iterator, List, Optional, Tuple

import torch

from sparse_exp.callbacks.protocol import BaseCallback, RunState
from sparse_exp.config.errors import one_of, require
from sparse_exp.registry import TWEAKS
from sparse_exp.tweaks.gradinit import GradInitSettings, gradinit_

log = logging.getLogger("sparse_exp")

#: first training-loader epoch id GradInit draws batches from (never a training epoch)
GRADINIT_EPOCH = 2_000_000


@dataclass
class LRsIConfig(GradInitSettings):
    """``tweaks.lrsi``: GradInit's settings (the fields of :class:`~sparse_exp.tweaks.gradinit.GradInitSettings`,
    the ToST README's values), plus ``when`` (``after_mask`` | ``before_mask``) and ``batch_size`` of GradInit's
    batches (``null``: half the training batch, as ToST, so that the two batches of ``S`` make one training batch)."""

    when: str = "after_mask"
    batch_size: Optional[int] = None


def check_lrsi(cfg: Any) -> None:
    """Positive iterations, rates and bounds; ``when``."""
    node = cfg.tweaks.lrsi
    one_of("tweaks.lrsi.when", node.when, {"after_mask", "before_mask"})
    require(node.iterations >= 1, "tweaks.lrsi.iterations", node.iterations, "must be >= 1 (the code's README: 180)")
    for key in ("lr", "eta", "gamma", "grad_clip"):
        require(getattr(node, key) > 0, f"tweaks.lrsi.{key}", getattr(node, key), "must be > 0")
    require(0 <= node.min_scale <= 1, "tweaks.lrsi.min_scale", node.min_scale, "must be in [0, 1] (README: 0.01)")


def settings_of(node: Any) -> GradInitSettings:
    """The :class:`GradInitSettings` of a ``tweaks.lrsi`` node."""
    return GradInitSettings(**{f.name: getattr(node, f.name) for f in fields(GradInitSettings)})


@TWEAKS.register("lrsi", schema=LRsIConfig, checks=(check_lrsi,))
class LRsI(BaseCallback):
    """The LRsI tweak as a callback: runs GradInit once (``before_init_masks`` or the first main-phase
    epoch start) and records the scales; resumed runs never run it again."""

    name = "lrsi"
    priority = 30  # rescales the network the earlier tweaks built

    def __init__(self, cfg: Any) -> None:
        self.cfg = cfg
        self.done = False
        self.result: Dict[str, Any] = {}

    def batches(self, state: RunState) -> Iterator[Tuple[torch.Tensor, torch.Tensor]]:
        """Batches of ``batch_size`` images cut from training batches of epochs training never visits
        (deterministic per seed; a short remainder is dropped)."""
        size = self.cfg.batch_size or max(1, state.data.train.batch_size // 2)
        for i in itertools.count():
            for x, y in state.data.train.iterate(GRADINIT_EPOCH + i):
                for start in range(0, x.shape[0] - size + 1, size):
                    yield x[start:start + size], y[start:start + size]

    def run(self, state: RunState, masked: bool) -> None:
        start = time.perf_counter()
        log.info("LRsI: GradInit, %d iterations", self.cfg.iterations)
        masks = None
        if masked:
            m = state.masking
            masks = {n: m.masks[n] for n in m.names}
        res = gradinit_(state.model, self.batches(state), settings_of(self.cfg), masks=masks)
        scales = list(res.scales.values())
        self.result = {"tweaks/lrsi/constraint_steps": res.constraint_steps,
                       "tweaks/lrsi/objective_steps": res.objective_steps,
                       "tweaks/lrsi/scale_min": min(scales), "tweaks/lrsi/scale_max": max(scales),
                       "tweaks/lrsi/tensors": len(scales), "tweaks/lrsi/seconds": time.perf_counter() - start}
        self.done = True
        if masked:
            state.masking.apply_(state.optimizer)

    def before_init_masks(self, state: RunState) -> None:
        if self.cfg.when == "before_mask" and not self.done:
            self.run(state, masked=False)

    def on_epoch_start(self, state: RunState) -> None:
        if self.cfg.when == "after_mask" and not self.done and state.main_step == 0:
            self.run(state, masked=True)

    def final_metrics(self, state: RunState, individual: Dict[str, Any]) -> Dict[str, Any]:
        return dict(self.result)

    def summary_lines(self, summary: Dict[str, Any]) -> List[str]:
        if "tweaks/lrsi/tensors" not in summary:
            return []
        return [f"LRsI (GradInit, {self.cfg.when}): {summary['tweaks/lrsi/tensors']} tensors rescaled, scales "
                f"{summary['tweaks/lrsi/scale_min']:.3f}-{summary['tweaks/lrsi/scale_max']:.3f}, "
                f"{summary['tweaks/lrsi/seconds']:.1f} s"]

    def state_dict(self) -> Dict[str, Any]:
        """Whether GradInit ran and what it reported (its effect is in the model's weights)."""
        return {"done": self.done, "result": dict(self.result)}

    def load_state_dict(self, state: Dict[str, Any], device: torch.device) -> None:
        self.done = bool(state["done"])
        self.result = dict(state["result"])
