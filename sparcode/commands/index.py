"""`sparcode index` / `sparcode reindex`: load an export into a versioned index behind an alias."""
from __future__ import annotations

import click

from sparcode.commands._common import terminate_as_interrupt, url_option, user_errors
from sparcode.pipeline.bulk import STREAMS
from sparcode.pipeline.local_node import ENGINES

_FIELD_TYPES = click.Choice(["sparse_vector", "rank_features"])
_ENGINE = click.option("--engine", type=click.Choice(ENGINES), default=None,
                       help="Search engine (URL from --url, else ELASTICSEARCH_URL / OPENSEARCH_URL). "
                            "Default: detected from the server at --url, else ELASTICSEARCH_URL, else OPENSEARCH_URL.")
_STREAMS = click.option("--bulk-streams", "streams", type=click.IntRange(min=1), default=STREAMS, show_default=True,
                        help="Bulk requests kept in flight; 1 sends them one after another (with 429 retries "
                             "inline). More than the node's cores buys nothing.")

_RESUME = click.option("--resume", is_flag=True,
                       help="Continue the newest unfinished load of this model (one a failed load left behind), "
                            "sending every document of EXPORT_DIR again.")
_DELETE_OLD = click.option("--delete-old", is_flag=True,
                           help="Once the new index serves, delete the index the alias pointed at before "
                                "and every index a build of this alias made before this one began (unfinished "
                                "loads, and complete ones a failed swap left); never one made since, nor what "
                                "the alias serves when read again just before the delete.")


def _status(line: str) -> None:
    # stderr, like the progress bar: stdout keeps only the result lines.
    click.echo(line, err=True)


def _run(export_dir: str, alias: str, *, engine: str | None, field_type: str | None, resume: bool,
         delete_old: bool, replace: bool, streams: int, url: str | None) -> None:
    from sparcode.pipeline.bulk import BulkFailed
    from sparcode.pipeline.connect import ConnectionProblem, connect
    from sparcode.pipeline.engine import EngineError, EngineUnavailable
    from sparcode.pipeline.export import Export, ExportError
    from sparcode.pipeline.indexer import IndexProblem, build

    # user_errors: a Ctrl-C (or SIGTERM) names the partial index the load leaves (the note build attaches).
    with user_errors(), terminate_as_interrupt():
        try:
            export = Export.open(export_dir)
            conn = connect(url, engine=engine)
            if export.manifest.get("kind") == "two-tower-vectors":
                # Item vectors go into a dense_vector (HNSW) field instead of codes.
                from sparcode.pipeline import knn

                if field_type is not None or resume or conn.name != "elasticsearch":
                    raise IndexProblem("a two-tower vector export indexes into Elasticsearch dense_vector only "
                                       "(no --field-type, --resume or OpenSearch)")
                result = knn.build(conn, export_dir, alias, delete_old=delete_old, replace=replace, streams=streams,
                                   status=_status)
            else:
                result = build(conn, export, alias, field_type=field_type, resume=resume, delete_old=delete_old,
                               replace=replace, streams=streams, status=_status)
        except (ExportError, ConnectionProblem, IndexProblem, BulkFailed) as exc:
            raise click.ClickException(str(exc))
        except (EngineError, EngineUnavailable) as exc:
            raise click.ClickException(f"the search engine answered {exc}")
    how = "resumed into" if result.resumed else "built"
    cpu = "" if result.docs_per_cpu_second is None else \
        f", {result.docs_per_cpu_second:,.0f} per CPU-second of node + client"
    click.echo(f"{how} {result.index} on {conn.label} {conn.version}: {result.docs} docs "
               f"({result.docs_per_second:,.0f} docs/s{cpu})")
    moved = f" (was {', '.join(result.previous)})" if result.previous else ""
    click.echo(f"alias {alias} -> {result.index}{moved}")
    if result.deleted:
        click.echo(f"deleted {', '.join(result.deleted)}")


@click.command("index")
@click.argument("export_dir", type=click.Path(exists=True, file_okay=False))
@click.option("--alias", required=True, help="Alias that searches use; must not exist yet.")
@_ENGINE
@click.option("--field-type", type=_FIELD_TYPES, default=None,
              help="Field type for the codes. Default: sparse_vector on Elasticsearch, rank_features on "
                   "OpenSearch (Elasticsearch's rank_features needs the mapper-extras module).")
@_RESUME
@_DELETE_OLD
@_STREAMS
@url_option
def command(export_dir, alias, engine, field_type, resume, delete_old, streams, url):
    """Index EXPORT_DIR into a new versioned index and point ALIAS at it.

    From 10,000 items the build waits up to 45 s between loading and merging, until the node
    lets the merge drop its recovery copy of the codes (about half the index otherwise;
    docs/engines.md "How documents hold the codes")."""
    _run(export_dir, alias, engine=engine, field_type=field_type, resume=resume, delete_old=delete_old,
         replace=False, streams=streams, url=url)


@click.command("reindex")
@click.argument("export_dir", type=click.Path(exists=True, file_okay=False))
@click.option("--alias", required=True, help="Alias to move onto the new index.")
@_ENGINE
@_RESUME
@_DELETE_OLD
@_STREAMS
@url_option
def reindex_command(export_dir, alias, engine, resume, delete_old, streams, url):
    """Build a new versioned index from EXPORT_DIR and move ALIAS to it atomically (same field type).

    Like `index`, builds of 10,000 items or more wait up to 45 s before their merge."""
    _run(export_dir, alias, engine=engine, field_type=None, resume=resume, delete_old=delete_old, replace=True,
         streams=streams, url=url)
