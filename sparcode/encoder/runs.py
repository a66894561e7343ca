"""Open a trained run directory: its config, dataset, split and model, all rebuilt from disk."""
from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path

import torch

from sparcode.config import RunConfig
from sparcode.data.dataset import Dataset, Split
from sparcode.data.readers import load_dataset
from sparcode.data.splits import make_split
from sparcode.encoder import checkpoint as ckpt
from sparcode.encoder.models import build_model
from sparcode.encoder.train import pick_device


class RunError(Exception):
    pass


@dataclass
class Run:
    path: Path
    config: RunConfig
    dataset: Dataset
    split: Split
    info: dict

    @property
    def kind(self) -> str:
        return self.config.model.kind

    def load_model(self, device=None):
        device = device or pick_device()
        model = build_model(self.config.model, self.dataset, self.split.max_history).to(device)
        model.load_state_dict(ckpt.load_tensors(self.path / ckpt.WEIGHTS))
        model.eval()
        return model, device

    def fingerprint(self) -> str:
        return ckpt.fingerprint(self.path)


def open_run(run_dir: Path, serve: dict | None = None) -> Run:
    """`serve` overrides keys of the run's serve settings: how a trained model is indexed and
    queried can be chosen after training, so it need not be fixed in the checkpoint's config."""
    run_dir = Path(run_dir)
    if not (run_dir / ckpt.CONFIG).is_file():
        raise RunError(f"{run_dir} is not a sparcode run directory (no {ckpt.CONFIG}); train one with `sparcode train`")
    config = RunConfig.load(run_dir / ckpt.CONFIG)
    if serve:
        if config.model.kind != "sparcode":
            names = ", ".join(f"serve.{key}" for key in serve)
            raise RunError(f"{names} apply to SparCode runs; {run_dir} was trained with --model {config.model.kind}")
        config.serve = replace(config.serve, **serve)
    config = config.validate()
    info = ckpt.read_json(run_dir / ckpt.RUN_INFO) if (run_dir / ckpt.RUN_INFO).exists() else {}
    if config.model.kind not in ("ease", "tiger") and not (run_dir / ckpt.WEIGHTS).is_file():
        raise RunError(f"{run_dir} has no {ckpt.WEIGHTS}: training did not finish an epoch (resume with --resume)")
    dataset = load_dataset(info.get("dataset_path", config.dataset))
    split = make_split(dataset, config.split, seed=config.seed, max_history=config.train.max_history)
    return Run(run_dir, config, dataset, split, info)


def set_threads(config: RunConfig) -> None:
    if config.train.threads:
        torch.set_num_threads(config.train.threads)
