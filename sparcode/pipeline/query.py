"""The search request for one user query, in each form Elasticsearch or OpenSearch can score it.

Every form scores an item as Σ count × stored value over the query's terms, which is the
model's score, addressed to the field(s) the index's layout keeps them in (layout.py). On a
`sparse_vector` field: `term` (bool/should of boosted terms, the default) or the `sparse_vector`
query (one clause per field, however many terms), which score identically only with its token
pruning off: Elasticsearch 8.19 prunes by default on new indices, dropping a query term that is
common in the index and light in the query, and the model's score counts every term. `rank_feature` (bool/should of `linear`
rank_feature clauses, boosted by the count) is the form for a `rank_features` field on either
engine, and the only one OpenSearch has. docs/engines.md compares them.
"""
from __future__ import annotations

import math
from typing import Collection, Iterable, Mapping

from sparcode.errors import SparcodeError
from sparcode.pipeline.layout import FLAT, Numbering, by_field

FORMS = ("sparse_vector", "term", "rank_feature")
DEFAULT_FORM = "term"
FILTERABLE = ("keyword", "integer", "float")
# Equal scores are ordered by smaller `ord`, as in every other backend. Without it ES orders
# ties by Lucene doc id, which follows `ord` only until a resume or update reorders segments.
# Measured (msearch, 2 cores): 20k small docs 0.23 -> 0.28 ms/query; an ML-1M-shaped index
# (3416 items x 760 postings) 0.91 -> 0.98 ms/query. Worth it for exact, comparable rankings.
# Both scoring forms measured the same, so the default is chosen on the grounds above.
TIEBREAK_SORT = ["_score", {"ord": "asc"}]
# Hits name their item by the `item_id` doc value instead of `_id`: `_id` is a stored field, and
# reading it decompresses a block of stored documents per hit. On a 1M-item index (50 hits,
# 8-code queries, 2 cores) that was most of a query: client p50 2.50 -> 1.08 ms, `took` 1 -> 0 ms.
HIT_FIELDS = {"stored_fields": "_none_", "docvalue_fields": ["item_id"]}


def hit_item(hit: Mapping) -> str:
    """The item id of one hit of a body built with HIT_FIELDS."""
    return hit["fields"]["item_id"][0]


class QueryError(SparcodeError, ValueError):
    """A query or filter no backend can serve; one line."""


def form_for(field_type: str) -> str:
    """The form an index is queried with by default: `rank_feature` for `rank_features`, else
    `term`, in every layout. On a grouped index one `sparse_vector` clause per group field also
    cost more (200k items, 8-code queries: client p50 1.09–1.21 vs 1.01–1.07 ms, node CPU
    0.68–0.81 vs 0.63–0.72 ms per query)."""
    if field_type == "rank_features":
        return "rank_feature"
    return DEFAULT_FORM


def clean_query(query: Mapping[str, float]) -> dict[str, float]:
    """Counts as floats; zero counts dropped (they match but add nothing), negatives refused."""
    if not isinstance(query, Mapping):
        raise QueryError(f"a query is a mapping {{pseudo-term: count}}, not {type(query).__name__}")
    out = {}
    for term, count in query.items():
        try:
            count = float(count)
        except (TypeError, ValueError):
            raise QueryError(f"query term {term!r} has count {count!r}; counts are numbers") from None
        if not math.isfinite(count) or count < 0:
            raise QueryError(f"query term {term!r} has count {count!r}; counts must be finite and >= 0")
        if count > 0:
            out[str(term)] = count
    return out


