"""Sup-tickets: create cheap tickets in the last part of training and superpose them.

Source: Yin et al., "Superposing Many Tickets into One: A Performance Booster for Sparse Neural Network
Training", UAI 2022, Algorithm 1, Sec. 3.2-3.3 and 5; luuyin/Sup-tickets (defects:
``shared/notes/reference-implementations.md``). A :class:`~sparse_exp.callbacks.protocol.Callback`: it replaces
the main phase's LR schedule (``lr_schedule``), gates the base sparsifier in the cycles (``allow_mask_update``),
re-explores the mask and collects and superposes a cheap ticket per cycle (``on_step_end``), reports the ultimate
ticket (``final_masks``, ``final_metrics``, ``summary_lines``) and checkpoints its averager. The phases and the
exploration growth per base method: ``docs/design-notes.md``.
"""

from __future__ import annotations

import copy
import logging
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Optional, Tuple

import torch
from omegaconf import MISSING

from sparse_exp.callbacks.protocol import BaseCallback, LRFactor, RunState
from sparse_exp.config.errors import one_of, require
from sparse_exp.config.schema import SuperposerConfig
from sparse_exp.engine.distributed import sync_buffers_
from sparse_exp.registry import SUPERPOSERS
from sparse_exp.sparse.topology import drop_and_grow
from sparse_exp.superposers.averaging import AVERAGING, REPRUNE, TicketAverager, check_reprune_scope, reprune
from sparse_exp.superposers.cyclic_lr import (
    LR_SCHEDULES,
    CyclicBudget,
    budget_of,
    collect_fraction,
    sup_tickets_lr_factor,
    ticket_collection_start,
)
from sparse_exp.superposers.diversity import mask_diversity, pairwise_diversity
from sparse_exp.superposers.tickets import (
    Variant,
    evaluate_variant,
    load_tickets,
    load_ultimate,
    save_ticket,
    split_metrics,
    superpose_into,
    superposed_state,
    ticket_cost,
    ticket_meta,
    write_superposed,
)
from sparse_exp.training.metrics import metrics_from_logits, predict

log = logging.getLogger("sparse_exp")


@dataclass
class OfflineVariantConfig:
    """One entry of ``superposer.offline``: a :class:`~sparse_exp.superposers.tickets.Variant`; a key left null
    takes the run's own value (``averaging`` is required)."""

    averaging: str = MISSING
    beta: Optional[float] = None
    reprune: Optional[str] = None
    count_normal_phase_ticket: Optional[bool] = None
    prune_running_average: Optional[bool] = None
    bn: Optional[str] = None


