"""The fast path of the train step (``fast.*``): ``torch.compile``, a CUDA-graph-captured step, bf16, channels_last.

    python -m sparse_exp.train fast.compile=true                          # inductor-compiled step
    python -m sparse_exp.train device=cuda fast.cuda_graphs=true fast.dtype=bf16 fast.channels_last=true

Contract: every option changes how the step of :func:`make_train_step` runs, never what it computes (forward,
loss, backward, optimizer step, mask application); all are off by default (the eager fp32 step that
``tests/test_golden.py`` pins bitwise). ``compile`` matches eager within float rounding (``tests/test_fast.py``);
``cuda_graphs`` (:class:`GraphedStep`, PyTorch's "whole network capture" recipe) needs CUDA and stays valid
because masks, weights, optimizer state and the LR tensor are only updated in place; ``dtype=bf16`` autocasts
forward and loss only; ``channels_last`` is a memory format. A batch of another shape (the short last batch)
runs eagerly. Refused: ``compile`` / ``cuda_graphs`` with DDP or with a tweak whose step varies during training.
"""

from __future__ import annotations

import logging
from typing import Any, List, Optional, Tuple

import torch

from sparse_exp.config.errors import ConfigError, UserError, one_of, require

log = logging.getLogger("sparse_exp")

StepOut = Tuple[torch.Tensor, torch.Tensor]


# ---------------------------------------------------------------------------------------------- checks
def check_fast(cfg: Any) -> None:
    """The ``fast`` block's values and the device they need (before anything runs).

    Raises:
        ConfigError: ``fast.dtype`` not ``fp32`` / ``bf16``; ``fast.graph_warmup_steps < 1``;
            ``fast.cuda_graphs`` with a device that is not CUDA.
    """
    fast = cfg.fast
    one_of("fast.dtype", fast.dtype, {"fp32", "bf16"})
    require(fast.graph_warmup_steps >= 1, "fast.graph_warmup_steps", fast.graph_warmup_steps,
            "must be >= 1 (eager steps before the capture create the optimizer state)")
    if fast.cuda_graphs:
        device = str(cfg.device)
        require(device.startswith("cuda") or (device == "auto" and torch.cuda.is_available()), "fast.cuda_graphs",
                True, f"CUDA graphs need a CUDA device, but device={device}"
                + (" resolves to cpu on this machine" if device == "auto" else "") + "; set fast.cuda_graphs=false")


def step_varying_tweaks(cfg: Any) -> List[str]:
    """``"<tweak>: <why>"`` for every chosen tweak whose train step changes during training (each tweak's
    registry entry answers the ``step_varies`` query); such a step cannot be captured once as a CUDA graph."""
    from sparse_exp.registry import TWEAKS

    out = []
    for name in list(cfg.tweaks or {}):
        why = TWEAKS.query(name, "step_varies")(cfg.tweaks[name])
        if why:
            out.append(f"{name}: {why}")
    return out


def preflight_fast(cfg: Any) -> None:
    """What ``fast.compile`` / ``fast.cuda_graphs`` cannot follow, known from the config (the pre-flight check
    calls it): a graph captures the step once, and a compiled step would recompile at every step of a ramp.

    Raises:
        ConfigError: ``fast.compile`` or ``fast.cuda_graphs`` with a tweak whose step changes during training.
    """
    fast = cfg.fast
    key = "fast.cuda_graphs" if fast.cuda_graphs else "fast.compile" if fast.compile else None
    if key is None:
        return
    varying = step_varying_tweaks(cfg)
    if varying:
        raise ConfigError(key, True, "a compiled or captured step cannot follow a schedule that changes the "
                          f"network or the loss during training ({'; '.join(varying)}); make it constant or set "
                          f"{key}=false")


