"""Saved cheap tickets and offline superposition: every averaging rule from one training run.

    python -m sparse_exp.train superposer.save_tickets=true
    python -m sparse_exp.superpose runs/superposer.save_tickets=true --averaging cima --beta 0.5

Runs that differ only in a :class:`Variant` field (``averaging``, ``beta``, ``reprune``, ``count_normal_phase_ticket``,
``prune_running_average``, ``bn``) have the same tickets (Sup-tickets, Yin et al., UAI 2022, Alg. 1), so each variant
is computed offline from ``<run>/tickets/ticket_<index>.pt`` (1..M: the cycles; 0: the end of the normal phase,
always saved; format ``sparse_exp.ticket/v1``: ``docs/design-notes.md``). Variant ``v`` writes
``<run>/superposed/<v.name>.json`` (val / test metrics, :func:`sparse_exp.training.metrics.metrics_from_logits`)
and ``<v.name>.pt`` (``{"format": "sparse_exp.superposed/v1", "state": ..., "masks": ...}``).
"""

from __future__ import annotations

import copy
import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Tuple

import torch
from omegaconf import OmegaConf
from torch.optim.swa_utils import update_bn

from sparse_exp.config.errors import UserError
from sparse_exp.engine.preemption import poll, polled
from sparse_exp.superposers.averaging import AVERAGING, REPRUNE, TicketAverager, reprune
from sparse_exp.training.metrics import metrics_from_logits, predict

TICKET_FORMAT = "sparse_exp.ticket/v1"
SUPERPOSED_FORMAT = "sparse_exp.superposed/v1"
TICKETS_DIR = "tickets"
SUPERPOSED_DIR = "superposed"
#: epoch id of the training-data pass that recomputes BN statistics (never a training epoch)
BN_PASS_EPOCH = 2_000_000

State = Dict[str, torch.Tensor]
Masks = Dict[str, torch.Tensor]


@dataclass(frozen=True)
class Variant:
    """One way to superpose a run's tickets (the ``superposer`` keys that do not change training).

    ``averaging``: ``cia`` | ``caa`` | ``cima`` (``beta``: CIMA's weight of the previous average); ``reprune``:
    ``global`` | ``layerwise``; ``count_normal_phase_ticket``: superpose the end-of-normal-phase model first (the
    reference code); ``prune_running_average``: prune the running average after each ticket (Alg. 1 literal);
    ``bn``: ``average`` (BN statistics averaged with the weights) | ``recompute`` (one pass over the training data).
    """

    averaging: str
    beta: float = 0.8
    reprune: str = "global"
    count_normal_phase_ticket: bool = False
    prune_running_average: bool = False
    bn: str = "average"

    def __post_init__(self) -> None:
        for key, value, allowed in (("averaging", self.averaging, AVERAGING), ("reprune", self.reprune, REPRUNE),
                                    ("bn", self.bn, ("average", "recompute"))):
            if value not in allowed:
                raise UserError(f"{key}={value!r} is not allowed: one of {', '.join(allowed)}")
        if not 0 <= self.beta < 1:
            raise UserError(f"beta={self.beta} is not allowed: must be in [0, 1)")

    @property
    def name(self) -> str:
        """File-name form, e.g. ``cima_b0.5_global_bn-average`` (+ ``_t0`` / ``_prune-running`` when set)."""
        parts = [self.averaging + (f"_b{self.beta:g}" if self.averaging == "cima" else ""), self.reprune,
                 f"bn-{self.bn}"]
        if self.count_normal_phase_ticket:
            parts.append("t0")
        if self.prune_running_average:
            parts.append("prune-running")
        return "_".join(parts)

    @classmethod
    def of(cls, node: Any, **overrides: Any) -> "Variant":
        """The variant of a ``superposer`` config node, with ``overrides`` (None values are ignored)."""
        fields = {k: getattr(node, k) for k in cls.__dataclass_fields__}
        fields.update({k: v for k, v in overrides.items() if v is not None})
        return cls(averaging=str(fields["averaging"]), beta=float(fields["beta"]), reprune=str(fields["reprune"]),
                   count_normal_phase_ticket=bool(fields["count_normal_phase_ticket"]),
                   prune_running_average=bool(fields["prune_running_average"]), bn=str(fields["bn"]))


