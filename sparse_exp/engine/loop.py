"""The training loop: epochs of the train step (:mod:`sparse_exp.engine.fast_step`), callbacks at fixed points, a
checkpoint every epoch.

``Trainer(cfg, run_dir).fit()`` builds the run (:func:`sparse_exp.engine.build.build_run`), resumes from
``checkpoint.pt`` if there is one, trains, and writes ``summary.json`` (:mod:`sparse_exp.engine.summary`).
The loop names no method: the sparsifier evolves the masks, everything else plugs in through the
callback protocol (:mod:`sparse_exp.callbacks.protocol`).

The per-step path has no host synchronisation: loss and accuracy are accumulated on the device and
read once per ``log_every`` steps (progress bar) and once per epoch.
"""

from __future__ import annotations

import logging
import math
import signal
import sys
import time
from typing import Any, Dict, Optional, Tuple

import torch
from omegaconf import OmegaConf
from tqdm import tqdm

from sparse_exp.config.identity import identity
from sparse_exp.engine.build import build_run
from sparse_exp.engine.distributed import any_rank, epoch_totals, rank_accumulators, sync_buffers_
from sparse_exp.engine.fast_step import current_lr, make_train_step, optimizer_state_dict
from sparse_exp.engine.preemption import PreemptionGuard, StopRequested, current
from sparse_exp.engine.seeding import rng_state, set_rng_state
from sparse_exp.engine.step_end import end_step
from sparse_exp.engine.summary import final_summary, write_model
from sparse_exp.run.curves import lr_trace, plot_curves
from sparse_exp.run.loggers import build_logger
from sparse_exp.run.run_dir import RunDir
from sparse_exp.training.metrics import evaluate

log = logging.getLogger("sparse_exp")


def show_progress(cfg: Any, is_main: bool) -> bool:
    """Whether to draw a progress bar: ``progress=true``, rank 0, and stderr a terminal. In a SLURM log, CI or
    ``make train > log`` a bar writes a carriage-return update many times a second; there the per-epoch log
    line (``fit``) is the progress report."""
    return bool(cfg.progress) and is_main and sys.stderr.isatty()


class Preempted(Exception):
    """Training stopped on request (SLURM preemption / time limit / Ctrl-C); a checkpoint was written.

    ``hint`` (set by :meth:`Trainer.fit`): the one line saying where the run stopped and how to resume."""

    hint = ""


class Diverged(Exception):
    """The training loss became NaN or infinite at (1-based) ``epoch`` and global ``step``."""

    def __init__(self, epoch: int, step: int, loss: float) -> None:
        self.epoch, self.step, self.loss = epoch, step, loss
        kept = f"the checkpoint of epoch {epoch - 1} is kept" if epoch > 1 else "no checkpoint was written"
        super().__init__(f"diverged at epoch {epoch}, step {step}: the training loss became {loss}; {kept} (lower "
                         "the learning rate or add a warm-up)")


