"""Does adding EASE's item-item scores to a trained model help it, and does it help SparCode more?

A SparCode index could serve the sum in one query: each item document would also hold the
item-item weights B[j, item] > 0 under pseudo-terms for the history items j (a FeatureField takes only
positive values), and the query would add the user's last history items as terms with boost w. This
script measures that sum offline before anyone builds it:

    score = model score + w · EASE score,   w = weight × σ(model) / σ(EASE) on the validation users

SparCode is scored served-exact (items no code reaches add nothing but may still be reached
through EASE); every other model densely, as `sparcode evaluate` scores it. EASE is fitted at one λ
on the rows each part may see (as `sparcode train --model ease` fits it). The weight is chosen on
validation R@50 and applied once to the test users; weight 0 is the model alone.

    python scripts/ease_hybrid.py RUN --out hybrid.json [--positive-only] [--lambda 1000]
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from script_checks import check_out_file, open_run_of
from sparcode.encoder.ease import EaseModel, fit_at
from sparcode.encoder.evaluation import ServedIndex
from sparcode.encoder.train import model_scores
from sparcode.eval.harness import evaluate_scores

REPORTED = ("recall@20", "ndcg@20", "recall@50", "ndcg@50")
WEIGHTS = "0,0.05,0.1,0.2,0.3,0.5,0.75,1,1.5,2"


def model_score_matrices(run):
    """evalset → full score matrix, with the model (and SparCode's postings) loaded once for both parts."""
    if run.kind == "sparcode":
        index = ServedIndex(run)
        score_fn = lambda evalset: index.score_fn(index.queries(evalset))  # noqa: E731
    else:
        model, device = run.load_model()
        score_fn = lambda evalset: model_scores(model, evalset, device)  # noqa: E731
    return lambda evalset: score_fn(evalset)(np.arange(len(evalset))).astype(np.float64)


def ease_score_matrix(run, evalset, part: str, lam: float, positive_only: bool) -> np.ndarray:
    history = run.config.model.ease_history or None
    ease = fit_at(run.dataset, run.split, lam, history, run.config.model.ease_fold_in, part)
    if positive_only:
        ease = EaseModel(ease.B.clamp(min=0), ease.lam, ease.history, ease.fold_in)
    return ease.score_histories(list(evalset.seen)).astype(np.float64)


def hybrid(model: np.ndarray, ease: np.ndarray, w: float, positive_only: bool) -> np.ndarray:
    if w == 0:  # a query without EASE terms: exactly the model's own scores
        return model
    reached = np.isfinite(model)
    total = np.where(reached, model, 0.0) + w * ease
    if positive_only:  # what an engine returns: items matched by at least one term
        total[~(reached | (ease > 0))] = -np.inf
    return total


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run", type=Path)
    parser.add_argument("--lambda", dest="lam", type=float, default=1000.0)
    parser.add_argument("--weights", default=WEIGHTS, help="Multiples of σ(model) / σ(EASE) to try.")
    parser.add_argument("--positive-only", action="store_true",
                        help="Keep only B's positive entries, as a FeatureField index would store them.")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()

    check_out_file(args.out)
    run = open_run_of(args.run, ("sparcode", "all-to-all", "two-tower"),
                      "the hybrid adds EASE to a SparCode, all-to-all or two-tower run")
    exclude = run.split.exclude_seen_default
    model_matrix = model_score_matrices(run)
    scores = {}
    for part in ("valid", "test"):
        evalset = getattr(run.split, part)
        scores[part] = (evalset, model_matrix(evalset),
                        ease_score_matrix(run, evalset, part, args.lam, args.positive_only))

    _, model_valid, ease_valid = scores["valid"]
    scale = model_valid[np.isfinite(model_valid)].std() / ease_valid.std()

    def measure(part: str, weight: float) -> dict:
        evalset, model, ease = scores[part]
        total = hybrid(model, ease, weight * scale, args.positive_only)
        metrics = evaluate_scores(lambda rows: total[rows], evalset, total.shape[1], exclude_seen=exclude)
        return {k: round(float(metrics[k]), 4) for k in REPORTED}

    rows = []
    for weight in (float(w) for w in args.weights.split(",")):
        rows.append({"weight": weight, **measure("valid", weight)})
        print(json.dumps(rows[-1]), flush=True)
    best = max(rows, key=lambda row: row["recall@50"])["weight"]
    result = {"run": str(args.run), "model": run.kind, "lambda": args.lam, "positive_only": args.positive_only,
              "scale": scale, "valid": rows, "chosen_weight": best,
              "test_model_alone": measure("test", 0.0), "test_hybrid": measure("test", best)}
    print(json.dumps({k: result[k] for k in ("chosen_weight", "test_model_alone", "test_hybrid")}))
    args.out.write_text(json.dumps(result, indent=1) + "\n")


if __name__ == "__main__":
    main()
