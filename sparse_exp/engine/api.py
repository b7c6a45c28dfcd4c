"""The Python API: the CLI's sparse training inside one's own PyTorch loop (``sparse_exp.sparsify``).

    sparse = sparse_exp.sparsify(model, optimizer, total_steps=T, steps_per_epoch=S, sparsifier="rigl",
                                 sparsity=0.9, superposer="sup_tickets", tweaks=["label_smoothing"])
    for x, y in loader:                      # T steps, S per epoch
        loss = sparse.loss(model(x), y)      # the loss the tweaks make (plain cross-entropy without them)
        optimizer.zero_grad(); loss.backward()
        sparse.step()                        # optimizer step, masks, mask updates, LR, tickets, on_step_end
    reported = sparse.finalize(loader)       # the model the run reports (a superposer's, else ``model``)

The config is composed from the arguments as ``python -m sparse_exp.train <overrides>`` composes it, checked by the
same validation and pre-flight (one-line :class:`~sparse_exp.config.errors.ConfigError`), and the objects are the
CLI's (:class:`~sparse_exp.sparse.masking.Masking`, the registered sparsifier and callbacks in a
:class:`~sparse_exp.callbacks.protocol.CallbackList`, :func:`~sparse_exp.engine.build.lr_scheduler`); after each
step :func:`~sparse_exp.engine.step_end.end_step` runs, as in the CLI's loop. LR ownership, what is refused and
the equivalence with the CLI: ``docs/api.md``.
"""

from __future__ import annotations

from typing import Any, Dict, List, Optional, Sequence

import torch
import yaml
from hydra.errors import HydraException
from omegaconf import open_dict
from omegaconf.errors import OmegaConfBaseException
from torch import nn

from sparse_exp.callbacks.protocol import BaseCallback, CallbackList
from sparse_exp.config.compose import compose
from sparse_exp.config.errors import ConfigError, UserError, one_of, require
from sparse_exp.config.preflight import preflight
from sparse_exp.config.refusal import check_overrides, explain
from sparse_exp.config.validate import validate
from sparse_exp.engine.build import attach_sparsifier, build_callbacks, cross_entropy, lr_scheduler, score_batches
from sparse_exp.engine.context import RunPlan, RunState
from sparse_exp.engine.fast_step import current_lr, optimizer_state_dict
from sparse_exp.engine.seeding import rng_state, set_rng_state
from sparse_exp.engine.step_end import end_step
from sparse_exp.registry import TWEAKS
from sparse_exp.sparse.masking import Masking, dense_layer_names

#: ``lr=``: who sets the optimizer's LR each step
LR_MODES = ("config", "user")
#: top-level keys the caller's objects decide (the model's optimizer, the step counts, the loop's device)
CALLER_KEYS = ("epochs", "optimizer", "batch_size", "device", "fast", "dist")


