"""Build a new versioned index from an export and move an alias onto it atomically.

Every build goes into `<alias>-<fingerprint[:8]>-<utc timestamp>`; readers only ever see the
alias, which moves in one `update_aliases` call after the document count is verified, so a
search running during a reindex sees either the old index or the new one, never a partial one.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Callable

import tenacity

from sparcode.pipeline import bulk, mappings

FORCE_MERGE_TIMEOUT_S = 3600


class IndexProblem(RuntimeError):
    """A refusal or failed check the user can act on; one line."""


@dataclass
class BuildResult:
    index: str
    alias: str
    docs: int
    seconds_bulk: float
    previous: list[str]
    deleted: list[str]
    resumed: bool

    @property
    def docs_per_second(self) -> float:
        return self.docs / max(self.seconds_bulk, 1e-9)


def _transient(exc: BaseException) -> bool:
    from elasticsearch import ConnectionError as EsConnectionError, ConnectionTimeout

    return isinstance(exc, (EsConnectionError, ConnectionTimeout))


# Whole steps are retried on network trouble only; a 4xx is a real answer and surfaces at once.
_step = tenacity.retry(retry=tenacity.retry_if_exception(_transient), stop=tenacity.stop_after_attempt(4),
                       wait=tenacity.wait_exponential(multiplier=1, max=20), reraise=True)


def versioned_name(alias: str, fingerprint: str, now: datetime | None = None) -> str:
    stamp = (now or datetime.now(timezone.utc)).strftime("%Y%m%dt%H%M%S%fz")
    return f"{alias}-{fingerprint[:8].lower()}-{stamp}"


def alias_holders(client, alias: str) -> list[str]:
    if not client.indices.exists_alias(name=alias):
        return []
    return sorted(client.indices.get_alias(name=alias).body)


def index_meta(client, index: str) -> dict:
    """The `_meta` of `index` (an index name or an alias pointing at one index)."""
    mapping = client.indices.get_mapping(index=index).body
    if len(mapping) != 1:
        raise IndexProblem(f"{index} resolves to {len(mapping)} indices; expected one")
    return next(iter(mapping.values()))["mappings"].get("_meta", {})


def unfinished_index(client, alias: str, fingerprint: str) -> str | None:
    """The newest versioned index of `alias` for this export whose load never completed."""
    pattern = re.compile(rf"^{re.escape(alias)}-{re.escape(fingerprint[:8].lower())}-\d{{8}}t\d{{12}}z$")
    names = client.indices.get(index=f"{alias}-*", expand_wildcards="open", allow_no_indices=True).body
    for name in sorted(names, reverse=True):
        meta = names[name]["mappings"].get("_meta", {})
        if pattern.match(name) and meta.get("fingerprint") == fingerprint and not meta.get("complete"):
            return name
    return None


def build(client, export, alias: str, *, field_type: str | None = None, resume: bool = False,
          delete_old: bool = False, replace: bool = True, chunk_size: int = bulk.CHUNK_SIZE,
          on_chunk: Callable[[int], None] | None = None, progress: bool | None = None) -> BuildResult:
    """Index `export` under a new (or, with `resume`, the unfinished) versioned index; move `alias`.

    `replace=False` refuses when `alias` already exists (`sparcode index`); `field_type=None`
    keeps the field type of the index the alias points at, else `sparse_vector`.
    """
    import time

    if alias != alias.lower() or not re.match(r"^[a-z0-9][a-z0-9_.-]*$", alias):
        raise IndexProblem(f"alias {alias!r}: use lowercase letters, digits, '-', '_' or '.'")
    if client.indices.exists(index=alias) and not client.indices.exists_alias(name=alias):
        raise IndexProblem(f"{alias!r} is a concrete index, not an alias; pick another --alias")
    previous = alias_holders(client, alias)
    name = unfinished_index(client, alias, export.fingerprint) if resume else None
    resumed = name is not None
    if previous and not replace and not resumed:
        raise IndexProblem(f"alias {alias!r} already points at {', '.join(previous)}; "
                           "use `sparcode reindex` to replace it")
    if field_type is None:
        field_type = index_meta(client, alias).get("field_type", "sparse_vector") if previous else "sparse_vector"
    export.validate()  # before any write: a bad value never leaves a half-built index behind

    if name is None:
        name = versioned_name(alias, export.fingerprint)
        _create(client, name, mappings.index_body(export, field_type))
    else:
        field_type = index_meta(client, name).get("field_type", field_type)
        _set_refresh(client, name, "-1")

    started = time.perf_counter()
    _load(client, export, name, chunk_size=chunk_size, on_chunk=on_chunk, progress=progress)
    seconds = time.perf_counter() - started
    docs = _finalize(client, name)
    if docs != export.n_items:
        raise IndexProblem(f"{name} holds {docs} documents, the export has {export.n_items}; "
                           "alias not moved (run again with --resume)")
    _mark_complete(client, name, export, field_type)
    _swap(client, alias, name, previous)
    deleted = []
    if delete_old:
        deleted = [old for old in previous if old != name]
        if deleted:
            _step(client.indices.delete)(index=",".join(deleted))
    return BuildResult(name, alias, docs, seconds, previous, deleted, resumed)


@_step
def _create(client, name: str, body: dict) -> None:
    from elasticsearch import BadRequestError

    if client.indices.exists(index=name):  # a retried create whose first answer was lost
        return
    try:
        client.indices.create(index=name, settings=body["settings"], mappings=body["mappings"])
    except BadRequestError as exc:
        raise IndexProblem(f"Elasticsearch refused the mapping for {name}: {_reason(exc)}") from None


@_step
def _load(client, export, name: str, **kwargs) -> None:
    bulk.load(client, export, name, **kwargs)


@_step
def _set_refresh(client, name: str, interval: str | None) -> None:
    client.indices.put_settings(index=name, settings={"index": {"refresh_interval": interval}})


@_step
def _finalize(client, name: str) -> int:
    _set_refresh(client, name, None)  # null restores the default
    client.indices.refresh(index=name)
    # One segment: smaller, faster to search, and deleted copies from a resume are dropped.
    client.options(request_timeout=FORCE_MERGE_TIMEOUT_S).indices.forcemerge(index=name, max_num_segments=1)
    return int(client.count(index=name)["count"])


@_step
def _mark_complete(client, name: str, export, field_type: str) -> None:
    client.indices.put_mapping(index=name, meta=mappings.index_meta(export, field_type, complete=True))


@_step
def _swap(client, alias: str, name: str, previous: list[str]) -> None:
    actions = [{"remove": {"index": old, "alias": alias}} for old in previous if old != name]
    actions.append({"add": {"index": name, "alias": alias}})
    client.indices.update_aliases(actions=actions)


def _reason(exc) -> str:
    try:
        return exc.body["error"]["reason"]
    except (TypeError, KeyError):
        return str(exc)
