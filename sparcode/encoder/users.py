"""A known user's history and seen items, looked up by external id, for one-user serving."""
from __future__ import annotations

import numpy as np

from sparcode.encoder.runs import Run, RunError


def user_history(run: Run, user_id: str) -> tuple[int, np.ndarray, list[str]]:
    """(user index, left-padded history of the last max_history items, ids of every seen item).

    A served user is described by everything known about them: the whole sequence."""
    index = _user_index(run).get(str(user_id))
    if index is None:
        sample = ", ".join(run.dataset.user_ids[:3])
        raise RunError(f"unknown user {user_id!r} in {run.config.dataset} (user ids look like {sample})")
    sequence = run.dataset.sequences[index]
    length = run.split.max_history
    recent = sequence[-length:]
    history = np.full(length, run.dataset.padding_item, dtype=np.int64)
    history[length - len(recent):] = recent
    seen = [run.dataset.item_ids[i] for i in np.unique(sequence)]
    return index, history, seen


def _user_index(run: Run) -> dict[str, int]:
    cache = getattr(run, "_user_index", None)
    if cache is None:
        cache = {u: i for i, u in enumerate(run.dataset.user_ids)}
        run._user_index = cache
    return cache