# ---------------------------------------------------------------------------------------------- optimizer
class GraphSafeSGD(torch.optim.SGD):
    """``torch.optim.SGD`` whose step runs entirely on the device when the learning rate is a tensor.

    PyTorch's SGD passes the LR as a Python scalar (``alpha=-lr``), which reads a tensor LR back to the host:
    legal eagerly, illegal inside a CUDA-graph capture. With a tensor LR this class applies the same update
    (``torch/optim/sgd.py``: ``g = grad + wd * p``; ``buf = momentum * buf + (1 - dampening) * g``, ``buf = g`` on
    the first step; ``g = g + momentum * buf`` with Nesterov, else ``buf``; ``p -= lr * g``) with foreach ops
    that take the LR tensor, so a captured step follows the LR schedule. The result differs from PyTorch's only
    by float rounding (``p + (-lr * g)`` against a fused ``p - lr * g``). With a float LR it is PyTorch's SGD.
    """

    @torch.no_grad()
    def step(self, closure: Any = None) -> Any:
        if closure is not None or not any(torch.is_tensor(g["lr"]) for g in self.param_groups):
            return super().step(closure)
        for group in self.param_groups:
            params = [p for p in group["params"] if p.grad is not None]
            if not params:
                continue
            grads = [p.grad for p in params]
            if group["maximize"]:
                grads = torch._foreach_neg(grads)
            if group["weight_decay"]:
                grads = torch._foreach_add(grads, params, alpha=group["weight_decay"])
            momentum = group["momentum"]
            if momentum:
                bufs = []
                for p, g in zip(params, grads):
                    state = self.state[p]
                    if state.get("momentum_buffer") is None:
                        # first step: buf = g exactly (as torch's SGD: no dampening); it allocates, so it happens in
                        # an eager warm-up step, never inside a capture (fast.graph_warmup_steps >= 1)
                        state["momentum_buffer"] = torch.clone(g).detach()
                        bufs.append(None)
                    else:
                        bufs.append(state["momentum_buffer"])
                old = [(b, g) for b, g in zip(bufs, grads) if b is not None]
                if old:  # buf = momentum * buf + (1 - dampening) * g, in place: a captured graph and Masking's
                    # buffer cache hold these very tensors
                    ob, og = [b for b, _ in old], [g for _, g in old]
                    torch._foreach_mul_(ob, momentum)
                    torch._foreach_add_(ob, og, alpha=1 - group["dampening"])
                bufs = [self.state[p]["momentum_buffer"] for p in params]  # re-read: includes the new buffers
                grads = torch._foreach_add(grads, bufs, alpha=momentum) if group["nesterov"] else bufs
            lr = group["lr"]
            torch._foreach_add_(params, torch._foreach_mul(grads, -lr if torch.is_tensor(lr) else -float(lr)))
        return None


def tensor_lr_(optimizer: torch.optim.Optimizer, device: torch.device, capturable: bool) -> None:
    """Make every parameter group's ``lr`` a 0-dim float64 tensor on ``device`` (in place; no-op where it is one).

    ``LambdaLR`` then updates it with ``fill_`` (no host sync, no recompilation). ``capturable``: set Adam's
    ``capturable`` flag (its step counters live on the device), needed for a CUDA-graph capture and for a tensor
    LR with foreach Adam.
    """
    for group in optimizer.param_groups:
        if not torch.is_tensor(group["lr"]):
            group["lr"] = torch.tensor(float(group["lr"]), dtype=torch.float64, device=device)
        if capturable and "capturable" in group:
            group["capturable"] = True


def optimizer_state_dict(optimizer: torch.optim.Optimizer) -> dict:
    """``optimizer.state_dict()`` with tensor LRs written as floats (a checkpoint loads into any mode)."""
    sd = optimizer.state_dict()
    for group in sd["param_groups"]:
        if torch.is_tensor(group.get("lr")):
            group["lr"] = float(group["lr"])
    return sd


def current_lr(optimizer: torch.optim.Optimizer) -> float:
    """The first parameter group's learning rate as a float (one host sync if it is a tensor)."""
    return float(optimizer.param_groups[0]["lr"])


