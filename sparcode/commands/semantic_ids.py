"""`sparcode semantic-ids`: item text → embeddings → RQ-VAE → unique semantic IDs in RUN_DIR/tiger/.

`sparcode train --model tiger --out RUN_DIR` afterwards reuses these IDs instead of fitting
the RQ-VAE again.
"""
from __future__ import annotations

import json
from pathlib import Path

import click

from sparcode.commands._common import user_errors

DEFAULT_DATASET = "beauty"


@click.command("semantic-ids")
@click.option("--dataset", default=None, metavar="beauty|ml-1m|PATH",
              help="A named dataset, or a PATH whose folder holds items.tsv (the item text). Default: the "
                   "--config file's dataset, else the one RUN_DIR's IDs or run were built on, else beauty.")
@click.option("--out", "run_dir", type=click.Path(file_okay=False, path_type=Path), required=True, metavar="RUN_DIR",
              help="The TIGER run directory the IDs are built in (then `train --model tiger --out` it).")
@click.option("--config", "config_file", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="A `train` config file: its tiger.rqvae keys (and seed) set the RQ-VAE as `train --config` would.")
@click.option("--epochs", type=click.IntRange(min=1), default=None, help="RQ-VAE epochs (default 300).")
@click.option("--seed", type=int, default=None, help="Seeds the RQ-VAE (default: the --config file's seed, else 0).")
@click.option("--force", is_flag=True, help="Rebuild IDs already in RUN_DIR (embeddings stay cached).")
def command(dataset, run_dir, config_file, epochs, seed, force):
    """Build semantic IDs for every item and report collisions and codebook usage."""
    with user_errors():
        from sparcode.config import ConfigError, RunConfig, read_config_file, same_dataset
        from sparcode.data.readers import NAMED, load_dataset
        from sparcode.generative.config import TigerConfig
        from sparcode.generative.text import dataset_texts
        from sparcode.generative.train_tiger import build_semantic_ids, tiger_dir

        settings = read_config_file(config_file) if config_file is not None else {}
        try:
            # The whole file is read as `train` reads it, so a key it would refuse is refused here too.
            run_cfg = RunConfig.from_dict(settings)
            in_file = settings.get("dataset")
            if dataset is not None and in_file is not None and not same_dataset(in_file, dataset):
                raise ConfigError(f"sets dataset {in_file!r} but --dataset is {dataset!r}; drop one or make them agree")
            dataset = dataset or in_file or _recorded_dataset(run_dir) or DEFAULT_DATASET
            if dataset not in NAMED:
                dataset = str(Path(dataset).resolve())  # recorded, so a later rebuild finds it from anywhere
            run_cfg.dataset = dataset
            if seed is not None:
                run_cfg.seed = seed
            cfg = TigerConfig.from_run_config(run_cfg)
        except ConfigError as err:
            raise ConfigError(f"{config_file}: {err}" if config_file is not None else str(err)) from None
        if epochs is not None:
            cfg.rqvae.epochs = epochs
        data = load_dataset(dataset)
        dataset_texts(data, dataset)  # refuses a catalogue mostly without text before anything is fitted
        if (tiger_dir(run_dir) / "weights.pt").is_file():
            # Its model decodes these IDs; new ones under it would change every answer silently.
            raise click.ClickException(f"{run_dir} holds a trained TIGER model that decodes its semantic IDs; "
                                       "build new IDs in another folder")
        if not force:
            _check_same_settings(tiger_dir(run_dir), cfg)
        try:
            _, meta = build_semantic_ids(run_dir, data, cfg, log=click.echo, force=force)
        except (RuntimeError, ValueError) as err:  # missing embedding package, dataset without item text
            raise click.ClickException(str(err)) from None
    summary = {k: v for k, v in meta.items() if k != "item_ids"}
    click.echo(json.dumps(summary, indent=2))
    click.echo(f"semantic IDs for {len(meta['item_ids'])} items of {dataset} → {tiger_dir(run_dir)}")


def _recorded_dataset(run_dir: Path) -> str | None:
    """The dataset RUN_DIR's IDs were built from, or its run trained on: a rebuild (`--force`)
    of a run on a folder dataset must not fall back to Beauty."""
    from sparcode.generative.semantic_ids import IDS_META
    from sparcode.generative.train_tiger import tiger_dir
    from sparcode.staging import read_json

    from sparcode.data.readers import NAMED

    for path in (tiger_dir(run_dir) / IDS_META, Path(run_dir) / "config.json"):
        if path.is_file():
            value = read_json(path).get("dataset")
            # IDs built before datasets were named by their path recorded "sequences": not a place.
            if isinstance(value, str) and (value in NAMED or Path(value).exists()):
                return value
    return None


def _check_same_settings(folder: Path, cfg) -> None:
    """IDs already in RUN_DIR are reused (so `train --model tiger` fits the RQ-VAE once); asked
    for with other settings, reusing them silently would report the old IDs as the new ones."""
    from sparcode.generative.semantic_ids import IDS_META, settings_not_built_with
    from sparcode.staging import read_json

    if not (folder / IDS_META).is_file():
        return
    built_with = read_json(folder / IDS_META).get("rqvae_config")
    if built_with is None:
        return  # IDs from before the settings were recorded
    differ = settings_not_built_with(built_with, cfg.rqvae.to_dict())
    if differ:
        shown = ", ".join(f"{key} {built_with.get(key)!r}" for key in differ)
        raise click.ClickException(f"{folder} holds semantic IDs built with other settings ({shown}); "
                                   "pass --force to rebuild them")
