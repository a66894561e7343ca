"""`sparcode evaluate` behind the CLI: pick how the run is scored, then score the test users.

Every path ends in ranked item lists evaluated by the same harness, so a number from the
model, the embedded backend and a search engine mean the same thing.
"""
from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np

from sparcode.encoder.runs import Run, RunError, open_run


def evaluate_run(run_dir: Path, backend: str = "model", alias: str | None = None, export_dir: Path | None = None,
                 exclude_seen: bool | None = None, part: str = "test", ks=(5, 10, 20, 50), ef: int | None = None,
                 num_candidates: int | None = None, sample_users: int = 0, sample_seed: int = 0,
                 serve: dict | None = None, url: str | None = None,
                 before_scoring: Callable[[Run], None] | None = None):
    """→ (metrics, rankings, scores, run, evalset), scores being each ranked list's scores (the
    model's, the backend's, TIGER's beam log-probabilities); ``sample_users`` > 0 scores a seeded
    random subset of that many users (a quick check of a slow model), recorded in the metrics;
    ``serve`` overrides the run's serve settings (`open_run`); ``url`` is the node of the
    es/opensearch/es-knn backends; ``before_scoring(run)`` runs once the run is open, before the
    long part (the CLI checks its output paths against the run's dataset there)."""
    run = open_run(run_dir, serve=serve, allow_unfinished=True)
    evalset = run.split.test if part == "test" else run.split.valid
    population = len(evalset)
    if not population:  # runs trained before the split was checked at training time
        raise RunError(f"{run_dir} has no {'test' if part == 'test' else 'validation'} users to evaluate")
    evalset = evalset.sample(sample_users, sample_seed)
    exclude = run.split.exclude_seen_default if exclude_seen is None else exclude_seen
    if before_scoring is not None:
        before_scoring(run)
    if run.kind == "tiger" and (backend != "model" or alias is not None or export_dir is not None):
        raise RunError(f"{run_dir} is a TIGER run: evaluate scores it by its constrained beam search only "
                       "(drop --backend, --alias and --export)")
    if run.kind == "tiger":
        from sparcode.generative.train_tiger import evaluate_tiger

        metrics, rankings, scores = evaluate_tiger(run.path, run.dataset, run.split, evalset, exclude_seen=exclude,
                                                   ks=ks, return_scores=True)
    elif backend in ("hnsw", "es-knn", "exact"):
        from sparcode.vector_evaluation import evaluate_vector_backend

        metrics, rankings, scores = evaluate_vector_backend(run, evalset, backend, alias, export_dir, exclude,
                                                            ks, ef=ef, num_candidates=num_candidates, url=url)
    elif backend != "model":
        if run.kind != "sparcode":
            raise RunError(f"--backend {backend} serves SparCode exports; {run_dir} was trained with --model {run.kind}")
        metrics, rankings, scores = _evaluate_backend(run, evalset, backend, alias, export_dir, exclude, ks, url)
    elif run.kind == "sparcode":
        from sparcode.encoder.evaluation import evaluate_sparcode_served

        metrics, rankings, scores = evaluate_sparcode_served(run, evalset, exclude, return_scores=True)
    elif run.kind == "ease":
        from sparcode.encoder.ease_run import evaluate_ease

        metrics, rankings, scores = evaluate_ease(run, evalset, exclude, ks, part, return_scores=True)
    else:
        from sparcode.encoder.evaluation import evaluate_model_scores

        metrics, rankings, scores = evaluate_model_scores(run, evalset, exclude)
    metrics.update({"exclude_seen": exclude, "backend": backend, "model": run.kind, "dataset": run.config.dataset})
    if not run.info:
        metrics["unfinished"] = True
    if len(evalset) < population:
        metrics.update({"sampled_from": population, "sample_seed": sample_seed})
    return metrics, rankings, scores, run, evalset


def _evaluate_backend(run: Run, evalset, backend: str, alias, export_dir, exclude: bool, ks, url: str | None = None):
    from sparcode.commands.search import open_serving_backend
    from sparcode.encoder.evaluation import served_queries
    from sparcode.eval.harness import evaluate_rankings

    model, device = run.load_model()
    engine, probes = open_serving_backend(backend, run, export_dir, alias, url)
    queries = served_queries(model, run, evalset, device, engine.code_table, probes)
    item_ids = run.dataset.item_ids
    excludes = [[item_ids[i] for i in seen] for seen in evalset.seen] if exclude else None
    hits = engine.batch_search(queries, max(ks), exclude_items=excludes)
    index_of = {item: i for i, item in enumerate(item_ids)}
    rankings = [np.asarray([index_of[h.item_id] for h in user_hits], dtype=np.int64) for user_hits in hits]
    scores = [np.asarray([h.score for h in user_hits], dtype=np.float64) for user_hits in hits]
    metrics = evaluate_rankings(rankings, evalset, ks)
    return metrics, rankings, scores
