"""The training engine: build everything from a validated config, train, evaluate, resume.

Data flows one way: config -> :meth:`Trainer.__init__` (data, model, optimizer, schedule,
masks, sparsifier) -> :meth:`Trainer.fit` (epochs of steps; checkpoint every epoch) ->
``summary.json``. The per-step path has no host synchronisation: loss and accuracy are
accumulated on the device and read once per ``log_every`` steps and once per epoch.
"""

from __future__ import annotations

import logging
import math
import os
import random
import time
from datetime import datetime, timezone
from typing import Any, Dict, Iterator, Optional, Tuple

import numpy as np
import torch
import torch.nn.functional as F
from omegaconf import OmegaConf
from tqdm import tqdm

from sparse_exp.data import build_data
from sparse_exp.distributed import ShardedLoader, any_rank, init_distributed
from sparse_exp.loggers import build_logger
from sparse_exp.metrics import evaluate
from sparse_exp.models import build_model, reinitialize_
from sparse_exp.preemption import PreemptionGuard
from sparse_exp.rundir import RunDir, git_info
from sparse_exp.schedules import lr_factor_fn
from sparse_exp.sparse.flops import TrainingFlops, layer_forward_flops
from sparse_exp.sparse.masking import Masking
from sparse_exp.sparse.sparsifiers import SparseContext, build_sparsifier
from sparse_exp.superpose import build_superposer

log = logging.getLogger("sparse_exp")

#: epoch id used to draw batches for pruning-at-init scores (never a training epoch)
INIT_BATCHES_EPOCH = 1_000_000

class Preempted(Exception):
    """Training stopped on request (SLURM preemption / time limit); a checkpoint was written."""


IDENTITY_KEYS = ("model", "dataset", "sparsifier", "superposer", "distribution")


def resolve_device(name: str) -> torch.device:
    """``auto`` -> CUDA if available, else CPU."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def seed_everything(seed: int) -> None:
    """Seed Python's, NumPy's and torch's global generators (CPU and CUDA) with ``seed``."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def rng_state() -> Dict[str, Any]:
    """The global RNG states (Python, NumPy, torch CPU, every CUDA device), for checkpoints."""
    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: Dict[str, Any]) -> None:
    """Restore what :func:`rng_state` returned (CUDA states only where CUDA is available)."""
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def build_optimizer(cfg: Any, model: torch.nn.Module) -> torch.optim.Optimizer:
    """SGD (momentum, weight decay) or Adam from the ``optimizer`` group."""
    params = [p for p in model.parameters() if p.requires_grad]
    if cfg.name == "sgd":
        return torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay,
                               nesterov=cfg.nesterov)
    if cfg.name == "adam":
        return torch.optim.Adam(params, lr=cfg.lr, betas=tuple(cfg.betas), weight_decay=cfg.weight_decay)
    raise ValueError(f"optimizer.name={cfg.name!r} is not known; allowed: ['adam', 'sgd']")


def identity(cfg: Any) -> Dict[str, Any]:
    """The run's identifying choices, as written into ``summary.json``."""
    out = {k: cfg[k].name for k in IDENTITY_KEYS}
    out.update(sparsity=float(cfg.sparsity), seed=int(cfg.seed), epochs=int(cfg.epochs))
    return out


