"""One search interface over a search engine (Elasticsearch or OpenSearch) and an in-process
index of the same export.

Both backends resolve unindexed query terms to their nearest indexed code, score an item as
Σ count × stored value, return only items that match at least one term, and order equal
scores by smaller `ord`, so their rankings are identical and either can stand in for the other.
"""
from __future__ import annotations

import numbers
import threading
import time
from dataclasses import dataclass
from typing import Callable, Collection, Mapping, Protocol, Sequence

import numpy as np
import tenacity

from sparcode.codes_fallback import CodeTable
from sparcode.errors import SparcodeError
from sparcode.featurefield import truncate
from sparcode.pipeline import layout
from sparcode.pipeline import query as dsl
from sparcode.pipeline.engine import TRANSIENT_STATUSES, Engine, EngineError, error_reason, retry_unless_timed_out
from sparcode.pipeline.export import Export, same_export

Query = Mapping[str, float]
MSEARCH_BATCH = 100
REJECTED_PAUSES_S = (0.5, 1, 2, 4, 8)  # then a still-rejected search is reported
# index.max_result_window's default: an engine refuses a larger `size` only once it has the request.
MAX_RESULT_WINDOW = 10_000


class BackendError(SparcodeError, RuntimeError):
    """The backend cannot serve (missing alias, fingerprint mismatch); one line."""

def resolve(engine: Engine, alias: str) -> tuple[str, dict]:
    """(name, mapping) of the one index `alias` names now; a clear error otherwise."""
    try:
        mapping = engine.mappings(alias)
    except EngineError as exc:
        if exc.status != 404:
            raise
        raise BackendError(f"no index or alias {alias!r} on this {engine.label}") from None
    if len(mapping) != 1:
        raise BackendError(f"{alias!r} points at {len(mapping)} indices; expected one")
    return next(iter(mapping.items()))


