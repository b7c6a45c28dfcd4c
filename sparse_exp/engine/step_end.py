"""What happens after each optimizer step, outside the step itself: one function for the CLI's loop
(:class:`sparse_exp.engine.loop.Trainer`) and the Python API (:mod:`sparse_exp.engine.api`).

The step (forward, loss, backward, ``optimizer.step()``, mask application) is the caller's; :func:`end_step` then
counts it, lets the sparsifier update the masks (unless a callback vetoes it), calls every callback's
``on_step_end`` and advances the LR schedule.
"""

from __future__ import annotations

from typing import Any, Callable, Optional

from sparse_exp.engine.context import RunState


def end_step(state: RunState, callbacks: Any, refresh: Optional[Callable[[], None]] = None,
             check_invariants: bool = False) -> bool:
    """Finish one optimizer step of the run ``state`` (its weights are stepped and masked already).

    In order: ``state.step += 1``; in the main phase (``state.main_step >= 1``) and if every callback's
    ``allow_mask_update`` agrees, the sparsifier's ``after_step`` (it may read the step's gradients);
    ``refresh()`` if the masks changed (a compiled / captured step re-reads them); every callback's
    ``on_step_end``; ``state.scheduler.step()`` (skipped when the caller owns the LR: ``scheduler`` None);
    with ``check_invariants``, :meth:`~sparse_exp.sparse.masking.Masking.check_invariants`.

    Args:
        state: the run's :class:`~sparse_exp.engine.context.RunState`.
        callbacks: its :class:`~sparse_exp.callbacks.protocol.CallbackList`.
        refresh: called after a mask update, before the callbacks.
        check_invariants: check the masks, weights and optimizer state after the step (slow; tests).

    Returns:
        whether the sparsifier changed the masks.

    Raises:
        AssertionError: ``check_invariants`` and a masked weight or its optimizer state is not zero.
    """
    state.step += 1
    changed = False
    if state.main_step >= 1 and callbacks.allow_mask_update(state.main_step):
        changed = state.sparsifier.after_step(state.main_step)
        if changed and refresh is not None:
            refresh()
    callbacks.on_step_end(state, changed)
    if state.scheduler is not None:
        state.scheduler.step()
    if check_invariants:
        state.masking.check_invariants(state.optimizer)
    return changed