# ---------------------------------------------------------------------------------------------- the steps
def make_train_step(run: Any) -> Any:
    """The run's train step for its ``fast`` block (:class:`TrainStep`; eager fp32 when the block is off).

    Also applies what the step needs once, before training: ``channels_last`` weights, a tensor LR for
    ``compile`` / ``cuda_graphs``, :class:`GraphSafeSGD` for ``cuda_graphs``.

    Raises:
        UserError: ``fast.cuda_graphs`` or ``fast.compile`` under DDP (not supported).
    """
    fast = run.cfg.fast
    if run.dist.enabled and (fast.cuda_graphs or fast.compile):
        raise UserError("fast.compile / fast.cuda_graphs are not supported with DDP (several processes); run "
                        "with fast.compile=false fast.cuda_graphs=false")
    if fast.channels_last:
        run.model.to(memory_format=torch.channels_last)
    step = TrainStep(run)
    if fast.cuda_graphs:
        if type(run.optimizer) is torch.optim.SGD:
            run.optimizer.__class__ = GraphSafeSGD  # same state and groups, a step that takes a tensor LR
        return GraphedStep(run, step)
    if fast.compile:
        return CompiledStep(run, step)
    return step


class TrainStep:
    """One optimizer step on a batch: forward, loss, backward, optimizer step, mask application.

    ``step(x, y) -> (loss, logits)``: ``x`` the input batch ``(B, C, H, W)`` on the run's device, ``y`` labels
    ``(B,)``; returns the batch's mean training loss (fp32 scalar) and the logits ``(B, classes)``, detached.
    ``step(x, y, weight)`` (DDP, eager only): the gradient is that of ``weight * loss``; a rank with no rows
    (``B = 0``) backpropagates a zero loss so that it joins DDP's all-reduce (it returns loss 0).
    Free of Python bookkeeping (no counters, no host synchronisation), so that it can be compiled or captured as
    a whole; mask updates, tickets and evaluation happen outside it. ``fast.dtype=bf16``: forward and loss under
    bf16 autocast; ``fast.channels_last``: inputs in NHWC memory format.
    """

    def __init__(self, run: Any) -> None:
        self.run = run
        fast = run.cfg.fast
        self.bf16 = fast.dtype == "bf16"
        self.channels_last = bool(fast.channels_last)
        # a captured step must not cache autocast's weight casts across replays
        self.autocast_cache = not fast.cuda_graphs
        self.device_type = run.device.type

    def __call__(self, x: torch.Tensor, y: torch.Tensor, weight: Optional[float] = None) -> StepOut:
        r = self.run
        model, loss_fn, opt, masking = r.train_model, r.loss_fn, r.optimizer, r.masking
        if self.channels_last and x.dim() == 4:
            x = x.contiguous(memory_format=torch.channels_last)
        with torch.autocast(self.device_type, dtype=torch.bfloat16, enabled=self.bf16,
                            cache_enabled=self.autocast_cache):
            logits = model(x)
            if weight is not None and y.numel() == 0:  # DDP: no rows on this rank, still in the all-reduce
                loss, backward = logits.float().sum() * 0, logits.sum() * 0
            else:
                loss = loss_fn(logits, y)
                backward = loss if weight is None else loss * weight
        opt.zero_grad(set_to_none=True)
        backward.backward()
        opt.step()
        masking.apply_(opt)
        return loss.detach().float(), logits.detach()

    def refresh(self) -> None:
        """Nothing to redo for the eager step (see :meth:`GraphedStep.refresh`)."""


class CompiledStep:
    """:class:`TrainStep` through ``torch.compile`` for full-size batches, eager for any other shape."""

    def __init__(self, run: Any, eager: TrainStep) -> None:
        self.run, self.eager = run, eager
        tensor_lr_(run.optimizer, run.device, capturable=run.device.type == "cuda")
        # dynamo caches per code object: a second run in this process (tests, notebooks) would add its
        # recompilations to the first's, and past torch._dynamo.config.cache_size_limit the step silently runs
        # eagerly. Each run starts from a clean compiler state (the on-disk inductor cache still applies).
        torch._dynamo.reset()
        self.compiled = torch.compile(eager.__call__)
        self.batch_shape: Optional[torch.Size] = None

    def __call__(self, x: torch.Tensor, y: torch.Tensor) -> StepOut:
        if self.batch_shape is None:
            self.batch_shape = x.shape
        if x.shape != self.batch_shape:
            return self.eager(x, y)
        return self.compiled(x, y)

    def refresh(self) -> None:
        """After a checkpoint load the LR is a float again: make it a tensor."""
        tensor_lr_(self.run.optimizer, self.run.device, capturable=self.run.device.type == "cuda")