class Trainer:
    """Owns one run. ``Trainer(cfg, run_dir).fit()`` returns the summary dict.

    Args:
        cfg: a composed and validated config (``conf/config.yaml``).
        run_dir: where outputs go (created by :meth:`RunDir.prepare`).

    Attributes:
        run: the built :class:`~sparse_exp.engine.build.Run` (model, masking, sparsifier, callbacks, ...).
        preemption: polled after every step; ``requested`` -> checkpoint and raise :class:`Preempted`. Phases
            outside the step loop poll the guard of the active ``with PreemptionGuard()`` block
            (:func:`~sparse_exp.engine.preemption.poll`) and leave by ``StopRequested``.
    """

    def __init__(self, cfg: Any, run_dir: RunDir) -> None:
        self.cfg = cfg
        self.run_dir = run_dir
        self.run = build_run(cfg)
        run_dir.writable = run_dir.writable and self.run.dist.is_main
        self.state = self.run.state
        self.state.log = self.log_metrics
        self.state.run_dir = run_dir.path if run_dir.writable else None
        self.train_step = make_train_step(self.run)  # the fast.* block's step (sparse_exp.engine.fast_step)
        self.logger = None
        self.batch_in_epoch = 0  # batches done in the current epoch (non-zero only in a preemption checkpoint)
        self._acc = (0.0, 0, 0)  # loss sum, correct, seen of the current epoch (for mid-epoch resume)
        self._resume_rng: Optional[Dict[str, Any]] = None
        self.preemption: Any = None
        self._epoch_in_progress = 0  # 1-based epoch being trained / evaluated (for the stop message)
        self._saved: Optional[Tuple[int, int, int]] = None  # (epoch, step, batch_in_epoch) of checkpoint.pt

    # ------------------------------------------------------------------ views
    @property
    def model(self) -> torch.nn.Module:
        return self.run.model

    @property
    def masking(self):
        return self.run.masking

    @property
    def sparsifier(self):
        return self.run.sparsifier

    @property
    def data(self):
        return self.run.data

    @property
    def step(self) -> int:
        """Optimizer steps completed in the whole run."""
        return self.state.step

    @property
    def epoch(self) -> int:
        """Epochs completed in the whole run."""
        return self.state.epoch

    def callback(self, name: str) -> Any:
        """The run's callback called ``name``.

        Raises:
            KeyError: no such callback (the message lists the run's callbacks).
        """
        for cb in self.run.callbacks:
            if cb.name == name:
                return cb
        raise KeyError(f"no callback {name!r}; this run has {[cb.name for cb in self.run.callbacks]}")

    # ------------------------------------------------------------------ checkpoint
    def state_dict(self) -> Dict[str, Any]:
        """Everything ``checkpoint.pt`` holds for a bitwise resume: model, optimizer, LR schedule, masks,
        sparsifier, each callback's state (by name), the global RNG states, the step / epoch counters and,
        mid-epoch, the batch position and the epoch's loss / accuracy accumulators."""
        r, s = self.run, self.state
        return {
            "model": r.model.state_dict(),
            "optimizer": optimizer_state_dict(r.optimizer),
            "scheduler": r.scheduler.state_dict(),
            "masking": r.masking.state_dict(),
            "sparsifier": r.sparsifier.state_dict(),
            "callbacks": r.callbacks.state_dict(),
            "rng": rng_state(),
            "epoch": s.epoch,
            "step": s.step,
            "elapsed": s.elapsed,
            "batch_in_epoch": self.batch_in_epoch,
            "epoch_accumulators": self._acc,
        }

    def load_state_dict(self, state: Dict[str, Any]) -> None:
        """Restore :meth:`state_dict`'s output, or a checkpoint in the current format
        (:meth:`RunDir.load_checkpoint` migrates older ones: :func:`sparse_exp.run.run_dir.migrate_checkpoint`).

        The callbacks are restored first: one that changed the model's structure during training (a tweak
        that removed modules) restores that structure, so the model, optimizer and scheduler states fit."""
        r, s = self.run, self.state
        r.callbacks.load_state_dict(state["callbacks"], r.device)
        r.model.load_state_dict(state["model"])
        r.optimizer.load_state_dict(state["optimizer"])
        self.train_step.refresh()  # a compiled / captured step's LR tensor and captured tensors
        r.scheduler.load_state_dict(state["scheduler"])
        r.masking.load_state_dict(state["masking"])
        r.sparsifier.load_state_dict(state["sparsifier"])
        set_rng_state(state["rng"])
        s.epoch, s.step, s.elapsed = state["epoch"], state["step"], state["elapsed"]
        self.batch_in_epoch = state["batch_in_epoch"]
        self._acc = tuple(state["epoch_accumulators"])  # a triple, or one triple per rank (DDP)
        self._resume_rng = state["rng"] if self.batch_in_epoch else None

    # ------------------------------------------------------------------ training
    def train_epoch(self) -> Dict[str, float]:
        """One pass over the training split; returns mean loss, accuracy (%) and final LR (over the global batch).

        Resumes mid-epoch after a preemption checkpoint: iteration starts at batch ``batch_in_epoch`` of the epoch's
        order (the loader recomputes it from ``(seed, epoch)``; nothing before it is loaded or augmented), and the
        RNG state is the checkpoint's, so the rest of the epoch is what the uninterrupted run would have done.

        Under DDP each rank trains on its rows of every global batch with its loss scaled by
        ``rows * world / global_rows`` (DDP's mean gradient is then the global batch's); the loss / accuracy
        accumulators are summed over the ranks at the end of the epoch and at a preemption checkpoint.

        Raises:
            Preempted: a preemption was requested (``self.preemption.requested``); a mid-epoch
            checkpoint has been written.
        """
        r, s, cfg = self.run, self.state, self.cfg
        r.train_model.train()
        start = self.batch_in_epoch
        # a resumed DDP epoch: the checkpoint holds the sum over ranks; rank 0 carries it, the others start at 0
        acc = self._acc  # (loss sum, correct, seen), or under DDP one such triple per rank
        if acc and isinstance(acc[0], (list, tuple)):
            acc = acc[r.dist.rank]
        elif not r.dist.is_main:  # a checkpoint of one process, or an older DDP one holding the global totals
            acc = (0.0, 0, 0)
        loss_sum = torch.full((), acc[0], device=r.device)
        correct = torch.full((), acc[1], device=r.device, dtype=torch.long)
        seen = acc[2]
        nonfinite = torch.zeros(s.steps_per_epoch, dtype=torch.bool, device=r.device)  # per batch, no host sync
        r.callbacks.on_epoch_start(s)
        self.train_step.refresh()
        if self._resume_rng is not None:  # undo what on_epoch_start drew: the checkpoint's state was mid-epoch
            set_rng_state(self._resume_rng)
        batches = r.train_loader.iterate(s.epoch, start=start)
        bar = tqdm(batches, total=s.steps_per_epoch, initial=start, leave=False,
                   disable=not show_progress(cfg, r.dist.is_main), desc=f"epoch {s.epoch + 1}/{r.total_epochs}")
        for i, (x, y) in enumerate(bar, start):
            if r.dist.enabled:  # this rank's share of the global batch's mean gradient
                loss, logits = self.train_step(x, y, weight=y.shape[0] * r.dist.world_size
                                               / r.train_loader.global_rows(i))
            else:
                loss, logits = self.train_step(x, y)
            nonfinite[i] = ~torch.isfinite(loss)
            end_step(s, r.callbacks, self.train_step.refresh, bool(cfg.check_invariants))  # engine/step_end.py
            loss_sum += loss * y.shape[0]
            correct += (logits.argmax(1) == y).sum()
            seen += y.shape[0]
            if not bar.disable and (i + 1) % cfg.log_every == 0:
                self._raise_if_diverged(nonfinite, loss_sum)
                bar.set_postfix(loss=f"{loss_sum.item() / seen:.4f}", acc=f"{100 * correct.item() / seen:.2f}")
            if self.preemption is not None and self._preempt_now(i):
                self._raise_if_diverged(nonfinite, loss_sum)  # never checkpoint a diverged model
                per_rank = rank_accumulators(loss_sum, correct, seen)
                self.batch_in_epoch, self._acc = i + 1, per_rank[0] if len(per_rank) == 1 else per_rank
                self._save_checkpoint()
                bar.close()
                raise Preempted(f"preempted at epoch {s.epoch} batch {i + 1} (step {s.step})")
        bar.close()
        self._raise_if_diverged(nonfinite, loss_sum)
        total_loss, total_correct, total_seen = epoch_totals(loss_sum, correct, seen)
        sync_buffers_(r.model)  # DDP: rank 0's BN statistics on every rank before callbacks, evaluation, checkpoint
        self.batch_in_epoch, self._acc, self._resume_rng = 0, (0.0, 0, 0), None
        return {"train/loss": total_loss / max(total_seen, 1), "train/acc": 100.0 * total_correct / max(total_seen, 1),
                "lr": current_lr(r.optimizer)}

    def _save_checkpoint(self) -> None:
        self.run_dir.save_checkpoint(self.state_dict())
        self._saved = (self.state.epoch, self.state.step, self.batch_in_epoch)

    def stop_line(self, phase: str = "") -> str:
        """One line: where the run stopped and what the same command does next (resume from which checkpoint,
        or start again)."""
        s = self.state
        where = f"interrupted{f' during {phase}' if phase else ''} at epoch {max(self._epoch_in_progress, 1)}, " \
                f"step {s.step}"
        if self._saved is None:
            return f"{where}; run the same command to start again; no checkpoint was written yet"
        epoch, step, batch = self._saved
        if batch:
            return f"{where}; run the same command to resume from the checkpoint written at step {step}"
        return f"{where}; run the same command to resume from the checkpoint of epoch {epoch}"

    def _raise_if_diverged(self, nonfinite: torch.Tensor, loss_sum: torch.Tensor) -> None:
        """Raise :class:`Diverged` if a batch of this epoch had a non-finite loss (one host sync)."""
        if not bool(nonfinite.any()):
            return
        first = int(nonfinite.nonzero()[0, 0])
        s = self.state
        step = s.epoch * s.steps_per_epoch + first + 1
        raise Diverged(s.epoch + 1, step, float(loss_sum))

    def _preempt_now(self, i: int) -> bool:
        """Whether to stop after batch ``i``: every step for one process; with DDP, all ranks agree
        every ``log_every`` steps (one all-reduce) so that they stop at the same step."""
        if not self.run.dist.enabled:
            return self.preemption.requested
        if (i + 1) % self.cfg.log_every:
            return False
        return any_rank(self.preemption.requested, self.run.dist, self.run.device)

    def log_metrics(self, row: Dict[str, Any]) -> None:
        """Send ``row`` to the experiment logger at the current step (no-op before :meth:`fit`)."""
        if self.logger is not None:
            self.logger.log(row, step=self.state.step)

    def _epoch(self) -> Dict[str, Any]:
        """Train one epoch, run the epoch-end hooks and validation; returns the metrics row."""
        r, s = self.run, self.state
        t0 = time.perf_counter()
        self._epoch_in_progress = s.epoch + 1
        phase = r.phase_at(s.epoch)
        row = self.train_epoch()
        s.epoch += 1
        r.sparsifier.on_epoch_end(s.epoch)
        s.elapsed += time.perf_counter() - t0
        row.update(evaluate(r.model, r.data.val, s.num_classes, prefix="val"))
        row.update({"epoch": s.epoch, "step": s.step, "phase": phase,
                    "sparsity/global": r.masking.global_sparsity(), "itop_rate": r.masking.itop_rate()})
        r.callbacks.on_epoch_end(s, row)
        row["time/epoch_s"] = time.perf_counter() - t0
        return row

    def fit(self) -> Dict[str, Any]:
        """Train (resuming from ``checkpoint.pt`` if present) and write ``summary.json``.

        A stop request (USR2 / TERM, and Ctrl-C under the command line's guard) writes ``summary.json``
        (``"status": "stopped"``, or ``"interrupted"`` for ``SIGINT``): in the step loop after a checkpoint at the
        next step (:class:`Preempted`), in any other phase at its next poll, without a new checkpoint
        (:class:`~sparse_exp.engine.preemption.StopRequested`). With its own guard (none was active) it then hands
        the signal over (:meth:`PreemptionGuard.finish`); under a caller's guard it re-raises, ``hint`` set to
        :meth:`stop_line`.
        """
        cfg, rd, r, s = self.cfg, self.run_dir, self.run, self.state
        ident = identity(cfg)
        own_guard = self.preemption is None and current() is None
        if self.preemption is None:  # SLURM USR2 / TERM -> checkpoint at the next step, then submitit requeues
            self.preemption = current() or PreemptionGuard().__enter__()
        logger = None
        training = False  # set-up errors propagate as before; only a stop request is recorded during set-up
        try:
            if rd.has_checkpoint():
                self.load_state_dict(rd.load_checkpoint(map_location=r.device))
                self._saved = (s.epoch, s.step, self.batch_in_epoch)
                r.masking.invalidate_buffer_cache()
                rd.truncate_metrics(before_epoch=s.epoch + 1)  # rows after the checkpoint are redone
                log.info("resumed from %s at epoch %d batch %d (step %d)", rd.checkpoint_path, s.epoch,
                         self.batch_in_epoch, s.step)
            else:
                r.callbacks.before_init_masks(s)
                r.sparsifier.init_masks()
                rd.truncate_metrics(before_epoch=0)
            rd.write_summary({"status": "running", **ident})
            logger = self.logger = build_logger(cfg.logger if r.dist.is_main else OmegaConf.create({"name": "none"}),
                                                rd, OmegaConf.to_container(cfg, resolve=True), name=rd.path.name)
            training = True
            stop_at = cfg.stop_after_epochs or r.total_epochs
            while s.epoch < r.total_epochs:
                row = self._epoch()
                rd.append_metrics(row)
                self._save_checkpoint()
                logger.log(row, step=s.step)
                log.info("epoch %d/%d  loss %.4f  train %.2f%%  val %.2f%%  lr %.4g  sparsity %.4f  (%.1fs)",
                         s.epoch, r.total_epochs, row["train/loss"], row["train/acc"], row.get("val/acc", math.nan),
                         row["lr"], row["sparsity/global"], row["time/epoch_s"])
                if s.epoch >= stop_at and s.epoch < r.total_epochs:
                    rd.write_summary({"status": "stopped", **ident, "epoch": s.epoch})
                    log.info("stopped after epoch %d as asked (stop_after_epochs); re-run to resume", s.epoch)
                    return {"status": "stopped", "epoch": s.epoch}
            self._epoch_in_progress = s.epoch
            summary, label, masks = final_summary(r, ident, rd.path)
            rd.save_masks(masks, {**ident, "sparsity/global": summary["sparsity/global"], "model": label})
            write_model(r, rd, masks)  # model.pt: the reported model
            rd.write_summary(summary)
            self.write_curves()
            logger.summary(summary)
            return summary
        except Diverged as exc:  # recorded as failed; the last good checkpoint stays; never counted as a result
            failed = {"status": "failed", **ident, "reason": "diverged", "error": str(exc), "epoch": exc.epoch,
                      "step": exc.step}
            rd.write_summary(failed)
            log.error("%s", exc)
            return failed
        except (Preempted, StopRequested) as exc:
            self._record_stop(exc, ident)
            if own_guard:
                done = "checkpoint written" if isinstance(exc, Preempted) else f"{exc.phase} left"
                self.preemption.finish(done)  # hands the signal to submitit: requeue and exit
            raise
        except BaseException as exc:
            if training and not isinstance(exc, (KeyboardInterrupt, SystemExit)):
                rd.write_summary({"status": "failed", **ident, "error": f"{type(exc).__name__}: {exc}"})
            raise
        finally:
            if own_guard:
                self.preemption.__exit__(None, None, None)
                self.preemption = None
            if logger is not None:
                logger.finish()

    def _record_stop(self, exc: BaseException, ident: Dict[str, Any]) -> None:
        """``summary.json`` of a run stopped on request (``stopped``, or ``interrupted`` for Ctrl-C); sets
        ``exc.hint`` to :meth:`stop_line`."""
        s = self.state
        sig = getattr(exc, "signum", None) or getattr(self.preemption, "signum", None)
        phase = getattr(exc, "phase", "")
        exc.hint = self.stop_line(phase)
        body = {**ident, "epoch": s.epoch, "step": s.step}
        if phase:
            body["phase"] = phase
        if sig is not None:
            body["signal"] = sig.name
        if sig == signal.SIGINT:
            self.run_dir.write_summary({"status": "interrupted", **body, "reason": "interrupted (Ctrl-C)"})
            return
        self.run_dir.write_summary({"status": "stopped", **body, "reason": "preempted"})
        if isinstance(exc, Preempted):
            log.info("preempted: checkpoint written at step %d; the requeued job resumes from it", s.step)
        else:
            log.info("preempted during %s (nothing of it can be saved): %s", phase, exc.hint)

    def write_curves(self) -> None:
        """``curves.png`` (:mod:`sparse_exp.run.curves`) with the schedule the run trained with; a plotting failure is
        logged, never fails a finished run."""
        if not self.run_dir.writable:
            return
        try:
            plot_curves(self.run_dir.path, lr_trace(self.run), self.run.callbacks.plot_marks(self.state))
        except Exception as exc:  # matplotlib / disk problems must not turn a completed run into a failed one
            log.warning("curves.png not written: %s: %s", type(exc).__name__, exc)

    def summary_lines(self, summary: Dict[str, Any]) -> list:
        """The callbacks' lines for the end-of-run table (:func:`sparse_exp.engine.summary.format_summary`)."""
        return self.run.callbacks.summary_lines(summary)
