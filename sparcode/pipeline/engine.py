"""One interface over the Elasticsearch and OpenSearch clients: what the indexer and the search
backend need from a search engine, and nothing else.

The two clients share method names but differ in exceptions, response objects, per-request
timeouts, bulk helpers and how a server proves what it is. Each implementation
(`engine_es.py`, `engine_os.py`) supplies only those differences; every request is written
once, here, in the `body=` form both clients accept. Errors leave as `EngineError` (the server
answered with an error) or `EngineUnavailable` (network trouble, worth retrying a whole step).
"""
from __future__ import annotations

import contextlib
import functools
import os
from abc import ABC, abstractmethod
from typing import ClassVar, Iterable, Iterator
from urllib.parse import urlsplit

import tenacity

from sparcode.errors import SparcodeError

# Bytes per bulk request. A node refuses (429) a request that takes its in-flight indexing
# bytes past 10 % of its heap, and the helpers' default 100 MB chunks can do that alone: a
# Beauty export with 4 codebooks (800 codes per item, 1,000-item chunks of 52 MB) was refused
# by a 1 GB-heap node with two requests in flight. 10 MB keeps two streams under 10 % of a
# 256 MB heap; ml-1m's 1,000-document chunks are ~1 MB and do not notice.
MAX_CHUNK_BYTES = 10 * 1024 * 1024


class ConnectionProblem(SparcodeError, RuntimeError):
    """The node is unreachable or unsuitable; the message is one line and holds no secret."""


class CredentialsRefused(ConnectionProblem):
    """The node answered 401/403 to the credentials sent."""


class WrongEngine(ConnectionProblem):
    """The server is the other engine (or neither); the message says which flag to use."""


class EngineError(SparcodeError, RuntimeError):
    """The server refused a request; `reason` is its own explanation."""

    def __init__(self, status: int, reason: str):
        # An answer without a body (a HEAD request, a proxy's bare 503) has no reason of its own.
        self.status, self.reason = status, reason if reason not in (None, "", "None") else "no reason given"
        super().__init__(f"HTTP {status}: {self.reason}")


class EngineUnavailable(SparcodeError, RuntimeError):
    """The request did not get an answer (refused, reset, timed out)."""


class EngineTimeout(EngineUnavailable):
    """No answer within the request timeout; the node may still be doing the work."""


# Answers of a busy or restarting node (indexing pressure, a full search queue, a proxy whose
# node is away): worth resending after a pause, unlike every other refusal.
TRANSIENT_STATUSES = frozenset({429, 502, 503, 504})


def transient(exc: BaseException) -> bool:
    return isinstance(exc, EngineUnavailable) or isinstance(exc, EngineError) and exc.status in TRANSIENT_STATUSES


# Whole requests (a build's steps, a batch of searches) are retried on network trouble and on a
# busy node's answers, over about 15 s; any other refusal is a real answer and surfaces at once.
_BACKOFF = {"stop": tenacity.stop_after_attempt(5), "wait": tenacity.wait_exponential(multiplier=1, max=20),
            "reraise": True}
retry_transient = tenacity.retry(retry=tenacity.retry_if_exception(transient), **_BACKOFF)
# For requests a timeout should end rather than repeat: a search someone waits for (five request
# timeouts would be minutes) and a merge that may still be running in the node.
retry_unless_timed_out = tenacity.retry(
    retry=tenacity.retry_if_exception(lambda exc: transient(exc) and not isinstance(exc, EngineTimeout)), **_BACKOFF)
# For a step that already resends a busy node's 429s itself (the bulk helper's own backoff):
# retried on network trouble only, so the two retries do not multiply into minutes.
retry_unavailable = tenacity.retry(retry=tenacity.retry_if_exception_type(EngineUnavailable),
                                   stop=tenacity.stop_after_attempt(4),
                                   wait=tenacity.wait_exponential(multiplier=1, max=20), reraise=True)


def redact(url: str) -> str:
    """The URL without user:password, for messages.

    Plain string work, not `urlsplit`: a malformed URL (bad port, no scheme, an unclosed IPv6
    bracket) is exactly when we print one, and the parser then raises or misreads the userinfo."""
    scheme, sep, rest = url.partition("://")
    if not sep:
        scheme, rest = "", url
    if "@" not in rest:
        return url
    # Everything up to the last "@" goes, even past a "/", "?" or "#": those are unescaped
    # characters of a password far more often than an "@" is part of a search node's path.
    return f"{scheme}{sep}***@{rest.rpartition('@')[2]}"


def scrub(text: str, url: str) -> str:
    """`text` (a library's error message) with the raw URL replaced by its redacted form."""
    return text.replace(url, redact(url)) if url else text


