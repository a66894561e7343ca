"""The `Engine` for OpenSearch 2.x, through opensearch-py (elasticsearch-py refuses servers that
are not Elastic's)."""
from __future__ import annotations

import contextlib

from sparcode.pipeline.engine import (MAX_CHUNK_BYTES, ConnectionProblem, CredentialsRefused, Engine, EngineError,
                                      EngineTimeout, EngineUnavailable, WrongEngine, error_reason, major_version, redact)

SUPPORTED_MAJOR = 2


class OpenSearchEngine(Engine):
    name = "opensearch"
    label = "OpenSearch"
    url_var = "OPENSEARCH_URL"
    # OpenSearch has no `sparse_vector` field type; `rank_features` comes with mapper-extras.
    default_field_type = "rank_features"
    field_types = ("rank_features",)

    @classmethod
    def from_settings(cls, url: str, auth: dict, *, request_timeout: float) -> "OpenSearchEngine":
        from opensearchpy import OpenSearch

        kwargs: dict = {"timeout": request_timeout}
        if auth.get("username"):
            kwargs["http_auth"] = (auth["username"], auth.get("password", ""))
        if auth.get("ca_certs"):
            kwargs["ca_certs"] = auth["ca_certs"]
        try:
            return cls(OpenSearch([url], **kwargs), url)
        except Exception as exc:  # opensearch-py raises ImproperlyConfigured/ValueError on bad URLs
            raise ConnectionProblem(f"bad node URL (--url or {cls.url_var}) {redact(url)!r}: {type(exc).__name__}") from None

    def check(self) -> str:
        from opensearchpy import (AuthenticationException, AuthorizationException, ConnectionError, SerializationError,
                                  TransportError)

        shown = redact(self.url)
        try:
            info = self.client.info()
        except SerializationError as exc:
            raise ConnectionProblem(f"{shown} did not answer like OpenSearch: its answer to GET / is not JSON "
                                    f"({_start(exc)})") from None
        except (AuthenticationException, AuthorizationException) as exc:
            raise CredentialsRefused(f"OpenSearch at {shown} refused our credentials (HTTP {exc.status_code}); "
                                    "check OPENSEARCH_USERNAME/PASSWORD") from None
        except ConnectionError as exc:
            raise ConnectionProblem(f"OpenSearch not reachable at {shown} ({type(exc).__name__}); start one "
                                    "with `sparcode es start --engine opensearch`, or give --url or OPENSEARCH_URL") from None
        except TransportError:
            info = {}  # an error answer to `GET /`: the integ-test Elasticsearch says 405 here
        version = info.get("version", {}) if isinstance(info, dict) else {}
        # Only OpenSearch names itself in `GET /`; Elasticsearch omits the key.
        if version.get("distribution") != "opensearch":
            raise WrongEngine(f"{shown} is not OpenSearch (no version.distribution=opensearch in GET /; "
                              "Elasticsearch?); for Elasticsearch use --engine elasticsearch (index, reindex) "
                              "or --backend es (search, evaluate), with --url or ELASTICSEARCH_URL")
        number = str(version.get("number", "0"))
        if major_version(number) != SUPPORTED_MAJOR:
            raise ConnectionProblem(f"OpenSearch at {shown} is version {number}; sparcode is tested with "
                                    f"{SUPPORTED_MAJOR}.x (client opensearch-py>=2.6,<3)")
        return number

    @contextlib.contextmanager
    def _translate(self):
        from opensearchpy import ConnectionError, ConnectionTimeout, SerializationError, TransportError

        try:
            yield
        except SerializationError as exc:
            # An answer that is not JSON (a proxy's error page): opensearch-py's error for it is
            # no TransportError, unlike the Elasticsearch client's, which is treated as no answer.
            raise EngineUnavailable(f"SerializationError: the node's answer is not JSON ({_start(exc)})") from exc
        except ConnectionTimeout as exc:
            raise EngineTimeout(f"{type(exc).__name__}: {exc.error}") from exc
        except ConnectionError as exc:  # includes timeouts and TLS failures: no HTTP answer
            raise EngineUnavailable(f"{type(exc).__name__}: {exc.error}") from exc
        except TransportError as exc:
            raise EngineError(int(exc.status_code), error_reason(exc.info, exc.error)) from exc

    def _streaming_bulk(self, actions, index, chunk_size, max_retries, filter_path):
        from opensearchpy.helpers import streaming_bulk

        # opensearch-py retries exactly the 429s when max_retries > 0 (no retry_on_status knob).
        return streaming_bulk(self.client, _as_text(actions), chunk_size=chunk_size, max_retries=max_retries,
                              max_chunk_bytes=MAX_CHUNK_BYTES,
                              raise_on_error=False, yield_ok=True, expand_action_callback=_as_is, index=index,
                              filter_path=filter_path)

    def _parallel_bulk(self, actions, index, chunk_size, threads, filter_path):
        from opensearchpy.helpers import parallel_bulk

        return parallel_bulk(self.client, _as_text(actions), thread_count=threads, queue_size=threads, chunk_size=chunk_size,
                             max_chunk_bytes=MAX_CHUNK_BYTES,
                             raise_on_error=False, expand_action_callback=_as_is, index=index,
                             filter_path=filter_path)

    def _forcemerge(self, index, timeout_s):
        self.client.indices.forcemerge(index=index, max_num_segments=1, request_timeout=timeout_s)


def _start(exc: Exception) -> str:
    """The first characters of the answer a SerializationError carries (args[0] is the body)."""
    body = exc.args[0] if exc.args else ""
    return repr(str(body)[:60])


def _as_text(actions):
    # opensearch-py's chunker measures bodies with str.encode, so raw bodies travel as str.
    return ((action, body.decode()) for action, body in actions)


def _as_is(pair):
    return pair
