"""The `Engine` for Elasticsearch 8.x, through elasticsearch-py."""
from __future__ import annotations

import contextlib

from sparcode.pipeline.engine import (MAX_CHUNK_BYTES, ConnectionProblem, CredentialsRefused, Engine, EngineError,
                                      EngineTimeout, EngineUnavailable, WrongEngine, error_reason, major_version, redact, scrub)

SUPPORTED_MAJOR = 8
# The 8.x client sends and receives the compatibility-mode type, plain JSON elsewhere.
JSON_MIMETYPES = ("application/json", "application/vnd.elasticsearch+json")


class ElasticsearchEngine(Engine):
    name = "elasticsearch"
    label = "Elasticsearch"
    url_var = "ELASTICSEARCH_URL"
    default_field_type = "sparse_vector"
    # rank_features only where the mapper-extras module is installed (not the integ-test zip).
    field_types = ("sparse_vector", "rank_features")

    @classmethod
    def from_settings(cls, url: str, auth: dict, *, request_timeout: float) -> "ElasticsearchEngine":
        from elasticsearch import Elasticsearch
        from elasticsearch.serializer import OrjsonSerializer

        # orjson both ways: a bulk response (one item per document) and every search answer are
        # parsed several times faster than with the json module, on the client's share of the CPU.
        kwargs: dict = {"request_timeout": request_timeout,
                        "serializers": {mimetype: OrjsonSerializer() for mimetype in JSON_MIMETYPES}}
        if auth.get("api_key"):
            kwargs["api_key"] = auth["api_key"]
        elif auth.get("username"):
            kwargs["basic_auth"] = (auth["username"], auth.get("password", ""))
        if auth.get("ca_certs"):
            kwargs["ca_certs"] = auth["ca_certs"]
        try:
            return cls(Elasticsearch(url, **kwargs), url)
        except ValueError as exc:
            raise ConnectionProblem(f"bad node URL (--url or {cls.url_var}) {redact(url)!r}: {scrub(str(exc), url)}") from None

    def check(self) -> str:
        from elasticsearch import (AuthenticationException, AuthorizationException, TransportError,
                                   UnsupportedProductError)

        shown = redact(self.url)
        try:
            # `GET /` is refused by the integ-test distribution; the nodes API is not.
            nodes = self.client.nodes.info(node_id="_local", metric="_none")
            version = next(iter(nodes["nodes"].values()))["version"]
        except UnsupportedProductError:
            # The client's product check: no X-Elastic-Product header, e.g. an OpenSearch node.
            raise WrongEngine(f"{shown} is not Elasticsearch (OpenSearch?); for OpenSearch use --engine opensearch "
                              "(index, reindex) or --backend opensearch (search, evaluate), with --url or "
                              "OPENSEARCH_URL; two-tower vectors are served by Elasticsearch only") from None
        except (AuthenticationException, AuthorizationException) as exc:
            raise CredentialsRefused(f"Elasticsearch at {shown} refused our credentials "
                                    f"(HTTP {exc.meta.status}); check ELASTICSEARCH_API_KEY or "
                                    "ELASTICSEARCH_USERNAME/PASSWORD") from None
        except TransportError as exc:
            raise ConnectionProblem(f"Elasticsearch not reachable at {shown} ({type(exc).__name__}); "
                                    "start one with `sparcode es start`, or give --url or ELASTICSEARCH_URL") from None
        except Exception as exc:  # an ApiError or a malformed answer: not a node we understand
            raise ConnectionProblem(f"{shown} did not answer like Elasticsearch: {type(exc).__name__}") from None
        if major_version(version) != SUPPORTED_MAJOR:
            raise ConnectionProblem(f"Elasticsearch at {shown} is version {version}; sparcode needs "
                                    f"{SUPPORTED_MAJOR}.x (client elasticsearch>=8.13,<9)")
        return version

    @contextlib.contextmanager
    def _translate(self):
        from elasticsearch import ApiError, ConnectionTimeout, TransportError

        try:
            yield
        except ApiError as exc:
            raise EngineError(exc.meta.status, error_reason(exc.body, exc.message)) from exc
        except ConnectionTimeout as exc:
            raise EngineTimeout(f"{type(exc).__name__}: {exc.message}") from exc
        except TransportError as exc:  # connection refused, reset, timeout: no HTTP answer
            raise EngineUnavailable(f"{type(exc).__name__}: {exc.message}") from exc

    def _streaming_bulk(self, actions, index, chunk_size, max_retries, filter_path):
        from elasticsearch.helpers import streaming_bulk

        # The pairs are already (action, body); the JSON serializer passes bytes bodies through.
        return streaming_bulk(self.client, actions, chunk_size=chunk_size, max_retries=max_retries,
                              max_chunk_bytes=MAX_CHUNK_BYTES,
                              retry_on_status=(429,), raise_on_error=False, yield_ok=True,
                              expand_action_callback=_as_is, index=index,
                              filter_path=filter_path)

    def _parallel_bulk(self, actions, index, chunk_size, threads, filter_path):
        from elasticsearch.helpers import parallel_bulk

        return parallel_bulk(self.client, actions, thread_count=threads, queue_size=threads, chunk_size=chunk_size,
                             max_chunk_bytes=MAX_CHUNK_BYTES,
                             raise_on_error=False, expand_action_callback=_as_is, index=index,
                             filter_path=filter_path)

    def _forcemerge(self, index, timeout_s):
        self.client.options(request_timeout=timeout_s).indices.forcemerge(index=index, max_num_segments=1)


def _as_is(pair):
    return pair
