"""EASE as a `sparcode train`/`evaluate` run: fit on the run's split, keep B in RUN_DIR/ease/."""
from __future__ import annotations

from pathlib import Path

from sparcode.config import RunConfig
from sparcode.data.dataset import Dataset, Split
from sparcode.encoder.ease import EaseModel, fit_ease

EASE_DIR = "ease"


def train_ease(run_dir: Path, cfg: RunConfig, dataset: Dataset, split: Split) -> dict:
    history = cfg.model.ease_history or None  # 0 in the config means the whole history
    model = fit_ease(dataset, split, lambdas=cfg.model.ease_lambda, history=history)
    model.save(Path(run_dir) / EASE_DIR)
    return {"lambda": model.lam, "history": model.history, "selection": model.info["selection"],
            "train_seconds": model.info["fit_seconds"]}


def evaluate_ease(run, evalset, exclude_seen: bool, ks=(5, 10, 20, 50)):
    model = EaseModel.load(Path(run.path) / EASE_DIR)
    return model.evaluate(evalset, exclude_seen, ks=ks, return_rankings=True)