# ---------------------------------------------------------------------------------------------- superposition
@torch.no_grad()
def superpose_into(averager: TicketAverager, state: Mapping[str, torch.Tensor], masks: Masks,
                   target_counts: Mapping[str, int], scope: str,
                   groups: Optional[Mapping[str, Tuple[int, int]]] = None) -> Masks:
    """Add one ticket to ``averager`` and re-prune: the ultimate ticket's masks after it (Alg. 1 lines 8-10).

    Args:
        state: the ticket's state dict; masks: its layer masks; target_counts: ones per layer to keep
            (their sum is the global budget); scope: ``global`` | ``layerwise`` | ``nm`` (``groups``: N:M layer ->
            ``(n, m)``, :func:`~sparse_exp.superposers.averaging.reprune`).
    """
    averager.add(state, masks)
    avg = averager.averaged()
    ultimate = reprune({n: avg[n] for n in masks}, dict(target_counts), scope, groups)
    if averager.prune_running_average:
        averager.prune_running_(ultimate)
    return ultimate


@torch.no_grad()
def superposed_state(averager: TicketAverager, masks: Masks) -> State:
    """The ultimate ticket's state dict: the superposition, zero off ``masks``."""
    avg = averager.averaged()
    for n, m in masks.items():
        avg[n] = avg[n] * m.to(avg[n].dtype)
    return avg


@torch.no_grad()
def load_ultimate(model: torch.nn.Module, state: State, bn: str, train_loader: Any) -> torch.nn.Module:
    """Load ``state`` into ``model`` (in place) and, with ``bn=recompute``, re-estimate its BN statistics with one
    pass over ``train_loader`` (epoch :data:`BN_PASS_EPOCH`). Returns ``model``.

    Raises:
        RuntimeError: ``state`` does not fit ``model`` (``load_state_dict``, strict).
    """
    model.load_state_dict(state)
    if bn == "recompute" and any(isinstance(m, torch.nn.modules.batchnorm._BatchNorm) for m in model.modules()):
        was_training = model.training
        update_bn(polled(train_loader.iterate(BN_PASS_EPOCH), "BN pass"), model)  # a stop leaves the pass
        model.train(was_training)
    return model


def split_metrics(model: torch.nn.Module, data: Any, num_classes: int) -> Dict[str, float]:
    """``test/*`` and ``val/*`` (acc %, nll, ece) of ``model``, as the run reports them."""
    out: Dict[str, float] = {}
    for split, loader in (("test", data.test), ("val", data.val)):
        for k, v in metrics_from_logits(*predict(model, loader), num_classes).items():
            out[f"{split}/{k}"] = v
    return out


def superpose_tickets(tickets: List[Dict[str, Any]], variant: Variant) -> Tuple[State, Masks]:
    """The ultimate ticket of ``variant`` from saved tickets (the callback's sequence of steps, offline).

    Args:
        tickets: :func:`load_tickets` output (index order); ticket 0 is used only with
            ``variant.count_normal_phase_ticket``.

    Returns:
        ``(state, masks)`` of the ultimate ticket.

    Raises:
        UserError: the variant counts the end-of-normal-phase ticket but the run did not save it; no ticket.
    """
    used = [t for t in tickets if t["index"] > 0 or variant.count_normal_phase_ticket]
    if variant.count_normal_phase_ticket and not any(t["index"] == 0 for t in tickets):
        raise UserError("the variant counts the end-of-normal-phase ticket, but the run saved no ticket_000.pt")
    if not any(t["index"] > 0 for t in used):
        raise UserError("the run saved no cheap ticket of a cycle (ticket_001.pt ...)")
    averager = TicketAverager(variant.averaging, variant.beta, variant.prune_running_average)
    masks: Masks = {}
    for t in used:
        masks = superpose_into(averager, t["state"], t["masks"], t["target_counts"], variant.reprune)
    return superposed_state(averager, masks), masks