@dataclass
class SupTicketsConfig(SuperposerConfig):
    """``superposer=sup_tickets`` (Yin et al. UAI 2022, Alg. 1).

    Budget: the cyclic phase is the last ``phase_fraction`` of the epochs rounded down to
    whole cycles of ``cycle_epochs``, or ``num_tickets * cycle_epochs`` epochs when
    ``num_tickets`` is set (Fig. 4). LR: ``lr_schedule`` ``triangle`` (Eq. 3) | ``fge`` | ``swa``
    between ``lr_low`` and ``lr_high`` (absolute LRs). Exploration at each cycle start drops
    ``explore_fraction`` per layer and regrows with ``explore_growth`` (``auto`` = the base
    method's criterion). ``averaging`` ``cia`` | ``caa`` | ``cima`` (``beta``); ``reprune``
    ``global`` | ``layerwise`` | ``nm`` (default ``superposer.distribution_defaults.reprune``: ``nm`` under
    ``distribution=nm``, else ``global``); ``bn`` ``average`` | ``recompute``.
    ``ticket_eval`` (what is evaluated when a ticket is taken; never changes the ultimate ticket):
    ``val_test`` (default) each cheap ticket on validation and test and the ultimate ticket so far on
    validation -- the per-ticket rows of the summary, the mean cheap ticket and the tickets' diversity;
    ``val`` each cheap ticket and the ultimate ticket on validation only (no per-ticket test metrics, no
    prediction diversity; mask diversity stays); ``none`` nothing per ticket, mask diversity neither; the ultimate
    ticket and the last individual model are evaluated at the end as always (the cheapest; save the tickets with
    ``save_tickets`` to evaluate them later). The reference code (luuyin/Sup-tickets ``main.py``) tests every ticket.
    ``cycle_epochs`` / ``lr_low`` / ``lr_high`` default to the data set's ``superposer.dataset_defaults``
    (``conf/superposer/dataset/<dataset>.yaml``).
    """

    name: str = "sup_tickets"
    phase_fraction: float = 0.1
    cycle_epochs: float = 8.0
    num_tickets: Optional[int] = None
    lr_schedule: str = "triangle"
    lr_low: float = 0.001
    lr_high: float = 0.005
    explore_fraction: float = 0.5
    explore_growth: str = "auto"
    dst_updates_in_cycles: bool = True
    averaging: str = "cia"
    beta: float = 0.8
    count_normal_phase_ticket: bool = False
    prune_running_average: bool = False
    reprune: str = "global"
    bn: str = "average"
    #: what is evaluated when a ticket is taken: ``val_test`` | ``val`` | ``none`` (see above)
    ticket_eval: str = "val_test"
    #: write every cheap ticket (and the end-of-normal-phase model) to ``<run>/tickets/`` (:mod:`.tickets`)
    save_tickets: bool = False
    #: superposition variants computed from the saved tickets at the end of the run (``superposed/<variant>.*``)
    offline: List[OfflineVariantConfig] = field(default_factory=list)


#: ``superposer.ticket_eval``: the splits each cheap ticket is evaluated on when it is taken
TICKET_EVAL = {"val_test": ("val", "test"), "val": ("val",), "none": ()}


def check_sup_tickets(cfg: Any) -> None:
    """Ranges and the cyclic budget of ``superposer=sup_tickets`` (in epochs, before any data)."""
    sp = cfg.superposer
    require(0 < sp.phase_fraction < 1, "superposer.phase_fraction", sp.phase_fraction, "must be in (0, 1)")
    require(sp.cycle_epochs > 0, "superposer.cycle_epochs", sp.cycle_epochs, "must be > 0 (epochs per cycle)")
    if sp.num_tickets is not None:
        require(sp.num_tickets >= 1, "superposer.num_tickets", sp.num_tickets, "must be >= 1 or null")
        require(sp.num_tickets * sp.cycle_epochs < cfg.epochs, "superposer.num_tickets", sp.num_tickets,
                f"num_tickets x cycle_epochs ({sp.num_tickets} x {sp.cycle_epochs}) must be shorter than "
                f"epochs={cfg.epochs}")
    else:
        phase = sp.phase_fraction * cfg.epochs
        require(sp.cycle_epochs <= phase + 1e-9, "superposer.cycle_epochs", sp.cycle_epochs,
                f"must fit in the cyclic phase: phase_fraction x epochs = {phase:g} epochs holds no ticket")
    require(0 < sp.lr_low <= sp.lr_high, "superposer.lr_low", sp.lr_low,
            f"must satisfy 0 < lr_low <= lr_high ({sp.lr_high})")
    one_of("superposer.lr_schedule", sp.lr_schedule, set(LR_SCHEDULES))
    require(0 < sp.explore_fraction <= 1, "superposer.explore_fraction", sp.explore_fraction, "must be in (0, 1]")
    one_of("superposer.explore_growth", sp.explore_growth, {"auto", "random", "gradient"})
    one_of("superposer.averaging", sp.averaging, set(AVERAGING))
    require(0 <= sp.beta < 1, "superposer.beta", sp.beta, "must be in [0, 1)")
    one_of("superposer.reprune", sp.reprune, set(REPRUNE))
    one_of("superposer.bn", sp.bn, {"average", "recompute"})
    one_of("superposer.ticket_eval", sp.ticket_eval, set(TICKET_EVAL))
    if sp.offline:
        require(sp.save_tickets, "superposer.offline", "[...]", "needs superposer.save_tickets=true (the variants "
                "are computed from the saved tickets)")
    for i, entry in enumerate(sp.offline):
        one_of(f"superposer.offline[{i}].averaging", entry.averaging, set(AVERAGING))
        if entry.reprune is not None:
            one_of(f"superposer.offline[{i}].reprune", entry.reprune, set(REPRUNE))
        if entry.bn is not None:
            one_of(f"superposer.offline[{i}].bn", entry.bn, {"average", "recompute"})
        if entry.beta is not None:
            require(0 <= entry.beta < 1, f"superposer.offline[{i}].beta", entry.beta, "must be in [0, 1)")
    require(cfg.sparsity > 0, "sparsity", cfg.sparsity, "must be > 0 with superposer=sup_tickets")
    check_reprune_scope(cfg)


