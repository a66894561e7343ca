"""In-memory dataset and split shapes shared by every model and the evaluation harness.

Items and users are re-indexed densely: item index i in [0, n_items) maps to the external id
``item_ids[i]``; index ``n_items`` is reserved as padding in history matrices.
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass, field

import numpy as np


@dataclass
class CategoricalFeature:
    """A categorical (possibly multi-valued) feature as a padded id matrix.

    ``values[row]`` holds value ids in [1, vocab_size); 0 is padding, so an embedding table of
    ``vocab_size`` rows with ``padding_idx=0`` reads it directly. ``vocab[v]`` names value v.
    """

    name: str
    values: np.ndarray  # int64 (rows, width)
    vocab: list[str]

    @property
    def vocab_size(self) -> int:
        return len(self.vocab)


@dataclass
class Dataset:
    name: str
    user_ids: list[str]  # external id per user index
    item_ids: list[str]  # external id per item index
    sequences: list[np.ndarray]  # per user index: item indices in time order (int64)
    item_features: list[CategoricalFeature] = field(default_factory=list)  # rows = items
    user_features: list[CategoricalFeature] = field(default_factory=list)  # rows = users
    # Per item: attributes the search engine can filter on (title, genres, year, brand, ...),
    # and their Elasticsearch types ({"genres": "keyword", "year": "integer", ...}).
    item_attributes: list[dict] = field(default_factory=list)
    item_attribute_types: dict[str, str] = field(default_factory=dict)

    @property
    def n_users(self) -> int:
        return len(self.user_ids)

    @property
    def n_items(self) -> int:
        return len(self.item_ids)

    @property
    def padding_item(self) -> int:
        return len(self.item_ids)

    def digest(self) -> str:
        """sha256 (16 hex) of everything a model learns from: ids, sequences and features. A run
        records it, so data edited after training (reordered lines, a changed item, a new
        feature value) is refused rather than silently scored against other inputs."""
        digest = hashlib.sha256()
        for ids in (self.user_ids, self.item_ids):
            digest.update("\x1f".join(ids).encode())
            digest.update(b"\x1e")
        digest.update(np.asarray([len(s) for s in self.sequences], dtype=np.int64).tobytes())
        for seq in self.sequences:
            digest.update(np.ascontiguousarray(seq, dtype=np.int64).tobytes())
        for side, features in (("item", self.item_features), ("user", self.user_features)):
            for feature in features:
                digest.update(f"{side}:{feature.name}:".encode() + "\x1f".join(feature.vocab).encode())
                digest.update(np.ascontiguousarray(feature.values, dtype=np.int64).tobytes())
        return digest.hexdigest()[:16]


@dataclass
class EvalSet:
    """Users to evaluate: the model sees ``histories``; ``seen`` is excluded when asked."""

    users: np.ndarray  # user indices, int64 (n,)
    histories: np.ndarray  # int64 (n, max_history), left-padded with dataset.padding_item, most recent last
    seen: list[np.ndarray]  # per user: every item index in the user's known history
    targets: list[np.ndarray]  # per user: the items to retrieve

    def __len__(self) -> int:
        return len(self.users)

    def sample(self, limit: int, seed: int) -> "EvalSet":
        """A seeded random subset of ``limit`` users (all of them when ``limit`` is 0 or too large)."""
        if not limit or limit >= len(self):
            return self
        rows = sample_rows(len(self), limit, seed)
        return EvalSet(self.users[rows], self.histories[rows], [self.seen[r] for r in rows],
                       [self.targets[r] for r in rows])


def sample_rows(n: int, limit: int, seed: int) -> np.ndarray:
    """Sorted row indices of a seeded sample of ``limit`` of ``n`` rows; every row when ``limit`` is 0 or ≥ n."""
    if not limit or limit >= n:
        return np.arange(n)
    return np.sort(np.random.default_rng([seed, 7]).choice(n, size=limit, replace=False))


@dataclass
class TrainExamples:
    """Sliding-window next-item examples, plus where each positive sits in its training
    sequence so a loss can also look at the items that follow it."""

    users: np.ndarray  # int64 (n,)
    histories: np.ndarray  # int64 (n, max_history), left-padded with dataset.padding_item
    positives: np.ndarray  # int64 (n,)
    sequence_items: np.ndarray  # int64: every training sequence, concatenated
    positive_at: np.ndarray  # int64 (n,): index of each positive in sequence_items
    sequence_end: np.ndarray  # int64 (n,): one past the end of its sequence there

    def __len__(self) -> int:
        return len(self.users)

    def upcoming(self, rows: np.ndarray, horizon: int, padding: int) -> np.ndarray:
        """(len(rows), horizon): each positive and the items after it in its own training
        sequence, right-padded with ``padding`` where the sequence ends."""
        index = self.positive_at[rows, None] + np.arange(horizon)
        inside = index < self.sequence_end[rows, None]
        return np.where(inside, self.sequence_items[np.where(inside, index, 0)], padding)


@dataclass
class Split:
    kind: str  # "multi-target" | "leave-one-out"
    seed: int
    max_history: int
    train: TrainExamples
    valid: EvalSet
    test: EvalSet
    train_users: np.ndarray  # user indices whose windows are in `train`
    # Default for excluding `seen` items at evaluation: True for multi-target, False for leave-one-out.
    exclude_seen_default: bool = True