# ---------------------------------------------------------------------------------------------- the store
def ticket_path(run_dir: Path, index: int) -> Path:
    """Where ticket ``index`` of ``run_dir`` is stored: ``<run>/tickets/ticket_<index:03d>.pt``."""
    return Path(run_dir) / TICKETS_DIR / f"ticket_{index:03d}.pt"


def save_ticket(run_dir: Path, index: int, step: int, state: Mapping[str, torch.Tensor], masks: Masks,
                target_counts: Mapping[str, int], metrics: Mapping[str, float], meta: Mapping[str, Any]) -> Path:
    """Write ticket ``index`` in the store format (module doc), atomically. Returns its path."""
    from sparse_exp.run.run_dir import _atomic_write_bytes

    path = ticket_path(run_dir, index)
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = {"format": TICKET_FORMAT, "index": int(index), "step": int(step),
               "state": {k: v.detach().cpu().clone() for k, v in state.items()},
               "masks": {k: v.detach().to("cpu", torch.bool) for k, v in masks.items()},
               "target_counts": {k: int(v) for k, v in target_counts.items()},
               "metrics": {k: float(v) for k, v in metrics.items()}, "meta": dict(meta)}
    _atomic_write_bytes(path, lambda f: torch.save(payload, f))
    return path


def ticket_meta(model: torch.nn.Module, target_counts: Mapping[str, int], total: int) -> Dict[str, Any]:
    """What a ticket records about the model it came from (``meta`` of the store format)."""
    return {"model_class": type(model).__name__, "num_params": sum(p.numel() for p in model.parameters()),
            "sparsity": 1.0 - sum(target_counts.values()) / total}


def load_tickets(run_dir: Path, model: Optional[torch.nn.Module] = None) -> List[Dict[str, Any]]:
    """The saved tickets of ``run_dir`` in index order.

    Args:
        model: the run's model; a ticket saved from another architecture is refused.

    Raises:
        UserError: no ``tickets/`` (the run did not save them), an unreadable file, another format, another model.
    """
    folder = Path(run_dir) / TICKETS_DIR
    files = sorted(folder.glob("ticket_*.pt"))
    if not files:
        raise UserError(f"{run_dir} has no saved cheap tickets ({folder}/ticket_*.pt): train the run with "
                        "superposer=sup_tickets superposer.save_tickets=true")
    out = []
    for f in files:
        try:
            t = torch.load(f, map_location="cpu", weights_only=True)
        except Exception as exc:  # unpickling can fail in many ways
            raise UserError(f"{f} is unreadable ({type(exc).__name__}); retrain the run to write it again") from None
        if not isinstance(t, dict) or t.get("format") != TICKET_FORMAT:
            raise UserError(f"{f} is not a saved ticket (format {TICKET_FORMAT})")
        if model is not None and (t["meta"].get("model_class") != type(model).__name__
                                  or set(t["state"]) != set(model.state_dict())):
            raise UserError(f"{f} is a ticket of another model ({t['meta'].get('model_class')}, "
                            f"{t['meta'].get('num_params')} parameters), not of this run's {type(model).__name__}")
        out.append(t)
    return sorted(out, key=lambda t: t["index"])


def write_superposed(run_dir: Path, variant: Variant, state: State, masks: Masks, result: Dict[str, Any]) -> Path:
    """Write ``superposed/<variant>.json`` (``result`` + the variant) and ``<variant>.pt``; returns the json path."""
    from sparse_exp.run.run_dir import _atomic_write_bytes

    folder = Path(run_dir) / SUPERPOSED_DIR
    folder.mkdir(parents=True, exist_ok=True)
    pt = {"format": SUPERPOSED_FORMAT, "variant": asdict(variant),
          "state": {k: v.detach().cpu() for k, v in state.items()},
          "masks": {k: v.detach().to("cpu", torch.bool) for k, v in masks.items()}}
    _atomic_write_bytes(folder / f"{variant.name}.pt", lambda f: torch.save(pt, f))
    doc = {"variant": variant.name, **asdict(variant), **result}
    path = folder / f"{variant.name}.json"
    _atomic_write_bytes(path, lambda f: f.write((json.dumps(doc, indent=1, sort_keys=True) + "\n").encode()))
    return path