def coerce_filters(filters: Mapping[str, object] | None, field_types: Mapping[str, str]) -> dict[str, list]:
    """`{field: value or [values]}` -> `{field: [typed values]}`; an item matches any listed value.

    Text fields are refused: their analyzed matching has no exact offline equivalent.
    """
    if filters is not None and not isinstance(filters, Mapping):
        raise QueryError(f"filters is a mapping {{field: value or [values]}}, not {type(filters).__name__}")
    out: dict[str, list] = {}
    for name, value in (filters or {}).items():
        kind = field_types.get(name)
        if kind is None:
            raise QueryError(f"unknown filter field {name!r}; known: {sorted(field_types)}")
        if kind not in FILTERABLE:
            raise QueryError(f"field {name!r} is {kind}; filters work on {', '.join(FILTERABLE)} fields")
        # Any collection (a NumPy array, a generator) is several values; a string is one.
        several = isinstance(value, Iterable) and not isinstance(value, (str, bytes, bytearray, Mapping))
        values = list(value) if several else [value]
        if any(isinstance(v, (bytes, bytearray)) for v in values):
            # str(b"x") is "b'x'", which no item holds: the filter would silently match nothing.
            raise QueryError(f"filter {name}={value!r}: pass text, not bytes")
        if not values or any(v is None or isinstance(v, Mapping) for v in values):
            raise QueryError(f"filter {name}={value!r}: expected one value or a list of values")
        # Item values never hold surrounding spaces (the readers drop them), so a given one cannot match.
        values = [v.strip() if isinstance(v, str) else v for v in values]
        cast = {"keyword": str, "integer": int, "float": float}[kind]
        try:
            out[name] = [cast(v) for v in values]
        except (TypeError, ValueError):
            raise QueryError(f"filter {name}={value!r} is not a valid {kind}") from None
    return out


def parse_filter(text: str) -> tuple[str, str]:
    """`field=value` from the command line, spaces around name and value dropped as the dataset
    readers drop them from feature files (a value never holds them, so `studio= 7 ` would match
    nothing); an empty value is refused for the same reason."""
    name, sep, value = text.partition("=")
    name, value = name.strip(), value.strip()
    if not sep or not name or not value:
        raise QueryError(f"filter {text!r}: expected field=value")
    return name, value


def scoring_query(query: Mapping[str, float], form: str = DEFAULT_FORM, layout: str = FLAT,
                  numbering: Numbering | None = None) -> dict:
    """Σ count × stored value over the query's terms, addressed as the index `layout` stores them
    (a numbered layout also needs the `numbering` of the export the index was built from)."""
    if form not in FORMS:
        raise QueryError(f"query form {form!r}: expected one of {FORMS}")
    fields = by_field(query, layout, numbering)
    if form == "sparse_vector":
        # Pruning off: it would drop terms the model's score counts (module docstring).
        clauses = [{"sparse_vector": {"field": f, "query_vector": keys, "prune": False}} for f, keys in fields.items()]
    elif form == "term":
        clauses = [{"term": {f: {"value": key, "boost": c}}} for f, keys in fields.items() for key, c in keys.items()]
    else:
        clauses = [{"rank_feature": {"field": f"{f}.{key}", "linear": {}, "boost": c}}
                   for f, keys in fields.items() for key, c in keys.items()]
    if not clauses:
        return {"match_none": {}}
    # A bool of one clause scores the same; the bare clause keeps the simplest query readable.
    return clauses[0] if len(clauses) == 1 and form == "sparse_vector" else {"bool": {"should": clauses}}


def search_body(query: Mapping[str, float], k: int, *, form: str = DEFAULT_FORM, layout: str = FLAT,
                numbering: Numbering | None = None, filters: Mapping[str, list] | None = None,
                exclude_items: Collection[str] | None = None, tiebreak: bool = True) -> dict:
    """The full `_search` body: top `k` by score, ties by `ord`, no total count, no stored fields."""
    scoring = scoring_query(query, form, layout, numbering)
    filter_clauses = [_filter_clause(name, values) for name, values in (filters or {}).items()]
    must_not = [{"ids": {"values": sorted(set(exclude_items))}}] if exclude_items else []
    if filter_clauses or must_not:
        # Filters and exclusions add no score, so the sum stays the model's score.
        scoring = {"bool": {"must": [scoring], "filter": filter_clauses, "must_not": must_not}}
    body = {"size": int(k), "query": scoring, "track_total_hits": False, **HIT_FIELDS}
    if tiebreak:
        body["sort"] = list(TIEBREAK_SORT)
    return body


def _filter_clause(name: str, values: Iterable) -> dict:
    values = list(values)
    return {"term": {name: values[0]}} if len(values) == 1 else {"terms": {name: values}}
