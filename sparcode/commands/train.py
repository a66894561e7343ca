"""`sparcode train`: fit one model on one dataset split into a run directory."""
from __future__ import annotations

import contextlib
from pathlib import Path

import click

from sparcode.commands._common import terminate_as_interrupt, user_errors

DEFAULT_SPLIT = {"ml-1m": "multi-target", "beauty": "leave-one-out"}


@click.command("train")
@click.option("--model", "model_kind", type=click.Choice(["sparcode", "all-to-all", "two-tower", "ease", "tiger"]),
              default="sparcode", show_default=True, help="Which model to train.")
@click.option("--dataset", default="ml-1m", show_default=True, metavar="ml-1m|beauty|sports|PATH",
              help="A named dataset, or a PATH to a sequence file or to a folder holding sequences.txt[.gz] "
                   "and optional items.tsv / users.tsv (README: Data).")
@click.option("--split", type=click.Choice(["multi-target", "leave-one-out"]), default=None,
              help="Default: multi-target for ml-1m, leave-one-out otherwise.")
@click.option("--out", "run_dir", type=click.Path(file_okay=False, path_type=Path), default=None, metavar="RUN_DIR",
              help="The run directory: new, empty, or an interrupted run to continue with --resume. Required, "
                   "except with --show-config.")
@click.option("--config", "config_file", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="JSON file overriding the model's preset; unknown keys are an error.")
@click.option("--seed", type=int, default=None, help="Overrides the config's seed (default 0).")
@click.option("--epochs", type=click.IntRange(min=1), default=None, help="Overrides train.epochs.")
@click.option("--resume", is_flag=True, help="Continue an interrupted run in RUN_DIR from its last epoch.")
@click.option("--quiet", is_flag=True, help="No progress bars.")
@click.option("--show-config", is_flag=True,
              help="Print the complete config this command would train with (the model's preset for the dataset, "
                   "then --config, then the flags) as JSON, and exit without training.")
def command(model_kind, dataset, split, run_dir, config_file, seed, epochs, resume, quiet, show_config):
    """Train a model and record config, weights and validation history in RUN_DIR."""
    if run_dir is None and (resume or not show_config):
        raise click.UsageError("Missing option '--out'.")
    training = False
    try:
        # SIGTERM is Ctrl-C throughout, so the lock's exit removes a fresh run's folder either way.
        with user_errors(), terminate_as_interrupt(), contextlib.ExitStack() as held:
            from sparcode.config import ConfigError, read_config_file
            from sparcode.presets import run_config
            from sparcode.training import RunLock, recorded_config, train_run

            lock = None
            if not show_config:
                # Before the run's own config is read: a train of RUN_DIR under way is named first,
                # and none can finish, or start, between the checks below and the training.
                lock = held.enter_context(RunLock(run_dir))
                lock.hold()
            # Precedence: an explicit flag, then the --config file, then (resuming) the run's own config.
            recorded = recorded_config(run_dir) if resume else None
            if recorded is not None:
                model_kind, dataset, split, seed = _unless_given(run_dir, recorded, model_kind, dataset, split, seed)
            overrides = None
            if config_file is not None:
                overrides = read_config_file(config_file)
                model_kind, dataset, split = _settle_with_file(config_file, overrides, model_kind, dataset, split)
            if recorded is not None:
                cfg = _resumed(run_dir, recorded, overrides, config_file, model_kind, dataset, split, seed, epochs)
            else:
                try:
                    cfg = run_config(model_kind, dataset, split or DEFAULT_SPLIT.get(dataset, "leave-one-out"),
                                     overrides, seed, epochs)
                except ConfigError as err:
                    from_flag = ((epochs is not None and "train.epochs" in str(err))
                                 or (seed is not None and "seed" in str(err)))
                    if config_file is None or from_flag or str(err).startswith(str(config_file)):
                        raise
                    raise ConfigError(f"{config_file}: {err}") from None
            if show_config:
                click.echo(_config_json(cfg))
                return
            _check_out(run_dir, resume, cfg.model.kind)
            training = True
            summary = train_run(run_dir, cfg, resume=resume, progress=not quiet, config_file=config_file, lock=lock)
    except KeyboardInterrupt:  # the lock is let go by now, and a fresh run's empty folder removed
        if not training:
            raise  # nothing was trained or kept: click's own "Aborted!"
        from sparcode.training import run_files

        if not run_dir.is_dir() or not run_files(run_dir):
            raise click.ClickException("interrupted before the first epoch finished; nothing was kept") from None
        raise click.ClickException(f"interrupted; {run_dir} keeps its last finished epoch: continue with "
                                   f"`sparcode train --out {run_dir} --resume`") from None
    click.echo(f"trained {model_kind} on {cfg.dataset} ({cfg.split}) in {summary['train_seconds']:.0f}s → {run_dir}"
               + _how_it_ended(summary, cfg))