def evaluate_variant(tickets: List[Dict[str, Any]], variant: Variant, model: torch.nn.Module, data: Any,
                     num_classes: int) -> Tuple[State, Masks, Dict[str, Any]]:
    """Superpose ``tickets`` with ``variant`` and evaluate the ultimate ticket.

    Args:
        model: a model of the run's architecture (copied; not changed); data: the run's loaders.

    Returns:
        ``(state, masks, result)``: ``result`` has ``test/*``, ``val/*``, ``sparsity/global``, ``tickets/count``
        and ``tickets/indices``.

    Raises:
        UserError: the tickets do not fit ``model`` (another architecture), or :func:`superpose_tickets`' errors.
    """
    poll("ticket evaluation")
    state, masks = superpose_tickets(tickets, variant)
    ultimate = copy.deepcopy(model)
    try:
        load_ultimate(ultimate, state, variant.bn, data.train)
    except RuntimeError as exc:
        raise UserError(f"the saved tickets do not fit the run's model: {str(exc).splitlines()[0][:200]}") from None
    used = [t["index"] for t in tickets if t["index"] > 0 or variant.count_normal_phase_ticket]
    total = sum(m.numel() for m in masks.values())
    ones = sum(int(m.count_nonzero()) for m in masks.values())
    result = {**split_metrics(ultimate, data, num_classes), "sparsity/global": 1.0 - ones / total,
              "tickets/count": len(used), "tickets/indices": used}
    return state, masks, result


def ticket_cost(superpose_seconds: List[float], ticket_seconds: List[float], epoch_s: float) -> Dict[str, float]:
    """The cost of one ticket, mean over the tickets: ``superpose/seconds`` and ``superpose/epoch_fraction``
    (superposition and re-pruning alone, in seconds and as a fraction of the mean epoch time ``epoch_s``),
    ``superpose/eval_seconds`` and ``superpose/eval_epoch_fraction`` (the same with the evaluations
    ``superposer.ticket_eval`` asks for; absent for a run resumed from a checkpoint without them)."""
    out: Dict[str, float] = {}
    for key, seconds in (("", superpose_seconds), ("eval_", ticket_seconds)):
        if seconds:
            mean_s = sum(seconds) / len(seconds)
            out[f"superpose/{key}seconds"] = mean_s
            out[f"superpose/{key}epoch_fraction"] = mean_s / epoch_s if epoch_s > 0 else float("nan")
    return out


def run_offline(run_dir: Path, variant_args: dict, device: Optional[str] = None) -> dict:
    """Superpose ``run_dir``'s saved tickets with the run's variant updated by ``variant_args``; write and return
    the result (``variant``, ``test/*``, ``val/*``, ``sparsity/global``, ``tickets/*``).

    Raises:
        UserError: see the module doc.
    """
    from sparse_exp.engine.build import build_run

    config = Path(run_dir) / "config.yaml"
    if not config.exists():
        raise UserError(f"{run_dir} is not a run directory (no config.yaml)")
    cfg = OmegaConf.load(config)
    if cfg.get("superposer", {}).get("name") != "sup_tickets":
        raise UserError(f"{run_dir} is not a Sup-tickets run (superposer={cfg.get('superposer', {}).get('name')}); "
                        "offline superposition needs superposer=sup_tickets superposer.save_tickets=true")
    if device is not None:
        cfg.device = device
    variant = Variant.of(cfg.superposer, **variant_args)
    load_tickets(run_dir)  # refuse a run without (readable) tickets before loading any data
    run = build_run(cfg)
    tickets = load_tickets(run_dir, run.model)
    state, masks, result = evaluate_variant(tickets, variant, run.model, run.data, run.data.spec.num_classes)
    write_superposed(run_dir, variant, state, masks, {**result, "source": "offline (python -m sparse_exp.superpose)"})
    return {"variant": variant.name, **result}
