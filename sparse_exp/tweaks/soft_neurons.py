"""Ghost soft neurons (GSN): every ReLU becomes a smooth activation, for the whole run or early only.

Source: Jaiswal et al., ICML 2022; reference code VITA-Group/ToST replaces every ``nn.ReLU`` by Swish (or mish /
gelu / elu / pswish / lisht / softplus) for the whole run: ``schedule=constant``, the default. ``step``: soft until
main-phase epoch ``end_epoch``, then the original ReLU modules; ``linear_blend``: ``(1 - lambda) * soft(x) + lambda *
relu(x)``, ``lambda`` 0 -> 1 per step from ``start_epoch`` to ``end_epoch``, then the ReLU modules (a bit-identical
final network); both require ``end_epoch``. ``pswish`` is ``x * sigmoid(beta * x)`` (code: ``beta = 2``).
Pruning-at-init scores see the ReLU network (``scores_network=plain``, as the code; ``trained``: the soft one;
recorded as ``tweaks/soft_neurons/scores_network``). A model applying ReLU functionally (``F.relu`` in ``forward``) is
refused before the run (:func:`functional_relu_calls`). Example: ``tweaks=[soft_neurons]
tweaks.soft_neurons.schedule=linear_blend tweaks.soft_neurons.end_epoch=10``. Rationale: ``docs/design-notes.md``.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any, Callable, Dict, List, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import nn
from torch.overrides import TorchFunctionMode

from sparse_exp.callbacks.protocol import BaseCallback, RunState
from sparse_exp.config.errors import ConfigError, one_of, require
from sparse_exp.registry import TWEAKS
from sparse_exp.tweaks.tweak import check_settled_before_cycles, check_window, ramp, schedule_epoch


def _pswish(x: torch.Tensor, beta: float) -> torch.Tensor:
    return x * torch.sigmoid(beta * x)


#: activation name -> ``fn(x, beta)`` (``beta`` is used by ``pswish`` only)
ACTIVATIONS: Dict[str, Callable[[torch.Tensor, float], torch.Tensor]] = {
    "swish": lambda x, beta: F.silu(x),
    "mish": lambda x, beta: F.mish(x),
    "gelu": lambda x, beta: F.gelu(x),
    "elu": lambda x, beta: F.elu(x),
    "softplus": lambda x, beta: F.softplus(x),
    "pswish": _pswish,
    "lisht": lambda x, beta: x * torch.tanh(x),
}
SCHEDULES = ("constant", "step", "linear_blend")


@dataclass
class SoftNeuronsConfig:
    """``tweaks.soft_neurons``: ``activation`` (one of :data:`ACTIVATIONS`), ``beta`` (pswish),
    ``schedule`` (module doc), ``start_epoch`` / ``end_epoch`` in main-phase epochs, ``scores_network``:
    ``plain`` (pruning-at-init scores see the ReLU network, as the code) | ``trained`` (the soft one)."""

    activation: str = "swish"
    beta: float = 2.0
    schedule: str = "constant"
    start_epoch: float = 0.0
    end_epoch: Optional[float] = None
    scores_network: str = "plain"


class SoftNeuron(nn.Module):
    """A smooth activation standing in for a ReLU module: ``(1 - blend) * soft(x) + blend * relu(x)``.

    Input and output: any shape, elementwise. ``blend`` (lambda, a Python float in [0, 1]) is set by the
    tweak's schedule; at 0 only ``soft`` runs. The replaced ReLU module is kept (not registered, so the
    state dict is unchanged) and put back by :func:`restore_relus`.
    """

    def __init__(self, activation: str, beta: float, original: nn.Module) -> None:
        super().__init__()
        self.activation, self.beta, self.blend = activation, float(beta), 0.0
        self._fn = ACTIVATIONS[activation]
        object.__setattr__(self, "_original", original)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        soft = self._fn(x, self.beta)
        if self.blend == 0.0:
            return soft
        return (1.0 - self.blend) * soft + self.blend * F.relu(x)

    def extra_repr(self) -> str:
        return f"{self.activation}, beta={self.beta}, blend={self.blend}"


def _children_where(model: nn.Module, cond: Callable[[nn.Module], bool]) -> List[Tuple[nn.Module, str, nn.Module]]:
    return [(parent, name, child) for parent in model.modules() for name, child in parent.named_children()
            if cond(child)]


def swap_relus(model: nn.Module, activation: str, beta: float) -> List[SoftNeuron]:
    """Replace every ``nn.ReLU`` module of ``model`` by a :class:`SoftNeuron` in place; returns them
    (a ReLU module used several times in ``forward`` stays one module, so every call is converted)."""
    swapped = []
    for parent, name, child in _children_where(model, lambda m: type(m) is nn.ReLU):
        soft = SoftNeuron(activation, beta, child)
        setattr(parent, name, soft)
        swapped.append(soft)
    return swapped


def reinstall(model: nn.Module, modules: List[SoftNeuron]) -> int:
    """Put ``modules`` back in place of the ReLU modules they replaced (after :func:`restore_relus`)."""
    by_original = {id(m._original): m for m in modules}
    found = _children_where(model, lambda m: id(m) in by_original)
    for parent, name, child in found:
        setattr(parent, name, by_original[id(child)])
    return len(found)


def restore_relus(model: nn.Module) -> int:
    """Put the original ReLU module back in place of every :class:`SoftNeuron`; returns how many."""
    found = _children_where(model, lambda m: isinstance(m, SoftNeuron))
    for parent, name, child in found:
        setattr(parent, name, child._original)
    return len(found)


_RELU_FUNCS = {F.relu, F.relu_, torch.relu, torch.relu_, torch.Tensor.relu, torch.Tensor.relu_, F.relu6,
               F.hardtanh, F.hardtanh_}


class _CountRelu(TorchFunctionMode):
    def __init__(self) -> None:
        super().__init__()
        self.calls = 0

    def __torch_function__(self, func, types, args=(), kwargs=None):
        if func in _RELU_FUNCS:
            self.calls += 1
        return func(*args, **(kwargs or {}))


class _Probe(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x


def functional_relu_calls(model: nn.Module, input_shape: Tuple[int, int, int]) -> int:
    """ReLU calls in one forward of ``model`` (on the ``meta`` device, batch 2) that do not go through
    an ``nn.ReLU`` module, i.e. that swapping modules would miss (``F.relu``, ``torch.relu``,
    ``Tensor.relu``, ``relu6`` / ``hardtanh`` and their in-place forms)."""
    probe = copy.deepcopy(model).to("meta").train()
    for parent, name, _ in _children_where(probe, lambda m: type(m) is nn.ReLU or isinstance(m, SoftNeuron)):
        setattr(parent, name, _Probe())
    counter = _CountRelu()
    with torch.no_grad(), counter:
        probe(torch.empty(2, *input_shape, device="meta"))
    return counter.calls


def count_activation_calls(model: nn.Module, input_shape: Tuple[int, int, int]) -> int:
    """Calls of :class:`SoftNeuron` modules in one forward of ``model`` (on ``meta``, batch 2)."""
    probe = copy.deepcopy(model).to("meta").train()
    calls = [0]
    for m in probe.modules():
        if isinstance(m, SoftNeuron):
            m.register_forward_hook(lambda *_: calls.__setitem__(0, calls[0] + 1))
    with torch.no_grad():
        probe(torch.empty(2, *input_shape, device="meta"))
    return calls[0]


def settles_at(node: Any) -> Optional[float]:
    """Main-phase epoch from which the network no longer changes (None: never, ``constant``)."""
    return None if node.schedule == "constant" else float(node.end_epoch)


def check_soft_neurons(cfg: Any) -> None:
    """Activation, beta and the schedule's window (``end_epoch`` required by ``step`` / ``linear_blend``)."""
    node = cfg.tweaks.soft_neurons
    one_of("tweaks.soft_neurons.activation", node.activation, set(ACTIVATIONS))
    require(node.beta > 0, "tweaks.soft_neurons.beta", node.beta, "must be > 0")
    one_of("tweaks.soft_neurons.schedule", node.schedule, set(SCHEDULES))
    one_of("tweaks.soft_neurons.scores_network", node.scores_network, {"plain", "trained"})
    if node.schedule != "constant":
        check_window("tweaks.soft_neurons", node.start_epoch, node.end_epoch, int(cfg.epochs), end_required=True)


