"""``lth``: lottery tickets by iterative magnitude pruning (IMP) with rewinding.

Source: Frankle & Carbin, "The Lottery Ticket Hypothesis", ICLR 2019 (Alg. "iterative
pruning", global magnitude for deep nets, Sec. 4/5); Frankle et al., "Linear Mode Connectivity
and the Lottery Ticket Hypothesis", ICML 2020 (rewinding to an early iteration k).

The run trains ``rounds`` IMP rounds of ``round_epochs`` epochs each before the ticket's own
training of ``epochs`` epochs (the engine runs ``rounds * round_epochs + epochs`` epochs in
all; each round restarts the LR schedule and the optimizer state). At the end of round r
(1..R) the active weights are pruned globally by magnitude to density ``d ** (r / R)`` (the
same fraction of the remaining weights every round; exact counts) and the surviving weights
are rewound to their values at ``rewind_epoch`` of the first round (0 = initialisation); BN
statistics rewind too. After round R the mask is the ticket, trained for ``epochs`` epochs.
The round counter and the rewind state are in the checkpoint, so an interrupted run resumes
in the right round.
"""

from __future__ import annotations

import copy
from typing import Any, Dict

from sparse_exp.sparse.sparsifiers.base import Sparsifier
from sparse_exp.sparse.topology import global_magnitude_prune


class LotteryTicketSparsifier(Sparsifier):
    """IMP with rewinding; ``pretrain_epochs = rounds * round_epochs`` epochs before the ticket."""

    name = "lth"

    def __init__(self, cfg: Any, ctx) -> None:
        super().__init__(cfg, ctx)
        self.pretrain_epochs = int(cfg.rounds) * int(cfg.round_epochs)
        self.round = 0
        self.rewind_state: Dict[str, Any] | None = None

    def init_masks(self) -> None:
        m = self.ctx.masking
        m.set_masks_({n: m.masks[n].new_ones(m.shapes[n]) for n in m.names})
        m.target_counts = dict(m.sizes)
        if self.cfg.rewind_epoch == 0:
            self._save_rewind()

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
        global_magnitude_prune(m, opt, keep, self.ctx.dense_layers())
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
