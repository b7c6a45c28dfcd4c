"""The multirun sweeper: validates the whole grid before launching, and skips completed runs.

    python -m sparse_exp.train +sweep=table1 -m                          # validate, skip done, launch the rest
    python -m sparse_exp.train +sweep=table1 -m hydra.sweeper.skip_completed=false   # submit every cell

It is Hydra's basic sweeper (same grid syntax, same job order, same ``hydra.sweeper.params``) with
two steps before anything is launched:

1. **Pre-flight every cell.** Each job's overrides are checked (:func:`sparse_exp.config.refusal.check_overrides`),
   its config is composed exactly as the job will see it and passed through the whole pre-flight
   (:func:`sparse_exp.config.preflight.preflight`: config, data present, budgets in steps, distribution
   feasibility, mask files, the run directory's files). If any cell is bad, every bad cell is printed
   (its overrides and one line saying what is wrong) and the command exits with code 2 -- no job is
   launched, no run directory is created. (Hydra's basic sweeper would run the valid cells in order and
   stop the whole grid at the first bad one; a SLURM array would fail those tasks after queueing.)
   ``hydra.sweeper.check_local=false`` skips the checks of the launching machine (data files, device),
   for jobs that run elsewhere (SLURM nodes with data and GPUs the launching machine does not have).
2. **Skip completed runs.** A cell whose run directory (``hydra.sweep.dir/hydra.sweep.subdir``, the
   directory the job would write) has a ``summary.json`` with ``status: completed`` is not launched,
   so re-launching a finished or half-finished grid on SLURM submits only the missing runs instead of
   an array of jobs that each wait for a GPU and exit. Runs with a checkpoint are launched (they
   resume). Each job still checks its own directory (a run completed after the check is not retrained).

Hydra loads sweepers only from the ``hydra_plugins`` namespace package, hence this module's place
(it ships with the ``sparse_exp`` distribution, see ``pyproject.toml``).

A cell whose run directory holds an unreadable ``summary.json`` or ``checkpoint.pt`` is a bad cell too
(named, with what to do).
"""

# No ``from __future__ import annotations`` here: Hydra's plugin scanner executes this module before
# putting it in ``sys.modules``, and dataclasses with string annotations then fail to resolve.
import logging
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

from hydra.core.config_store import ConfigStore
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.errors import HydraException
from omegaconf import OmegaConf
from omegaconf.errors import OmegaConfBaseException

from sparse_exp.config.hydra_adapter import BasicSweeper  # Hydra private API, wrapped there

log = logging.getLogger("sparse_exp")


@dataclass
class SparseExpSweeperConf:
    """``hydra/sweeper=sparse_exp`` (the default in ``conf/config.yaml``)."""

    _target_: str = "hydra_plugins.sparse_exp_sweeper.sparse_exp_sweeper.SparseExpSweeper"
    max_batch_size: Optional[int] = None
    params: Optional[Dict[str, str]] = None
    #: do not launch cells whose run directory says ``status: completed``
    skip_completed: bool = True
    #: check every cell's data files and device on the launching machine
    check_local: bool = True


def register_sweeper() -> None:
    """Store :class:`SparseExpSweeperConf` as ``hydra/sweeper=sparse_exp`` (idempotent)."""
    ConfigStore.instance().store(group="hydra/sweeper", name="sparse_exp", node=SparseExpSweeperConf)


class SparseExpSweeper(BasicSweeper):
    """Hydra's :class:`BasicSweeper` that validates all cells first and skips completed runs."""

    def __init__(self, max_batch_size: Optional[int], params: Optional[Dict[str, str]] = None,
                 skip_completed: bool = True, check_local: bool = True) -> None:
        super().__init__(max_batch_size=max_batch_size, params=params)
        self.skip_completed = skip_completed
        self.check_local = check_local

    def check_jobs(self, jobs: Sequence[Sequence[str]]) -> Tuple[List[Tuple[str, str]], List[List[str]], int]:
        """Compose and pre-flight-check every job's config and run directory.

        Returns:
            ``(errors, to_launch, n_completed)``: ``errors`` as ``(cell, message)`` pairs, the jobs
            to launch, and how many were skipped because their run is completed.
        """
        # imported here, not at the top: Hydra's plugin scan imports this module while sparse_exp itself
        # may still be importing (sparse_exp.config.compose starts Hydra)
        from sparse_exp.config.errors import UserError
        from sparse_exp.config.preflight import preflight
        from sparse_exp.config.refusal import check_overrides, explain, one_line
        from sparse_exp.run.run_dir import RunDir

        assert self.hydra_context is not None and self.config is not None
        errors: List[Tuple[str, str]] = []
        to_launch: List[List[str]] = []
        n_completed = 0
        for job in jobs:
            cell = " ".join(job) or "(no overrides)"
            try:
                check_overrides(list(job))
                cfg = self.hydra_context.config_loader.load_sweep_config(self.config, list(job))
                run_dir = Path(str(cfg.hydra.sweep.dir)) / str(cfg.hydra.sweep.subdir)
                preflight(cfg, run_dir, local=self.check_local)
                completed = RunDir(run_dir).is_completed()
            except UserError as exc:
                errors.append((cell, one_line(str(exc))))
                continue
            except (HydraException, OmegaConfBaseException) as exc:
                errors.append((cell, explain(exc, list(job))))
                continue
            if self.skip_completed and completed:
                n_completed += 1
            else:
                to_launch.append(list(job))
        return errors, to_launch, n_completed

    def sweep(self, arguments: List[str]) -> Any:
        """Expand the grid, check it (exit 2 on any invalid cell), launch the cells not completed."""
        assert self.config is not None and self.launcher is not None and self.hydra_context is not None
        parser = OverridesParser.create(config_loader=self.hydra_context.config_loader)
        overrides = parser.parse_overrides(self._parse_config() + list(arguments))
        jobs = [job for batch in self.split_arguments(overrides, None) for job in batch]

        tic = time.perf_counter()
        errors, to_launch, n_completed = self.check_jobs(jobs)
        if errors:
            print(f"error: {len(errors)} of {len(jobs)} runs in the grid are invalid; nothing was launched:",
                  file=sys.stderr)
            for cell, message in errors:
                print(f"  [{cell}] {message}", file=sys.stderr)
            sys.stderr.flush()
            sys.exit(2)
        log.info("grid of %d runs checked in %.1f s: %d already completed (not launched), %d to launch",
                 len(jobs), time.perf_counter() - tic, n_completed, len(to_launch))

        if to_launch:  # Hydra's record of the multirun config, as the basic sweeper writes it
            sweep_dir = Path(str(self.config.hydra.sweep.dir))
            sweep_dir.mkdir(parents=True, exist_ok=True)
            OmegaConf.save(self.config, sweep_dir / "multirun.yaml")
        self.overrides = list(self.split_overrides_to_chunks(to_launch, self.max_batch_size)) if to_launch else []
        returns = []
        initial_job_idx = 0
        while not self.is_done():
            batch = self.get_job_batch()
            results = self.launcher.launch(batch, initial_job_idx=initial_job_idx)
            for r in results:
                _ = r.return_value  # re-raises a job's exception, as the basic sweeper does
            initial_job_idx += len(batch)
            returns.append(results)
        return returns


register_sweeper()  # Hydra imports every hydra_plugins module when it starts
