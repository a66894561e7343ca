"""Train/validation/test splits for the two published protocols.

``multi-target`` (ComiRec; used for ml-1m): users are permuted with ``seed`` and cut 80/10/10
into train/valid/test users. Train users contribute every sliding window of their full
sequence. A valid/test user of sequence length n shows the model its first
``max(1, floor(0.8 n))`` items (``seen``; ``histories`` holds the last ``max_history`` of them)
and must retrieve the rest (``targets``, deduplicated, first occurrence kept). Targets that
also occur in ``seen`` stay targets, as in ComiRec's evaluation; with the default
``exclude_seen`` they cannot be retrieved (ml-1m has no repeats, so this never happens there).
Users whose sequence is too short to leave a target (n < 2) are left out of the evaluation.

``leave-one-out`` (S3-Rec/TIGER; used for Beauty): every user is a train user. The last item
is the test target, the second last the validation target, windows are cut from
``seq[:-2]``; ``seen`` is the whole sequence before the target. A user needs 4 items to give a
training window (``seq[:-2]`` must hold a history and a positive) and 3 to be evaluated; a user
with 2 items or fewer is in no part of the split, though counted in ``train_users`` (runs record
that count, so it stays). The 5-core datasets have no such users. Seen items are kept at
evaluation by default (TIGER's protocol).

A window at position p ≥ 1 of a training sequence has history ``seq[max(0, p-H):p]``
(left-padded with ``dataset.padding_item``) and positive ``seq[p]``.
"""
from __future__ import annotations

import hashlib

import numpy as np

from sparcode.data.dataset import Dataset, EvalSet, Split, TrainExamples
from sparcode.data.errors import DataError

KINDS = ("multi-target", "leave-one-out")
TRAIN_FRACTION, VALID_FRACTION = 0.8, 0.1
HISTORY_FRACTION = 0.8


def make_split(dataset: Dataset, kind: str, seed: int = 0, max_history: int = 20) -> Split:
    if kind == "multi-target":
        return _multi_target(dataset, seed, max_history)
    if kind == "leave-one-out":
        return _leave_one_out(dataset, seed, max_history)
    raise ValueError(f"unknown split kind {kind!r}; expected one of {', '.join(KINDS)}")


def _multi_target(dataset: Dataset, seed: int, max_history: int) -> Split:
    n = dataset.n_users
    order = np.random.default_rng(seed).permutation(n)
    n_train, n_valid = int(n * TRAIN_FRACTION), int(n * VALID_FRACTION)
    train_users = np.sort(order[:n_train])
    valid_users = np.sort(order[n_train:n_train + n_valid])
    test_users = np.sort(order[n_train + n_valid:])
    seqs = dataset.sequences
    train = sliding_windows([seqs[u] for u in train_users], train_users, max_history, dataset.padding_item)

    def holdout(users: np.ndarray) -> EvalSet:
        users = np.array([u for u in users if len(seqs[u]) >= 2], dtype=np.int64)
        cuts = [max(1, int(len(seqs[u]) * HISTORY_FRACTION)) for u in users]
        seen = [seqs[u][:c] for u, c in zip(users, cuts)]
        targets = [_first_occurrences(seqs[u][c:]) for u, c in zip(users, cuts)]
        return EvalSet(users, last_items(seen, max_history, dataset.padding_item), seen, targets)

    return Split("multi-target", seed, max_history, train, holdout(valid_users), holdout(test_users),
                 train_users, exclude_seen_default=True)


def _leave_one_out(dataset: Dataset, seed: int, max_history: int) -> Split:
    seqs = dataset.sequences
    users = np.arange(dataset.n_users, dtype=np.int64)
    train = sliding_windows([s[:-2] for s in seqs], users, max_history, dataset.padding_item)
    evaluable = np.array([u for u in users if len(seqs[u]) >= 3], dtype=np.int64)

    def holdout(offset: int) -> EvalSet:
        seen = [seqs[u][:-offset] for u in evaluable]
        targets = [seqs[u][-offset:len(seqs[u]) - offset + 1] for u in evaluable]
        return EvalSet(evaluable.copy(), last_items(seen, max_history, dataset.padding_item), seen, targets)

    return Split("leave-one-out", seed, max_history, train, holdout(2), holdout(1), users,
                 exclude_seen_default=False)