class ServedIndex:
    """The index an alias named when a backend read its mapping, and whether it still does.

    Backends build their requests from that mapping (fingerprint, layout, query form, vector
    transform). `sparcode reindex` may move the alias to an index of another model or layout
    while a backend lives; its queries would then match nothing or the wrong codes, silently.
    `msearch` notices the move from its own answers — a hit from another index, or an error or
    empty answer while the alias now names another index — lets the backend re-read (refusing a
    model it was not opened for) and asks once more. Asking where the alias points costs one
    request (≈ 1 ms), paid only by a batch with an error or an empty answer: rare for scored
    searches; for TIGER's prefix lookups small beside generating the IDs.

    A refused re-read leaves name, mapping and the backend's state as they were, so every later
    batch is answered by the other index, notices it again and is refused again; if the alias
    moves back, the backend serves again. `lock` guards that state: a batch's bodies are built,
    and a move followed, under it, so threads sharing a backend each send one consistent request.
    `retries` (None: the engine module's policy) caps how often a batch is sent again to a busy
    or unreachable node."""

    def __init__(self, engine: Engine, alias: str, *, retries: int | None = None):
        self.engine, self.alias, self.retries = engine, alias, retries
        self.lock = threading.RLock()  # re-entrant: bodies are built by `explain`, which takes it too
        self.name, self.mapping = self._resolved()

    def _resolved(self) -> tuple[str, dict]:
        """(name, mapping) of the index the alias names now, checked before anything is replaced."""
        name, mapping = resolve(self.engine, self.alias)
        if mapping.get("_meta", {}).get("complete") is False:
            # Builds mark an index complete only after its count check, and aliases only ever
            # move onto complete ones: this is an unfinished load opened by name, missing documents
            # it would silently never return. (Indices from before the flag carry none: served.)
            raise BackendError(f"{name} is an unfinished load (its _meta says complete: false): "
                               "search the alias a build moves onto an index once it is complete")
        return name, mapping

    @property
    def meta(self) -> dict:
        return self.mapping.get("_meta", {})

    @staticmethod
    def _suspect(responses: list[dict], built_for: str) -> tuple[bool, bool]:
        """(answered by another index than `built_for`, worth asking where the alias points)."""
        elsewhere = any(h.get("_index", built_for) != built_for
                        for r in responses for h in r.get("hits", {}).get("hits", ()))
        return elsewhere, elsewhere or any("error" in r or not r["hits"]["hits"] for r in responses)

    def _follow(self, reread: Callable[[], None]) -> None:
        """Point at the index the alias names now and `reread()` if that is another one; a
        refusal puts name and mapping back, matching the state the backend still holds."""
        previous = self.name, self.mapping
        self.name, self.mapping = self._resolved()
        if self.name == previous[0]:
            return
        try:
            reread()
        except BaseException as exc:
            moved_to = self.name
            self.name, self.mapping = previous
            if isinstance(exc, BackendError):
                raise BackendError(f"{self.alias!r} moved from {previous[0]} to {moved_to}: {exc}") from None
            raise

    def msearch(self, bodies: Callable[[], list[dict]], reread: Callable[[], None], what: str) -> list[dict]:
        """Run `bodies()` in batches; if the alias moved, `reread()` and run the rebuilt bodies again."""
        with self.lock:
            built_for, sent = self.name, bodies()
        responses = self._send(sent)
        elsewhere, suspect = self._suspect(responses, built_for)
        if suspect:
            with self.lock:
                self._follow(reread)
                # Another thread may have followed the move already: what counts is whether
                # these bodies were built for the index that answered.
                again = elsewhere or self.name != built_for
                if again:
                    sent = bodies()
            if again:
                responses = self._send(sent)
        for response in responses:
            if "error" in response:
                raise BackendError(f"{what} on {self.alias!r} failed: {error_reason(response, response['error'])}")
        return responses

    def _send(self, bodies: list[dict]) -> list[dict]:
        responses: list[dict] = []
        for start in range(0, len(bodies), MSEARCH_BATCH):
            responses += self._send_batch(bodies[start:start + MSEARCH_BATCH])
        return responses

    def _send_batch(self, batch: list[dict]) -> list[dict]:
        """One `_msearch`. The searches a busy node rejected inside it (429: its search queue was
        full) are sent again after a pause: one rejection must not end a whole evaluation."""
        # A timed-out search is not sent again: someone is waiting, and five request timeouts are minutes.
        send = retry_unless_timed_out(self.engine.msearch)
        pauses = REJECTED_PAUSES_S
        if self.retries is not None:
            send = send.retry_with(stop=tenacity.stop_after_attempt(self.retries + 1))
            # As many resends as asked, the last pause repeated past the default's five.
            pauses = tuple(REJECTED_PAUSES_S[min(i, len(REJECTED_PAUSES_S) - 1)] for i in range(self.retries))
        responses = send(self.alias, batch)
        for pause in pauses:
            again = [i for i, r in enumerate(responses) if "error" in r and r.get("status") in TRANSIENT_STATUSES]
            if not again:
                break
            time.sleep(pause)
            resent = send(self.alias, [batch[i] for i in again])
            for i, response in zip(again, resent):
                responses[i] = response
        return responses


def check_fingerprint(served: ServedIndex, expected: str | None, what: str = "model", hint: str =
                      "reindex the export or pick its alias") -> str | None:
    """The served index's fingerprint; BackendError when `expected` is given and differs."""
    found = served.meta.get("fingerprint")
    if expected is not None and found != expected:
        raise BackendError(f"{served.alias!r} serves {what} {str(found)[:12]}…, expected {expected[:12]}… ({hint})")
    return found


@dataclass(frozen=True)
class Hit:
    item_id: str
    score: float


class Backend(Protocol):
    def search(self, query: Query, k: int, filters: Mapping[str, object] | None = None,
               exclude_items: Collection[str] | None = None) -> list[Hit]: ...

    def batch_search(self, queries: Sequence[Query], k: int, filters: Mapping[str, object] | None = None,
                     exclude_items: Sequence[Collection[str]] | None = None) -> list[list[Hit]]: ...


def _prepare(code_table: CodeTable | None, query: Query) -> dict[str, float]:
    query = dsl.clean_query(query)
    if code_table is None:
        return query
    try:
        resolved = code_table.resolve(query)
    except ValueError as exc:  # not a pseudo-term, or a code beyond this export's codebooks
        raise dsl.QueryError(f"{exc}: spell a query in this export's codes (`Recommender.query` makes them)") from None
    return dsl.clean_query(resolved)