# TIGER keys that follow the run config's (top level and train.*) unless a `tiger` section sets them.
TIGER_SHARED_KEYS = ("dataset", "seed", "max_history", "epochs", "batch_size", "lr", "patience", "eval_users")


def _config_json(cfg) -> str:
    """The run config as JSON. A TIGER run's `tiger` section is shown in full (its defaults live in
    TigerConfig, not in the presets), except the keys it takes from the rest of the config:
    shown there too, a copy of this output edited in train.epochs would still train tiger.epochs."""
    import json

    data = cfg.to_dict()
    if cfg.model.kind == "tiger":
        from sparcode.generative.config import TigerConfig

        tiger = TigerConfig.from_run_config(cfg).to_dict()
        shared = set(TIGER_SHARED_KEYS) - set(cfg.tiger)
        data["tiger"] = {key: value for key, value in tiger.items() if key not in shared}
        if "seed" not in cfg.tiger.get("rqvae", {}):
            data["tiger"]["rqvae"].pop("seed", None)
    return json.dumps(data, indent=2, sort_keys=True)


# What a resumed run may change: how long and on how many threads it trains, never the model.
RESUMABLE_KEYS = ("train.epochs", "train.patience", "train.threads", "tiger.epochs", "tiger.patience",
                  "tiger.max_minutes")


def _how_it_ended(summary: dict, cfg) -> str:
    """Which epoch was kept, and whether patience ended training before its budget."""
    if "best_epoch" not in summary or "planned_epochs" not in summary:
        return ""
    text = f" (best epoch {summary['best_epoch']} of {summary['epochs']}"
    if summary.get("stopped_early"):
        text += (f"; stopped early: no better validation {cfg.train.select_metric} for {cfg.train.patience} epochs, "
                 f"of {summary['planned_epochs']} planned; raise train.patience to go on")
    return text + ")"


def _given(param: str) -> bool:
    """Whether the current command's `param` was set on the command line (not left at its default)."""
    from click.core import ParameterSource

    return click.get_current_context().get_parameter_source(param) not in (ParameterSource.DEFAULT, None)


def _unless_given(run_dir: Path, recorded, model_kind: str, dataset: str, split: str | None, seed: int | None):
    """A resumed run's model, dataset, split and seed default to its own: `train --out RUN --resume`
    alone continues it. A flag given explicitly stays, for the resume check to refuse if it differs."""
    from sparcode.data.readers import NAMED

    if not _given("dataset") and recorded.dataset not in NAMED and not Path(recorded.dataset).is_absolute():
        raise click.ClickException(
            f"cannot resume {run_dir}: it records its dataset as {recorded.dataset!r}, relative to the folder it was "
            "started from (a run from before datasets were recorded absolute); pass --dataset with its path")
    return (model_kind if _given("model_kind") else recorded.model.kind,
            dataset if _given("dataset") else recorded.dataset,
            split if split is not None else recorded.split,
            seed if seed is not None else recorded.seed)


