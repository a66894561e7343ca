"""`sparcode es start|stop|status`: a local single-node Elasticsearch or OpenSearch for tests and
trying things."""
from __future__ import annotations

import click

from sparcode.pipeline.local_node import DEFAULT_HEAP, ENGINES, check_heap, heap_bytes

_ENGINE = click.option("--engine", type=click.Choice(ENGINES), default="elasticsearch", show_default=True,
                       help="Which search engine's node.")


def _node(engine: str, port: int | None = None, heap: str | None = None, *, from_state: bool = False):
    from sparcode.pipeline.local_node import SPECS, LocalNode, default_home

    spec = SPECS[engine]
    if from_state:
        return LocalNode.from_state(spec, port=port)
    return LocalNode(spec, default_home(spec), port=port or 0, heap=heap or DEFAULT_HEAP)


def _heap(ctx, param, value: str | None) -> str | None:
    # Checked here: the JVM's own refusal is buried in the node's output.
    if value is not None:
        try:
            heap_bytes(value)
        except ValueError:
            raise click.BadParameter(f"{value!r} is not a JVM size such as 512m, 1g or 2g") from None
        try:
            check_heap(value)
        except ValueError as err:
            raise click.BadParameter(str(err)) from None
    return value


@click.group("es")
def command():
    """Manage a local search node, kept in $SPARCODE_ES_HOME / $SPARCODE_OPENSEARCH_HOME if set, else in
    .cache/es, .cache/opensearch of the repository checkout, else (installed) in sparcode/ under
    $XDG_CACHE_HOME or ~/.cache. Each engine needs a folder of its own."""


@command.command("start")
@_ENGINE
@click.option("--port", type=click.IntRange(1, 65535), default=None,
              help="HTTP port (default: 9250 elasticsearch, 9260 opensearch).")
@click.option("--heap", default=None, callback=_heap,
              help=f"JVM heap, e.g. 512m, 2g (default: {DEFAULT_HEAP}). A running node keeps its heap until stopped.")
def start(engine: str, port: int | None, heap: str | None):
    """Fetch (via Maven), unpack and start the node; wait until it is healthy."""
    from sparcode.pipeline.local_node import LocalNodeError

    node = _node(engine, port, heap)
    try:
        seconds = node.start()
    except LocalNodeError as exc:
        raise click.ClickException(str(exc))
    note = "already running" if seconds == 0.0 else f"healthy after {seconds:.1f}s"
    if seconds == 0.0 and heap is not None and heap_bytes(heap) != heap_bytes(node.heap):
        note += f" with heap {node.heap}; `sparcode es stop` first to start it with {heap}"
    click.echo(f"{engine} {node.url} ({note})")


@command.command("stop")
@_ENGINE
def stop(engine: str):
    """Stop the node started by `sparcode es start` (found by its pid file, whatever node.json says)."""
    from sparcode.pipeline.local_node import LocalNodeError

    try:
        stopped = _node(engine).stop()
    except LocalNodeError as exc:
        raise click.ClickException(str(exc))
    click.echo("stopped" if stopped else "not running")


@command.command("status")
@_ENGINE
@click.option("--port", type=click.IntRange(1, 65535), default=None,
              help="Port to check (default: the one last started).")
def status(engine: str, port: int | None):
    """Print the URL the local node (`es start`) serves; exit 1 when it is down, or when what answers on the port
    is not that node (the other engine, a node started elsewhere). ELASTICSEARCH_URL is not consulted."""
    from sparcode.pipeline.local_node import LocalNodeError

    try:
        node = _node(engine, port, from_state=True)
        node.check_serving()
    except LocalNodeError as exc:
        click.echo(str(exc), err=True)
        raise SystemExit(1)
    click.echo(node.url)
