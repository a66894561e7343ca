"""`sparcode train` behind the CLI: read data, split, fit the requested model, record the run."""
from __future__ import annotations

import platform
import time
from pathlib import Path

from sparcode.config import RunConfig
from sparcode.data.readers import load_dataset
from sparcode.data.splits import make_split, split_summary


def train_run(run_dir: Path, cfg: RunConfig, resume: bool = False, progress: bool = True) -> dict:
    from sparcode.encoder import checkpoint as ckpt

    run_dir = Path(run_dir)
    started = time.perf_counter()
    dataset = load_dataset(cfg.dataset)
    split = make_split(dataset, cfg.split, seed=cfg.seed, max_history=cfg.train.max_history)
    run_dir.mkdir(parents=True, exist_ok=True)
    kind = cfg.model.kind
    if kind == "ease":
        from sparcode.encoder.ease_run import train_ease

        summary = train_ease(run_dir, cfg, dataset, split, progress=progress)
    elif kind == "tiger":
        from sparcode.generative.train_tiger import train_tiger

        summary = train_tiger(run_dir, dataset, split, cfg, progress=progress)
    else:
        from sparcode.encoder.train import train

        summary = train(run_dir, cfg, dataset, split, resume=resume, progress=progress)
    cfg.save(run_dir / ckpt.CONFIG)
    summary = {**summary, "wall_seconds": round(time.perf_counter() - started, 1)}
    summary.setdefault("train_seconds", summary["wall_seconds"])
    ckpt.write_json(run_dir / ckpt.RUN_INFO, {
        "model": kind, "dataset": cfg.dataset, "split": split_summary(split), "seed": cfg.seed,
        "python": platform.python_version(), **summary,
    })
    return summary
