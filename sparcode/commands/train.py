"""`sparcode train`: fit one model on one dataset split into a run directory."""
from __future__ import annotations

import time
from pathlib import Path

import click

from sparcode.commands._common import user_errors

DEFAULT_SPLIT = {"ml-1m": "multi-target", "beauty": "leave-one-out"}


@click.command("train")
@click.option("--model", "model_kind", type=click.Choice(["sparcode", "all-to-all", "two-tower", "ease", "tiger"]),
              default="sparcode", show_default=True)
@click.option("--dataset", default="ml-1m", show_default=True, help="ml-1m, beauty, or a PATH to a sequence file.")
@click.option("--split", type=click.Choice(["multi-target", "leave-one-out"]), default=None,
              help="Default: multi-target for ml-1m, leave-one-out otherwise.")
@click.option("--out", "run_dir", type=click.Path(file_okay=False, path_type=Path), required=True)
@click.option("--config", "config_file", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="JSON file overriding the model's preset; unknown keys are an error.")
@click.option("--seed", type=int, default=None, help="Overrides the config's seed (default 0).")
@click.option("--epochs", type=int, default=None, help="Overrides train.epochs.")
@click.option("--resume", is_flag=True, help="Continue an interrupted run in RUN_DIR from its last epoch.")
@click.option("--quiet", is_flag=True, help="No progress bars.")
def command(model_kind, dataset, split, run_dir, config_file, seed, epochs, resume, quiet):
    """Train a model and record config, weights and validation history in RUN_DIR."""
    with user_errors():
        from sparcode.presets import run_config

        cfg = run_config(model_kind, dataset, split or DEFAULT_SPLIT.get(dataset, "leave-one-out"), config_file, seed, epochs)
        if (run_dir / "run.json").exists() and not resume:
            raise click.ClickException(f"{run_dir} already holds a finished run; choose another --out or pass --resume")
        from sparcode.training import train_run

        summary = train_run(run_dir, cfg, resume=resume, progress=not quiet)
    click.echo(f"trained {model_kind} on {cfg.dataset} ({cfg.split}) in {summary['train_seconds']:.0f}s → {run_dir}")