# What each part of a split needs from a user's sequence, for the message when a dataset is too small.
_NEEDS = {
    "multi-target": {"train": "train users (80 % of all) with ≥ 2 items",
                     "valid": "validation users (10 % of all) with ≥ 2 items",
                     "test": "test users (10 % of all) with ≥ 2 items"},
    "leave-one-out": {"train": "users with ≥ 4 items", "valid": "users with ≥ 3 items",
                      "test": "users with ≥ 3 items"},
}


def check_usable(split: Split, n_users: int, dataset: str) -> None:
    """A split with no training windows, no validation users or no test users would train on
    nothing, select the model on recall 0, or report metrics over nobody: refused before
    anything is written."""
    for part, count in (("train", len(split.train)), ("valid", len(split.valid)), ("test", len(split.test))):
        if count == 0:
            what = "training windows" if part == "train" else f"{'validation' if part == 'valid' else 'test'} users"
            raise DataError(f"the {split.kind} split of its {n_users} users leaves no {what}: "
                            f"it needs {_NEEDS[split.kind][part]}", dataset)


def _first_occurrences(items: np.ndarray) -> np.ndarray:
    _, first = np.unique(items, return_index=True)
    return items[np.sort(first)]


def last_items(sequences: list[np.ndarray], width: int, padding: int) -> np.ndarray:
    """The last ``width`` items of each sequence as rows, left-padded, most recent last."""
    out = np.full((len(sequences), width), padding, dtype=np.int64)
    for row, seq in enumerate(sequences):
        tail = seq[-width:] if width else seq[:0]
        if len(tail):
            out[row, width - len(tail):] = tail
    return out


def sliding_windows(sequences: list[np.ndarray], users: np.ndarray, width: int, padding: int) -> TrainExamples:
    """Every (previous ≤ width items → next item) window, built without a Python loop per window."""
    lengths = np.array([len(s) for s in sequences], dtype=np.int64)
    flat = np.concatenate([np.asarray(s, dtype=np.int64) for s in sequences] + [np.zeros(0, np.int64)])
    starts = np.concatenate([[0], np.cumsum(lengths)[:-1]]) if len(lengths) else np.zeros(0, np.int64)
    owner = np.repeat(np.arange(len(sequences)), lengths)
    position = np.arange(len(flat)) - np.repeat(starts, lengths)
    targets = np.nonzero(position >= 1)[0]
    offsets = np.arange(-width, 0, dtype=np.int64)
    source = targets[:, None] + offsets[None, :]
    inside = source >= starts[owner[targets]][:, None]
    histories = np.where(inside, flat[np.maximum(source, 0)], padding)
    ends = (starts + lengths)[owner[targets]]
    return TrainExamples(np.asarray(users, dtype=np.int64)[owner[targets]], histories, flat[targets],
                         flat, targets, ends)


def split_summary(split: Split) -> dict:
    """Counts, seed and a fingerprint of who is where, for the run record."""
    digest = hashlib.sha256()
    for part in (split.train_users, split.valid.users, split.test.users):
        digest.update(np.ascontiguousarray(part, dtype=np.int64).tobytes())
        digest.update(b"|")
    return {
        "kind": split.kind,
        "seed": split.seed,
        "max_history": split.max_history,
        "train_users": int(len(split.train_users)),
        "train_examples": int(len(split.train)),
        "valid_users": int(len(split.valid)),
        "valid_targets": int(sum(len(t) for t in split.valid.targets)),
        "test_users": int(len(split.test)),
        "test_targets": int(sum(len(t) for t in split.test.targets)),
        "exclude_seen_default": split.exclude_seen_default,
        "fingerprint": digest.hexdigest()[:16],
    }