def preflight_soft_neurons(plan: Any) -> None:
    """The model has ReLU modules and no functional ReLU call (built on ``meta``); with Sup-tickets the
    schedule ends before the first ticket."""
    from sparse_exp.models import build_configured

    cfg, spec = plan.cfg, plan.spec
    with torch.device("meta"):
        model = build_configured(cfg.model, spec)
    shape = (spec.in_channels, spec.image_size, spec.image_size)
    functional = functional_relu_calls(model, shape)
    if functional:
        raise ConfigError("tweaks", "[soft_neurons]", f"model={cfg.model.name} applies ReLU functionally "
                          f"({functional} calls per forward outside nn.ReLU modules), so swapping modules would "
                          "leave part of the network ReLU; allowed: models whose activations are nn.ReLU modules")
    if not swap_relus(model, "swish", 1.0):
        acts = sorted({type(m).__name__ for m in model.modules() if type(m).__module__ == nn.GELU.__module__})
        raise ConfigError("tweaks", "[soft_neurons]", f"model={cfg.model.name} has no nn.ReLU module to soften "
                          f"(its activation modules: {', '.join(acts) or 'none'}); allowed: models with ReLU")
    node = cfg.tweaks.soft_neurons
    check_settled_before_cycles(cfg, plan, settles_at(node), "tweaks.soft_neurons.end_epoch",
                                "the activation function")


