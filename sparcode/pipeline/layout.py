"""Where a pseudo-term lives inside an index document: one feature map, or one per first code.

Both engines parse documents with Jackson, which canonicalizes every JSON field name in one
table per node. The table is kept only while it holds ≤ 6,000 names; past that it is thrown
away and every name is re-added — and interned — for each document. A feature map keys its
values by term, so an index with more distinct pseudo-terms than that pays the cost on every
posting. Measured on Elasticsearch 8.19 (200k documents of 32 codes, 2 cores, hot threads in
`ByteQuadsCanonicalizer.addName` / `String.intern`): 5,000 distinct terms 29k docs/s,
7,000 terms 13.9k, 128,000 terms 9–12k.

The `grouped` layout therefore splits a term at its first `_`: `c0412_0077` is key `0077` of
the feature-map field `codes.c0412`. An index of M = 2 codebooks of N codes then holds at most
2N names however many codes it indexes (at N = 800, 640,000 codes: 1,600 names), and the
same 200k documents load at 18–21k docs/s pre-serialized, 16.5k through `bulk.load`. An
item's score is still Σ count × stored value: the query sends each group's keys to that
group's field, and the clauses add up.

Terms without a `_` (M = 1) cannot be grouped; their index keeps the `flat` layout, as do
indices built before grouping existed (their `_meta` names no layout).
"""
from __future__ import annotations

from typing import Iterable, Mapping

FLAT = "flat"
GROUPED = "grouped"
LAYOUTS = (FLAT, GROUPED)
FIELD = "codes"


def _parts(term: str) -> tuple[str, str] | None:
    group, _, key = term.partition("_")
    return (group, key) if group and key else None


def split(term: str) -> tuple[str, str]:
    """(group, key) of a term that has a `_`: `c0412_0077` -> (`c0412`, `0077`)."""
    parts = _parts(term)
    if parts is None:
        raise ValueError(f"term {term!r} has no group: grouped terms look like c0412_0077")
    return parts


def choose(terms: Iterable[str]) -> str:
    """`grouped` when every term can be split, else `flat`."""
    terms = list(terms)
    return GROUPED if terms and all(_parts(t) is not None for t in terms) else FLAT


def groups(terms: Iterable[str]) -> list[str]:
    return sorted({split(t)[0] for t in terms})


def document_codes(codes: Mapping[str, float]) -> dict[str, dict[str, float]]:
    """An item's {term: value} as the grouped document field {group: {key: value}}.

    Runs once per stored pair during a bulk load, so it splits inline instead of through
    `split`; the terms were checked splittable when the layout was chosen (`choose`)."""
    grouped: dict[str, dict[str, float]] = {}
    for term, value in codes.items():
        group, _, key = term.partition("_")
        grouped.setdefault(group, {})[key] = value
    return grouped


def by_field(query: Mapping[str, float], layout: str) -> dict[str, dict[str, float]]:
    """A query's {term: count} per document field: {`codes.c0412`: {`0077`: count}} when
    grouped, {`codes`: query} when flat."""
    if layout == FLAT:
        return {FIELD: dict(query)} if query else {}
    if layout != GROUPED:
        raise ValueError(f"layout {layout!r}: expected one of {LAYOUTS}")
    return {f"{FIELD}.{group}": keys for group, keys in document_codes(query).items()}