def checked_k(k, limit: int | None = None) -> int:
    """`k` as an int; QueryError for one no backend answers, or above `limit` (an engine's
    result window, refused before the request rather than by the node after it)."""
    if isinstance(k, bool) or not isinstance(k, numbers.Integral):
        raise dsl.QueryError(f"k must be a whole number, got {k!r}")
    if k < 1:
        raise dsl.QueryError(f"k = {k}: expected at least 1")
    if limit is not None and k > limit:
        raise dsl.QueryError(f"k = {k:,} is above {limit:,}, the most results a search engine returns "
                             "(index.max_result_window's default)")
    return int(k)


def checked_exclusions(exclude_items, what: str = "exclude_items takes a collection of item ids"):
    """`exclude_items` unchanged; QueryError for one string, which would exclude its characters."""
    if isinstance(exclude_items, (str, bytes)):
        raise dsl.QueryError(f"{what}, not one string ({exclude_items!r}): pass [{exclude_items!r}]")
    return exclude_items


def _per_query(exclude_items, n: int) -> list:
    if exclude_items is None:
        return [None] * n
    checked_exclusions(exclude_items, "exclude_items of a batch takes one collection of item ids per query")
    if len(exclude_items) != n:
        raise dsl.QueryError(f"exclude_items has {len(exclude_items)} entries for {n} queries")
    return [checked_exclusions(ex) for ex in exclude_items]


class EngineBackend:
    """Searches `alias` (an index or alias) on an `Engine` with the query form matching its codes field.

    Pass `code_table` so unindexed terms fall back like everywhere else, and
    `expected_fingerprint` to refuse an index built from another model; `open()` takes both
    from an export directory. One backend may be shared by threads: its state is read, and
    each request built from it, under `served.lock` (ServedIndex says how a move is followed).
    """

    def __init__(self, engine: Engine, alias: str, *, code_table: CodeTable | None = None,
                 expected_fingerprint: str | None = None, expected_export: dict | None = None,
                 form: str | None = None, tiebreak: bool = True, retries: int | None = None,
                 export_path=None):
        self.engine, self.alias, self.code_table, self.tiebreak = engine, alias, code_table, tiebreak
        self.expected_fingerprint, self.requested_form = expected_fingerprint, form
        self.expected_export, self.export_path = expected_export, export_path
        self.served = ServedIndex(engine, alias, retries=retries)
        self._read_mapping()

    def _read_mapping(self) -> None:
        # Every check before any attribute changes: a refused index leaves the state it refused intact.
        fingerprint = check_fingerprint(self.served, self.expected_fingerprint)
        self._check_same_export()
        props = self.served.mapping.get("properties", {})
        # Indices from before `layout` existed are flat, and their codes field names its type.
        index_layout = self.served.meta.get("layout", layout.FLAT)
        numbering = self._numbering() if index_layout == layout.NUMBERED else None
        field_type = self.served.meta.get("field_type") or props.get("codes", {}).get("type", "sparse_vector")
        self.fingerprint, self.layout, self.numbering = fingerprint, index_layout, numbering
        self.field_types = {k: v.get("type", "object") for k, v in props.items()
                            if k not in ("item_id", "ord", "codes")}
        self.form = self.requested_form or dsl.form_for(field_type)

    def _check_same_export(self) -> None:
        """Another export of the same model (another stored fraction or probe count) has the
        fingerprint but not the index's postings, and its query settings would be applied to
        them: queries would probe another number of codes than the index was made for."""
        built_from = self.served.meta.get("manifest") or {}
        if self.expected_export is None or not built_from or same_export(built_from, self.expected_export):
            return
        ours = self.expected_export
        this = f"{self.export_path}, made {ours.get('created')}" if self.export_path else f"made {ours.get('created')}"
        again = f"`sparcode reindex {self.export_path} --alias {self.alias}`" if self.export_path else "reindex it"
        raise BackendError(f"{self.alias!r} was built from another export of this model (made "
                           f"{built_from.get('created')}, {built_from.get('pairs')} postings) than this one ({this}, "
                           f"{ours.get('pairs')} postings): {again} to serve this one, or search with the export "
                           "the index was built from")

    def _numbering(self) -> layout.Numbering:
        """The numbering the index was built with, rebuilt from the export's code table; a
        numbered index read with another table would score the wrong codes, so that is refused."""
        recorded = self.served.meta.get("numbering") or {}
        if self.code_table is None:
            raise BackendError(f"{self.alias!r} numbers its codes by the export's code table; open it with "
                               "the export it was built from (--export DIR)")
        numbering = layout.Numbering(self.code_table.terms, recorded.get("keys_per_field"))
        if numbering.digest != recorded.get("digest"):
            raise BackendError(f"{self.alias!r} was built from another export of this model (its code table "
                               "differs); serve it with the export it was built from, or reindex this one")
        return numbering

    @classmethod
    def open(cls, alias: str, export_dir=None, *, connection: Engine | None = None, engine: str | None = None,
             url: str | None = None, request_timeout: float | None = None, **kwargs) -> "EngineBackend":
        """Connect to `url`, else from the environment (`engine` by name, else detected), unless
        `connection` is given; with `export_dir`, use its code table and fingerprint."""
        from sparcode.pipeline.connect import connect

        if connection is not None and request_timeout is not None:
            raise BackendError("request_timeout applies to the connection a backend opens; "
                               "`connection` was opened with its own")
        if export_dir is not None:
            export = opened_export(export_dir)
            kwargs.setdefault("code_table", export.code_table())
            kwargs.setdefault("expected_fingerprint", export.fingerprint)
            kwargs.setdefault("expected_export", export.summary())
            kwargs.setdefault("export_path", export.path)
            export.check_unchanged()  # the code table must be the manifest's model's
        timeout = {} if request_timeout is None else {"request_timeout": request_timeout}
        return cls(connection or connect(url, engine=engine, **timeout), alias, **kwargs)

    def explain(self, query: Query, k: int, filters: Mapping[str, object] | None = None,
                exclude_items: Collection[str] | None = None) -> dict:
        """The exact request body `search` sends."""
        k, exclude_items = checked_k(k, MAX_RESULT_WINDOW), checked_exclusions(exclude_items)
        with self.served.lock:
            return dsl.search_body(_prepare(self.code_table, query), k, form=self.form, layout=self.layout,
                                   numbering=self.numbering, filters=dsl.coerce_filters(filters, self.field_types),
                                   exclude_items=exclude_items, tiebreak=self.tiebreak)

    def search(self, query: Query, k: int, filters=None, exclude_items=None) -> list[Hit]:
        return self.batch_search([query], k, filters, None if exclude_items is None else [exclude_items])[0]

    def batch_search(self, queries: Sequence[Query], k: int, filters=None, exclude_items=None) -> list[list[Hit]]:
        excludes = _per_query(exclude_items, len(queries))
        responses = self.served.msearch(lambda: [self.explain(q, k, filters, ex) for q, ex in zip(queries, excludes)],
                                        self._read_mapping, "search")
        # Both engines print float32 scores in shortest form; round-trip to the exact float32 value.
        return [[Hit(dsl.hit_item(h), float(np.float32(h["_score"]))) for h in response["hits"]["hits"]]
                for response in responses]


