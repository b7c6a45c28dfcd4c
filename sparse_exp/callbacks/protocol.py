"""The callback protocol: how superposers (Sup-tickets), training tweaks and accounting plug into a run.

Everything method-specific except the sparse topology (the sparsifier's job) is a :class:`Callback`, built by
:func:`sparse_exp.engine.build.build_run` and called by :mod:`sparse_exp.engine.loop` at fixed points:

=====================  =====================================================================  ==========
hook                   when / what                                                            returns
=====================  =====================================================================  ==========
``transform_model``    once, after the model is built, before the optimizer and the masks     a model
``param_groups``       once, before the optimizer: extra groups (claimed params leave group 0) groups
``wrap_loss``          once: wrap or replace the training loss ``loss(logits, y) -> scalar``  a loss
``wrap_score_loss``    once: wrap the loss of pruning-at-init scores (plain CE by default)    a loss
``lr_schedule``        once: replace the main phase's LR multiplier (``base(n)`` = base        fn or None
                       schedule over ``n`` steps); at most one callback may
``lr_multiplier``      per step: a factor multiplied into the LR                              float
``setup``              once, after the sparsifier is built (before masks are initialised)      --
``before_init_masks``  once, on a fresh start only, before the sparsifier's initial masks     --
``allow_mask_update``  per main-phase step: may veto the sparsifier's update this step         bool
``on_epoch_start``     before each training epoch                                             --
``on_step_end``        after each optimizer step, mask application and sparsifier update      --
``on_epoch_end``       after each epoch's validation; may add keys to the epoch's metrics row  --
``final_masks``        at the end: the masks of the model the run reports, if not the         (label,
                       individual model's (a superposer's superposed model)                      masks)
``reported_model``     at the end, after ``final_metrics``: the model the run reports, if not  (which,
                       the individual model (``which``: its label; ``masks``, optional: its    model[,
                       masks if not ``final_masks``'); written to ``model.pt``                 masks])
``final_metrics``      at the end: keys for ``summary.json`` (may override the individual      dict
                       model's ``test/*`` / ``val/*``)
``summary_lines``      at the end: lines printed above the run's result table                 lines
``plot_marks``         for ``curves.png``: ``(global step, label)`` events worth marking on     list
                       the LR curve (a superposer's phase start and ticket points)
``state_dict`` /       checkpointing: everything needed to resume bitwise                     dict
``load_state_dict``
=====================  =====================================================================  ==========

:class:`CallbackList` calls each hook in ascending ``priority`` (:attr:`BaseCallback.priority`; ties: the config's
order) and folds ``lr_schedule`` and every ``lr_multiplier`` into the main phase's multiplier. ``on_epoch_end`` sets
``row["report/eligible"] = False`` for an epoch whose network is not the final architecture (``report=best_val``
skips it). Callbacks see the :class:`~sparse_exp.engine.context.RunState`, never the loop. Subclass
:class:`BaseCallback` (every hook a no-op); worked example: ``docs/architecture.md``.
"""

from __future__ import annotations

from typing import Any, Callable, Dict, Iterable, List, Optional, Protocol, Tuple, Union, runtime_checkable

import torch
from torch import nn

from sparse_exp.engine.context import LossFn, RunState

#: ``factor(step) -> LR multiplier`` for the 0-based optimizer step (``LambdaLR`` convention)
LRFactor = Callable[[int], float]
Masks = Dict[str, torch.Tensor]
#: ``reported_model``'s answer: ``(which, model)`` or ``(which, model, masks)``
Reported = Union[Tuple[str, nn.Module], Tuple[str, nn.Module, Masks]]


