"""Score every evaluation user against the full catalog, rank, and compute the metrics.

Rankings are deterministic: higher score first, equal scores by smaller item index. A score
of -inf means "not retrievable": excluded (seen) items get it, and a sparse model gives it to
items no query term matches (a search engine would not return them). Such items never appear
in a ranking, even when fewer than K items remain.
"""
from __future__ import annotations

from collections.abc import Callable

import numpy as np

from sparcode.data.dataset import EvalSet
from sparcode.eval.metrics import EMPTY, KS, hit_matrix, metrics_from_hits, pad_rankings

ScoreFn = Callable[[np.ndarray], np.ndarray]


def top_k(scores: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """(n, k) item indices and their scores, ties broken by smaller index."""
    n, n_items = scores.shape
    k = min(k, n_items)
    if k == 0:
        return np.zeros((n, 0), np.int64), np.zeros((n, 0), scores.dtype)
    # The k-th best value per row: everything above it is in, ties at it are taken by index.
    kth = -np.partition(-scores, k - 1, axis=1)[:, k - 1:k]
    above = scores > kth
    at = scores == kth
    room = k - above.sum(axis=1, keepdims=True)
    chosen = above | (at & (np.cumsum(at, axis=1) <= room))
    items = np.nonzero(chosen)[1].reshape(n, k)  # row-major, so each row's items ascend
    values = np.take_along_axis(scores, items, axis=1)
    order = np.argsort(-values, axis=1, kind="stable")  # stable keeps ascending index on ties
    return np.take_along_axis(items, order, axis=1), np.take_along_axis(values, order, axis=1)


def mask_seen(scores: np.ndarray, seen: list[np.ndarray]) -> None:
    """Set each row's seen items to -inf, in place."""
    lengths = [len(s) for s in seen]
    if sum(lengths):
        rows = np.repeat(np.arange(len(seen)), lengths)
        scores[rows, np.concatenate(seen).astype(np.int64)] = -np.inf


def evaluate_scores(score_fn: ScoreFn, evalset: EvalSet, n_items: int, ks=KS, exclude_seen: bool = True,
                    batch_size: int = 256, return_rankings: bool = False, return_scores: bool = False):
    """Metrics over ``evalset`` from full-catalog scores.

    ``score_fn(rows)`` gets row positions into the EvalSet (not user ids) and returns
    float scores of shape (len(rows), n_items). With ``return_rankings`` the result is
    ``(metrics, rankings)``, rankings being one array of max(ks) item indices per user;
    with ``return_scores`` it is ``(metrics, rankings, scores)``, scores matching rankings.
    """
    k = max(ks)
    batches_ranked, batches_values = [], []
    for start in range(0, len(evalset), batch_size):
        rows = np.arange(start, min(start + batch_size, len(evalset)))
        scores = np.array(score_fn(rows), dtype=np.float32)  # a copy: masking must not touch the caller's
        if scores.shape != (len(rows), n_items):
            raise ValueError(f"score_fn returned shape {scores.shape}, expected {(len(rows), n_items)}")
        if np.isnan(scores).any():
            raise ValueError(f"score_fn returned NaN scores for rows {start}..{rows[-1]}")
        if exclude_seen:
            mask_seen(scores, [evalset.seen[r] for r in rows])
        items, values = top_k(scores, k)
        items[np.isneginf(values)] = EMPTY
        batches_ranked.append(items)
        batches_values.append(values)
    width = min(k, n_items)
    ranked = np.concatenate(batches_ranked) if batches_ranked else np.zeros((0, width), np.int64)
    values = np.concatenate(batches_values) if batches_values else np.zeros((0, width), np.float32)
    rankings = [row[row != EMPTY] for row in ranked]
    ranked_scores = [row_values[row != EMPTY] for row, row_values in zip(ranked, values)]
    ranked = pad_rankings(list(ranked), k) if ranked.shape[1] < k else ranked
    metrics = metrics_from_hits(*hit_matrix(ranked, evalset.targets), ks)
    if return_scores:
        return metrics, rankings, ranked_scores
    if return_rankings:
        return metrics, rankings
    return metrics


def evaluate_rankings(rankings: list[np.ndarray], evalset: EvalSet, ks=KS, exclude_seen: bool = False) -> dict:
    """Metrics from ranked lists a backend produced (best first, one per EvalSet row).

    Repeated items count once (their first place); with ``exclude_seen`` the user's seen items
    are dropped before cutting at K, for backends that could not filter them.
    """
    if len(rankings) != len(evalset):
        raise ValueError(f"{len(rankings)} ranked lists for {len(evalset)} users")
    cleaned = []
    for row, ranked in enumerate(rankings):
        ranked = np.asarray(ranked, dtype=np.int64)
        _, first = np.unique(ranked, return_index=True)
        ranked = ranked[np.sort(first)]
        if exclude_seen:
            ranked = ranked[~np.isin(ranked, evalset.seen[row])]
        cleaned.append(ranked)
    ranked = pad_rankings(cleaned, max(ks))
    return metrics_from_hits(*hit_matrix(ranked, evalset.targets), ks)
