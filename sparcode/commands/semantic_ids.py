"""`sparcode semantic-ids`: item text → embeddings → RQ-VAE → unique semantic IDs in RUN_DIR/tiger/.

`sparcode train --model tiger --out RUN_DIR` afterwards reuses these IDs instead of fitting
the RQ-VAE again.
"""
from __future__ import annotations

import json
from pathlib import Path

import click

from sparcode.commands._common import user_errors


@click.command("semantic-ids")
@click.option("--dataset", default="beauty", show_default=True, metavar="beauty|ml-1m|PATH",
              help="A named dataset, or a PATH whose folder holds items.tsv (the item text).")
@click.option("--out", "run_dir", type=click.Path(file_okay=False, path_type=Path), required=True, metavar="RUN_DIR",
              help="The TIGER run directory the IDs are built in (then `train --model tiger --out` it).")
@click.option("--epochs", type=click.IntRange(min=1), default=None, help="RQ-VAE epochs (default 300).")
@click.option("--seed", type=int, default=0, show_default=True, help="Seeds the RQ-VAE.")
@click.option("--force", is_flag=True, help="Rebuild IDs already in RUN_DIR (embeddings stay cached).")
def command(dataset, run_dir, epochs, seed, force):
    """Build semantic IDs for every item and report collisions and codebook usage."""
    with user_errors():
        from sparcode.data.readers import load_dataset
        from sparcode.generative.config import TigerConfig
        from sparcode.generative.train_tiger import build_semantic_ids, tiger_dir

        cfg = TigerConfig(dataset=dataset, seed=seed)
        cfg.rqvae.seed = seed
        if epochs is not None:
            cfg.rqvae.epochs = epochs
        data = load_dataset(dataset)
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
    click.echo(f"semantic IDs for {len(meta['item_ids'])} items → {tiger_dir(run_dir)}")


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
