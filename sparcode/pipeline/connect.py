"""Open an Elasticsearch client from the environment and check the server is one we can talk to.

Settings come from the same variables as the elasticsearch-py test suite, so one exported
`ELASTICSEARCH_URL` points tests, CLI and library at the same node.
"""
from __future__ import annotations

import os
from urllib.parse import urlsplit, urlunsplit

from sparcode.pipeline.local_node import local_url

SUPPORTED_MAJOR = 8


class ConnectionProblem(RuntimeError):
    """The node is unreachable or unsuitable; the message is one line and holds no secret."""


def redact(url: str) -> str:
    """The URL without user:password, for messages."""
    parts = urlsplit(url)
    if parts.username is None and parts.password is None:
        return url
    host = parts.hostname or ""
    if parts.port:
        host = f"{host}:{parts.port}"
    return urlunsplit((parts.scheme, f"***@{host}", parts.path, parts.query, parts.fragment))


def es_url() -> str:
    return os.environ.get("ELASTICSEARCH_URL") or local_url()


def connect(url: str | None = None, *, request_timeout: float = 30.0):
    """A checked `Elasticsearch` client: reachable, and a server of major version 8."""
    from elasticsearch import Elasticsearch

    url = url or es_url()
    kwargs: dict = {"request_timeout": request_timeout}
    if os.environ.get("ELASTICSEARCH_API_KEY"):
        kwargs["api_key"] = os.environ["ELASTICSEARCH_API_KEY"]
    elif os.environ.get("ELASTICSEARCH_USERNAME"):
        kwargs["basic_auth"] = (os.environ["ELASTICSEARCH_USERNAME"],
                                os.environ.get("ELASTICSEARCH_PASSWORD", ""))
    if os.environ.get("ELASTICSEARCH_CA_CERTS"):
        kwargs["ca_certs"] = os.environ["ELASTICSEARCH_CA_CERTS"]
    try:
        client = Elasticsearch(url, **kwargs)
    except ValueError as exc:
        raise ConnectionProblem(f"bad ELASTICSEARCH_URL {redact(url)!r}: {exc}") from None
    check_server(client, url)
    return client


def server_version(client) -> str:
    # `GET /` (client.info) is refused by the integ-test distribution; the nodes API is not.
    nodes = client.nodes.info(node_id="_local", metric="_none")
    return next(iter(nodes["nodes"].values()))["version"]


def check_server(client, url: str) -> str:
    from elasticsearch import AuthenticationException, AuthorizationException, TransportError

    shown = redact(url)
    try:
        version = server_version(client)
    except (AuthenticationException, AuthorizationException) as exc:
        raise ConnectionProblem(f"Elasticsearch at {shown} refused our credentials "
                                f"(HTTP {exc.meta.status}); check ELASTICSEARCH_API_KEY or "
                                "ELASTICSEARCH_USERNAME/PASSWORD") from None
    except TransportError as exc:
        raise ConnectionProblem(f"Elasticsearch not reachable at {shown} ({type(exc).__name__}); "
                                "start one with `sparcode es start` or set ELASTICSEARCH_URL") from None
    except Exception as exc:  # an ApiError or a malformed answer: not a node we understand
        raise ConnectionProblem(f"{shown} did not answer like Elasticsearch: {type(exc).__name__}") from None
    major = int(version.split(".")[0])
    if major != SUPPORTED_MAJOR:
        raise ConnectionProblem(f"Elasticsearch at {shown} is version {version}; sparcode needs "
                                f"{SUPPORTED_MAJOR}.x (client elasticsearch>=8.13,<9)")
    return version
