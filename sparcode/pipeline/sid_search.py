"""Cold-start retrieval by semantic-ID prefix from a `tiger-semantic-ids` index (docs/tiger.md).

Given the semantic IDs TIGER generated for a user (best beam first), the items sharing a prefix
of depth d with one of them are a term lookup on the keyword field ``sid``. The order is the
one `ColdIndex.candidates` defines in process: deeper prefixes first, then better beams, then
smaller `ord`. The engine produces it itself: each distinct prefix term is a `constant_score`
clause whose boost falls with its position in that order, `dis_max` keeps an item's best
clause, and the sort is `_score` then `ord`, so `size` = k returns exactly the first k.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Collection, Sequence

from sparcode.pipeline.backends import (MAX_RESULT_WINDOW, BackendError, ServedIndex, _per_query, check_fingerprint,
                                        checked_k)
from sparcode.pipeline.engine import Engine
from sparcode.pipeline.query import HIT_FIELDS, hit_item
from sparcode.sid_terms import COLD_FIELD, FIELD, prefix_term

KIND = "tiger-semantic-ids"


@dataclass(frozen=True)
class SidHit:
    item_id: str
    ord: int


def ordered_terms(semantic_ids: Sequence[Sequence[int]], depths: Sequence[int]) -> list[str]:
    """Distinct prefix terms, deepest depth first, then in beam order (first occurrence wins)."""
    terms: dict[str, None] = {}
    for depth in depths:
        for sid in semantic_ids:
            if len(sid) >= depth:
                terms.setdefault(prefix_term(sid[:depth]), None)
    return list(terms)


def prefix_body(semantic_ids: Sequence[Sequence[int]], depths: Sequence[int], k: int, *, only_cold: bool = True,
                exclude_items: Collection[str] | None = None) -> dict:
    """The `_search` body returning the first k prefix matches, in ColdIndex order."""
    k = checked_k(k, MAX_RESULT_WINDOW)
    terms = ordered_terms(semantic_ids, depths)
    # Boosts are small integers, exact in float32, so distinct positions never tie.
    clauses = [{"constant_score": {"filter": {"term": {FIELD: term}}, "boost": float(len(terms) - i)}}
               for i, term in enumerate(terms)]
    query: dict = {"bool": {"must": [{"dis_max": {"queries": clauses, "tie_breaker": 0.0}}] if clauses
                            else [{"match_none": {}}]}}
    if only_cold:
        query["bool"]["filter"] = [{"term": {COLD_FIELD: 1}}]
    if exclude_items:
        query["bool"]["must_not"] = [{"ids": {"values": sorted(str(i) for i in exclude_items)}}]
    # Items named by their doc value, not the stored `_id` (query.HIT_FIELDS says why).
    return {"size": k, "query": query, "sort": [{"_score": "desc"}, {"ord": "asc"}], "track_total_hits": False,
            **HIT_FIELDS}


class SidPrefixBackend:
    """Prefix lookups on `alias`, refusing an index built from other semantic IDs. Threads may
    share one (ServedIndex follows a move under its lock); `last_bodies` is then some thread's."""

    def __init__(self, engine: Engine, alias: str, *, expected_fingerprint: str | None = None):
        self.engine, self.alias, self.expected_fingerprint = engine, alias, expected_fingerprint
        self.last_bodies: list[dict] = []
        self.served = ServedIndex(engine, alias)
        self._read_mapping()

    def _read_mapping(self) -> None:
        kind = self.served.meta.get("manifest", {}).get("kind")
        if kind != KIND:
            raise BackendError(f"{self.alias!r} does not hold semantic IDs (kind {kind!r}); "
                               "index a TIGER run's export (`sparcode export RUN_DIR --out DIR`)")
        self.fingerprint = check_fingerprint(self.served, self.expected_fingerprint, "semantic IDs",
                                             "export and reindex the run")

    def search(self, semantic_ids, depths, k: int, *, only_cold: bool = True, exclude_items=None) -> list[SidHit]:
        return self.batch_search([semantic_ids], depths, k, only_cold=only_cold,
                                 exclude_items=None if exclude_items is None else [exclude_items])[0]

    def batch_search(self, batch, depths, k: int, *, only_cold: bool = True,
                     exclude_items: Sequence[Collection[str]] | None = None) -> list[list[SidHit]]:
        excludes = _per_query(exclude_items, len(batch))
        bodies = [prefix_body(ids, depths, k, only_cold=only_cold, exclude_items=ex) for ids, ex in zip(batch, excludes)]
        self.last_bodies = bodies  # what `search --explain` prints: the exact requests sent
        responses = self.served.msearch(lambda: bodies, self._read_mapping, "prefix search")
        return [[SidHit(hit_item(h), int(h["sort"][1])) for h in response["hits"]["hits"]] for response in responses]
