"""`sparcode evaluate --backend hnsw|es-knn|exact` for two-tower runs: the end metric from each
vector path, and each ANN path's recall against exact flat search of the same vectors.

Like `evaluation.py`, this bridges the two sides: user vectors come from the model
(`sparcode.encoder`), rankings from a pipeline backend reading the export.
"""
from __future__ import annotations

import numpy as np

from sparcode.encoder.runs import Run, RunError


def evaluate_vector_backend(run: Run, evalset, backend: str, alias, export_dir, exclude: bool, ks,
                            ef: int | None = None, num_candidates: int | None = None, url: str | None = None):
    from sparcode.commands._vectors import open_vector_backend, user_vectors
    from sparcode.eval.harness import evaluate_rankings
    from sparcode.pipeline.vectors import ExactBackend, recall_vs_exact

    if run.kind != "two-tower":
        raise RunError(f"--backend {backend} serves two-tower vector exports; {run.path} was trained with --model {run.kind}")
    k = max(ks)
    model, device = run.load_model()
    queries = list(user_vectors(model, evalset.users, evalset.histories, device))
    served = open_vector_backend(backend, run.path, export_dir, alias, run.fingerprint(), k=k, ef=ef,
                                 num_candidates=num_candidates, url=url)
    item_ids = run.dataset.item_ids
    excludes = [[item_ids[i] for i in seen] for seen in evalset.seen] if exclude else None
    hits = served.batch_search(queries, k, exclude_items=excludes)
    index_of = {item: i for i, item in enumerate(item_ids)}
    rankings = [np.asarray([index_of[h.item_id] for h in user_hits], dtype=np.int64) for user_hits in hits]
    scores = [np.asarray([h.score for h in user_hits], dtype=np.float64) for user_hits in hits]
    metrics = evaluate_rankings(rankings, evalset, ks)
    if backend != "exact":
        exact = ExactBackend(served.vectors) if hasattr(served, "vectors") else \
            open_vector_backend("exact", run.path, export_dir, None, run.fingerprint())
        truth = exact.batch_search(queries, k, exclude_items=excludes)
        for cut in sorted({10, k}):
            metrics[f"ann_recall@{cut}"] = recall_vs_exact(hits, truth, cut)
    if backend == "hnsw":
        metrics["hnsw"] = {key: served.index.meta[key] for key in ("m", "ef_construction", "seed")} | {"ef": served.ef}
    if backend == "es-knn":
        metrics["num_candidates"] = served.num_candidates
    return metrics, rankings, scores
