"""A user's history and seen items for one-user serving: a known user by external id, or an
anonymous user described only by the items they interacted with."""
from __future__ import annotations

import numpy as np

from sparcode.encoder.runs import Run, RunError


class UnknownUser(RunError):
    """A user id the run's dataset does not hold (a service answers it as "not found")."""

    def __init__(self, message: str, user_id: str):
        super().__init__(message)
        self.user_id = user_id


class UnknownItems(RunError):
    """History item ids the run's dataset does not hold; `item_ids` lists each once."""

    def __init__(self, message: str, item_ids: list[str]):
        super().__init__(message)
        self.item_ids = item_ids


def user_history(run: Run, user_id: str) -> tuple[int, np.ndarray, list[str]]:
    """(user index, left-padded history of the last max_history items, ids of every seen item).

    A served user is described by everything known about them: the whole sequence."""
    index = _known_user(run, user_id)
    return index, *_padded(run, run.dataset.sequences[index])


def items_history(run: Run, item_ids: list[str], user_id: str | None = None) -> tuple[int, np.ndarray, list[str]]:
    """The same triple for a history given as item ids (oldest first). The user index is
    `user_id`'s, whose profile features then describe the user with these items in place of the
    recorded ones; else `n_users`, the profile-less row, so only the items describe the user."""
    if not item_ids:
        raise RunError("the history needs at least one item id")
    row = run.dataset.n_users if user_id is None else _known_user(run, user_id)
    unknown = unknown_items(run, item_ids)
    if unknown:
        # Every unknown id at once (five by name), so a mistyped list is fixed in one go.
        sample = ", ".join(run.dataset.item_ids[:3])
        named = ", ".join(map(repr, unknown[:5])) + (f" and {len(unknown) - 5} more" if len(unknown) > 5 else "")
        raise UnknownItems(f"unknown item{'s' if len(unknown) > 1 else ''} {named} in the history for "
                           f"{run.config.dataset} (item ids look like {sample})", unknown)
    index_of = _item_index(run)
    sequence = np.asarray([index_of[item] for item in item_ids], dtype=np.int64)
    return row, *_padded(run, sequence)


def unknown_items(run: Run, item_ids: list[str]) -> list[str]:
    """The ids of `item_ids` the run's dataset lacks, each once, in order of first appearance."""
    index_of = _item_index(run)
    return [item for item in dict.fromkeys(item_ids) if item not in index_of]


def _known_user(run: Run, user_id: str) -> int:
    index = _user_index(run).get(str(user_id))
    if index is None:
        sample = ", ".join(run.dataset.user_ids[:3])
        raise UnknownUser(f"unknown user {user_id!r} in {run.config.dataset} (user ids look like {sample})",
                          str(user_id))
    return index


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
