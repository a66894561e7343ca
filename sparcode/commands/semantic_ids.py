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
@click.option("--dataset", default="beauty", show_default=True, help="beauty, ml-1m, or a PATH with items.tsv.")
@click.option("--out", "run_dir", type=click.Path(file_okay=False, path_type=Path), required=True)
@click.option("--epochs", type=click.IntRange(min=1), default=None, help="RQ-VAE epochs (default 300).")
@click.option("--seed", type=int, default=0, show_default=True)
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
        try:
            _, meta = build_semantic_ids(run_dir, data, cfg, log=click.echo, force=force)
        except (RuntimeError, ValueError) as err:  # missing embedding package, dataset without item text
            raise click.ClickException(str(err)) from None
    summary = {k: v for k, v in meta.items() if k != "item_ids"}
    click.echo(json.dumps(summary, indent=2))
    click.echo(f"semantic IDs for {len(meta['item_ids'])} items → {tiger_dir(run_dir)}")