class LocalBackend:
    """The export as an in-memory inverted index: term -> (item ords, stored float32 scores)."""

    def __init__(self, export_dir, code_table: CodeTable | None = None):
        export = opened_export(export_dir)
        self.fingerprint = export.fingerprint
        self.code_table = code_table if code_table is not None else export.code_table()
        self.field_types = export.item_fields
        self.layout, self.numbering = layout.placement(self.code_table.terms)  # as an index of this export
        n = export.n_items
        self.item_ids: list[str] = [""] * n
        postings: dict[str, tuple[list[int], list[float]]] = {}
        # field -> value -> ords holding it; a list attribute holds each of its values
        self._by_value: dict[str, dict[object, list[int]]] = {f: {} for f in self.field_types}
        for item in export.checked_items():  # what an index would refuse, this backend refuses too
            ord_ = item["ord"]
            self.item_ids[ord_] = item["item_id"]
            for term, value in (item.get("codes") or {}).items():
                ords, values = postings.setdefault(term, ([], []))
                ords.append(ord_)
                values.append(value)
            for name in self._by_value:
                values = item.get(name)
                for v in values if isinstance(values, list) else [values]:
                    if v is not None:
                        self._by_value[name].setdefault(self._key(name, v), []).append(ord_)
        # Truncate like FeatureField does, so a not-yet-truncated export still ranks as ES would.
        self.postings = {t: (np.asarray(o, dtype=np.int64), truncate(v)) for t, (o, v) in postings.items()}
        self._index_of = {item_id: i for i, item_id in enumerate(self.item_ids)}
        export.check_unchanged()  # manifest, code table and items were read at different moments

    def _key(self, name: str, value):
        return np.float32(value).item() if self.field_types[name] == "float" else value

    def scores(self, query: Query) -> tuple[np.ndarray, np.ndarray]:
        """(float32 score of every item, mask of items matching a term) for a resolved query."""
        n = len(self.item_ids)
        # Each term's contribution is a float32 product, summed in float64 and rounded once to
        # float32, which is how Lucene's disjunction scorers add clause scores.
        total = np.zeros(n, dtype=np.float64)
        matched = np.zeros(n, dtype=bool)
        for term, count in query.items():
            if term in self.postings:
                ords, values = self.postings[term]
                total[ords] += np.float32(count) * values
                matched[ords] = True
        return total.astype(np.float32), matched

    def explain(self, query: Query, k: int, filters=None, exclude_items=None) -> dict:
        """The engine body the same search would send (for comparison and debugging)."""
        k, exclude_items = checked_k(k), checked_exclusions(exclude_items)
        return dsl.search_body(_prepare(self.code_table, query), k, form=dsl.form_for("sparse_vector"),
                               layout=self.layout, numbering=self.numbering, filters=dsl.coerce_filters(filters, self.field_types),
                               exclude_items=exclude_items)

    def search(self, query: Query, k: int, filters=None, exclude_items=None) -> list[Hit]:
        # Not capped at the engines' result window: nothing here limits k, and the CLI caps --k itself.
        k, exclude_items = checked_k(k), checked_exclusions(exclude_items)
        scores, mask = self.scores(_prepare(self.code_table, query))
        for name, values in dsl.coerce_filters(filters, self.field_types).items():
            allowed = np.zeros_like(mask)
            for v in values:
                allowed[self._by_value[name].get(self._key(name, v), [])] = True
            mask &= allowed
        for item_id in exclude_items or ():
            if item_id in self._index_of:
                mask[self._index_of[item_id]] = False
        candidates = np.flatnonzero(mask)
        # lexsort: last key is primary -> highest score first, then smaller ord.
        order = candidates[np.lexsort((candidates, -scores[candidates]))][:k]
        return [Hit(self.item_ids[i], float(scores[i])) for i in order]

    def batch_search(self, queries: Sequence[Query], k: int, filters=None, exclude_items=None) -> list[list[Hit]]:
        excludes = _per_query(exclude_items, len(queries))
        return [self.search(q, k, filters, ex) for q, ex in zip(queries, excludes)]