def _resumed(run_dir: Path, recorded, overrides: dict | None, config_file: Path | None, model_kind: str,
             dataset: str, split: str, seed: int, epochs: int | None):
    """The config a resume trains with: the run's own config.json, then --config on top of it, then
    the flags. The file may change only RESUMABLE_KEYS: anything else would load the checkpoint
    into another model (a size mismatch) or train the rest of the run under other settings than
    config.json records. Flags that disagree with the run are refused by the resume check."""
    from sparcode.config import ConfigError, RunConfig, same_dataset
    from sparcode.presets import merge, with_epochs

    data = recorded.to_dict()
    if overrides is not None:
        try:
            restated = RunConfig.from_dict(merge(data, overrides)).validate()
        except ConfigError as err:
            raise ConfigError(f"{config_file}: {err}") from None
        then, now = _flat(data), _flat(restated.to_dict())
        changed = [key for key in sorted(then.keys() | now.keys()) if key not in RESUMABLE_KEYS
                   and then.get(key) != now.get(key)
                   and not (key == "dataset" and same_dataset(then[key], now[key]))]
        if changed:
            shown = "; ".join(f"{key} {then.get(key)!r} → {now.get(key)!r}" for key in changed[:4])
            more = f" and {len(changed) - 4} more" if len(changed) > 4 else ""
            raise click.ClickException(
                f"cannot resume {run_dir} with {config_file}: it changes {shown}{more}; a resume may change only "
                f"{', '.join(RESUMABLE_KEYS)} (drop --config to continue with the run's own config)")
        data = restated.to_dict()
        budget = overrides.get("train") or {}  # a dict: the merged config validated
        if "epochs" in budget and "epochs" not in (overrides.get("tiger") or {}) and epochs is None:
            epochs = budget["epochs"]  # a budget file's train.epochs acts as --epochs (TIGER's own too)
    cfg = RunConfig.from_dict(data)
    cfg.model.kind, cfg.dataset, cfg.split, cfg.seed = model_kind, dataset, split, seed
    return with_epochs(cfg, epochs).validate()


def _flat(data: dict, prefix: str = "") -> dict:
    out = {}
    for key, value in data.items():
        if isinstance(value, dict) and (value or not prefix):
            out.update(_flat(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def _check_out(run_dir: Path, resume: bool, kind: str) -> None:
    """RUN_DIR is new, empty, or a run of ours that --resume continues; training into any other
    folder would mix its files with the run's (and leave stale weights beside a new model).
    TIGER may also train where `sparcode semantic-ids --out RUN_DIR` built its item IDs.
    Checked under the run's lock (its file is no content)."""
    from sparcode.training import run_files

    held = run_files(run_dir) if run_dir.is_dir() else []
    if not held or (kind == "tiger" and [p.name for p in held] == ["tiger"]):
        return
    if not (run_dir / "config.json").is_file():
        from sparcode.staging import listing
        from sparcode.training import TRAIN_LOCK

        raise click.ClickException(f"{run_dir} is not empty ({listing(run_dir, skip=[TRAIN_LOCK])}) and holds no "
                                   "sparcode run; choose a new or empty --out")
    if (run_dir / "run.json").exists() and not resume:
        raise click.ClickException(f"{run_dir} already holds a finished run; choose another --out or pass --resume")
    if not resume:
        raise click.ClickException(f"{run_dir} holds an unfinished run; pass --resume to continue it, "
                                   f"or choose another --out")


def _settle_with_file(config_file: Path, data: dict, model_kind: str, dataset: str, split: str | None):
    """--model, --dataset and --split against the config file's model.kind, dataset and split.

    An explicit flag and a different file value is an error naming both (either silently
    winning trained another model, or on another dataset, than one of them asked for); a flag
    left at its default takes the file's value, so presets follow the dataset the run uses."""
    from sparcode.config import ConfigError, same_dataset

    model = data.get("model") if isinstance(data.get("model"), dict) else {}
    settled = []
    for param, flag, value, key, in_file in (("model_kind", "--model", model_kind, "model.kind", model.get("kind")),
                                            ("dataset", "--dataset", dataset, "dataset", data.get("dataset")),
                                            ("split", "--split", split, "split", data.get("split"))):
        explicit = _given(param) and value is not None
        if in_file is not None and not isinstance(in_file, str):
            raise ConfigError(f"{key} must be a string, got {in_file!r}")
        if in_file is None or in_file == value or (key == "dataset" and same_dataset(in_file, value)):
            settled.append(value)
        elif explicit:
            raise ConfigError(f"{config_file} sets {key} {in_file!r} but {flag} is {value!r}; drop one or make them agree")
        else:
            settled.append(in_file)
    return tuple(settled)
