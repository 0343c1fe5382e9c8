"""Rows of alternatives: stages of a kind whose ``alternatives`` is set (defenses) each start
from the model state before their row, so their numbers compare; ``stack: true`` acts on the
previous stage's result instead."""

from __future__ import annotations

import copy

from clip_backdoor.stages.protocol import ModelState


def starting_state(specs, index: int, kind, state: ModelState, row_start):
    """(the state a stage starts from, the row's start): stages of a kind that are
    alternatives (defenses) each start from the state before their row, unless ``stack``."""
    restarts = restarts_after(specs, index)
    if not kind.alternatives:
        return state, None
    if row_start is None:  # training stages change the model in place: keep a copy if needed
        return state, state.but(model=copy.deepcopy(state.model)) if restarts else state.but(
            model=None
        )
    if specs[index].stack:
        return state, row_start
    model = row_start.model if row_start.model is not None else state.model
    return state.but(
        model=copy.deepcopy(model) if restarts else model, learner=row_start.learner
    ), row_start


def restarts_after(specs: list, index: int) -> bool:
    """Whether a stage after ``specs[index]``, in the same row of alternatives, starts over
    from the state before the row (so that state must be kept intact)."""
    for later in specs[index + 1 :]:
        if later.kind != specs[index].kind:
            return False
        if not later.stack:
            return True
    return False
