"""Sup-tickets: create cheap tickets in the last part of training and superpose them.

Source: Yin et al., "Superposing Many Tickets into One: A Performance Booster for Sparse
Neural Network Training", UAI 2022, Algorithm 1, Sec. 3.2-3.3 and 5; reference repo
luuyin/Sup-tickets (see ``shared/notes/reference-implementations.md`` for its defects).

Within the base run's step budget, the normal phase (base sparsifier, base LR schedule
compressed to the normal phase, as the reference's MultiStep at 1/2 and 3/4 of the normal
epochs) is followed by ``M`` cycles of ``C`` steps. At each cycle start the individual model's
mask is re-explored once (drop ``explore_fraction`` of each layer's active weights by magnitude,
regrow as many with the base method's growth criterion); the LR follows the cyclic schedule
per iteration; at the cycle's lowest LR the model is a cheap ticket and is superposed into the
running average, which is then re-pruned by magnitude to the target sparsity. Training goes on
with the individual model; the superposed model after the last ticket is the ultimate ticket,
the model a run reports (``test/*``), next to the last individual model (``last/test/*``).

Exploration growth for methods without a growth criterion of their own (static, SNIP, GraSP,
SynFlow, random, LTH, mask files, GMP) is ``gradient``: the reference code regrows by gradient
for every base method, so this is what produced the paper's ERK and SNIP rows. For SET it is
``random`` (the reference's gradient growth for SET is a known defect).
"""

from __future__ import annotations

import copy
import logging
import time
from typing import Any, Callable, Dict, List, Optional

import torch
from torch.optim.swa_utils import update_bn

from sparse_exp.metrics import metrics_from_logits, predict
from sparse_exp.superpose.averaging import TicketAverager, reprune
from sparse_exp.superpose.cyclic_lr import CyclicBudget, collect_fraction, cyclic_lr, make_budget
from sparse_exp.superpose.diversity import pairwise_diversity
from sparse_exp.sparse.topology import drop_and_grow

log = logging.getLogger("sparse_exp")

#: epoch id of the training-data pass that recomputes BN statistics (never a training epoch)
BN_PASS_EPOCH = 2_000_000


class NoSuperposer:
    """``superposer=none``: the base method's last model is the result."""

    name = "none"
    budget: Optional[CyclicBudget] = None

    def __init__(self, cfg: Any = None, trainer: Any = None) -> None:
        self.cfg = cfg

    def wrap_lr(self, base: Callable[[int], Callable[[int], float]], total_steps: int) -> Callable[[int], float]:
        """LR multiplier for the whole run; ``base(n)`` builds the base schedule over ``n`` steps."""
        return base(total_steps)

    def sparsifier_active(self, step: int) -> bool:
        return True

    def after_step(self, step: int) -> None:
        pass

    def final_metrics(self, individual: Dict[str, Any]) -> Dict[str, Any]:
        return {}

    def final_masks(self) -> Optional[Dict[str, torch.Tensor]]:
        return None

    def state_dict(self) -> Dict[str, Any]:
        return {}

    def load_state_dict(self, state: Dict[str, Any]) -> None:
        pass


