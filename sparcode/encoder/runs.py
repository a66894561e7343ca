"""Open a trained run directory: its config, dataset, split and model, all rebuilt from disk."""
from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path

from sparcode.config import ConfigError, RunConfig
from sparcode.data.dataset import Dataset, Split
from sparcode.data.readers import load_dataset
from sparcode.data.splits import make_split, split_summary
from sparcode.encoder import checkpoint as ckpt
from sparcode.encoder.models import build_model
from sparcode.encoder.train import pick_device
from sparcode.errors import SparcodeError


class RunError(SparcodeError):
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
        try:
            model.load_state_dict(ckpt.load_tensors(self.path / ckpt.WEIGHTS))
        except RuntimeError as err:  # another model's weights, or a config.json edited since
            detail = next((line.strip() for line in str(err).splitlines()[1:] if line.strip()), str(err))
            raise RunError(f"{self.path / ckpt.WEIGHTS} does not fit the model {ckpt.CONFIG} describes "
                           f"({detail})") from None
        model.eval()
        return model, device

    def fingerprint(self) -> str:
        return ckpt.fingerprint(self.path)


def open_run(run_dir: Path, serve: dict | None = None, allow_unfinished: bool = False) -> Run:
    """`serve` overrides keys of the run's serve settings: how a trained model is indexed and
    queried can be chosen after training, so it need not be fixed in the checkpoint's config.

    A run whose training has not finished (no run.json) is refused unless `allow_unfinished`:
    its weights.pt is the best epoch so far and changes when training goes on, so exporting or
    serving it is almost always a mistake, while evaluating it is a fair look at progress."""
    run_dir = Path(run_dir)
    if not (run_dir / ckpt.CONFIG).is_file():
        raise RunError(f"{run_dir} is not a sparcode run directory (no {ckpt.CONFIG}); train one with `sparcode train`")
    try:
        config = RunConfig.load(run_dir / ckpt.CONFIG)
    except ConfigError as err:
        raise RunError(f"{run_dir / ckpt.CONFIG}: {err}") from None
    if serve:
        if config.model.kind != "sparcode":
            names = ", ".join(f"serve.{key}" for key in serve)
            raise RunError(f"{names} apply to SparCode runs; {run_dir} was trained with --model {config.model.kind}")
        config.serve = replace(config.serve, **serve)
    config = config.validate()
    info = ckpt.read_json(run_dir / ckpt.RUN_INFO) if (run_dir / ckpt.RUN_INFO).exists() else {}
    if config.model.kind not in ("ease", "tiger") and not (run_dir / ckpt.WEIGHTS).is_file():
        raise RunError(f"{run_dir} has no {ckpt.WEIGHTS}: training did not finish an epoch (resume with --resume)")
    if not info and not allow_unfinished:
        raise RunError(f"{run_dir} has not finished training (no {ckpt.RUN_INFO}); finish it with "
                       f"`sparcode train ... --out {run_dir} --resume` (evaluate can look at it meanwhile)")
    source = info.get("dataset_path", config.dataset)
    if not isinstance(source, str):
        raise RunError(f"{run_dir / ckpt.RUN_INFO}: dataset_path must be a path, not {source!r}")
    if config.model.kind == "ease" and not info and not (run_dir / "ease" / "ease.json").is_file():
        raise RunError(f"{run_dir} has not finished training and EASE has no model before it does; "
                       f"finish it with `sparcode train ... --out {run_dir} --resume`")
    dataset = load_dataset(source)
    split = make_split(dataset, config.split, seed=config.seed, max_history=config.train.max_history)
    _check_same_split(run_dir, info.get("split"), split_summary(split), source)
    if "dataset_digest" in info and info["dataset_digest"] != dataset.digest():
        raise RunError(f"{source} has changed since {run_dir} was trained (its ids, sequences or features differ); "
                       "restore the data or train again")
    return Run(run_dir, config, dataset, split, info)


def _check_same_split(run_dir: Path, recorded: dict | None, now: dict, dataset: str) -> None:
    """The split rebuilt from the data today must be the one the run trained and selected on;
    an edited sequence file otherwise shows up as a size-mismatch traceback (new items) or,
    worse, as quietly different test users (new users shift the seeded permutation)."""
    if not isinstance(recorded, dict):
        return  # an unfinished run records no split yet
    for key, value in now.items():
        if key in recorded and recorded[key] != value:
            raise RunError(f"{dataset} has changed since {run_dir} was trained: its split now has {key} {value!r}, "
                           f"the run recorded {recorded[key]!r}; restore the data or train again")