def major_version(version: str) -> int | None:
    """The leading integer of a version string, or None when the server sent something else."""
    head = str(version).split(".")[0]
    return int(head) if head.isdigit() else None


REASON_END_CHARS = 150  # kept from each end of a long reason


def error_reason(body, fallback) -> str:
    """The server's most specific reason from an error body (its first `root_cause`, where
    "all shards failed" would otherwise hide "Result window is too large"), else `fallback`;
    one line, as every message we print is; a long one keeps its head and its tail, where the
    node often states the cause ("Validation Failed: 1: id [<the id>] is too long, …")."""
    try:
        error = body["error"]
        causes = error.get("root_cause") or [error]
        reason = str(causes[0].get("reason") or error["reason"])
        index = causes[0].get("index")
        if index and index not in reason:  # "closed" alone does not say which index behind an alias
            reason = f"{reason} (index {index}, {causes[0].get('type', 'error')})"
    except (TypeError, KeyError, AttributeError, IndexError):
        reason = str(fallback)
    first = reason.strip().splitlines()[0] if reason.strip() else reason
    if len(first) <= 2 * REASON_END_CHARS:
        return first
    return first[:REASON_END_CHARS] + "…" + first[-REASON_END_CHARS:]


class Engine(ABC):
    name: ClassVar[str]  # "elasticsearch" | "opensearch", as in --engine
    label: ClassVar[str]  # for messages
    url_var: ClassVar[str]  # the environment variable naming its URL
    default_field_type: ClassVar[str]
    field_types: ClassVar[tuple[str, ...]]  # codes field types the engine can have at all

    def __init__(self, client, url: str):
        self.client, self.url = client, url
        self.version: str | None = None  # set by `connect` after `check`

    # -- what differs between the client libraries ----------------------------------------------
    @abstractmethod
    def check(self) -> str:
        """The server's version; `ConnectionProblem`/`WrongEngine` when we cannot serve from it."""

    @abstractmethod
    def _translate(self) -> contextlib.AbstractContextManager:
        """Turn the library's exceptions raised inside the block into ours."""

    @abstractmethod
    def _streaming_bulk(self, actions: Iterable[tuple[dict, bytes]], index: str, chunk_size: int,
                        max_retries: int, filter_path: str | None) -> Iterator:
        """The library's `helpers.streaming_bulk` over `(action, raw JSON source)` pairs, sent as
        they are: (ok, info) per document, 429s retried."""

    @abstractmethod
    def _parallel_bulk(self, actions: Iterable[tuple[dict, bytes]], index: str, chunk_size: int,
                       threads: int, filter_path: str | None) -> Iterator:
        """The library's `helpers.parallel_bulk` over the same pairs: `threads` requests in
        flight, (ok, info) per document, nothing retried."""

    @abstractmethod
    def _forcemerge(self, index: str, timeout_s: float) -> None: ...

    # -- requests, written once -----------------------------------------------------------------
    def _call(self, method, **kwargs):
        with self._translate():
            response = method(**kwargs)
        # elasticsearch-py wraps answers in ApiResponse (`.body` is the dict); opensearch-py does not.
        return getattr(response, "body", response)

    def exists(self, name: str) -> bool:
        return bool(self._call(self.client.indices.exists, index=name))

    def alias_exists(self, name: str) -> bool:
        return bool(self._call(self.client.indices.exists_alias, name=name))

    def alias_holders(self, alias: str) -> list[str]:
        if not self.alias_exists(alias):
            return []
        return sorted(self._call(self.client.indices.get_alias, name=alias))

    def mappings(self, index: str) -> dict[str, dict]:
        """{concrete index: its mappings} for an index, alias or pattern."""
        return {name: body["mappings"] for name, body in self._call(self.client.indices.get_mapping,
                                                                    index=index).items()}

    def matching(self, pattern: str) -> dict[str, dict]:
        """{index: its mappings} of the open indices matching `pattern` (none is not an error)."""
        found = self._call(self.client.indices.get, index=pattern, expand_wildcards="open",
                           allow_no_indices=True)
        return {name: body.get("mappings", {}) for name, body in found.items()}

    def create_index(self, name: str, body: dict) -> None:
        self._call(self.client.indices.create, index=name, body=body)

    def set_refresh_interval(self, index: str, interval: str | None) -> None:
        # None restores the engine's default.
        self._call(self.client.indices.put_settings, index=index, body={"index": {"refresh_interval": interval}})

    def put_meta(self, index: str, meta: dict) -> None:
        self._call(self.client.indices.put_mapping, index=index, body={"_meta": meta})

    def refresh(self, index: str) -> None:
        self._call(self.client.indices.refresh, index=index)

    def flush(self, index: str, *, force: bool = False) -> None:
        """Commit. `force` commits even with nothing new to write, which still persists the
        current global checkpoint and lets the node count this commit as its safe one."""
        self._call(self.client.indices.flush, index=index, force=force)

    def forcemerge(self, index: str, timeout_s: float) -> None:
        """Merge to one segment, waiting up to `timeout_s` (a large index takes minutes)."""
        with self._translate():
            self._forcemerge(index, timeout_s)

    def history_released(self, index: str) -> bool:
        """Whether every shard's retention leases have moved past its last operation.

        Until they have, a merge keeps each document's `_recovery_source`: the full JSON of any
        field left out of `_source`, as large as the `_source` it replaces. The node renews the
        leases every 30 s on its own schedule; no request moves them sooner."""
        stats = self._call(self.client.indices.stats, index=index, level="shards",
                           filter_path="indices.*.shards.*.seq_no.max_seq_no,"
                                       "indices.*.shards.*.retention_leases.leases.retaining_seq_no")
        copies = [copy for shard in stats.get("indices", {}).get(index, {}).get("shards", {}).values()
                  for copy in shard]
        # A shard not reporting yet has released nothing: no copies is "not yet", not "all clear".
        return bool(copies) and all(
            lease["retaining_seq_no"] > copy.get("seq_no", {}).get("max_seq_no", -1)
            for copy in copies for lease in copy.get("retention_leases", {}).get("leases", []))

    def count(self, index: str) -> int:
        return int(self._call(self.client.count, index=index)["count"])

    def update_aliases(self, actions: list[dict]) -> None:
        """All `actions` in one request: the server applies them atomically."""
        self._call(self.client.indices.update_aliases, body={"actions": actions})

    def delete_indices(self, names: list[str]) -> None:
        # A retried delete whose first answer was lost, or another build's delete of the same
        # leftovers, finds some already gone: that is the state asked for, not an error.
        self._call(self.client.indices.delete, index=",".join(names), ignore_unavailable=True)

    def process_cpu_seconds(self) -> float | None:
        """CPU time the node's process has used so far (None when the node will not say): on a
        shared machine, docs per CPU-second measures a load where docs per wall second cannot.

        The node refreshes its own figure once a second (`monitor.process.refresh_interval`), too
        coarse for a few seconds of queries, so a node on this machine is read from /proc."""
        try:
            stats = self._call(self.client.nodes.stats, node_id="_local", metric="process")
            node, = stats["nodes"].values()
            seconds = node["process"]["cpu"]["total_in_millis"] / 1000.0
        except (EngineError, EngineUnavailable, KeyError, ValueError):
            return None
        if urlsplit(self.url).hostname not in ("127.0.0.1", "localhost", "::1"):
            return seconds
        pid = self._node_pid
        if pid is not None:
            try:
                with open(f"/proc/{int(pid)}/stat") as fh:
                    fields = fh.read().rsplit(")", 1)[1].split()
                return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime + stime
            except (OSError, ValueError, IndexError):
                pass
        return seconds

    @functools.cached_property
    def _node_pid(self) -> int | None:
        # Node stats do not carry the pid; node info does. Asked once: it never changes while
        # the node runs, and this is read around every measured loop.
        try:
            info = self._call(self.client.nodes.info, node_id="_local", metric="process")
            node, = info["nodes"].values()
            return int(node["process"]["id"])
        except (EngineError, EngineUnavailable, KeyError, ValueError, TypeError):
            return None

    def search(self, index: str, body: dict) -> dict:
        return self._call(self.client.search, index=index, body=body)

    def msearch(self, index: str, bodies: list[dict]) -> list[dict]:
        """One response per body, in order; a failed search is a response holding `error`."""
        lines: list[dict] = []
        for body in bodies:
            lines += [{"index": index}, body]
        return self._call(self.client.msearch, body=lines)["responses"]

    def streaming_bulk(self, actions: Iterable[tuple[dict, bytes]], *, index: str, chunk_size: int,
                       max_retries: int, filter_path: str | None = None) -> Iterator:
        with self._translate():
            yield from self._streaming_bulk(actions, index, chunk_size, max_retries, filter_path)

    def parallel_bulk(self, actions: Iterable[tuple[dict, bytes]], *, index: str, chunk_size: int,
                      threads: int, filter_path: str | None = None) -> Iterator:
        with self._translate():
            yield from self._parallel_bulk(actions, index, chunk_size, threads, filter_path)
