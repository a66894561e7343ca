"""TREC run and qrels files with external user and item ids, for trec_eval or later re-scoring.

    run:   user Q0 item rank score tag     (rank from 1)
    qrels: user 0 item 1

trec_eval orders a user's items by score, not by rank, breaking ties by item id; when no
scores are given the written score is ``len(list) - rank + 1`` so the file keeps our order.
"""
from __future__ import annotations

import os
from collections import defaultdict
from pathlib import Path

import numpy as np

from sparcode.data.dataset import Dataset, EvalSet
from sparcode.data.errors import DataError
from sparcode.staging import staged_file


def check_writable(path: Path) -> None:
    """Refuse an output path before a long evaluation rather than after it."""
    parent = Path(path).absolute().parent
    if not parent.is_dir():
        raise DataError(f"cannot write {path}: folder {parent} does not exist")
    if not os.access(parent, os.W_OK):
        raise DataError(f"cannot write {path}: folder {parent} is not writable")


def write_run(path: Path, rankings: list[np.ndarray], evalset: EvalSet, dataset: Dataset, tag: str = "sparcode",
              scores: list[np.ndarray] | None = None) -> None:
    if len(rankings) != len(evalset):
        raise ValueError(f"{len(rankings)} ranked lists for {len(evalset)} users")
    with staged_file(path) as fh:
        for row, ranked in enumerate(rankings):
            user = dataset.user_ids[evalset.users[row]]
            row_scores = scores[row] if scores is not None else np.arange(len(ranked), 0, -1)
            for rank, (item, score) in enumerate(zip(ranked, row_scores), 1):
                fh.write(f"{user} Q0 {dataset.item_ids[item]} {rank} {float(score):.6g} {tag}\n")


def write_qrels(path: Path, evalset: EvalSet, dataset: Dataset) -> None:
    with staged_file(path) as fh:
        for row, targets in enumerate(evalset.targets):
            user = dataset.user_ids[evalset.users[row]]
            for item in targets:
                fh.write(f"{user} 0 {dataset.item_ids[item]} 1\n")


def read_run(path: Path) -> dict[str, list[str]]:
    """user → items in rank order (by the rank column)."""
    ranked: dict[str, list[tuple[int, str]]] = defaultdict(list)
    for lineno, fields in _rows(path, 6):
        try:
            ranked[fields[0]].append((int(fields[3]), fields[2]))
        except ValueError:
            raise DataError(f"rank {fields[3]!r} is not an integer", path, lineno) from None
    return {user: [item for _, item in sorted(pairs)] for user, pairs in ranked.items()}


def read_qrels(path: Path) -> dict[str, set[str]]:
    """user → relevant items (relevance > 0)."""
    relevant: dict[str, set[str]] = defaultdict(set)
    for lineno, fields in _rows(path, 4):
        if fields[3] not in ("0", "-1"):
            relevant[fields[0]].add(fields[2])
    return dict(relevant)


def _rows(path: Path, width: int):
    try:
        with open(path, encoding="utf-8") as fh:
            for lineno, line in enumerate(fh, 1):
                fields = line.split()
                if not fields:
                    continue
                if len(fields) != width:
                    raise DataError(f"expected {width} fields, got {len(fields)}", path, lineno)
                yield lineno, fields
    except (OSError, UnicodeDecodeError) as err:
        raise DataError(f"cannot read: {err}", path) from None