@runtime_checkable
class Callback(Protocol):
    """The hooks a superposer or training tweak may implement (all of them; see the module table)."""

    name: str
    priority: int

    def transform_model(self, model: nn.Module) -> nn.Module: ...
    def param_groups(self, model: nn.Module) -> List[Dict[str, Any]]: ...
    def wrap_loss(self, loss: LossFn) -> LossFn: ...
    def wrap_score_loss(self, loss: LossFn) -> LossFn: ...
    def lr_schedule(self, base: Callable[[int], LRFactor], total_steps: int) -> Optional[LRFactor]: ...
    def lr_multiplier(self, step: int) -> float: ...
    def setup(self, state: RunState) -> None: ...
    def before_init_masks(self, state: RunState) -> None: ...
    def allow_mask_update(self, main_step: int) -> bool: ...
    def on_epoch_start(self, state: RunState) -> None: ...
    def on_step_end(self, state: RunState, mask_changed: bool) -> None: ...
    def on_epoch_end(self, state: RunState, row: Dict[str, Any]) -> None: ...
    def final_masks(self, state: RunState) -> Optional[Tuple[str, Masks]]: ...
    def reported_model(self, state: RunState) -> Optional[Reported]: ...
    def final_metrics(self, state: RunState, individual: Dict[str, Any]) -> Dict[str, Any]: ...
    def summary_lines(self, summary: Dict[str, Any]) -> List[str]: ...
    def plot_marks(self, state: RunState) -> List[Tuple[int, str]]: ...
    def state_dict(self) -> Dict[str, Any]: ...
    def load_state_dict(self, state: Dict[str, Any], device: torch.device) -> None: ...


class BaseCallback:
    """Every hook of :class:`Callback` as a no-op; subclass and override what you need."""

    name = "callback"
    #: call order: :class:`CallbackList` calls lower priorities first; equal priorities keep the order they
    #: were given in (the config's order). Built-in: the tweaks 10-40 (``sparse_exp.tweaks``), superposers 100
    #: (this default), ``report=best_val`` 900, the FLOP meter 1000 (last).
    priority: int = 100

    def transform_model(self, model: nn.Module) -> nn.Module:
        return model

    def param_groups(self, model: nn.Module) -> List[Dict[str, Any]]:
        return []

    def wrap_loss(self, loss: LossFn) -> LossFn:
        return loss

    def wrap_score_loss(self, loss: LossFn) -> LossFn:
        return loss

    def lr_schedule(self, base: Callable[[int], LRFactor], total_steps: int) -> Optional[LRFactor]:
        return None

    def lr_multiplier(self, step: int) -> float:
        return 1.0

    def setup(self, state: RunState) -> None:
        pass

    def before_init_masks(self, state: RunState) -> None:
        pass

    def allow_mask_update(self, main_step: int) -> bool:
        return True

    def on_epoch_start(self, state: RunState) -> None:
        pass

    def on_step_end(self, state: RunState, mask_changed: bool) -> None:
        pass

    def on_epoch_end(self, state: RunState, row: Dict[str, Any]) -> None:
        pass

    def final_masks(self, state: RunState) -> Optional[Tuple[str, Masks]]:
        return None

    def reported_model(self, state: RunState) -> Optional[Reported]:
        return None

    def final_metrics(self, state: RunState, individual: Dict[str, Any]) -> Dict[str, Any]:
        return {}

    def summary_lines(self, summary: Dict[str, Any]) -> List[str]:
        return []

    def plot_marks(self, state: RunState) -> List[Tuple[int, str]]:
        return []

    def state_dict(self) -> Dict[str, Any]:
        return {}

    def load_state_dict(self, state: Dict[str, Any], device: torch.device) -> None:
        pass