def override_value(value: Any) -> str:
    """A Python value as Hydra override text: ``True`` -> ``true``, ``None`` -> ``null``, lists ``[a,b]``."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if value is None:
        return "null"
    if isinstance(value, (list, tuple)):
        return "[" + ",".join(override_value(v) for v in value) + "]"
    return repr(value) if isinstance(value, float) else str(value)


def api_overrides(sparsifier: Optional[str], sparsity: Optional[float], superposer: Optional[str],
                  tweaks: Optional[Sequence[str]], overrides: Sequence[str], options: Dict[str, Any]) -> List[str]:
    """The command-line overrides :func:`sparsify`'s arguments stand for (``a__b=v`` in ``options`` is ``a.b=v``).

    Raises:
        ConfigError: an override of a key the caller's objects decide (:data:`CALLER_KEYS`).
    """
    out = [f"{group}={value}" for group, value in (("sparsifier", sparsifier), ("superposer", superposer))
           if value is not None]
    if tweaks is not None:
        out.append(f"tweaks={override_value(list(tweaks))}")
    if sparsity is not None:
        out.append(f"sparsity={override_value(sparsity)}")
    out += [f"{k.replace('__', '.')}={override_value(v)}" for k, v in options.items()] + list(overrides)
    for item in out:
        key, _, value = item.lstrip("+~").partition("=")
        if key.split(".")[0].split("/")[0] in CALLER_KEYS:
            raise ConfigError(key, yaml.safe_load(value), "is decided by the objects given to sparsify() (the "
                              "optimizer, total_steps / steps_per_epoch, the model's device, your own step); leave it "
                              "out")
    return out


def compose_checked(overrides: Sequence[str]) -> Any:
    """The config of ``python -m sparse_exp.train <overrides>``; a composition error is one line.

    Raises:
        UserError: what the command line refuses (:func:`sparse_exp.config.refusal.check_overrides`, Hydra's
            composition errors as :func:`sparse_exp.config.refusal.explain` words them).
    """
    try:
        check_overrides(overrides)
        return compose(overrides)
    except (HydraException, OmegaConfBaseException) as exc:
        raise UserError(explain(exc, overrides)) from None


def _overrides(cb: Any, hook: str) -> bool:
    return getattr(type(cb), hook, None) is not getattr(BaseCallback, hook)


def refuse_unsupported(cfg: Any, callbacks: Sequence[Any], lr: str, data: Any) -> None:
    """What the API cannot do with a given model, optimizer and loop, refused in one line each.

    Raises:
        ConfigError: a callback that changes the network or adds parameter groups before the optimizer exists
            (``transform_model`` / ``param_groups``); with ``lr="user"``, a callback that sets the LR each step
            (``lr_schedule`` / ``lr_multiplier``); ``report`` other than ``last`` (needs the loop's validation);
            ``ticket_eval`` other than ``none`` without ``data`` (needs validation / test loaders).
    """
    tweaks = set(TWEAKS.chosen(cfg))
    for cb in callbacks:
        key, value = ("tweaks", f"[{cb.name}]") if cb.name in tweaks else ("superposer", cb.name)
        if _overrides(cb, "transform_model") or _overrides(cb, "param_groups"):
            raise ConfigError(key, value, "changes the network or adds parameter groups before the optimizer "
                              "exists (transform_model / param_groups), but sparsify() is given a model and optimizer "
                              "already built; train it with python -m sparse_exp.train, or leave it out")
        if lr == "user" and (_overrides(cb, "lr_schedule") or _overrides(cb, "lr_multiplier")):
            raise ConfigError(key, value, "owns the LR schedule (it sets the LR of each step, e.g. a cyclic phase), "
                              "so a scheduler of yours cannot drive it; use lr='config' (the config's schedule x the "
                              "callbacks' multipliers sets the optimizer's LR each step)")
    if cfg.report != "last":
        raise ConfigError("report", cfg.report, "needs a validation pass after every epoch, which the API's loop "
                          "does not run; allowed in the Python API: last")
    if data is None and cfg.superposer.get("ticket_eval", "none") != "none":
        raise ConfigError("superposer.ticket_eval", cfg.superposer.ticket_eval, "evaluates each ticket on "
                          "validation / test loaders, and sparsify() was given no data=; allowed without data: none")


def _needs_data(what: str) -> UserError:
    return UserError(f"this run needs its data ({what}): pass data= to sparse_exp.sparsify() (an object with train / "
                     "val / test loaders, e.g. sparse_exp.data.build_data's)")


class MissingLoader:
    """A loader :func:`sparsify` was not given: it may be passed around (e.g. to a BN pass that is not run), and
    refuses in one line when iterated."""

    def __init__(self, name: str) -> None:
        self.name = name

    def iterate(self, epoch: int, start: int = 0) -> Any:
        raise _needs_data(f"batches of state.data.{self.name}")

    def __iter__(self) -> Any:
        return self.iterate(0)

    def __getattr__(self, name: str) -> Any:
        if name.startswith("_"):
            raise AttributeError(name)
        raise _needs_data(f"state.data.{self.name}.{name}")


class NoData:
    """``state.data`` where :func:`sparsify` was given no ``data``: its loaders are :class:`MissingLoader`s, any
    other attribute (``spec``, sizes) refuses in one line."""

    def __getattr__(self, name: str) -> Any:
        if name in ("train", "val", "test"):
            return MissingLoader(name)
        if name.startswith("_"):
            raise AttributeError(name)
        raise _needs_data(f"state.data.{name}")


def no_batches(n: int) -> Any:
    """``state.batches`` without ``data``: a sparsifier scoring its initial mask on batches is refused in one line."""
    raise UserError(f"the initial mask is scored on {n} training batches (state.batches): pass data= to "
                    "sparse_exp.sparsify() (e.g. sparse_exp.data.build_data's bundle)")


class PlainLoader:
    """Any iterable of ``(x, y)`` batches as a package loader: ``iterate(epoch, start)`` moves them to ``device``
    (the epoch does not reorder them: the iterable's own order is used)."""

    def __init__(self, loader: Any, device: torch.device) -> None:
        self.loader, self.device = loader, device
        self.batch_size = getattr(loader, "batch_size", None)

    def iterate(self, epoch: int, start: int = 0) -> Any:
        for i, (x, y) in enumerate(self.loader):
            if i >= start:
                yield x.to(self.device), y.to(self.device)

    def __len__(self) -> int:
        return len(self.loader)


class WithTrain:
    """``data`` with its ``train`` loader replaced (:meth:`Sparsified.finalize`'s ``train_loader``)."""

    def __init__(self, data: Any, train: Any) -> None:
        self._data, self.train = data, train

    def __getattr__(self, name: str) -> Any:
        if name.startswith("_"):
            raise AttributeError(name)
        return getattr(self._data, name)


def as_loader(loader: Any, device: torch.device) -> Any:
    """A package loader (has ``iterate``) as it is, any other iterable of batches through :class:`PlainLoader`."""
    return loader if hasattr(loader, "iterate") else PlainLoader(loader, device)


class DataView:
    """``state.data`` for :func:`sparsify`'s ``data``: its ``train`` / ``val`` / ``test`` through :func:`as_loader`
    (a missing one is a :class:`MissingLoader`), anything else (``spec``, sizes) read from ``data``."""

    def __init__(self, data: Any, device: torch.device) -> None:
        self._data = data
        for name in ("train", "val", "test"):
            loader = getattr(data, name, None)
            setattr(self, name, MissingLoader(name) if loader is None else as_loader(loader, device))

    def __getattr__(self, name: str) -> Any:
        if name.startswith("_"):
            raise AttributeError(name)
        return getattr(self._data, name)


class Sparsified:
    """A model and optimizer under a sparse-training config (built by :func:`sparsify`).

    Attributes:
        state: the run's :class:`~sparse_exp.engine.context.RunState` (model, masking, optimizer, sparsifier,
            scheduler, step / epoch counters), as every plug-in sees it.
        callbacks: the config's tweaks and superposer (:class:`~sparse_exp.callbacks.protocol.CallbackList`).
        lr: ``"config"`` or ``"user"`` (who sets the LR; ``docs/api.md``).
        rows: one dict per finished epoch (the callbacks' keys, sparsity, ITOP rate, LR).
        reported: after :meth:`finalize`: ``"final"`` or the reporting callback's label (e.g. ``"ultimate"``).
        reported_masks: after :meth:`finalize`: the reported model's masks ``{param name: bool tensor}``.
    """

    def __init__(self, state: RunState, callbacks: CallbackList, loss_fn: Any, lr: str) -> None:
        self.state, self.callbacks, self._loss, self.lr = state, callbacks, loss_fn, lr
        self.rows: List[Dict[str, Any]] = []
        self.reported: Optional[str] = None
        self.reported_masks: Optional[Dict[str, torch.Tensor]] = None

    cfg = property(lambda self: self.state.cfg, doc="the composed, validated config")
    model = property(lambda self: self.state.model, doc="the network (the caller's, trained in place)")
    optimizer = property(lambda self: self.state.optimizer, doc="the caller's optimizer")
    masking = property(lambda self: self.state.masking, doc="the masks of the prunable weights")
    sparsifier = property(lambda self: self.state.sparsifier, doc="chooses and evolves the masks")
    total_steps = property(lambda self: self.state.total_steps, doc="optimizer steps of the whole run")
    steps_per_epoch = property(lambda self: self.state.steps_per_epoch, doc="steps per epoch")
    global_step = property(lambda self: self.state.step, doc="optimizer steps taken")
    epoch = property(lambda self: self.state.epoch, doc="epochs finished")
    batch_in_epoch = property(lambda self: self.state.step % self.state.steps_per_epoch,
                              doc="steps taken in the current epoch (where a resumed loop starts)")

    def loss(self, logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """The training loss of ``logits`` ``(N, C)`` against labels ``(N,)``, mean in nats: the tweaks' wrapped
        loss (e.g. label smoothing inside its window), else plain cross-entropy."""
        return self._loss(logits, y)

    def step(self) -> bool:
        """After ``loss.backward()``: ``optimizer.step()``, mask application, then
        :func:`~sparse_exp.engine.step_end.end_step` (the sparsifier's update, which reads this step's gradients;
        the callbacks' ``on_step_end``, e.g. exploration and ticket collection; the LR of the next step with
        ``lr="config"``); at the end of each epoch the sparsifier's and callbacks' epoch hooks. Returns whether the
        masks changed. Zero the gradients before the next backward as usual.

        Raises:
            RuntimeError: all ``total_steps`` steps were taken already.
        """
        s = self.state
        if s.step >= s.total_steps:
            raise RuntimeError(f"all total_steps={s.total_steps} steps were taken; call finalize()")
        s.optimizer.step()
        s.masking.apply_(s.optimizer)
        changed = end_step(s, self.callbacks, check_invariants=bool(s.cfg.check_invariants))
        if s.step % s.steps_per_epoch == 0:
            self._end_epoch()
        return changed

    def _end_epoch(self) -> None:
        s = self.state
        s.epoch += 1
        s.sparsifier.on_epoch_end(s.epoch)
        row = {"epoch": s.epoch, "step": s.step, "phase": "main", "lr": current_lr(s.optimizer),
               "sparsity/global": s.masking.global_sparsity(), "itop_rate": s.masking.itop_rate()}
        self.callbacks.on_epoch_end(s, row)
        self.rows.append(row)
        if s.epoch < s.epochs:
            self.callbacks.on_epoch_start(s)

    def finalize(self, train_loader: Any = None) -> nn.Module:
        """The model the run reports, after all ``total_steps`` steps: a callback's (Sup-tickets: the ultimate
        ticket, superposed, re-pruned, BN statistics handled by ``superposer.bn``), else the trained ``model``.

        Args:
            train_loader: training batches ``(x, y)`` for a BN re-estimation pass (a package loader or any
                iterable; needed by ``superposer.bn=recompute`` on a network with BatchNorm).

        Raises:
            RuntimeError: fewer than ``total_steps`` steps were taken.
        """
        s = self.state
        if s.step < s.total_steps:
            raise RuntimeError(f"finalize() after {s.step} of total_steps={s.total_steps} steps; take them all first")
        if train_loader is not None:
            s.data = WithTrain(s.data, as_loader(train_loader, s.device))
        masks = self.callbacks.final_masks(s)
        s.reported_masks = masks[1] if masks is not None else None
        self.reported_masks = s.reported_masks if masks is not None else dict(s.masking.masks)
        got = self.callbacks.reported_model(s)
        self.reported = got[0] if got is not None else "final"
        return got[1] if got is not None else s.model

    def state_dict(self) -> Dict[str, Any]:
        """Everything a bitwise resume needs (as the CLI's ``checkpoint.pt``): model, optimizer, LR schedule, masks,
        sparsifier, each callback's state, the global RNG states, the step / epoch counters. It holds the live
        tensors: ``torch.save`` it (or deep-copy it) before training on."""
        s = self.state
        return {"model": s.model.state_dict(), "optimizer": optimizer_state_dict(s.optimizer),
                "scheduler": None if s.scheduler is None else s.scheduler.state_dict(),
                "masking": s.masking.state_dict(), "sparsifier": s.sparsifier.state_dict(),
                "callbacks": self.callbacks.state_dict(), "rng": rng_state(), "epoch": s.epoch, "step": s.step}

    def load_state_dict(self, state: Dict[str, Any]) -> None:
        """Restore :meth:`state_dict`'s output into a fresh :func:`sparsify` of the same config (the callbacks first,
        as the CLI's resume does); the loop then continues at epoch :attr:`epoch`, batch :attr:`batch_in_epoch`.
        The global RNG states are restored too."""
        s = self.state
        self.callbacks.load_state_dict(state["callbacks"], s.device)
        s.model.load_state_dict(state["model"])
        s.optimizer.load_state_dict(state["optimizer"])
        if s.scheduler is not None and state["scheduler"] is not None:
            s.scheduler.load_state_dict(state["scheduler"])
        s.masking.load_state_dict(state["masking"])
        s.sparsifier.load_state_dict(state["sparsifier"])
        s.masking.invalidate_buffer_cache()
        s.epoch, s.step = state["epoch"], state["step"]
        if s.epoch < s.epochs:  # the epoch's start hooks, as a resumed CLI epoch runs them; then the saved RNG
            self.callbacks.on_epoch_start(s)
        set_rng_state(state["rng"])


def sparsify(model: nn.Module, optimizer: torch.optim.Optimizer, total_steps: int, *,
             steps_per_epoch: Optional[int] = None, sparsifier: Optional[str] = None,
             sparsity: Optional[float] = None, superposer: Optional[str] = None,
             tweaks: Optional[Sequence[str]] = None, lr: str = "config", data: Any = None,
             overrides: Sequence[str] = (), **options: Any) -> Sparsified:
    """Put ``model`` and ``optimizer`` under the config ``python -m sparse_exp.train <overrides>`` would run.

    Args:
        model: the network (any ``nn.Module``; its conv / linear weights are prunable by the zoo's rule).
        optimizer: an optimizer over the model's parameters; its first group's LR is the config's ``optimizer.lr``.
        total_steps: optimizer steps the loop will take (``epochs = total_steps / steps_per_epoch``).
        steps_per_epoch: steps per epoch (default ``total_steps``: one epoch); epoch-based options count in these.
        sparsifier / sparsity / superposer / tweaks: the config groups and key (None: the config's default).
        lr: ``"config"``: the config's ``schedule`` x the callbacks' multipliers sets the LR each step;
            ``"user"``: your scheduler does (a method that owns the LR is refused).
        data: train / val / test loaders (``sparse_exp.data.build_data``'s bundle) for what needs data during
            training: pruning-at-init scores, ticket evaluation, GradInit. Optional.
        overrides: further overrides, e.g. ``["sparsifier.delta_t=50"]``; ``**options``: the same as keywords,
            ``sparsifier__delta_t=50``.

    Raises:
        UserError / ConfigError: one line, as the CLI refuses (validation, pre-flight) plus what the API cannot
            do (:func:`refuse_unsupported`, :data:`CALLER_KEYS`, LR phases before the main phase).
    """
    one_of("lr", lr, set(LR_MODES))
    total = int(total_steps)
    per_epoch = total if steps_per_epoch is None else int(steps_per_epoch)
    require(total >= 1, "total_steps", total, "must be >= 1")
    require(1 <= per_epoch and total % per_epoch == 0, "steps_per_epoch", per_epoch,
            f"must divide total_steps={total} (the run has whole epochs)")
    group0 = optimizer.param_groups[0]
    base_lr = float(group0.get("initial_lr", group0["lr"]))
    args = api_overrides(sparsifier, sparsity, superposer, tweaks, overrides, options)
    cfg = compose_checked(args + [f"epochs={total // per_epoch}", f"optimizer.lr={base_lr!r}"])
    if data is None and "ticket_eval" in cfg.superposer and not any(a.startswith("superposer.ticket_eval=")
                                                                      for a in args):
        with open_dict(cfg):  # evaluation of tickets needs loaders; it never changes the result (docs/api.md)
            cfg.superposer.ticket_eval = "none"
    validate(cfg)
    callbacks = build_callbacks(cfg)
    refuse_unsupported(cfg, callbacks, lr, data)
    masking = Masking(model)
    held = {id(p) for g in optimizer.param_groups for p in g["params"]}
    missing = [n for n, p in masking.params.items() if id(p) not in held]
    if missing:
        raise UserError(f"the optimizer does not hold the prunable weights {missing[:3]}: build it over "
                        "model.parameters() before sparse_exp.sparsify()")
    dist = cfg.distribution
    plan = RunPlan(cfg=cfg, spec=getattr(data, "spec", None), num_train=getattr(data, "num_train", 0),
                   num_val=getattr(data, "num_val", 0), num_test=getattr(data, "num_test", 0),
                   steps_per_epoch=per_epoch, total_steps=total, shapes=dict(masking.shapes),
                   dense_layers=tuple(dense_layer_names(masking, dist)))
    preflight(cfg, local=False, plan=plan)
    hooks = CallbackList(callbacks)
    device = next(model.parameters()).device
    state = RunState(plan=plan, model=model, masking=masking, optimizer=optimizer, device=device,
                     data=NoData() if data is None else DataView(data, device),
                     score_loss=hooks.wrap_score_loss(cross_entropy))
    state.batches = no_batches if data is None else score_batches(state.data.train)
    loss_fn = hooks.wrap_loss(cross_entropy)
    phases = attach_sparsifier(state, hooks)
    if len(phases) > 1:
        raise ConfigError("sparsifier", cfg.sparsifier.name, f"trains in LR phases before the main phase "
                          f"({[name for name, _ in phases[:-1]]}), which the API's single loop does not drive; "
                          "train it with python -m sparse_exp.train")
    state.scheduler = lr_scheduler(state, hooks, phases) if lr == "config" else None
    hooks.before_init_masks(state)
    state.sparsifier.init_masks()
    hooks.on_epoch_start(state)
    return Sparsified(state, hooks, loss_fn, lr)
