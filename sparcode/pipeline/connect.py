"""Open a checked `Engine` from the environment: which engine, at which URL, with which credentials.

Settings come from the same variables as the elasticsearch-py test suite
(`ELASTICSEARCH_URL`, `ELASTICSEARCH_API_KEY`, `ELASTICSEARCH_USERNAME/PASSWORD`,
`ELASTICSEARCH_CA_CERTS`) and their OpenSearch twins (`OPENSEARCH_URL`,
`OPENSEARCH_USERNAME/PASSWORD`, `OPENSEARCH_CA_CERTS`), so one exported URL points tests, CLI
and library at the same node. Secrets are passed to the client and never printed.
"""
from __future__ import annotations

import os
from pathlib import Path

from sparcode.pipeline.engine import (ConnectionProblem, CredentialsRefused, Engine, WrongEngine,  # noqa: F401
                                      redact)  # (re-exported)
from sparcode.pipeline.local_node import SPECS, LocalNode

ENGINES = tuple(SPECS)
_PREFIX = {"elasticsearch": "ELASTICSEARCH", "opensearch": "OPENSEARCH"}


def engine_class(name: str) -> type[Engine]:
    if name == "elasticsearch":
        from sparcode.pipeline.engine_es import ElasticsearchEngine
        return ElasticsearchEngine
    if name == "opensearch":
        from sparcode.pipeline.engine_os import OpenSearchEngine
        return OpenSearchEngine
    raise ConnectionProblem(f"engine {name!r}: expected one of {', '.join(ENGINES)}")


def engine_url(name: str) -> str:
    """`<ENGINE>_URL`, else the node `sparcode es start --engine NAME` runs: on the port it was
    last started on (`es start --port`), so a node moved off a taken default port is the one used,
    not whatever program holds the default."""
    return os.environ.get(f"{_PREFIX[name]}_URL") or LocalNode.from_state(SPECS[name]).url


def _auth(name: str) -> dict:
    prefix = _PREFIX[name]
    return {key: os.environ.get(f"{prefix}_{key.upper()}")
            for key in ("api_key", "username", "password", "ca_certs")}


def connect(url: str | None = None, *, engine: str | None = None, request_timeout: float = 30.0) -> Engine:
    """A checked engine. With `engine`, the server must be that engine; without, it is detected.

    Without `engine` the URL is ELASTICSEARCH_URL, else OPENSEARCH_URL, else the local
    Elasticsearch node; the client is the one matching what the server says it is.
    """
    if engine is not None:
        return _checked(engine, url or engine_url(engine), engine, request_timeout)
    explicit = url is not None
    source = "opensearch" if url is None and not os.environ.get("ELASTICSEARCH_URL") \
        and os.environ.get("OPENSEARCH_URL") else "elasticsearch"
    url = url or engine_url(source)
    first, second = (source, "opensearch" if source == "elasticsearch" else "elasticsearch")
    try:
        return _checked(first, url, source, request_timeout)
    except WrongEngine:
        pass
    except CredentialsRefused as exc:
        if not explicit:
            raise
        # Detection sends the ELASTICSEARCH_* credentials only; trying the OPENSEARCH_* ones too
        # would hand a node the other engine's secrets. Naming the engine picks the right ones.
        raise CredentialsRefused(f"{exc}; if the node at --url is OpenSearch, say so (index/reindex: --engine "
                                 "opensearch; search/evaluate: --backend opensearch) to send OPENSEARCH_* "
                                 "credentials instead") from None
    try:
        # Credentials stay those of the variable the URL came from.
        return _checked(second, url, source, request_timeout)
    except WrongEngine:
        # Each engine's own refusal would point at the other one, which was just tried too.
        raise WrongEngine(f"{redact(url)} answers neither as Elasticsearch (no X-Elastic-Product header) nor as "
                          f"OpenSearch (no version.distribution in GET /); check {_PREFIX[source]}_URL") from None


def _checked(name: str, url: str, auth_from: str, request_timeout: float) -> Engine:
    auth = _auth(auth_from)
    # Checked here: a missing file otherwise surfaces only at the TLS handshake, as a TLS error.
    if auth["ca_certs"] and not Path(auth["ca_certs"]).is_file():
        raise ConnectionProblem(f"{_PREFIX[auth_from]}_CA_CERTS is {auth['ca_certs']}, which is not a file")
    instance = engine_class(name).from_settings(url, auth, request_timeout=request_timeout)
    instance.version = instance.check()
    return instance
