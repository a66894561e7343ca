"""`sparcode es start|stop|status`: a local single-node Elasticsearch for tests and trying things."""
from __future__ import annotations

import click

from sparcode.pipeline.local_node import DEFAULT_HEAP, DEFAULT_PORT


@click.group("es")
def command():
    """Manage a local Elasticsearch node (cached under .cache/es or $SPARCODE_ES_HOME)."""


@command.command("start")
@click.option("--port", type=int, default=DEFAULT_PORT, show_default=True, help="HTTP port.")
@click.option("--heap", default=DEFAULT_HEAP, show_default=True, help="JVM heap, e.g. 512m, 1g.")
def start(port: int, heap: str):
    """Fetch (via Maven), unpack and start the node; wait until it is healthy."""
    from sparcode.pipeline.local_node import LocalNode, LocalNodeError, default_home

    node = LocalNode(default_home(), port=port, heap=heap)
    try:
        seconds = node.start()
    except LocalNodeError as exc:
        raise click.ClickException(str(exc))
    note = "already running" if seconds == 0.0 else f"healthy after {seconds:.1f}s"
    click.echo(f"elasticsearch {node.url} ({note})")


@command.command("stop")
def stop():
    """Stop the node started by `sparcode es start`."""
    from sparcode.pipeline.local_node import LocalNode

    node = LocalNode.from_state()
    click.echo("stopped" if node.stop() else "not running")


@command.command("status")
@click.option("--port", type=int, default=None, help="Port to check (default: the one last started).")
def status(port: int | None):
    """Print the URL the node serves; exit 1 when it is down."""
    from sparcode.pipeline.local_node import LocalNode

    node = LocalNode.from_state(port=port)
    if node.healthy():
        click.echo(node.url)
        return
    click.echo(f"elasticsearch is not running on {node.url}", err=True)
    raise SystemExit(1)