def preflight_sup_tickets(plan: Any) -> None:
    """The cyclic budget in steps (a cycle of at least one step, at least one ticket, a normal phase)."""
    budget_of(plan.cfg.superposer, int(plan.cfg.epochs), plan.steps_per_epoch)


@SUPERPOSERS.register("sup_tickets", schema=SupTicketsConfig, checks=(check_sup_tickets,),
                      preflight=(preflight_sup_tickets,),
                      queries={"ticket_collection_start": ticket_collection_start})
class SupTickets(BaseCallback):
    """The Sup-tickets superposer as a callback (see the module doc).

    Args:
        cfg: the ``superposer`` config node (:class:`SupTicketsConfig`).

    Raises (in :meth:`setup`):
        sparse_exp.config.errors.ConfigError: a budget that holds no ticket or no normal phase.
    """

    name = "sup_tickets"
    priority = 100  # a superposer: after the tweaks

    def __init__(self, cfg: Any) -> None:
        self.cfg = cfg
        self.state: Optional[RunState] = None
        self.budget: Optional[CyclicBudget] = None
        self.averager = TicketAverager(cfg.averaging, cfg.beta, cfg.prune_running_average)
        self.tickets: List[Dict[str, float]] = []
        self.ticket_probs: List[torch.Tensor] = []
        self.ticket_masks: Dict[int, Dict[str, torch.Tensor]] = {}  # bool, CPU: the tickets' mask diversity
        self.superpose_seconds: List[float] = []
        self.ticket_seconds: List[float] = []  # superposition + the ticket's evaluations (ticket_eval)
        self.ultimate_masks: Optional[Dict[str, torch.Tensor]] = None
        self.growth: Optional[str] = None

    def setup(self, state: RunState) -> None:
        cfg = self.cfg
        self.state = state
        self.budget = budget_of(cfg, state.epochs, state.steps_per_epoch)
        self.ticket_steps = self.budget.ticket_steps(collect_fraction(cfg.lr_schedule))
        self.explore_steps = self.budget.exploration_steps()
        self.meta = ticket_meta(state.model, state.masking.target_counts, state.masking.total)
        growth = cfg.explore_growth
        if growth == "auto":
            growth = state.sparsifier.growth or "gradient"
        self.growth = growth

    # ------------------------------------------------------------------ schedule
    def lr_schedule(self, base: Callable[[int], LRFactor], total_steps: int) -> Optional[LRFactor]:
        """Base schedule over the normal phase, then the cyclic LR (as a multiple of the base LR)."""
        b, cfg = self.budget, self.cfg
        return sup_tickets_lr_factor(b, base(b.start_step), cfg.lr_schedule, cfg.lr_low, cfg.lr_high,
                                     self.state.base_lr)

    def allow_mask_update(self, main_step: int) -> bool:
        return self.cfg.dst_updates_in_cycles or main_step <= self.budget.start_step

    # ------------------------------------------------------------------ per step
    def on_step_end(self, state: RunState, mask_changed: bool) -> None:
        step = state.main_step
        if step < 1:
            return
        if step == self.budget.start_step:
            if self.cfg.count_normal_phase_ticket:
                self.collect(index=0)
            elif self.cfg.save_tickets:  # saved for offline variants that count it
                self.save(0, self.ticket_metrics(TICKET_EVAL[self.cfg.ticket_eval])[0])
        if step in self.ticket_steps:
            self.collect(index=self.ticket_steps.index(step) + 1)
        if step in self.explore_steps:
            self.explore()

    def explore(self) -> None:
        """One prune-and-grow of the individual model (Alg. 1 lines 11-12; Eq. 1-2)."""
        t = self.state
        dense = set(t.dense_layers)
        layers = [n for n in t.masking.names if n not in dense]
        drop_and_grow(t.masking, t.optimizer, self.cfg.explore_fraction, self.growth, t.sparsifier.generator, layers)

    @torch.no_grad()
    def ticket_metrics(self, splits: Tuple[str, ...] = ("val", "test")
                       ) -> Tuple[Dict[str, float], Optional[torch.Tensor]]:
        """The individual model's ``val/*`` and ``test/*`` metrics on ``splits``, and its test-set
        probabilities (``[N_test, classes]``; ``None`` without ``test``)."""
        t = self.state
        out: Dict[str, float] = {}
        probs = None
        for split in splits:
            logits, labels = predict(t.model, getattr(t.data, split))
            out.update({f"{split}/{k}": v for k, v in metrics_from_logits(logits, labels, t.num_classes).items()})
            if split == "test":
                probs = logits.softmax(1)
        return out, probs

    def save(self, index: int, metrics: Dict[str, float]) -> None:
        """Write the individual model as ticket ``index`` into the run's ticket store (``save_tickets``)."""
        t = self.state
        if t.run_dir is None:  # not the writing process (DDP rank > 0), or an in-memory run
            return
        save_ticket(t.run_dir, index, t.step, t.model.state_dict(), {n: t.masking.masks[n] for n in t.masking.names},
                    t.masking.target_counts, metrics, self.meta)

    @torch.no_grad()
    def collect(self, index: int) -> None:
        """Take the individual model as cheap ticket ``index``, superpose it and re-prune; evaluate what
        ``ticket_eval`` asks for."""
        t = self.state
        sync_buffers_(t.model)  # DDP: every rank superposes rank 0's BN statistics (no-op in one process)
        splits = TICKET_EVAL[self.cfg.ticket_eval]
        start = time.perf_counter()
        metrics, probs = self.ticket_metrics(splits)
        eval_s = time.perf_counter() - start if splits else 0.0
        if probs is not None:
            self.ticket_probs.append(probs)
        row = {"index": index, "step": t.step, **metrics}
        if self.cfg.save_tickets:
            self.save(index, metrics)
        start = time.perf_counter()
        masks = {n: t.masking.masks[n] for n in t.masking.names}
        self.ticket_masks[index] = {n: m.to("cpu", torch.bool) for n, m in masks.items()}
        self.ultimate_masks = superpose_into(self.averager, t.model.state_dict(), masks, t.masking.target_counts,
                                             self.cfg.reprune, t.masking.groups)
        ultimate = self.ultimate_model()
        self.superpose_seconds.append(time.perf_counter() - start)
        if splits:
            start = time.perf_counter()
            row["ultimate/val/acc"] = metrics_from_logits(*predict(ultimate, t.data.val), t.num_classes)["acc"]
            eval_s += time.perf_counter() - start
        self.ticket_seconds.append(self.superpose_seconds[-1] + eval_s)
        self.tickets.append(row)
        t.log({f"tickets/{index}/{k}": v for k, v in row.items() if "/" in k and not k.startswith("ult")}
              | {k: v for k, v in row.items() if k.startswith("ult")} | {"tickets/count": self.averager.count})
        shown = "  ".join(f"{k.split('/')[0]} {row[k]:.2f}%" for k in ("val/acc", "test/acc") if k in row)
        if splits:
            shown += f"  -> ultimate val {row['ultimate/val/acc']:.2f}%"
        log.info("ticket %d at step %d: %s (%d tickets superposed)", index, t.step, shown or "not evaluated",
                 self.averager.count)

    def _reprune(self) -> Dict[str, torch.Tensor]:
        t = self.state
        avg = self.averager.averaged()
        weights = {n: avg[n] for n in t.masking.names}
        return reprune(weights, dict(t.masking.target_counts), self.cfg.reprune, t.masking.groups)

    @torch.no_grad()
    def ultimate_model(self) -> torch.nn.Module:
        """The ultimate ticket as a separate model (averaged state, re-pruned weights, BN handled)."""
        t = self.state
        if not hasattr(self, "_ultimate"):
            self._ultimate = copy.deepcopy(t.model)
        masks = self.ultimate_masks if self.ultimate_masks is not None else self._reprune()
        return load_ultimate(self._ultimate, superposed_state(self.averager, masks), self.cfg.bn, t.data.train)

    def ultimate_ticket_masks(self) -> Dict[str, torch.Tensor]:
        """Masks of the ultimate ticket (re-pruned superposition of the tickets so far)."""
        if self.ultimate_masks is None:
            self.ultimate_masks = self._reprune()
        return self.ultimate_masks

    def final_masks(self, state: RunState) -> Optional[Tuple[str, Dict[str, torch.Tensor]]]:
        """The run reports the ultimate ticket."""
        return "ultimate ticket", self.ultimate_ticket_masks()

    # ------------------------------------------------------------------ results
    def reported_model(self, state: RunState) -> Optional[Tuple[str, torch.nn.Module]]:
        """The run reports the ultimate ticket (a separate model; the individual model is left as trained): the one
        :meth:`final_metrics` evaluated (no second BN pass), else a fresh :meth:`ultimate_model`."""
        reported = getattr(self, "reported", None)
        return "ultimate", reported if reported is not None else self.ultimate_model()

    def final_metrics(self, state: RunState, individual: Dict[str, Any]) -> Dict[str, Any]:
        """Summary keys: the ultimate ticket's metrics as the run's result, the last individual
        model's as ``last/*``, per-ticket metrics, diversity, the superposition's cost."""
        t = self.state
        if self.averager.count == 0:
            raise RuntimeError("the run ended before any ticket was collected")
        ultimate = self.reported = self.ultimate_model()  # reported_model gives this one (the metrics' model)
        out: Dict[str, Any] = {f"last/{k}": v for k, v in individual.items()
                               if k.startswith(("test/", "val/", "sparsity/global"))}
        out.update(split_metrics(ultimate, t.data, t.num_classes))
        masks = self.ultimate_ticket_masks()
        ones = sum(int(m.count_nonzero()) for m in masks.values())
        out["sparsity/global"] = 1.0 - ones / t.masking.total
        out["sparsity/layers"] = {n: 1.0 - int(masks[n].count_nonzero()) / masks[n].numel() for n in masks}
        out["params/nonzero"] = sum(int(p.count_nonzero()) for n, p in ultimate.named_parameters() if n in masks)
        out["tickets/count"] = self.averager.count
        for row in self.tickets:
            i = row["index"]
            for k in ("test/acc", "test/nll", "test/ece", "val/acc"):
                if k in row:
                    out[f"tickets/{i}/{k}"] = row[k]
        cyc = [r for r in self.tickets if r["index"] > 0]
        for k in ("test/acc", "val/acc"):
            if all(k in r for r in cyc):
                out[f"tickets/mean/{k}"] = sum(r[k] for r in cyc) / len(cyc)
        if len(self.ticket_probs) == len(self.tickets):  # every ticket tested (ticket_eval=val_test)
            out.update(pairwise_diversity([p for r, p in zip(self.tickets, self.ticket_probs) if r["index"] > 0]))
        if self.cfg.ticket_eval != "none":  # none: no per-ticket keys at all (masks' diversity included)
            out.update(mask_diversity(self.ticket_masks, {n: m.cpu() for n, m in masks.items()}))
        epoch_s = t.elapsed / max(1, t.epoch)
        out.update(ticket_cost(self.superpose_seconds, self.ticket_seconds, epoch_s))
        self.superpose_offline()
        return out

    def superpose_offline(self) -> None:
        """Compute each ``superposer.offline`` variant from the saved tickets; write ``superposed/<variant>.*``."""
        t = self.state
        if not self.cfg.offline or t.run_dir is None:
            return
        tickets = load_tickets(t.run_dir, t.model)
        for entry in self.cfg.offline:
            variant = Variant.of(self.cfg, **{k: getattr(entry, k) for k in Variant.__dataclass_fields__})
            state, masks, result = evaluate_variant(tickets, variant, t.model, t.data, t.num_classes)
            write_superposed(t.run_dir, variant, state, masks, {**result, "source": "offline (end of run)"})
            log.info("offline superposition %-32s test %.2f%%  val %.2f%%", variant.name, result["test/acc"],
                     result["val/acc"])

    def summary_lines(self, summary: Dict[str, Any]) -> List[str]:
        """The ultimate ticket, the last individual model and each cheap ticket side by side."""
        idx = sorted({int(k.split("/")[1]) for k in summary if k.startswith("tickets/") and k.split("/")[1].isdigit()})
        # with report=best_val a best-validation epoch may be the reported model: the ticket's own are final/*
        u = "final/" if "final/test/acc" in summary else ""
        rows = [("ultimate ticket", summary[f"{u}test/acc"], summary[f"{u}test/nll"], summary[f"{u}test/ece"])]
        rows.append(("last individual model", summary["last/test/acc"], summary["last/test/nll"],
                     summary["last/test/ece"]))
        rows += [(f"cheap ticket {i}", summary[f"tickets/{i}/test/acc"], summary[f"tickets/{i}/test/nll"],
                  summary[f"tickets/{i}/test/ece"]) for i in idx if f"tickets/{i}/test/acc" in summary]
        lines = [f"  {'model':<24} {'test acc %':>10} {'NLL':>8} {'ECE':>8}"]
        lines += [f"  {name:<24} {acc:>10.2f} {nll:>8.4f} {ece:>8.4f}" for name, acc, nll, ece in rows]
        if "diversity/kl" in summary:
            lines.append(f"  ({summary['tickets/count']} tickets superposed; diversity: disagreement "
                         f"{summary['diversity/disagreement']:.4f}, KL {summary['diversity/kl']:.4f})")
        else:
            lines.append(f"  ({summary['tickets/count']} tickets superposed; not tested one by one: "
                         f"superposer.ticket_eval={self.cfg.ticket_eval})")
        return lines + [""]

    def plot_marks(self, state: RunState) -> List[Tuple[int, str]]:
        """The cyclic phase's start and each ticket's step (global steps)."""
        pre = state.pre_steps
        return [(pre + self.budget.start_step, "cyclic phase")] + [
            (pre + s, f"ticket {i + 1}") for i, s in enumerate(self.ticket_steps)]

    # ------------------------------------------------------------------ checkpoint
    def state_dict(self) -> Dict[str, Any]:
        """The running average, the tickets' metrics and test probabilities, the superposition timings and
        the ultimate ticket's masks (CPU tensors), for a bitwise resume mid-cycle."""
        return {"averager": self.averager.state_dict(), "tickets": list(self.tickets),
                "ticket_probs": list(self.ticket_probs), "ticket_masks": dict(self.ticket_masks),
                "superpose_seconds": list(self.superpose_seconds), "ticket_seconds": list(self.ticket_seconds),
                "ultimate_masks": None if self.ultimate_masks is None else
                {k: v.cpu() for k, v in self.ultimate_masks.items()}}

    def load_state_dict(self, state: Dict[str, Any], device: torch.device) -> None:
        """Restore :meth:`state_dict`'s output, tensors moved to ``device``."""
        self.averager.load_state_dict(state["averager"], device)
        self.tickets = list(state["tickets"])
        self.ticket_probs, self.ticket_masks = list(state["ticket_probs"]), dict(state.get("ticket_masks", {}))
        self.superpose_seconds = list(state["superpose_seconds"])
        self.ticket_seconds = list(state["ticket_seconds"])
        um = state["ultimate_masks"]
        self.ultimate_masks = None if um is None else {k: v.to(device) for k, v in um.items()}