class GraphedStep:
    """:class:`TrainStep` captured once as a CUDA graph and replayed (module doc, ``fast.cuda_graphs``).

    Calls 1 .. ``graph_warmup_steps`` run the eager step on a side stream; the next full-size batch is copied
    into static input tensors, the step is captured and then replayed for it; later full-size batches are
    copied in and replayed. The returned ``(loss, logits)`` are the graph's static outputs: read them before
    the next call. Batches of another shape run eagerly; the parameters' ``.grad`` are pointed back at the
    graph's gradient tensors before the next replay, so a sparsifier reading ``p.grad`` after a step sees that
    step's gradient in both cases.
    """

    def __init__(self, run: Any, eager: TrainStep) -> None:
        self.run, self.eager = run, eager
        self.warmup = int(run.cfg.fast.graph_warmup_steps)
        tensor_lr_(run.optimizer, run.device, capturable=True)
        self.params = [p for g in run.optimizer.param_groups for p in g["params"]]
        self._reset()

    def _reset(self) -> None:
        self.graph: Optional[torch.cuda.CUDAGraph] = None
        self.eager_done = 0
        self.batch_shape: Optional[torch.Size] = None
        self.static: Tuple[torch.Tensor, ...] = ()
        self.grads: List[Optional[torch.Tensor]] = []
        self.grads_moved = False
        self.fingerprint: Tuple[int, ...] = ()

    def _fingerprint(self) -> Tuple[int, ...]:
        """Storage addresses of every tensor the graph reads or writes besides its own (host-side; no sync)."""
        r = self.run
        tensors = list(self.params) + list(r.model.buffers()) + list(r.masking.masks.values())
        for state in r.optimizer.state.values():
            tensors += [v for v in state.values() if torch.is_tensor(v)]
        tensors += [g["lr"] for g in r.optimizer.param_groups if torch.is_tensor(g["lr"])]
        return tuple(t.data_ptr() for t in tensors)

    def refresh(self) -> None:
        """Re-capture at the next full batch if a tensor the graph uses was replaced (a loaded checkpoint, an
        optimizer state reset); called by the loop at each epoch start, after a mask update and after resuming."""
        tensor_lr_(self.run.optimizer, self.run.device, capturable=True)
        if self.graph is not None and self._fingerprint() != self.fingerprint:
            log.info("CUDA graph: a captured tensor was replaced; capturing the step again")
            self._reset()

    def __call__(self, x: torch.Tensor, y: torch.Tensor) -> StepOut:
        if self.batch_shape is None:
            self.batch_shape = x.shape
        if x.shape != self.batch_shape:
            out = self.eager(x, y)
            self.grads_moved = self.graph is not None
            return out
        if self.graph is not None:
            sx, sy, loss, logits = self.static
            sx.copy_(x)
            sy.copy_(y)
            if self.grads_moved:
                for p, g in zip(self.params, self.grads):
                    p.grad = g
                self.grads_moved = False
            self.graph.replay()
            return loss, logits
        if self.eager_done < self.warmup:
            self.eager_done += 1
            side = torch.cuda.Stream()
            side.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(side):
                out = self.eager(x, y)
            torch.cuda.current_stream().wait_stream(side)
            return out
        return self._capture(x, y)

    def _capture(self, x: torch.Tensor, y: torch.Tensor) -> StepOut:
        sx, sy = x.clone(), y.clone()
        graph = torch.cuda.CUDAGraph()
        self.run.optimizer.zero_grad(set_to_none=True)  # the captured backward allocates .grad in the graph's pool
        with torch.cuda.graph(graph):
            loss, logits = self.eager(sx, sy)
        self.graph, self.static = graph, (sx, sy, loss, logits)
        self.grads = [p.grad for p in self.params]
        self.fingerprint = self._fingerprint()
        graph.replay()  # capturing ran nothing: this is the batch's step
        log.info("CUDA graph: train step captured after %d eager steps", self.eager_done)
        return loss, logits
