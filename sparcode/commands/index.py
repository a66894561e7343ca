"""`sparcode index` / `sparcode reindex`: load an export into a versioned index behind an alias."""
from __future__ import annotations

import click

_FIELD_TYPES = click.Choice(["sparse_vector", "rank_features"])


def _run(export_dir: str, alias: str, *, field_type: str | None, resume: bool, delete_old: bool,
         replace: bool) -> None:
    from elasticsearch import ApiError

    from sparcode.pipeline.bulk import BulkFailed
    from sparcode.pipeline.connect import ConnectionProblem, connect
    from sparcode.pipeline.export import Export, ExportError
    from sparcode.pipeline.indexer import IndexProblem, build

    try:
        export = Export.open(export_dir)
        client = connect()
        result = build(client, export, alias, field_type=field_type, resume=resume, delete_old=delete_old,
                       replace=replace)
    except (ExportError, ConnectionProblem, IndexProblem, BulkFailed) as exc:
        raise click.ClickException(str(exc))
    except ApiError as exc:
        raise click.ClickException(f"Elasticsearch answered HTTP {exc.meta.status}: {exc.message}")
    how = "resumed into" if result.resumed else "built"
    click.echo(f"{how} {result.index}: {result.docs} docs ({result.docs_per_second:,.0f} docs/s)")
    moved = f" (was {', '.join(result.previous)})" if result.previous else ""
    click.echo(f"alias {alias} -> {result.index}{moved}")
    if result.deleted:
        click.echo(f"deleted {', '.join(result.deleted)}")


@click.command("index")
@click.argument("export_dir", type=click.Path(exists=True, file_okay=False))
@click.option("--alias", required=True, help="Alias that searches use; must not exist yet.")
@click.option("--field-type", type=_FIELD_TYPES, default="sparse_vector", show_default=True,
              help="Field type for the codes (rank_features needs the mapper-extras module).")
@click.option("--resume", is_flag=True, help="Continue the newest unfinished load of this export.")
@click.option("--delete-old", is_flag=True, help="Delete the index the alias pointed at before.")
def command(export_dir, alias, field_type, resume, delete_old):
    """Index EXPORT_DIR into a new versioned index and point ALIAS at it."""
    _run(export_dir, alias, field_type=field_type, resume=resume, delete_old=delete_old, replace=False)


@click.command("reindex")
@click.argument("export_dir", type=click.Path(exists=True, file_okay=False))
@click.option("--alias", required=True, help="Alias to move onto the new index.")
@click.option("--delete-old", is_flag=True, help="Delete the index the alias pointed at before.")
def reindex_command(export_dir, alias, delete_old):
    """Build a new versioned index from EXPORT_DIR and move ALIAS to it atomically."""
    _run(export_dir, alias, field_type=None, resume=False, delete_old=delete_old, replace=True)