class Trainer:
    """Owns one run. ``Trainer(cfg, run_dir).fit()`` returns the summary dict.

    Args:
        cfg: a composed and validated config (``conf/config.yaml``).
        run_dir: where outputs go (created by :meth:`RunDir.prepare`).
    """

    def __init__(self, cfg: Any, run_dir: RunDir) -> None:
        self.cfg = cfg
        self.run_dir = run_dir
        self.device = resolve_device(cfg.device)
        if os.environ.get("SLURM_CPUS_PER_TASK"):  # use the CPUs SLURM gave us, not the node's count
            torch.set_num_threads(int(os.environ["SLURM_CPUS_PER_TASK"]))
        self.dist = init_distributed(self.device.type)
        if self.dist.enabled and self.device.type == "cuda":
            self.device = torch.device("cuda", self.dist.local_rank)
            torch.cuda.set_device(self.device)
        run_dir.writable = run_dir.writable and self.dist.is_main
        if cfg.deterministic:
            torch.use_deterministic_algorithms(True)
        seed_everything(cfg.seed)
        self.data = build_data(cfg.dataset, seed=cfg.seed, batch_size=cfg.batch_size,
                               eval_batch_size=cfg.eval_batch_size, device=self.device)
        spec = self.data.spec
        # DDP: each rank trains on its rows of every global batch; evaluation, pruning-at-init
        # scores and BN re-estimation use the full data on every rank (identical results)
        self.train_loader = ShardedLoader(self.data.train, self.dist) if self.dist.enabled else self.data.train
        self.num_classes = spec.num_classes
        self.model = reinitialize_(build_model(cfg.model.name, in_channels=spec.in_channels,
                                               num_classes=spec.num_classes, image_size=spec.image_size),
                                   cfg.model.init).to(self.device)
        self.optimizer = build_optimizer(cfg.optimizer, self.model)
        self.train_model = self.model
        if self.dist.enabled:
            ids = [self.device.index] if self.device.type == "cuda" else None
            self.train_model = torch.nn.parallel.DistributedDataParallel(self.model, device_ids=ids)
        self.steps_per_epoch = len(self.data.train)
        self.total_steps = cfg.epochs * self.steps_per_epoch
        self.masking = Masking(self.model)
        # FLOP accounting (RigL Sec. 4.1 / App. H): per-layer dense forward FLOPs, once
        self.layer_flops = layer_forward_flops(self.model, (spec.in_channels, spec.image_size, spec.image_size))
        self.flops = TrainingFlops(sum(self.layer_flops.values()))
        self.ctx = SparseContext(
            model=self.model, masking=self.masking, optimizer=self.optimizer, sparsity=float(cfg.sparsity),
            distribution=cfg.distribution, total_steps=self.total_steps, steps_per_epoch=self.steps_per_epoch,
            seed=int(cfg.seed), device=self.device, batches=self._init_batches, loss_fn=self.loss_fn)
        self.sparsifier = build_sparsifier(cfg.sparsifier, self.ctx)
        self.superposer = build_superposer(cfg.superposer, self)
        # LTH's IMP rounds run before the ticket's own `epochs`; each round restarts the schedule
        self.pretrain_epochs = int(self.sparsifier.pretrain_epochs)
        self.pre_steps = self.pretrain_epochs * self.steps_per_epoch
        self.total_epochs = self.pretrain_epochs + cfg.epochs
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, self._lr_factor_fn())
        self.logger = None
        self.epoch = 0  # completed epochs
        self.step = 0  # completed optimizer steps
        self.elapsed = 0.0  # training seconds over all sessions of this run
        self.batch_in_epoch = 0  # batches done in the current epoch (non-zero only in a preemption checkpoint)
        self._acc = (0.0, 0, 0)  # loss sum, correct, seen of the current epoch (for mid-epoch resume)
        self._resume_rng: Optional[Dict[str, Any]] = None
        #: polled after every step; ``requested`` -> checkpoint and raise :class:`Preempted`
        self.preemption: Any = None

    # ------------------------------------------------------------------ pieces
    def _lr_factor_fn(self):
        """LR multiplier per step: [IMP rounds, each a full base schedule] + main phase."""
        cfg, spe = self.cfg, self.steps_per_epoch

        def base(n):
            return lr_factor_fn(cfg.schedule, n, spe)

        main = self.superposer.wrap_lr(base, self.total_steps)
        if not self.pre_steps:
            return main
        round_steps = self.pre_steps // self.sparsifier.cfg.rounds
        round_fn = base(round_steps)
        pre = self.pre_steps
        return lambda step: round_fn(step % round_steps) if step < pre else main(step - pre)

    def loss_fn(self, logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Mean cross-entropy of logits ``(N, C)`` against labels ``(N,)``, in nats."""
        return F.cross_entropy(logits, y)

    def _init_batches(self, n: int) -> Iterator[Tuple[torch.Tensor, torch.Tensor]]:
        for i, batch in enumerate(self.data.train.iterate(INIT_BATCHES_EPOCH)):
            if i >= n:
                return
            yield batch

    def sparse_forward_flops(self, counts: Optional[Dict[str, int]] = None) -> float:
        """Forward FLOPs per sample at the per-layer densities ``counts / n`` (Python numbers, no sync)."""
        counts = counts if counts is not None else self.masking.target_counts
        sizes = self.masking.sizes
        return sum(self.layer_flops[n] * counts[n] / sizes[n] for n in self.masking.names)

    def state_dict(self) -> Dict[str, Any]:
        return {
            "flops": self.flops.state_dict(),
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "masking": self.masking.state_dict(),
            "sparsifier": self.sparsifier.state_dict(),
            "superposer": self.superposer.state_dict(),
            "rng": rng_state(),
            "epoch": self.epoch,
            "step": self.step,
            "elapsed": self.elapsed,
            "batch_in_epoch": self.batch_in_epoch,
            "epoch_accumulators": self._acc,
        }

    def load_state_dict(self, state: Dict[str, Any]) -> None:
        self.model.load_state_dict(state["model"])
        self.flops.load_state_dict(state["flops"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.masking.load_state_dict(state["masking"])
        self.sparsifier.load_state_dict(state["sparsifier"])
        self.superposer.load_state_dict(state["superposer"])
        set_rng_state(state["rng"])
        self.epoch, self.step, self.elapsed = state["epoch"], state["step"], state["elapsed"]
        self.batch_in_epoch = state.get("batch_in_epoch", 0)
        self._acc = tuple(state.get("epoch_accumulators", (0.0, 0, 0)))
        self._resume_rng = state["rng"] if self.batch_in_epoch else None

    # ------------------------------------------------------------------ training
    def train_epoch(self) -> Dict[str, float]:
        """One pass over the training split; returns mean loss, accuracy (%) and final LR.

        Resumes mid-epoch after a preemption checkpoint: the first ``batch_in_epoch`` batches
        are skipped and the RNG state of the checkpoint is restored after skipping them, so the
        rest of the epoch is what the uninterrupted run would have done.

        Raises:
            Preempted: a preemption was requested (``self.preemption.requested``); a mid-epoch
            checkpoint has been written.
        """
        model, opt, masking = self.train_model, self.optimizer, self.masking
        model.train()
        start = self.batch_in_epoch
        loss_sum = torch.full((), self._acc[0], device=self.device)
        correct = torch.full((), self._acc[1], device=self.device, dtype=torch.long)
        seen = self._acc[2]
        f_sparse = self.sparse_forward_flops()
        bar = tqdm(self.train_loader.iterate(self.epoch), total=self.steps_per_epoch, leave=False,
                   disable=not self.cfg.progress or not self.dist.is_main, desc=f"epoch {self.epoch + 1}/{self.total_epochs}")
        for i, (x, y) in enumerate(bar):
            if i < start:
                if i + 1 == start and self._resume_rng is not None:
                    set_rng_state(self._resume_rng)  # undo what skipping the batches drew
                continue
            logits = model(x)
            loss = self.loss_fn(logits, y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            masking.apply_(opt)
            self.step += 1
            local = self.step - self.pre_steps  # step within the main phase (after IMP rounds)
            changed = False
            if local >= 1:
                if self.superposer.sparsifier_active(local):
                    changed = self.sparsifier.after_step(local)
                self.superposer.after_step(local)
            # training FLOPs (RigL App. H): 3 f_S per step, 2 f_S + f_D at dense-gradient updates
            if changed and getattr(self.sparsifier, "growth", None) == "gradient":
                self.flops.add_dense_gradient_steps(1, f_sparse)
            else:
                self.flops.add_steps(1, f_sparse)
            if changed:
                f_sparse = self.sparse_forward_flops()
            self.scheduler.step()
            if self.cfg.check_invariants:
                masking.check_invariants(opt)
            loss_sum += loss.detach() * y.shape[0]
            correct += (logits.detach().argmax(1) == y).sum()
            seen += y.shape[0]
            if self.cfg.progress and (i + 1) % self.cfg.log_every == 0:
                bar.set_postfix(loss=f"{loss_sum.item() / seen:.4f}", acc=f"{100 * correct.item() / seen:.2f}")
            if self.preemption is not None and self._preempt_now(i):
                self.batch_in_epoch, self._acc = i + 1, (loss_sum.item(), int(correct.item()), seen)
                self.run_dir.save_checkpoint(self.state_dict())
                bar.close()
                raise Preempted(f"preempted at epoch {self.epoch} batch {i + 1} (step {self.step})")
        bar.close()
        self.batch_in_epoch, self._acc, self._resume_rng = 0, (0.0, 0, 0), None
        return {"train/loss": loss_sum.item() / max(seen, 1), "train/acc": 100.0 * correct.item() / max(seen, 1),
                "lr": opt.param_groups[0]["lr"]}

    def _preempt_now(self, i: int) -> bool:
        """Whether to stop after batch ``i``: every step for one process; with DDP, all ranks agree
        every ``log_every`` steps (one all-reduce) so that they stop at the same step."""
        if not self.dist.enabled:
            return self.preemption.requested
        if (i + 1) % self.cfg.log_every:
            return False
        return any_rank(self.preemption.requested, self.dist, self.device)

    def log_metrics(self, row: Dict[str, Any]) -> None:
        """Send ``row`` to the experiment logger at the current step (no-op before :meth:`fit`)."""
        if self.logger is not None:
            self.logger.log(row, step=self.step)

    def fit(self) -> Dict[str, Any]:
        """Train (resuming from ``checkpoint.pt`` if present) and write ``summary.json``."""
        cfg, rd = self.cfg, self.run_dir
        ident = identity(cfg)
        if rd.has_checkpoint():
            self.load_state_dict(rd.load_checkpoint(map_location=self.device))
            self.masking.invalidate_buffer_cache()
            rd.truncate_metrics(before_epoch=self.epoch + 1)  # rows after the checkpoint are redone
            log.info("resumed from %s at epoch %d batch %d (step %d)", rd.checkpoint_path, self.epoch,
                     self.batch_in_epoch, self.step)
        else:
            self.sparsifier.init_masks()
            rd.truncate_metrics(before_epoch=0)
        rd.write_summary({"status": "running", **ident})
        own_guard = self.preemption is None
        if own_guard:  # SLURM USR2 / TERM -> checkpoint at the next step, then submitit requeues
            self.preemption = PreemptionGuard()
        logger = self.logger = build_logger(cfg.logger if self.dist.is_main else OmegaConf.create({"name": "none"}),
                                            rd, OmegaConf.to_container(cfg, resolve=True), name=rd.path.name)
        try:
            stop_at = cfg.stop_after_epochs or self.total_epochs
            while self.epoch < self.total_epochs:
                t0 = time.perf_counter()
                phase = "main" if self.epoch >= self.pretrain_epochs else f"round{self.sparsifier.round + 1}"
                row = self.train_epoch()
                self.epoch += 1
                self.sparsifier.on_epoch_end(self.epoch)
                self.elapsed += time.perf_counter() - t0
                row.update(evaluate(self.model, self.data.val, self.num_classes, prefix="val"))
                row.update({"epoch": self.epoch, "step": self.step, "phase": phase,
                            "sparsity/global": self.masking.global_sparsity(), "itop_rate": self.masking.itop_rate(),
                            "flops/train": self.flops.ratio(),
                            "time/epoch_s": time.perf_counter() - t0})
                rd.append_metrics(row)
                rd.save_checkpoint(self.state_dict())
                logger.log(row, step=self.step)
                log.info("epoch %d/%d  loss %.4f  train %.2f%%  val %.2f%%  lr %.4g  sparsity %.4f  (%.1fs)",
                         self.epoch, self.total_epochs, row["train/loss"], row["train/acc"], row.get("val/acc", math.nan),
                         row["lr"], row["sparsity/global"], row["time/epoch_s"])
                if self.epoch >= stop_at and self.epoch < self.total_epochs:
                    rd.write_summary({"status": "stopped", **ident, "epoch": self.epoch})
                    log.info("stopped after epoch %d as asked (stop_after_epochs); re-run to resume", self.epoch)
                    return {"status": "stopped", "epoch": self.epoch}
            summary = self.final_summary(ident)
            final_masks = self.superposer.final_masks() or self.masking.masks
            rd.save_masks(final_masks, {**ident, "sparsity/global": summary["sparsity/global"],
                                        "model": "ultimate ticket" if cfg.superposer.name != "none" else "final"})
            rd.write_summary(summary)
            logger.summary(summary)
            return summary
        except Preempted:
            rd.write_summary({"status": "stopped", **ident, "epoch": self.epoch, "step": self.step,
                              "reason": "preempted"})
            log.info("preempted: checkpoint written at step %d; the requeued job resumes from it", self.step)
            if own_guard:
                self.preemption.finish()  # hands the signal to submitit: requeue and exit
            raise
        except BaseException as exc:
            if not isinstance(exc, (KeyboardInterrupt, SystemExit)):
                rd.write_summary({"status": "failed", **ident, "error": f"{type(exc).__name__}: {exc}"})
            raise
        finally:
            if own_guard:
                self.preemption.uninstall()
                self.preemption = None
            logger.finish()

    def final_summary(self, ident: Dict[str, Any]) -> Dict[str, Any]:
        """Test / val metrics and sparsity of the final model (the ``summary.json`` body)."""
        m = self.masking
        out: Dict[str, Any] = {"status": "completed", **ident}
        out.update(evaluate(self.model, self.data.test, self.num_classes, prefix="test"))
        out.update(evaluate(self.model, self.data.val, self.num_classes, prefix="val"))
        counts = m.counts()
        out["sparsity/global"] = 1.0 - sum(counts.values()) / m.total
        out["sparsity/layers"] = {n: 1.0 - counts[n] / m.sizes[n] for n in m.names}
        out["params/prunable"] = m.total
        out["params/nonzero"] = sum(m.nonzero_weights().values())
        out["itop_rate"] = m.itop_rate()
        out.update(self.superposer.final_metrics(dict(out)))
        # inference FLOPs of the model that is reported (the ultimate ticket under Sup-tickets)
        final = self.superposer.final_masks()
        counts = {n: int(final[n].count_nonzero()) for n in m.names} if final is not None else m.target_counts
        out["flops/test"] = self.sparse_forward_flops(counts) / self.flops.f_dense
        out["flops/train"] = self.flops.ratio()
        out["flops/dense_forward"] = self.flops.f_dense
        out["params/total"] = sum(p.numel() for p in self.model.parameters())
        out["params/total_nonzero"] = sum(int(p.count_nonzero()) for p in self.model.parameters())
        out["steps"] = self.step
        out["finished_at"] = datetime.now(timezone.utc).isoformat(timespec="seconds")
        out["time/train_s"] = self.elapsed
        out["run_dir"] = str(self.run_dir.path)
        out["git"] = git_info()["sha"]
        return out


def format_summary(summary: Dict[str, Any]) -> str:
    """The short table printed at the end of a run (ultimate ticket, last model and each ticket
    side by side when Sup-tickets ran)."""
    lines = []
    if "tickets/count" in summary:
        n = summary["tickets/count"]
        idx = sorted({int(k.split("/")[1]) for k in summary if k.startswith("tickets/") and k.split("/")[1].isdigit()})
        rows = [("ultimate ticket", summary["test/acc"], summary["test/nll"], summary["test/ece"])]
        rows.append(("last individual model", summary["last/test/acc"], summary["last/test/nll"],
                     summary["last/test/ece"]))
        rows += [(f"cheap ticket {i}", summary[f"tickets/{i}/test/acc"], summary[f"tickets/{i}/test/nll"],
                  summary[f"tickets/{i}/test/ece"]) for i in idx]
        lines.append(f"  {'model':<24} {'test acc %':>10} {'NLL':>8} {'ECE':>8}")
        lines += [f"  {name:<24} {acc:>10.2f} {nll:>8.4f} {ece:>8.4f}" for name, acc, nll, ece in rows]
        lines.append(f"  ({n} tickets superposed; diversity: disagreement "
                     f"{summary['diversity/disagreement']:.4f}, KL {summary['diversity/kl']:.4f})")
        lines.append("")
    rows = [
        ("test accuracy", f"{summary['test/acc']:.2f} %"),
        ("test NLL", f"{summary['test/nll']:.4f}"),
        ("test ECE (15 bins)", f"{summary['test/ece']:.4f}"),
        ("sparsity (prunable)", f"{summary['sparsity/global']:.4f}"),
        ("non-zero weights", f"{summary['params/nonzero']:,} of {summary['params/prunable']:,} prunable"),
        ("ITOP rate", f"{summary['itop_rate']:.4f}"),
        ("training time", f"{summary['time/train_s']:.1f} s"),
        ("run directory", summary["run_dir"]),
    ]
    width = max(len(k) for k, _ in rows)
    return "\n".join(lines + [f"  {k:<{width}}  {v}" for k, v in rows])
