"""EASE as a `sparcode train`/`evaluate` run: fit on the run's split, keep B in RUN_DIR/ease/."""
from __future__ import annotations

from pathlib import Path

from tqdm.auto import tqdm

from sparcode.config import RunConfig
from sparcode.data.dataset import Dataset, Split
from sparcode.encoder.ease import MODE, EaseModel, fit_at, fit_ease
from sparcode.eval.harness import evaluate_scores

EASE_DIR = "ease"


def train_ease(run_dir: Path, cfg: RunConfig, dataset: Dataset, split: Split, progress: bool = True) -> dict:
    history = cfg.model.ease_history or None  # 0 in the config means the whole history
    model = fit_ease(dataset, split, lambdas=cfg.model.ease_lambda, history=history, fold_in=cfg.model.ease_fold_in,
                     select_metric=cfg.train.select_metric, progress=progress, report=tqdm.write)
    model.save(Path(run_dir) / EASE_DIR)
    return {"lambda": model.lam, "lambda_by_mode": model.info["lambda_by_mode"], "history": model.history,
            "fold_in": model.fold_in, "selection": model.info["selection"], "train_seconds": model.info["fit_seconds"]}


def evaluate_ease(run, evalset, exclude_seen: bool, ks=(5, 10, 20, 50), part: str = "test",
                  return_scores: bool = False):
    """Scores from the stored B, or from B refitted where the stored one does not apply: the
    other way of scoring chose another λ, or B was fitted with the validation targets. The
    metrics name the λ used and whether B was refitted. → (metrics, rankings), and the rankings'
    scores third with `return_scores`."""
    model = EaseModel.load(Path(run.path) / EASE_DIR)
    lam = model.info.get("lambda_by_mode", {}).get(MODE[exclude_seen], model.lam)
    saw_valid_targets = model.info.get("refit_for_test", False) and part != "test"
    refit = lam != model.lam or saw_valid_targets
    if refit:
        model = fit_at(run.dataset, run.split, lam, model.history, model.fold_in, part)
    metrics, rankings, scores = evaluate_scores(model.score_fn(evalset), evalset, model.n_items, ks=ks,
                                                exclude_seen=exclude_seen, return_scores=True)
    metrics = {**metrics, "lambda": lam, "refitted": refit}
    return (metrics, rankings, scores) if return_scores else (metrics, rankings)