class SupTickets(NoSuperposer):
    """The Sup-tickets superposer, driven by :class:`sparse_exp.engine.Trainer`.

    Args:
        cfg: the ``superposer`` config node (:class:`sparse_exp.config.SupTicketsConfig`).
        trainer: the running trainer (model, masking, optimizer, sparsifier, data, epochs).

    Raises:
        sparse_exp.errors.ConfigError: a budget that holds no ticket or no normal phase.
    """

    name = "sup_tickets"

    def __init__(self, cfg: Any, trainer: Any) -> None:
        from sparse_exp.errors import ConfigError

        super().__init__(cfg, trainer)
        self.trainer = trainer
        try:
            self.budget = make_budget(trainer.cfg.epochs, trainer.steps_per_epoch, cfg.cycle_epochs,
                                      cfg.phase_fraction, cfg.num_tickets)
        except ValueError as exc:
            raise ConfigError("superposer.cycle_epochs", cfg.cycle_epochs, str(exc)) from None
        self.base_lr = trainer.cfg.optimizer.lr
        self.ticket_steps = self.budget.ticket_steps(collect_fraction(cfg.lr_schedule))
        self.explore_steps = self.budget.exploration_steps()
        self.averager = TicketAverager(cfg.averaging, cfg.beta, cfg.prune_running_average)
        self.tickets: List[Dict[str, float]] = []
        self.ticket_probs: List[torch.Tensor] = []
        self.superpose_seconds: List[float] = []
        self.ultimate_masks: Optional[Dict[str, torch.Tensor]] = None
        growth = cfg.explore_growth
        if growth == "auto":
            growth = getattr(trainer.sparsifier, "growth", None) or "gradient"
        self.growth = growth

    # ------------------------------------------------------------------ schedule
    def wrap_lr(self, base: Callable[[int], Callable[[int], float]], total_steps: int) -> Callable[[int], float]:
        """Base schedule over the normal phase, then the cyclic LR (as a multiple of the base LR)."""
        normal = base(self.budget.start_step)
        b, cfg = self.budget, self.cfg

        def factor(step: int) -> float:
            if step < b.start_step:
                return normal(step)
            i = step - b.start_step + 1
            return cyclic_lr(cfg.lr_schedule, i, b.cycle_steps, cfg.lr_low, cfg.lr_high) / self.base_lr

        return factor

    def sparsifier_active(self, step: int) -> bool:
        return self.cfg.dst_updates_in_cycles or step <= self.budget.start_step

    # ------------------------------------------------------------------ per step
    def after_step(self, step: int) -> None:
        if step == self.budget.start_step and self.cfg.count_normal_phase_ticket:
            self.collect(index=0)
        if step in self.ticket_steps:
            self.collect(index=self.ticket_steps.index(step) + 1)
        if step in self.explore_steps:
            self.explore()

    def explore(self) -> None:
        """One prune-and-grow of the individual model (Alg. 1 lines 11-12; Eq. 1-2)."""
        t = self.trainer
        dense = set(t.ctx.dense_layers())
        layers = [n for n in t.masking.names if n not in dense]
        drop_and_grow(t.masking, t.optimizer, self.cfg.explore_fraction, self.growth, t.sparsifier.generator, layers)

    @torch.no_grad()
    def collect(self, index: int) -> None:
        """Take the individual model as cheap ticket ``index``, superpose it and re-prune."""
        t = self.trainer
        val = metrics_from_logits(*predict(t.model, t.data.val), t.num_classes)
        test_logits, test_labels = predict(t.model, t.data.test)
        test = metrics_from_logits(test_logits, test_labels, t.num_classes)
        self.ticket_probs.append(test_logits.softmax(1))
        row = {"index": index, "step": t.step, **{f"val/{k}": v for k, v in val.items()},
               **{f"test/{k}": v for k, v in test.items()}}
        start = time.perf_counter()
        masks = {n: t.masking.masks[n] for n in t.masking.names}
        self.averager.add(t.model.state_dict(), masks)
        self.ultimate_masks = self._reprune()
        if self.cfg.prune_running_average:
            self.averager.prune_running_(self.ultimate_masks)
        ultimate = self.ultimate_model()
        self.superpose_seconds.append(time.perf_counter() - start)
        row["ultimate/val/acc"] = metrics_from_logits(*predict(ultimate, t.data.val), t.num_classes)["acc"]
        self.tickets.append(row)
        t.log_metrics({f"tickets/{index}/{k}": v for k, v in row.items() if "/" in k and not k.startswith("ult")}
                      | {"ultimate/val/acc": row["ultimate/val/acc"], "tickets/count": self.averager.count})
        log.info("ticket %d at step %d: val %.2f%%  test %.2f%%  -> ultimate val %.2f%% (%d tickets superposed)",
                 index, t.step, row["val/acc"], row["test/acc"], row["ultimate/val/acc"], self.averager.count)

    def _reprune(self) -> Dict[str, torch.Tensor]:
        t = self.trainer
        avg = self.averager.averaged()
        weights = {n: avg[n] for n in t.masking.names}
        return reprune(weights, dict(t.masking.target_counts), self.cfg.reprune)

    @torch.no_grad()
    def ultimate_model(self) -> torch.nn.Module:
        """The ultimate ticket as a separate model (averaged state, re-pruned weights, BN handled)."""
        t = self.trainer
        if not hasattr(self, "_ultimate"):
            self._ultimate = copy.deepcopy(t.model)
        avg = self.averager.averaged()
        masks = self.ultimate_masks if self.ultimate_masks is not None else self._reprune()
        for n, m in masks.items():
            avg[n] = avg[n] * m.to(avg[n].dtype)
        self._ultimate.load_state_dict(avg)
        if self.cfg.bn == "recompute" and any(isinstance(mod, torch.nn.modules.batchnorm._BatchNorm)
                                                for mod in self._ultimate.modules()):
            was_training = self._ultimate.training
            update_bn(t.data.train.iterate(BN_PASS_EPOCH), self._ultimate)
            self._ultimate.train(was_training)
        return self._ultimate

    def final_masks(self) -> Optional[Dict[str, torch.Tensor]]:
        if self.ultimate_masks is None:
            self.ultimate_masks = self._reprune()
        return self.ultimate_masks

    # ------------------------------------------------------------------ results
    def final_metrics(self, individual: Dict[str, Any]) -> Dict[str, Any]:
        """Summary keys: the ultimate ticket's metrics as the run's result, the last individual
        model's as ``last/*``, per-ticket metrics, diversity, the superposition's cost."""
        t = self.trainer
        if self.averager.count == 0:
            raise RuntimeError("the run ended before any ticket was collected")
        ultimate = self.ultimate_model()
        out: Dict[str, Any] = {f"last/{k}": v for k, v in individual.items()
                               if k.startswith(("test/", "val/", "sparsity/global"))}
        for split, loader in (("test", t.data.test), ("val", t.data.val)):
            for k, v in metrics_from_logits(*predict(ultimate, loader), t.num_classes).items():
                out[f"{split}/{k}"] = v
        masks = self.final_masks()
        ones = sum(int(m.count_nonzero()) for m in masks.values())
        out["sparsity/global"] = 1.0 - ones / t.masking.total
        out["sparsity/layers"] = {n: 1.0 - int(masks[n].count_nonzero()) / masks[n].numel() for n in masks}
        out["params/nonzero"] = sum(int(p.count_nonzero()) for n, p in ultimate.named_parameters() if n in masks)
        out["tickets/count"] = self.averager.count
        for row in self.tickets:
            i = row["index"]
            for k in ("test/acc", "test/nll", "test/ece", "val/acc"):
                out[f"tickets/{i}/{k}"] = row[k]
        cyc = [r for r in self.tickets if r["index"] > 0]
        out["tickets/mean/test/acc"] = sum(r["test/acc"] for r in cyc) / len(cyc)
        probs = [p for r, p in zip(self.tickets, self.ticket_probs) if r["index"] > 0]
        out.update(pairwise_diversity(probs))
        epoch_s = t.elapsed / max(1, t.epoch)
        mean_s = sum(self.superpose_seconds) / len(self.superpose_seconds)
        out["superpose/seconds"] = mean_s
        out["superpose/epoch_fraction"] = mean_s / epoch_s if epoch_s > 0 else float("nan")
        return out

    # ------------------------------------------------------------------ checkpoint
    def state_dict(self) -> Dict[str, Any]:
        return {"averager": self.averager.state_dict(), "tickets": list(self.tickets),
                "ticket_probs": list(self.ticket_probs), "superpose_seconds": list(self.superpose_seconds),
                "ultimate_masks": None if self.ultimate_masks is None else
                {k: v.cpu() for k, v in self.ultimate_masks.items()}}

    def load_state_dict(self, state: Dict[str, Any]) -> None:
        device = self.trainer.device
        self.averager.load_state_dict(state["averager"], device)
        self.tickets = list(state["tickets"])
        self.ticket_probs = list(state["ticket_probs"])
        self.superpose_seconds = list(state["superpose_seconds"])
        um = state["ultimate_masks"]
        self.ultimate_masks = None if um is None else {k: v.to(device) for k, v in um.items()}
