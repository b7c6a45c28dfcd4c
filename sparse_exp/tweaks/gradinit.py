"""GradInit: learn one scale per parameter tensor so that the first optimizer step works well.

Source: Zhu et al., "GradInit: Learning to Initialize Neural Networks for Stable and Efficient Training", NeurIPS
2021, Sec. 3 (objective, gradient-norm constraint, scale-only parametrisation); reference code zhuchen03/gradinit,
``gradinit_utils.py`` (``gradinit``, ``take_opt_step``) and ``gradinit_optimizers.py`` (``RescaleAdam``); used as LRsI
by Jaiswal et al., ICML 2022 (VITA-Group/ToST, ``LRsI/``); specification: ``../shared/notes/any-mask-tweaks.md`` Sec. 4.
Each iteration (``gradinit_``): S = two batches, g = grad of loss(S). If ||g|| > gamma, one Adam step on the scales
lowers ||g|| (double backward); else, with theta' = theta - eta * g / ||g||, one lowers loss(S'; theta') / eta, S' =
[first batch of S, a new batch]. As in the reference, the step eta * g / ||g|| is a constant there (``gstep.data``);
``GradInitSettings.second_order=True`` keeps g in the graph.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable, Dict, Iterable, List, Mapping, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.func import functional_call
from torch.nn.attention import SDPBackend, sdpa_kernel

from sparse_exp.engine.preemption import poll

#: module types whose ``weight`` / ``bias`` GradInit rescales (reference: Conv2d, Linear, BatchNorm2d)
SCALED_MODULES = (nn.modules.conv._ConvNd, nn.Linear, nn.modules.batchnorm._BatchNorm)


@dataclass
class GradInitSettings:
    """GradInit hyper-parameters; defaults are the ToST README's (``--gradinit-*`` flags).

    ``iterations``: GradInit iterations (180); ``lr``: Adam learning rate of the scales (1e-2);
    ``eta``: look-ahead step length in parameter units (0.1); ``gamma``: gradient-norm bound (1.0,
    ``math.inf`` disables the constraint); ``normalize``: step along g / ||g|| (True) or g;
    ``min_scale``: lower bound of weight scales (0.01; bias scales are bounded by 0);
    ``grad_clip``: clip of each scale's gradient to [-c, c] (1.0; 0 disables);
    ``mask_lookahead``: use g * mask in the look-ahead and in ||g|| (False = reference, dense g);
    ``second_order``: back-propagate the objective through g too (False = reference, g constant).
    (The reference code's own defaults differ: 390 iterations, lr 1e-3, gamma inf, not normalised.)
    Raises ValueError for out-of-range values.
    """

    iterations: int = 180
    lr: float = 1e-2
    eta: float = 0.1
    gamma: float = 1.0
    normalize: bool = True
    min_scale: float = 0.01
    grad_clip: float = 1.0
    mask_lookahead: bool = False
    second_order: bool = False

    def __post_init__(self) -> None:
        checks = [("iterations", isinstance(self.iterations, int) and self.iterations >= 0, "a whole number >= 0"),
                  ("lr", self.lr > 0, "> 0"), ("eta", self.eta > 0, "> 0"), ("gamma", self.gamma >= 0, ">= 0"),
                  ("min_scale", self.min_scale >= 0, ">= 0"), ("grad_clip", self.grad_clip >= 0, ">= 0")]
        for key, ok, allowed in checks:
            if not ok:
                raise ValueError(f"GradInitSettings.{key}={getattr(self, key)!r} is not allowed: must be {allowed}")


class RescaleAdam:
    """Adam on scalar scales ``a`` (0-d leaf tensors, requires_grad), each with its own lower bound.

    Per scale: gradient ``c = clip(a.grad, -grad_clip, grad_clip)``; constraint steps and objective
    steps keep separate first moments ``m_c`` / ``m_o`` with separate step counts ``n_c`` / ``n_o``,
    and share one second moment ``v`` updated on every step. Bias correction (as in the reference's
    CIFAR ``gradinit_optimizers.py``; its fairseq copy keeps two second moments instead): the first
    moment uses its own count, ``m_hat = m_k / (1 - beta1**n_k)``; the shared second moment uses the
    total count, ``v_hat = v / (1 - beta2**(n_c + n_o))``. Update:
    ``a <- max(a - lr * m_hat / (sqrt(v_hat) + eps), min_scale)``. A scale whose ``.grad`` is None
    is skipped (no state change), as in the reference. Values are kept in Python floats (float64);
    ``value(i)`` reads one. For theta = a * theta0, ``a.grad = <dL/dtheta, theta0>``, which is the
    reference's ``<dL/dtheta, theta> * ||theta0|| / ||theta||`` whenever ||theta|| > 0.
    Check: theta0 = [3, 4], dL/dtheta = [0.1, 0.1], lr 1e-2: one step gives a = 0.99.
    """

    def __init__(self, scales: Sequence[Tensor], min_scales: Sequence[float], lr: float = 1e-2,
                 betas: Tuple[float, float] = (0.9, 0.999), eps: float = 1e-8, grad_clip: float = 1.0) -> None:
        if len(scales) != len(min_scales):
            raise ValueError(f"RescaleAdam: {len(scales)} scales but {len(min_scales)} min_scales")
        if any(s.numel() != 1 or not s.requires_grad for s in scales):
            raise ValueError("RescaleAdam: every scale must be a one-element tensor with requires_grad=True")
        self.scales, self.min_scales = list(scales), [float(m) for m in min_scales]
        self.lr, self.betas, self.eps, self.grad_clip = float(lr), betas, float(eps), float(grad_clip)
        self.values = [float(s.item()) for s in self.scales]
        n = len(self.scales)
        self.exp_avg, self.cons_exp_avg, self.exp_avg_sq = [0.0] * n, [0.0] * n, [0.0] * n
        self.steps, self.cons_steps = [0] * n, [0] * n

    def value(self, i: int) -> float:
        """The current value of scale ``i`` (float64)."""
        return self.values[i]

    def zero_grad(self) -> None:
        """Set every scale's ``.grad`` to None."""
        for s in self.scales:
            s.grad = None

    @torch.no_grad()
    def step(self, is_constraint: bool = False) -> None:
        """One Adam step of every scale with a ``.grad``; ``is_constraint`` picks the first moment."""
        beta1, beta2 = self.betas
        for i, s in enumerate(self.scales):
            if s.grad is None:
                continue
            c = float(s.grad.item())
            if self.grad_clip > 0:
                c = max(min(c, self.grad_clip), -self.grad_clip)
            if is_constraint:
                self.cons_steps[i] += 1
                self.cons_exp_avg[i] = beta1 * self.cons_exp_avg[i] + (1 - beta1) * c
                m, n = self.cons_exp_avg[i], self.cons_steps[i]
            else:
                self.steps[i] += 1
                self.exp_avg[i] = beta1 * self.exp_avg[i] + (1 - beta1) * c
                m, n = self.exp_avg[i], self.steps[i]
            self.exp_avg_sq[i] = beta2 * self.exp_avg_sq[i] + (1 - beta2) * c * c
            v_hat = self.exp_avg_sq[i] / (1 - beta2 ** (self.steps[i] + self.cons_steps[i]))
            update = self.lr * (m / (1 - beta1 ** n)) / (math.sqrt(v_hat) + self.eps)
            self.values[i] = max(self.values[i] - update, self.min_scales[i])
            s.fill_(self.values[i])


@dataclass
class GradInitResult:
    """What ``gradinit_`` did.

    ``scales``: {parameter name: final scale} for every rescaled tensor (the parameter was
    multiplied by it); ``skipped``: names of zero-norm tensors left alone (not in ``scales``);
    ``constraint_steps`` / ``objective_steps``: iterations of each kind (sum = iterations);
    ``grad_norms``: ||g|| per iteration (before its step); ``objective_losses``: loss(S'; theta') / eta
    per objective step (before its step, in loss units per parameter unit).
    """

    scales: Dict[str, float]
    skipped: List[str]
    constraint_steps: int
    objective_steps: int
    grad_norms: List[float] = field(default_factory=list)
    objective_losses: List[float] = field(default_factory=list)


def _modes_for_gradinit(model: nn.Module):
    """Save module modes, BN flags and buffers; put the model in eval mode with BNs on batch statistics."""
    saved = ({m: m.training for m in model.modules()},
             {m: m.track_running_stats for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)},
             {name: b.detach().clone() for name, b in model.named_buffers()})
    model.eval()  # dropout off, as in the reference (net.eval(); set_bn_modes)
    for bn in saved[1]:
        bn.train()
        bn.track_running_stats = False  # batch statistics, running buffers not passed to batch_norm
    return saved