class CallbackList:
    """Calls every callback's hook in priority order and combines the results (see the module table).

    Args:
        callbacks: the run's callbacks; their ``name`` keys their checkpoint state, so names are unique.
            They are called in ascending ``priority`` (:attr:`BaseCallback.priority`); equal priorities
            keep the order given.

    Raises:
        ValueError: two callbacks with the same name.
    """

    def __init__(self, callbacks: Iterable[Any]) -> None:
        self.callbacks: List[Any] = sorted(callbacks, key=lambda cb: cb.priority)  # stable: ties keep order
        names = [cb.name for cb in self.callbacks]
        if len(set(names)) != len(names):
            raise ValueError(f"callback names must be unique, got {names}")

    def __iter__(self):
        return iter(self.callbacks)

    def transform_model(self, model: nn.Module) -> nn.Module:
        for cb in self.callbacks:
            model = cb.transform_model(model)
        return model

    def param_groups(self, model: nn.Module) -> List[Dict[str, Any]]:
        return [g for cb in self.callbacks for g in cb.param_groups(model)]

    def wrap_loss(self, loss: LossFn) -> LossFn:
        for cb in self.callbacks:
            loss = cb.wrap_loss(loss)
        return loss

    def wrap_score_loss(self, loss: LossFn) -> LossFn:
        for cb in self.callbacks:
            loss = cb.wrap_score_loss(loss)
        return loss

    def lr_schedule(self, base: Callable[[int], LRFactor], total_steps: int) -> LRFactor:
        """The main phase's LR multiplier: a callback's ``lr_schedule`` (at most one), else
        ``base(total_steps)``; times every callback's ``lr_multiplier`` if any overrides it.

        Raises:
            ValueError: two callbacks both replace the schedule.
        """
        owners = [(cb.name, f) for cb in self.callbacks if (f := cb.lr_schedule(base, total_steps)) is not None]
        if len(owners) > 1:
            raise ValueError(f"callbacks {[n for n, _ in owners]} both replace the LR schedule; at most one may")
        factor = owners[0][1] if owners else base(total_steps)
        scaling = [cb for cb in self.callbacks if type(cb).lr_multiplier is not BaseCallback.lr_multiplier]
        if not scaling:
            return factor

        def scaled(step: int) -> float:
            out = factor(step)
            for cb in scaling:
                out *= cb.lr_multiplier(step)
            return out

        return scaled

    def setup(self, state: RunState) -> None:
        for cb in self.callbacks:
            cb.setup(state)

    def before_init_masks(self, state: RunState) -> None:
        for cb in self.callbacks:
            cb.before_init_masks(state)

    def allow_mask_update(self, main_step: int) -> bool:
        return all(cb.allow_mask_update(main_step) for cb in self.callbacks)

    def on_epoch_start(self, state: RunState) -> None:
        for cb in self.callbacks:
            cb.on_epoch_start(state)

    def on_step_end(self, state: RunState, mask_changed: bool) -> None:
        for cb in self.callbacks:
            cb.on_step_end(state, mask_changed)

    def on_epoch_end(self, state: RunState, row: Dict[str, Any]) -> None:
        for cb in self.callbacks:
            cb.on_epoch_end(state, row)

    def final_masks(self, state: RunState) -> Optional[Tuple[str, Masks]]:
        """The last callback's answer that is not None (the reported model's label and masks)."""
        out = None
        for cb in self.callbacks:
            got = cb.final_masks(state)
            out = got if got is not None else out
        return out

    def reported_model(self, state: RunState) -> Optional[Reported]:
        """The last callback's answer that is not None (``report=best_val`` is built last, so it wins over a
        superposer's model); None: the run reports its individual (final) model."""
        out = None
        for cb in self.callbacks:
            got = cb.reported_model(state)
            out = got if got is not None else out
        return out

    def final_metrics(self, state: RunState, individual: Dict[str, Any]) -> Dict[str, Any]:
        """Each callback's keys, in order; a later callback sees (and may override) earlier ones."""
        out: Dict[str, Any] = {}
        for cb in self.callbacks:
            out.update(cb.final_metrics(state, {**individual, **out}))
        return out

    def summary_lines(self, summary: Dict[str, Any]) -> List[str]:
        return [line for cb in self.callbacks for line in cb.summary_lines(summary)]

    def plot_marks(self, state: RunState) -> List[Tuple[int, str]]:
        """Every callback's marks, sorted by step."""
        return sorted(m for cb in self.callbacks for m in cb.plot_marks(state))

    def state_dict(self) -> Dict[str, Dict[str, Any]]:
        return {cb.name: cb.state_dict() for cb in self.callbacks}

    def load_state_dict(self, state: Dict[str, Dict[str, Any]], device: torch.device) -> None:
        """Restore each callback from ``state[name]`` (a callback absent from the checkpoint keeps its
        fresh state)."""
        for cb in self.callbacks:
            if cb.name in state:
                cb.load_state_dict(state[cb.name], device)

