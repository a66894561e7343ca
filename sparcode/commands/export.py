"""`sparcode export`: write a trained SparCode run as an export directory for indexing."""
from __future__ import annotations

import re
from pathlib import Path

import click

from sparcode.commands._common import serve_options, serve_overrides, terminate_as_interrupt, user_errors


def _parse_shard(ctx, param, value):
    if value is None:
        return (0, 1)
    match = re.fullmatch(r"(\d+)/(\d+)", value)
    if not match or not int(match.group(1)) < int(match.group(2)):
        raise click.BadParameter("expected i/n with 0 <= i < n, e.g. 0/4")
    return int(match.group(1)), int(match.group(2))


@click.command("export")
@click.argument("run_dir", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--out", "out_dir", type=click.Path(file_okay=False, path_type=Path), required=True,
              help="Export directory to create (see --force).")
@click.option("--bias", type=float, default=None,
              help="b̃, added to every stored score (stored = ReLU(S + b̃)); must be finite. Default: global "
                   "allocation stores serve.stored_fraction of pairs, per-code the median S. With per-code "
                   "allocation b̃ can only drop postings: each code keeps at most its best --stored-fraction.")
@click.option("--max-postings", type=click.IntRange(min=1), default=None, help="Keep at most N items per code (not with --shard: a shard cannot see a code's best items overall).")
@click.option("--allocation", type=click.Choice(["per-code", "global"]), default=None,
              help="per-code: each code keeps its best --stored-fraction of items; global: one b̃ "
                   "threshold for all pairs. Default: the run's serve.allocation (per-code).")
@serve_options
@click.option("--shard", callback=_parse_shard, default=None, metavar="I/N", help="i/n: export every n-th item from i (run n of these).")
@click.option("--force", is_flag=True, help="Replace an existing export in --out.")
@click.option("--quiet", is_flag=True, help="No progress bars.")
def command(run_dir, out_dir, bias, max_postings, allocation, stored_fraction, query_probes, max_codes, shard, force,
            quiet):
    """Score every indexed code against every item and write the export directory.

    Two-tower runs export item vectors; TIGER runs export every item's semantic-ID prefix terms
    (docs/tiger.md)."""
    with user_errors(), terminate_as_interrupt():
        from sparcode.encoder.export import export_run
        from sparcode.encoder.runs import open_run

        run = open_run(run_dir, serve=serve_overrides(stored_fraction, query_probes, max_codes))
        if run.kind == "tiger":
            _export_semantic_ids(run, out_dir, force, bias=bias, max_postings=max_postings, allocation=allocation,
                                 shard=shard)
            return
        if run.kind == "two-tower":
            _export_vectors(run, out_dir, force, bias=bias, max_postings=max_postings, allocation=allocation,
                            shard=shard)
            return
        manifest = export_run(run, out_dir, bias=bias, max_postings=max_postings, allocation=allocation,
                              shard=shard, progress=not quiet, force=force)
    scoring = manifest["scoring"]
    sampled = (f" (a sample of the training windows' {manifest['training_codes']})"
               if manifest["codes"] < manifest["training_codes"] else "")
    unreachable = manifest.get("items_without_postings")
    unreachable_note = f" ({unreachable} without any posting: no query can return them)" if unreachable else ""
    click.echo(
        f"exported {manifest['items']} items{unreachable_note}, {manifest['codes']} codes{sampled}, "
        f"{manifest['pairs']} postings "
        f"(stored fraction {manifest['stored_fraction']:.4f}, b̃ = {manifest['bias']:.4f}) → {out_dir}\n"
        f"scoring ({scoring['method']}): {scoring['pairs_per_second']:,} pairs/s = "
        f"{scoring['fraction_of_ceiling']:.2f} x the {scoring['ceiling_pairs_per_second']:,} pairs/s "
        f"ceiling of the scorer's GEMM on {scoring['device']}"
    )
    missing = manifest.get("missing_shards")
    if missing:
        count = manifest["shard"][1]
        click.echo(f"shard {manifest['shard'][0]}/{count} written; {len(missing)} of {count} shards still missing "
                   f"({', '.join(f'{i}/{count}' for i in missing)}): {out_dir} is an export once every shard is "
                   "written")
    if bias is not None and manifest["allocation"] == "per-code":
        click.echo(
            f"note: with per-code allocation each code keeps at most its best "
            f"{run.config.serve.stored_fraction:.1%} of items (serve.stored_fraction) whatever --bias is; "
            "b̃ is added to every stored score and drops pairs with S + b̃ <= 0. "
            "Use --allocation global to let --bias set the stored fraction.", err=True)


def _verb(options: list[str]) -> str:
    return "applies" if len(options) == 1 else "apply"


def _export_vectors(run, out_dir, force, **sparcode_only):
    from sparcode.encoder.vector_export import export_vectors

    given = [f"--{k.replace('_', '-')}" for k, v in sparcode_only.items() if v not in (None, (0, 1))]
    if given:
        raise click.ClickException(f"{', '.join(given)} {_verb(given)} to SparCode exports; {run.path} is a two-tower run")
    manifest = export_vectors(run, out_dir, force=force)
    click.echo(f"exported {manifest['items']} item vectors (dim {manifest['dim']}, mean norm "
               f"{manifest['norms']['mean']:.3f}) → {out_dir}")


def _export_semantic_ids(run, out_dir, force, **sparcode_only):
    from sparcode.generative.sid_export import SidExportError, export_semantic_ids

    given = [f"--{k.replace('_', '-')}" for k, v in sparcode_only.items() if v not in (None, (0, 1))]
    if given:
        raise click.ClickException(f"{', '.join(given)} {_verb(given)} to SparCode exports; {run.path} is a TIGER run")
    info = {"model": run.kind, "dataset": run.config.dataset, "split": run.config.split, "seed": run.config.seed}
    try:
        manifest = export_semantic_ids(run.path, run.dataset, out_dir, info, force=force)
    except SidExportError as err:
        raise click.ClickException(str(err)) from None
    cold = manifest["cold_items"]
    click.echo(f"exported {manifest['items']} items' semantic-ID prefixes ({manifest['terms']} distinct "
               f"{manifest['term_field']}_* terms, depths {manifest['prefix_depths']}, "
               f"{'no held-out items (untrained run)' if cold is None else f'{cold} cold items'}) → {out_dir}")