@torch.no_grad()
def _restore(model: nn.Module, saved) -> None:
    training, tracking, buffers = saved
    for m, flag in training.items():
        m.training = flag
    for bn, flag in tracking.items():
        bn.track_running_stats = flag
    for name, b in model.named_buffers():
        if name in buffers:
            b.copy_(buffers[name])


def gradinit_(model: nn.Module, batches: Iterable[Tuple[Tensor, Tensor]], settings: Optional[GradInitSettings] = None,
              masks: Optional[Mapping[str, Tensor]] = None,
              loss_fn: Callable[[Tensor, Tensor], Tensor] = F.cross_entropy) -> GradInitResult:
    """Rescale ``model``'s conv / linear / BN weights and biases in place by learned scalars (GradInit).

    ``batches``: iterable of (x (N, C, H, W) float, y (N,) long); an iteration takes 2 batches
    (constraint step) or 3 (objective step: S = [b0, b1], S' = [b0, b2], the reference's default
    ``batch_no_overlap=False``). The reference loads batches of half the training batch size, so S
    is one training batch. ``masks``: {param name: 0/1 tensor of its shape}; the weights must already
    be zero where the mask is 0. Masked weights stay exactly 0 (a scalar rescale, written once as
    ``p.mul_(a)``). With ``settings.mask_lookahead=False`` (reference) g is dense, so pruned positions
    are non-zero in theta' during the look-ahead; with True, g * mask is used in theta' and ||g||.
    Set: the ``weight``/``bias`` of every ``SCALED_MODULES`` module that requires grad; all of them
    enter g and the look-ahead, the non-zero ones get a scale (min ``settings.min_scale`` for
    weights, 0 for biases). Other parameters are constants. BatchNorm uses batch statistics, the rest
    of the model runs in eval mode (dropout off, as in the reference's ``net.eval()``); every buffer
    and every module's ``training`` flag are restored. ``loss_fn(logits, y)`` is a mean loss.
    Raises ValueError when the batches run out, no tensor can be scaled, a mask does not fit, or the
    loss is not finite; the parameters are then unchanged.
    """
    settings = GradInitSettings() if settings is None else settings
    params = dict(model.named_parameters())
    names = [f"{mod_name}.{attr}" if mod_name else attr for mod_name, m in model.named_modules()
             if isinstance(m, SCALED_MODULES) for attr in ("weight", "bias")
             if isinstance(m._parameters.get(attr), nn.Parameter) and m._parameters[attr].requires_grad]
    names = [n for n in names if n in params]  # tied parameters appear once
    theta0 = {n: params[n].detach() for n in names}
    scaled = [n for n in names if float(theta0[n].norm()) > 0]
    skipped = [n for n in names if n not in scaled]
    if not scaled:
        raise ValueError("gradinit_: no tensor to rescale (no conv/linear/BatchNorm weight or bias with norm > 0)")
    mask_t: Dict[str, Tensor] = {}
    for n, mk in (masks or {}).items():
        if n not in params or tuple(mk.shape) != tuple(params[n].shape):
            raise ValueError(f"gradinit_: mask {n!r} does not match a parameter of the model (name and shape)")
        mk = mk.to(device=params[n].device, dtype=params[n].dtype)
        if bool((params[n].detach()[mk == 0] != 0).any()):
            raise ValueError(f"gradinit_: parameter {n!r} is non-zero where its mask is 0; apply the mask first")
        if n in theta0:
            mask_t[n] = mk
    device = theta0[scaled[0]].device
    is_bias = {n: n.rsplit(".", 1)[-1] == "bias" for n in scaled}
    scales = [torch.ones((), dtype=theta0[n].dtype, device=device, requires_grad=True) for n in scaled]
    opt = RescaleAdam(scales, [0.0 if is_bias[n] else settings.min_scale for n in scaled], lr=settings.lr,
                      grad_clip=settings.grad_clip)
    it, used = iter(batches), [0]

    def next_batch(i: int) -> Tuple[Tensor, Tensor]:
        try:
            x, y = next(it)
        except StopIteration:
            raise ValueError(f"gradinit_: the batches ran out after {used[0]} batches, at iteration {i + 1} of "
                             f"{settings.iterations} (2 batches per constraint step, 3 per objective step)") from None
        used[0] += 1
        return x.to(device), y.to(device)

    result = GradInitResult(scales={}, skipped=skipped, constraint_steps=0, objective_steps=0)
    saved = _modes_for_gradinit(model)
    try:
        # double backward: PyTorch's math attention backend, the only one with one (a model without
        # scaled_dot_product_attention, every CNN, is unaffected)
        with sdpa_kernel(SDPBackend.MATH):
            for i in range(settings.iterations):
                poll("GradInit")  # a stop leaves GradInit at once (the requeued run redoes it)
                (x0, y0), (x1, y1) = next_batch(i), next_batch(i)
                a = dict(zip(scaled, scales))
                theta = {n: a[n] * theta0[n] if n in a else theta0[n].clone().requires_grad_(True) for n in names}
                loss = loss_fn(functional_call(model, theta, (torch.cat([x0, x1]),)), torch.cat([y0, y1]))
                grads = torch.autograd.grad(loss, [theta[n] for n in names], create_graph=True, allow_unused=True)
                g = {n: torch.zeros_like(theta0[n]) if gr is None else gr for n, gr in zip(names, grads)}
                g = {n: gr * mask_t[n] if settings.mask_lookahead and n in mask_t else gr for n, gr in g.items()}
                gnorm = torch.sqrt(sum(gr.square().sum() for gr in g.values()))
                gnorm_value = float(gnorm.item())
                if not math.isfinite(gnorm_value):
                    raise ValueError(f"gradinit_: the gradient norm is {gnorm_value} at iteration {i + 1}")
                result.grad_norms.append(gnorm_value)
                if gnorm_value > settings.gamma:
                    target, constraint = gnorm, True
                else:
                    scale = settings.eta / gnorm if settings.normalize and gnorm_value > 0 else settings.eta
                    step = {n: scale * gr for n, gr in g.items()}
                    if not settings.second_order:
                        step = {n: s.detach() for n, s in step.items()}
                    x2, y2 = next_batch(i)
                    out = functional_call(model, {n: theta[n] - step[n] for n in names}, (torch.cat([x0, x2]),))
                    target, constraint = loss_fn(out, torch.cat([y0, y2])) / settings.eta, False
                    if not math.isfinite(float(target.item())):
                        raise ValueError(f"gradinit_: the look-ahead loss is not finite at iteration {i + 1}")
                    result.objective_losses.append(float(target.item()))
                opt.zero_grad()
                for s, gr in zip(scales, torch.autograd.grad(target, scales, allow_unused=True)):
                    s.grad = gr
                opt.step(is_constraint=constraint)
                result.constraint_steps += int(constraint)
                result.objective_steps += int(not constraint)
    finally:
        opt.zero_grad()
        _restore(model, saved)
    with torch.no_grad():
        for k, n in enumerate(scaled):
            params[n].mul_(opt.value(k))
            result.scales[n] = opt.value(k)
    return result