def opened_export(export_dir) -> Export:
    """`export_dir` as an Export: a caller that has opened it already (to check it is its model's)
    passes the Export, so the folder's manifest is read once and every later read is checked
    against that one opening (`Export.check_unchanged`)."""
    return export_dir if isinstance(export_dir, Export) else Export.open(export_dir)


def open_backend(*, alias: str | None = None, export_dir=None, engine: str | None = None,
                 connection: Engine | None = None, url: str | None = None, request_timeout: float | None = None,
                 retries: int | None = None) -> Backend:
    """`alias` -> EngineBackend on `engine` ("elasticsearch", "opensearch", or None: detected from
    the server), checked against `export_dir` (a folder, or an opened Export) when given; else
    LocalBackend(export_dir).

    For a service that would rather fail fast than wait: `request_timeout` (seconds, default 30)
    bounds each request of the connection opened here (refused with `connection`, which has its
    own), and `retries` is how often a search is sent again to an unreachable or busy node
    (default: up to 5, over about 15 s; 0 reports the first failure at once). A timed-out search
    is never sent again. The local backend makes no requests and ignores both.

    k must be at least 1 on every backend, and at most 10,000 (MAX_RESULT_WINDOW) on an engine,
    refused before any request; the local backend has no upper limit."""
    if request_timeout is not None and not (isinstance(request_timeout, numbers.Real) and request_timeout > 0):
        raise BackendError(f"request_timeout must be a positive number of seconds, got {request_timeout!r}")
    if retries is not None and (isinstance(retries, bool) or not isinstance(retries, numbers.Integral) or retries < 0):
        raise BackendError(f"retries must be a whole number ≥ 0, got {retries!r}")
    if alias is not None:
        return EngineBackend.open(alias, export_dir, connection=connection, engine=engine, url=url,
                                  request_timeout=request_timeout, retries=retries)
    if export_dir is None:
        raise BackendError("give a search-engine alias or an export directory to search")
    return LocalBackend(export_dir)
