"""Splits: determinism, disjoint users, the 80/20 and leave-one-out cuts, and no leakage."""
from __future__ import annotations

import numpy as np
import pytest

from sparcode.data.dataset import Dataset
from sparcode.data.splits import make_split, sliding_windows, split_summary


def toy(n_users=50, n_items=40, seed=3) -> Dataset:
    rng = np.random.default_rng(seed)
    seqs = [rng.choice(n_items, size=int(rng.integers(2, 35)), replace=False).astype(np.int64)
            for _ in range(n_users)]
    return Dataset("toy", [f"u{i}" for i in range(n_users)], [f"i{i}" for i in range(n_items)], seqs)


def test_windows_by_hand():
    ex = sliding_windows([np.array([5, 6, 7]), np.array([8, 9])], np.array([10, 11]), width=2, padding=99)
    assert ex.users.tolist() == [10, 10, 11]
    assert ex.histories.tolist() == [[99, 5], [5, 6], [99, 8]]
    assert ex.positives.tolist() == [6, 7, 9]


def test_multi_target_seeded_and_disjoint():
    ds = toy()
    a, b, c = (make_split(ds, "multi-target", seed=s) for s in (0, 0, 1))
    assert split_summary(a) == split_summary(b)
    assert np.array_equal(a.train.histories, b.train.histories)
    assert split_summary(a)["fingerprint"] != split_summary(c)["fingerprint"]
    parts = [set(a.train_users.tolist()), set(a.valid.users.tolist()), set(a.test.users.tolist())]
    assert sum(map(len, parts)) == ds.n_users == len(set().union(*parts))
    assert (len(parts[0]), len(parts[1]), len(parts[2])) == (40, 5, 5)
    assert a.exclude_seen_default is True


def test_multi_target_cut_and_no_leakage():
    ds = toy()
    split = make_split(ds, "multi-target", seed=0, max_history=8)
    for part in (split.valid, split.test):
        for row, user in enumerate(part.users):
            seq = ds.sequences[user]
            cut = max(1, int(len(seq) * 0.8))
            assert part.seen[row].tolist() == seq[:cut].tolist()
            assert part.targets[row].tolist() == seq[cut:].tolist()
            tail = seq[:cut][-8:].tolist()
            assert part.histories[row].tolist() == [ds.padding_item] * (8 - len(tail)) + tail
            assert not set(part.targets[row].tolist()) & set(part.histories[row].tolist())
    # Evaluation users contribute no training windows at all.
    held_out = set(split.valid.users.tolist()) | set(split.test.users.tolist())
    assert not held_out & set(split.train.users.tolist())
    assert len(split.train) == sum(len(ds.sequences[u]) - 1 for u in split.train_users)


def test_multi_target_dedups_targets():
    seqs = [np.array([0, 1, 2, 3, 4, 2, 4, 2, 5, 5])] * 10
    ds = Dataset("rep", [str(i) for i in range(10)], [str(i) for i in range(6)], seqs)
    split = make_split(ds, "multi-target")
    # cut = 8: targets 5, 5 → one target; repeated seen items stay in `seen` as they were.
    assert split.test.targets[0].tolist() == [5]
    assert split.test.seen[0].tolist() == [0, 1, 2, 3, 4, 2, 4, 2]


def test_leave_one_out_targets_are_last_items():
    ds = toy()
    split = make_split(ds, "leave-one-out", seed=0, max_history=5)
    assert split.exclude_seen_default is False
    assert np.array_equal(split.train_users, np.arange(ds.n_users))
    long_users = [u for u in range(ds.n_users) if len(ds.sequences[u]) >= 3]
    assert split.test.users.tolist() == long_users == split.valid.users.tolist()
    for row, user in enumerate(split.test.users):
        seq = ds.sequences[user]
        assert split.test.targets[row].tolist() == [seq[-1]]
        assert split.valid.targets[row].tolist() == [seq[-2]]
        assert split.test.seen[row].tolist() == seq[:-1].tolist()
        assert split.valid.seen[row].tolist() == seq[:-2].tolist()
        assert split.test.histories[row, -1] == seq[-2] and split.valid.histories[row, -1] == seq[-3]
    # Training stops before the validation item: no window predicts or contains seq[-2:].
    assert len(split.train) == sum(max(len(s) - 3, 0) for s in ds.sequences)
    for user in long_users[:10]:
        rows = split.train.users == user
        seq = ds.sequences[user]
        assert split.train.positives[rows].tolist() == seq[1:-2].tolist()
        assert not set(seq[-2:].tolist()) & set(split.train.histories[rows].ravel().tolist())


def test_unknown_kind():
    with pytest.raises(ValueError, match="unknown split kind"):
        make_split(toy(), "random")


def test_ml1m_multi_target_sizes():
    from sparcode.data.readers import load_dataset

    summary = split_summary(make_split(load_dataset("ml-1m"), "multi-target", seed=0))
    assert (summary["train_users"], summary["valid_users"], summary["test_users"]) == (4832, 604, 604)
    assert summary["train_examples"] == 804_847
