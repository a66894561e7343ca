"""Top-K metrics from ranked item lists and target sets.

For one user with ranked list r_1, r_2, ... (distinct items, -1 = empty slot) and target set T:

* ``recall@K  = |{r_1..r_K} ∩ T| / |T|``  (ComiRec's definition: |T|, not min(|T|, K))
* ``ndcg@K    = DCG@K / IDCG@K`` with binary gains, ``DCG@K = Σ_{i≤K, r_i ∈ T} 1 / log2(i + 1)``
  and ``IDCG@K = Σ_{i ≤ min(|T|, K)} 1 / log2(i + 1)``
* ``hr@K      = 1 if {r_1..r_K} ∩ T ≠ ∅ else 0``

Each is averaged over users. Users with no targets are an error: the splits never produce them.
"""
from __future__ import annotations

import numpy as np

KS = (5, 10, 20, 50)
EMPTY = -1


def pad_rankings(rankings: list[np.ndarray], k: int) -> np.ndarray:
    """Ragged ranked lists → (n, k) int64, cut at k, short lists filled with EMPTY."""
    out = np.full((len(rankings), k), EMPTY, dtype=np.int64)
    for row, ranked in enumerate(rankings):
        ranked = np.asarray(ranked, dtype=np.int64)[:k]
        out[row, :len(ranked)] = ranked
    return out


def hit_matrix(ranked: np.ndarray, targets: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """(n, k) bool: is ranked[u, i] a target of u; and |T_u| per user (targets deduplicated)."""
    targets = [np.unique(np.asarray(t, dtype=np.int64)) for t in targets]
    n_targets = np.array([len(t) for t in targets], dtype=np.int64)
    if len(ranked) != len(targets):
        raise ValueError(f"{len(ranked)} ranked lists for {len(targets)} target sets")
    if (n_targets == 0).any():
        raise ValueError(f"user row {int(np.argmin(n_targets))} has no targets")
    # A repeated item would be counted as two hits (recall above 1): a ranker bug, not a result.
    ordered = np.sort(ranked, axis=1)
    repeated = ((ordered[:, 1:] == ordered[:, :-1]) & (ordered[:, 1:] != EMPTY)).any(axis=1)
    if repeated.any():
        raise ValueError(f"user row {int(np.argmax(repeated))} ranks the same item twice")
    # One membership test for all users: encode (row, item) pairs as single integers.
    span = int(max(ranked.max(initial=0), max((int(t[-1]) for t in targets), default=0))) + 2
    rows = np.repeat(np.arange(len(targets), dtype=np.int64), n_targets)
    target_keys = rows * span + (np.concatenate(targets) if targets else np.zeros(0, np.int64)) + 1
    ranked_keys = np.arange(len(ranked), dtype=np.int64)[:, None] * span + ranked + 1
    hits = np.isin(ranked_keys, target_keys) & (ranked != EMPTY)
    return hits, n_targets


def metrics_from_hits(hits: np.ndarray, n_targets: np.ndarray, ks=KS) -> dict[str, float]:
    n, width = hits.shape
    discounts = 1.0 / np.log2(np.arange(2, width + 2))
    dcg = np.cumsum(hits * discounts, axis=1)
    ideal = np.cumsum(discounts)
    found = np.cumsum(hits, axis=1)
    out: dict[str, float] = {}
    for k in ks:
        if k > width:
            raise ValueError(f"metrics @{k} need rankings of length {k}; got {width}")
        idcg = ideal[np.minimum(n_targets, k) - 1]
        out[f"recall@{k}"] = float(np.mean(found[:, k - 1] / n_targets)) if n else 0.0
        out[f"ndcg@{k}"] = float(np.mean(dcg[:, k - 1] / idcg)) if n else 0.0
        out[f"hr@{k}"] = float(np.mean(found[:, k - 1] > 0)) if n else 0.0
    out["users"] = int(n)
    return out


def ranking_metrics(ranked: np.ndarray, targets: list[np.ndarray], ks=KS) -> dict[str, float]:
    """Recall/NDCG/HR@K averaged over users; ``ranked`` is (n, ≥ max(ks)) item indices."""
    hits, n_targets = hit_matrix(np.asarray(ranked, dtype=np.int64), targets)
    return metrics_from_hits(hits, n_targets, ks)
