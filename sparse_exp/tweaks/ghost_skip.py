"""Ghost skip connections (GSC): extra dense 1x1 conv + BN paths beside every conv -> BN -> activation unit.

Source: Jaiswal et al., ICML 2022; reference code VITA-Group/ToST (ResNet BasicBlock only). For a unit's
``conv -> BN`` the ghost path ``conv1x1(C_in -> C_out, stride of conv) -> BN`` on the conv's input is added, times
``alpha``, to the BN's output. The model lists its units (``ghost_units``); a model without any (LeNets) is refused.
Depthwise convs get a grouped ghost (``depthwise=grouped``; ``dense``). Defaults are the code's: 1x1 weights ``init``
1e-4, ghost BN gamma 1 (``zero_init=true``: 0), ``alpha`` constant 1 (``alpha.end=0`` + ``alpha.end_epoch``: annealed;
``remove_at_end=true`` then deletes the ghosts), pruning-at-init scores on the plain network (``scores_network=plain``;
``trained``). Ghost convs are ``sparse_exempt`` (never masked, ranked, grown or counted in densities / sparse FLOPs);
``summary.json``: ``ghost/params``, ``ghost/removed``, ``ghost/forward_flops``, ``ghost/flops_train`` (relative to
the dense training FLOPs, like ``flops/train``: add the two). Placement, init and scoring: ``docs/design-notes.md``.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Tuple

import torch
from torch import nn

from sparse_exp.callbacks.protocol import BaseCallback, RunState
from sparse_exp.config.errors import ConfigError, UserError, one_of, require
from sparse_exp.registry import TWEAKS
from sparse_exp.sparse.flop_counts import layer_forward_flops
from sparse_exp.training.lr_schedules import remove_param_group
from sparse_exp.tweaks.tweak import RampConfig, check_ramp, check_settled_before_cycles, schedule_epoch


@dataclass
class GhostSkipConfig:
    """``tweaks.ghost_skip``: ``init`` (1x1 weight fill), ``zero_init`` (ghost BN gamma 0), ``alpha``
    (scale ramp), ``remove_at_end`` (delete the paths once alpha is 0), ``depthwise``: ``grouped`` | ``dense``,
    ``scores_network``: ``plain`` (pruning-at-init scores see the network without the paths, as the code's
    separate models) | ``trained`` (with them)."""

    init: float = 1e-4
    zero_init: bool = False
    alpha: RampConfig = field(default_factory=RampConfig)
    remove_at_end: bool = False
    depthwise: str = "grouped"
    scores_network: str = "plain"


class GhostPath(nn.Module):
    """``BN(conv1x1(x))`` with a scale: input ``(N, C_in, H, W)``, output ``(N, C_out, H / s, W / s)``.

    Args:
        in_channels, out_channels, stride: of the unit's conv; groups: 1 (dense) or the conv's groups.
        init: constant fill of the 1x1 weights; zero_init: BN gamma 0 (exactly-zero start).
    """

    def __init__(self, in_channels: int, out_channels: int, stride: Any, groups: int, init: float,
                 zero_init: bool) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, kernel_size=1, stride=stride, groups=groups, bias=False)
        self.conv.sparse_exempt = True  # never in the mask (sparse_exp.sparse.masking)
        self.bn = nn.BatchNorm2d(out_channels)
        self.alpha = 1.0
        with torch.no_grad():
            self.conv.weight.fill_(init)
            if zero_init:
                self.bn.weight.zero_()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.bn(self.conv(x))


def _stash_input(conv: nn.Module, args: Tuple[torch.Tensor, ...]) -> None:
    conv._ghost_input = args[0]


def _add_ghost(bn: nn.Module, args: Any, out: torch.Tensor) -> Optional[torch.Tensor]:
    conv = bn._ghost_conv
    x, conv._ghost_input = conv._ghost_input, None
    ghost = bn.ghost
    if ghost.alpha == 0.0:
        return None  # skipped: the output is the plain unit's, bit for bit
    return out + ghost.alpha * ghost(x)


def ghost_units(model: nn.Module) -> List[Tuple[str, str]]:
    """``(conv path, bn path)`` of every unit the model declares (``ghost_units`` class attributes)."""
    out = []
    for prefix, module in model.named_modules():
        for conv, bn in getattr(module, "ghost_units", ()):
            out.append((f"{prefix}.{conv}" if prefix else conv, f"{prefix}.{bn}" if prefix else bn))
    return out


def insert_ghosts(model: nn.Module, init: float = 1e-4, zero_init: bool = False, depthwise: str = "grouped"
                  ) -> Tuple[List[GhostPath], List[Any]]:
    """Add a :class:`GhostPath` to every declared unit of ``model`` in place (registered as ``<bn>.ghost``).

    Returns:
        ``(paths, hook handles)``.

    Raises:
        UserError: the model declares no unit.
    """
    units = ghost_units(model)
    if not units:
        raise UserError(f"tweaks=[ghost_skip] does not apply to {type(model).__name__}: it has no conv -> "
                        "BatchNorm -> activation unit (models that do: resnet18/32/50, vgg16, mobilenet_v2, "
                        "wrn28_10, resnet50_imagenet)")
    paths, handles = [], []
    for conv_name, bn_name in units:
        conv, bn = model.get_submodule(conv_name), model.get_submodule(bn_name)
        is_depthwise = conv.groups > 1 and conv.groups == conv.in_channels
        groups = conv.groups if (is_depthwise and depthwise == "grouped") else 1
        with torch.random.fork_rng(devices=[]):  # the 1x1 conv's default init draws; ours is a constant
            path = GhostPath(conv.in_channels, conv.out_channels, conv.stride, groups, init, zero_init)
        path.to(device=conv.weight.device, dtype=conv.weight.dtype)
        bn.add_module("ghost", path)
        object.__setattr__(bn, "_ghost_conv", conv)
        handles += [conv.register_forward_pre_hook(_stash_input), bn.register_forward_hook(_add_ghost)]
        paths.append(path)
    return paths, handles


def remove_ghosts(model: nn.Module, handles: List[Any]) -> int:
    """Delete every ghost path and its hooks from ``model``; returns how many paths were removed."""
    for h in handles:
        h.remove()
    n = 0
    for m in model.modules():
        if isinstance(getattr(m, "ghost", None), GhostPath):
            del m.ghost
            object.__delattr__(m, "_ghost_conv")
            n += 1
    for m in model.modules():
        m.__dict__.pop("_ghost_input", None)
    return n


def ghost_forward_flops(model: nn.Module, input_shape: Tuple[int, int, int]) -> Tuple[float, float]:
    """``(ghost, base)``: dense forward FLOPs per sample of every ghost 1x1 conv (2 per multiply-add; BN not
    counted, as for the base layers in :mod:`sparse_exp.sparse.flop_counts`) and of the base model's prunable
    layers (:func:`~sparse_exp.sparse.flop_counts.layer_forward_flops`), measured on one ``meta`` copy."""
    probe = copy.deepcopy(model).to("meta")
    base = float(sum(layer_forward_flops(probe, input_shape).values()))
    total = [0.0]

    def count(conv: nn.Module, args: Any, out: torch.Tensor) -> None:
        total[0] += 2.0 * out[0].numel() * conv.in_channels / conv.groups

    for m in probe.modules():
        if isinstance(m, GhostPath):
            m.alpha = 1.0
            m.conv.register_forward_hook(count)
    with torch.no_grad():
        probe(torch.empty(1, *input_shape, device="meta"))
    return total[0], base


def check_ghost_skip(cfg: Any) -> None:
    """Init, the alpha ramp, ``remove_at_end`` only with ``alpha.end=0``, ``depthwise``."""
    node = cfg.tweaks.ghost_skip
    require(node.init >= 0, "tweaks.ghost_skip.init", node.init, "must be >= 0 (the code uses 1e-4)")
    check_ramp("tweaks.ghost_skip.alpha", node.alpha, int(cfg.epochs))
    if node.remove_at_end:
        require(node.alpha.end == 0, "tweaks.ghost_skip.alpha.end", node.alpha.end,
                "must be 0 with remove_at_end=true (removing paths whose scale is not 0 changes the network)")
    one_of("tweaks.ghost_skip.depthwise", node.depthwise, {"grouped", "dense"})
    one_of("tweaks.ghost_skip.scores_network", node.scores_network, {"plain", "trained"})


def preflight_ghost_skip(plan: Any) -> None:
    """The model declares units (built on ``meta``); with Sup-tickets, alpha settles before the first ticket."""
    from sparse_exp.models import build_configured

    cfg, spec = plan.cfg, plan.spec
    with torch.device("meta"):
        model = build_configured(cfg.model, spec)
    if not ghost_units(model):
        raise ConfigError("tweaks", "[ghost_skip]", f"does not apply to model={cfg.model.name}: it has no conv -> "
                          "BatchNorm -> activation unit (allowed: resnet18, resnet32, resnet50, vgg16, mobilenet_v2, "
                          "wrn28_10, resnet50_imagenet)")
    alpha = cfg.tweaks.ghost_skip.alpha
    check_settled_before_cycles(cfg, plan, None if alpha.end is None else float(alpha.end_epoch),
                                "tweaks.ghost_skip.alpha.end_epoch", "the ghost paths' scale")


def ghost_skip_step_varies(cfg: Any) -> Optional[str]:
    """Why the train step changes during training with this config (an alpha ramp, removal), else None."""
    if cfg.remove_at_end:
        return "remove_at_end deletes the paths during training"
    if cfg.alpha.end is not None and float(cfg.alpha.end) != float(cfg.alpha.start):
        return "alpha ramps from alpha.start to alpha.end"
    return None


@TWEAKS.register("ghost_skip", schema=GhostSkipConfig, checks=(check_ghost_skip,), preflight=(preflight_ghost_skip,),
                 queries={"step_varies": ghost_skip_step_varies})
class GhostSkip(BaseCallback):
    """The GSC tweak as a callback (module doc): inserts the paths, gives them their own optimizer group
    (``name: ghost_skip``), follows the alpha ramp per step, removes the paths when asked."""

    name = "ghost_skip"
    priority = 10  # first of the tweaks: inserts the ghosts before the activations are swapped

    def __init__(self, cfg: Any) -> None:
        self.cfg = cfg
        self.paths: List[GhostPath] = []
        self.handles: List[Any] = []
        self.removed = False
        self.model: Optional[nn.Module] = None
        self.state: Optional[RunState] = None
        self.num_params = 0
        self.f_ghost = 0.0
        self.f_dense = 1.0
        self.ghost_flops = 0.0  # training FLOPs of the ghost paths so far, per sample

    def transform_model(self, model: nn.Module) -> nn.Module:
        c = self.cfg
        self.model = model
        self.paths, self.handles = insert_ghosts(model, c.init, c.zero_init, c.depthwise)
        self.num_params = sum(p.numel() for g in self.paths for p in g.parameters())
        return model

    def param_groups(self, model: nn.Module) -> List[Dict[str, Any]]:
        return [{"params": [p for g in self.paths for p in g.parameters()], "name": self.name}]

    def setup(self, state: RunState) -> None:
        self.state = state
        if self.cfg.alpha.end == 0 and torch.distributed.is_available() and torch.distributed.is_initialized():
            raise UserError("tweaks.ghost_skip.alpha.end=0 is not supported with DDP (skipped paths leave "
                            "parameters without gradients); use a constant or non-zero alpha")
        spec = state.data.spec
        shape = (spec.in_channels, spec.image_size, spec.image_size)
        self.f_ghost, self.f_dense = ghost_forward_flops(self.model, shape)
        self._update(state)

    def before_init_masks(self, state: RunState) -> None:
        """``scores_network=plain``: skip the paths while the sparsifier chooses the initial mask (the first
        epoch start puts alpha back), so a pruning-at-init mask is the plain network's."""
        if self.cfg.scores_network == "plain":
            for g in self.paths:
                g.alpha = 0.0

    def alpha_at(self, t: float) -> float:
        return RampConfig.value(self.cfg.alpha, t)

    def _update(self, state: RunState) -> None:
        if self.removed:
            return
        alpha = self.alpha_at(schedule_epoch(state))
        for g in self.paths:
            g.alpha = alpha

    def on_epoch_start(self, state: RunState) -> None:
        self._update(state)

    def on_step_end(self, state: RunState, mask_changed: bool) -> None:
        if not self.removed and self.paths[0].alpha != 0.0:
            self.ghost_flops += 3.0 * self.f_ghost  # forward + backward (activations and weights)
        self._update(state)

    def on_epoch_end(self, state: RunState, row: Dict[str, Any]) -> None:
        c = self.cfg
        if c.remove_at_end and not self.removed and schedule_epoch(state) >= float(c.alpha.end_epoch):
            self.remove()
        row["ghost/alpha"] = 0.0 if self.removed else self.paths[0].alpha
        if c.remove_at_end and not self.removed:
            row["report/eligible"] = False  # the final network will not have the paths

    def remove(self) -> None:
        """Delete the ghost paths from the model, the optimizer (their group and state) and the scheduler."""
        state, params = self.state, {id(p) for g in self.paths for p in g.parameters()}
        opt = state.optimizer
        index = next(i for i, g in enumerate(opt.param_groups) if g.get("name") == self.name)
        assert all(id(p) in params for p in opt.param_groups[index]["params"])
        remove_param_group(opt, state.scheduler, index)
        remove_ghosts(self.model, self.handles)
        self.paths, self.handles, self.removed = [], [], True

    def final_metrics(self, state: RunState, individual: Dict[str, Any]) -> Dict[str, Any]:
        steps = max(state.step, 1)
        return {"ghost/params": 0 if self.removed else self.num_params, "ghost/params_inserted": self.num_params,
                "ghost/removed": self.removed, "ghost/forward_flops": self.f_ghost,
                "ghost/scores_network": self.cfg.scores_network,
                "ghost/forward_fraction": self.f_ghost / self.f_dense,
                "ghost/flops_train": self.ghost_flops / (3.0 * self.f_dense * steps)}

    def summary_lines(self, summary: Dict[str, Any]) -> List[str]:
        what = "removed before the end" if summary.get("ghost/removed") else "kept in the final network"
        return [f"ghost skip paths: {summary.get('ghost/params_inserted', 0):,} dense parameters, {what}; "
                f"their training FLOPs = {summary.get('ghost/flops_train', 0.0):.4f} x dense training"]

    def state_dict(self) -> Dict[str, Any]:
        """Whether the paths are removed and their FLOPs so far (alpha is a function of the step)."""
        return {"removed": self.removed, "ghost_flops": self.ghost_flops}

    def load_state_dict(self, state: Dict[str, Any], device: torch.device) -> None:
        """Restore; removes the paths first if the checkpoint was written after their removal (so the
        model, optimizer and scheduler states that are loaded next match)."""
        if state["removed"] and not self.removed:
            self.remove()
        self.ghost_flops = float(state["ghost_flops"])
