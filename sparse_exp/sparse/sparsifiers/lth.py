"""``lth``: lottery tickets by iterative magnitude pruning (IMP) with rewinding.

Source: Frankle & Carbin, "The Lottery Ticket Hypothesis", ICLR 2019 (iterative pruning, global magnitude for
deep nets, Sec. 4/5); Frankle et al., "Linear Mode Connectivity and the Lottery Ticket Hypothesis", ICML 2020
(rewinding to an early iteration). ``rounds`` IMP rounds of ``round_epochs`` epochs run before the ticket's
own ``epochs`` (LR phases, :meth:`LotteryTicketSparsifier.lr_phases`; each restarts the LR schedule and the
optimizer state). After round r of R the active weights are pruned globally to density ``d ** (r / R)`` (exact
counts) and the survivors, BN statistics included, rewound to ``rewind_epoch`` of round 1 (0 = initialisation);
the mask after round R is the ticket. Round counter and rewind state are checkpointed.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any, Dict, List, Optional, Tuple

from sparse_exp.config.errors import require
from sparse_exp.config.schema import SparsifierConfig
from sparse_exp.registry import SPARSIFIERS
from sparse_exp.sparse.sparsifiers.sparsifier import Sparsifier, check_sparse_target
from sparse_exp.sparse.topology import global_magnitude_prune


@dataclass
class LotteryTicketConfig(SparsifierConfig):
    """``sparsifier=lth``: IMP with rewinding (Frankle & Carbin 2019; Frankle et al. 2020).

    ``rounds`` pruning rounds of ``round_epochs`` epochs each, pruning to density
    ``(1 - sparsity) ** (r / rounds)`` after round r; ``rewind_epoch`` 0 rewinds to init.
    """

    name: str = "lth"
    rounds: int = 5
    round_epochs: int = 10
    rewind_epoch: int = 0


def check_lth(cfg: Any) -> None:
    """``rounds`` >= 1, ``round_epochs`` >= 1 and ``rewind_epoch`` in [0, round_epochs)."""
    sp = cfg.sparsifier
    require(sp.rounds >= 1, "sparsifier.rounds", sp.rounds, "must be an integer >= 1")
    require(sp.round_epochs >= 1, "sparsifier.round_epochs", sp.round_epochs, "must be an integer >= 1")
    require(0 <= sp.rewind_epoch < sp.round_epochs, "sparsifier.rewind_epoch", sp.rewind_epoch,
            f"must be in [0, round_epochs={sp.round_epochs})")


@SPARSIFIERS.register("lth", schema=LotteryTicketConfig, checks=(check_sparse_target, check_lth))
class LotteryTicketSparsifier(Sparsifier):
    """IMP with rewinding: ``rounds`` LR phases of ``round_epochs`` epochs before the ticket's training."""

    name = "lth"
    nm_refusal = ("IMP prunes a fraction of the remaining weights per round down to (1 - sparsity) ** (r / rounds), "
                  "densities that are no whole n of m; use sparsifier=gmp for gradual N:M pruning")

    def __init__(self, cfg: Any, ctx) -> None:
        super().__init__(cfg, ctx)
        self.round = 0
        self.rewind_state: Dict[str, Any] | None = None

    def init_masks(self) -> None:
        m = self.ctx.masking
        m.set_masks_({n: m.masks[n].new_ones(m.shapes[n]) for n in m.names})
        m.target_counts = dict(m.sizes)
        if self.cfg.rewind_epoch == 0:
            self._save_rewind()

    @classmethod
    def flop_schedule(cls, cfg: Any, total_steps: Optional[int], density: float) -> None:
        """No training-FLOP model: the IMP rounds train at decreasing densities in phases of their own,
        outside the main phase's ``total_steps``."""
        return None

    def lr_phases(self) -> List[Tuple[str, int]]:
        """One phase per IMP round, ``("round<r>", round_epochs)``, each restarting the LR schedule."""
        return [(f"round{r}", int(self.cfg.round_epochs)) for r in range(1, int(self.cfg.rounds) + 1)]

    def _save_rewind(self) -> None:
        self.rewind_state = copy.deepcopy({k: v.detach().cpu() for k, v in self.ctx.model.state_dict().items()})

    def density_after_round(self, r: int) -> float:
        """Global density after round ``r``: ``(1 - sparsity) ** (r / rounds)``."""
        return self.ctx.density ** (r / self.cfg.rounds)

    def on_epoch_end(self, epoch: int) -> bool:
        """``epoch`` = completed epochs of the whole run; prunes and rewinds at round ends."""
        if self.round >= self.cfg.rounds:
            return False
        if self.rewind_state is None and epoch == self.cfg.rewind_epoch:
            self._save_rewind()
        if epoch != (self.round + 1) * self.cfg.round_epochs:
            return False
        self.round += 1
        m, opt = self.ctx.masking, self.ctx.optimizer
        keep = int(round(self.density_after_round(self.round) * m.total))
        global_magnitude_prune(m, opt, keep, self.ctx.dense_layers)
        self.ctx.model.load_state_dict(self.rewind_state)
        if opt is not None:
            opt.state.clear()
            m.invalidate_buffer_cache()
        m.apply_(opt)
        return True

    def state_dict(self) -> Dict[str, Any]:
        return {**super().state_dict(), "round": self.round, "rewind_state": self.rewind_state}

    def load_state_dict(self, state: Dict[str, Any]) -> None:
        super().load_state_dict(state)
        self.round = state["round"]
        self.rewind_state = state["rewind_state"]