def soft_neurons_step_varies(cfg: Any) -> Optional[str]:
    """Why the train step changes during training with this config (a non-constant schedule), else None."""
    return None if cfg.schedule == "constant" else f"schedule={cfg.schedule} changes the activations"


@TWEAKS.register("soft_neurons", schema=SoftNeuronsConfig, checks=(check_soft_neurons,),
                 preflight=(preflight_soft_neurons,),
                 queries={"step_varies": soft_neurons_step_varies})
class SoftNeurons(BaseCallback):
    """The GSN tweak as a callback (module doc). ``blend`` follows the schedule step by step; when it
    reaches 1 (``step``: at ``end_epoch``) the ReLU modules are put back (``restored``)."""

    name = "soft_neurons"
    priority = 20  # after ghost_skip, before lrsi and label_smoothing

    def __init__(self, cfg: Any) -> None:
        self.cfg = cfg
        self.modules: List[SoftNeuron] = []
        self.restored = False
        self.scoring = False  # the ReLU modules are back while the initial mask is chosen
        self.model: Optional[nn.Module] = None

    def transform_model(self, model: nn.Module) -> nn.Module:
        self.model = model
        self.modules = swap_relus(model, self.cfg.activation, self.cfg.beta)
        return model

    def blend_at(self, t: float) -> float:
        """lambda at main-phase epoch ``t``."""
        c = self.cfg
        if c.schedule == "constant":
            return 0.0
        if c.schedule == "step":
            return 1.0 if t >= c.end_epoch else 0.0
        return ramp(t, c.start_epoch, c.end_epoch)

    def before_init_masks(self, state: RunState) -> None:
        """``scores_network=plain``: the ReLU network while the sparsifier chooses the initial mask (the
        first epoch start puts the soft neurons back)."""
        if self.cfg.scores_network == "plain" and not self.restored:
            restore_relus(self.model)
            self.scoring = True

    def _update(self, state: RunState) -> None:
        if self.scoring:
            reinstall(self.model, self.modules)
            self.scoring = False
        if self.restored:
            return
        blend = self.blend_at(schedule_epoch(state))
        if blend >= 1.0:
            self.restore()
            return
        for m in self.modules:
            m.blend = blend

    def restore(self) -> None:
        """Put the original ReLU modules back (the schedule has ended)."""
        restore_relus(self.model)
        self.restored = True

    def on_epoch_start(self, state: RunState) -> None:
        self._update(state)

    def on_step_end(self, state: RunState, mask_changed: bool) -> None:
        self._update(state)

    def on_epoch_end(self, state: RunState, row: Dict[str, Any]) -> None:
        row["tweaks/soft_neurons/blend"] = 1.0 if self.restored else self.modules[0].blend
        if self.cfg.schedule != "constant" and not self.restored:
            row["report/eligible"] = False  # the final network will be the ReLU one

    def final_metrics(self, state: RunState, individual: Dict[str, Any]) -> Dict[str, Any]:
        return {"tweaks/soft_neurons/final_activation": "relu" if self.restored else self.cfg.activation,
                "tweaks/soft_neurons/modules": len(self.modules),
                "tweaks/soft_neurons/scores_network": "relu" if self.cfg.scores_network == "plain"
                else self.cfg.activation}

    def state_dict(self) -> Dict[str, Any]:
        """Whether the ReLUs are back (``blend`` itself is a function of the step, recomputed)."""
        return {"restored": self.restored}

    def load_state_dict(self, state: Dict[str, Any], device: torch.device) -> None:
        if state["restored"] and not self.restored:
            self.restore()
