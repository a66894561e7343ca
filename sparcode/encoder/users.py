"""A user's history and seen items for one-user serving: a known user by external id, or an
anonymous user described only by the items they interacted with."""
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
    return index, *_padded(run, run.dataset.sequences[index])


def anonymous_history(run: Run, item_ids: list[str]) -> tuple[int, np.ndarray, list[str]]:
    """The same triple for a history given as item ids (oldest first); the user index is
    `n_users`, the profile-less row, so only the items describe the user."""
    if not item_ids:
        raise RunError("the history needs at least one item id")
    index_of = _item_index(run)
    # Every unknown id at once (each once, five by name), so a mistyped list is fixed in one go.
    unknown = [repr(item) for item in dict.fromkeys(item_ids) if item not in index_of]
    if unknown:
        sample = ", ".join(run.dataset.item_ids[:3])
        named = ", ".join(unknown[:5]) + (f" and {len(unknown) - 5} more" if len(unknown) > 5 else "")
        raise RunError(f"unknown item{'s' if len(unknown) > 1 else ''} {named} in the history for "
                       f"{run.config.dataset} (item ids look like {sample})")
    sequence = np.asarray([index_of[item] for item in item_ids], dtype=np.int64)
    return run.dataset.n_users, *_padded(run, sequence)


def _padded(run: Run, sequence: np.ndarray) -> tuple[np.ndarray, list[str]]:
    length = run.split.max_history
    recent = sequence[-length:]
    history = np.full(length, run.dataset.padding_item, dtype=np.int64)
    history[length - len(recent):] = recent
    seen = [run.dataset.item_ids[i] for i in np.unique(sequence)]
    return history, seen


def _user_index(run: Run) -> dict[str, int]:
    cache = getattr(run, "_user_index", None)
    if cache is None:
        cache = {u: i for i, u in enumerate(run.dataset.user_ids)}
        run._user_index = cache
    return cache


def _item_index(run: Run) -> dict[str, int]:
    cache = getattr(run, "_item_index", None)
    if cache is None:
        cache = {item: i for i, item in enumerate(run.dataset.item_ids)}
        run._item_index = cache
    return cache
