"""Semantic IDs: RQ-VAE codes made unique, stored on disk, and the prefix trie over them.

Items whose content lands on the same (c0, c1, c2) get a 4th token 0, 1, 2, … within the
group (in item-index order, so the assignment is reproducible); every other item gets 0.
The trie is a list of dense child tables, one per level: ``children[d][node, token]`` is the
node reached after the prefix ``node`` extended by ``token`` (-1: no item has that prefix); at
the last level it is the item index. Dense tables turn "which tokens are allowed next" into
one gather per decoding step for a whole batch of beams.

Files in the ID directory:
    semantic_ids.npy    int64 (n_items, levels + 1), row = dense item index
    semantic_ids.json   vocabulary sizes, collision statistics, codebook usage, external item ids
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

import numpy as np

from sparcode.staging import UnreadableFile, atomic_save_npy, atomic_write_bytes, read_json

IDS = "semantic_ids.npy"
IDS_META = "semantic_ids.json"


def collision_stats(codes: np.ndarray) -> dict:
    """How often the RQ-VAE codes alone fail to tell items apart."""
    _, inverse, counts = np.unique(codes, axis=0, return_inverse=True, return_counts=True)
    group_size = counts[inverse.reshape(-1)]
    return {
        "items": int(len(codes)),
        "distinct_ids": int(len(counts)),
        "collision_rate": float(np.mean(group_size > 1)) if len(codes) else 0.0,
        "max_group": int(counts.max(initial=0)),
    }


def add_dedup_token(codes: np.ndarray) -> np.ndarray:
    """(n, L) codes → (n, L+1) with a last token numbering items within each collision group."""
    codes = np.asarray(codes, dtype=np.int64)
    n = len(codes)
    if n == 0:
        return np.zeros((0, codes.shape[1] + 1), dtype=np.int64)
    _, group = np.unique(codes, axis=0, return_inverse=True)
    group = group.reshape(-1)
    order = np.lexsort((np.arange(n), group))  # by group, then item index
    sorted_group = group[order]
    starts = np.r_[0, np.flatnonzero(np.diff(sorted_group)) + 1]
    rank_sorted = np.arange(n) - np.repeat(starts, np.diff(np.r_[starts, n]))
    rank = np.empty(n, dtype=np.int64)
    rank[order] = rank_sorted
    return np.concatenate([codes, rank[:, None]], axis=1)


def vocab_sizes(ids: np.ndarray, codes_per_level: int) -> list[int]:
    """Per-level vocabulary: the RQ-VAE levels have `codes_per_level`; the last is max(c3) + 1."""
    levels = ids.shape[1]
    return [codes_per_level] * (levels - 1) + [int(ids[:, -1].max(initial=0)) + 1]


@dataclass
class PrefixTrie:
    children: list[np.ndarray]  # per depth d: int64 (n_nodes_d, vocab_d); last depth → item index
    vocab: list[int]

    @classmethod
    def build(cls, ids: np.ndarray, vocab: list[int] | None = None) -> "PrefixTrie":
        ids = np.asarray(ids, dtype=np.int64)
        n, levels = ids.shape
        vocab = vocab or [int(ids[:, d].max(initial=0)) + 1 for d in range(levels)]
        if len(np.unique(ids, axis=0)) != n:
            raise ValueError("semantic IDs are not unique; add the dedup token first")
        children = []
        node = np.zeros(n, dtype=np.int64)  # every item starts at the root
        n_nodes = 1
        for d in range(levels):
            table = np.full((n_nodes, vocab[d]), -1, dtype=np.int64)
            if d == levels - 1:
                table[node, ids[:, d]] = np.arange(n)
            else:
                keys = node * vocab[d] + ids[:, d]
                unique_keys, next_node = np.unique(keys, return_inverse=True)
                table.flat[unique_keys] = np.arange(len(unique_keys))
                node, n_nodes = next_node.reshape(-1), len(unique_keys)
            children.append(table)
        return cls(children, list(vocab))

    @property
    def levels(self) -> int:
        return len(self.children)

    def item(self, sequence) -> int:
        """Item index of a full ID, or -1."""
        node = 0
        for d, token in enumerate(sequence):
            if not 0 <= token < self.vocab[d]:
                return -1
            node = int(self.children[d][node, token])
            if node < 0:
                return -1
        return node

    @cached_property
    def item_paths(self) -> np.ndarray:
        """(items, levels): the node each item's ID reaches at every depth (the last is the item)."""
        parents = []
        for table in self.children:
            parent = np.full(int(table.max(initial=-1)) + 1, -1, dtype=np.int64)
            rows, _ = np.nonzero(table >= 0)
            parent[table[table >= 0]] = rows
            parents.append(parent)
        paths = np.empty((len(parents[-1]), self.levels), dtype=np.int64)
        paths[:, -1] = np.arange(len(parents[-1]))
        for d in range(self.levels - 1, 0, -1):
            paths[:, d - 1] = parents[d][paths[:, d]]
        return paths

    @cached_property
    def items_below(self) -> list[np.ndarray]:
        """Per depth: how many items each node reached at that depth leads to."""
        paths = self.item_paths
        return [np.bincount(paths[:, d], minlength=int(self.children[d].max(initial=-1)) + 1)
                for d in range(self.levels)]

    def items_with_prefix(self, prefix) -> np.ndarray:
        """Every item whose ID starts with `prefix` (cold-start retrieval by shared prefix)."""
        nodes = np.zeros(1, dtype=np.int64)
        for d, token in enumerate(prefix):
            nodes = self.children[d][nodes, token]
            nodes = nodes[nodes >= 0]
            if len(nodes) == 0:
                return nodes
        for d in range(len(prefix), self.levels):
            nodes = self.children[d][nodes].reshape(-1)
            nodes = nodes[nodes >= 0]
        return np.sort(nodes)


def save_ids(out_dir: Path, ids: np.ndarray, meta: dict) -> None:
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    # Each file appears whole or not at all, the IDs before the metadata that vouches for them.
    atomic_save_npy(out_dir / IDS, np.asarray(ids, dtype=np.int64))
    atomic_write_bytes(out_dir / IDS_META, (json.dumps(meta, indent=2) + "\n").encode())


def settings_not_built_with(built_with: dict, wanted: dict) -> list[str]:
    """Keys of `wanted` (RQ-VAE settings) whose value, as JSON holds it, the IDs were not built
    with. `input_dim` is the text encoder's width, not a choice, and never counts."""
    return sorted(key for key, value in wanted.items()
                  if key != "input_dim" and json.loads(json.dumps(value)) != built_with.get(key))


def load_ids(out_dir: Path) -> tuple[np.ndarray, dict]:
    out_dir = Path(out_dir)
    if not (out_dir / IDS).is_file() or not (out_dir / IDS_META).is_file():
        raise FileNotFoundError(f"no semantic IDs in {out_dir}; build them with `sparcode semantic-ids --out RUN_DIR`")
    try:
        ids = np.load(out_dir / IDS, allow_pickle=False)
    except (ValueError, EOFError, OSError) as err:
        raise UnreadableFile(f"{out_dir / IDS}: not a complete array file ({err})") from None
    return ids, read_json(out_dir / IDS_META)
