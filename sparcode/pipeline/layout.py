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

Grouping bounds the names only while the keys after the first code repeat. With M = 8 on
ml-1m nearly every training window has its own code (730k codes, 50 M postings at 2 %
stored): the grouped names were unbounded again, and the same `String.intern` hot path held a
load to about 5 documents (70k postings) a second. The `numbered` layout is for such exports:
a term is known by its rank r among the export's sorted indexed terms and is key `r % K` of the
field `codes.n{r // K}` (K = 1,024), so an index of C codes holds about C / K + K names (730k
codes: 1,737). A rank means something only together with the code table it came from, so the
index records a digest of that table and a backend refuses an export whose table differs.
"""
from __future__ import annotations

import hashlib
import math
from typing import Iterable, Mapping

FLAT = "flat"
GROUPED = "grouped"
NUMBERED = "numbered"
LAYOUTS = (FLAT, GROUPED, NUMBERED)
FIELD = "codes"
# Jackson keeps a node's table of field names only while it holds at most this many.
NAME_BUDGET = 6000
KEYS_PER_FIELD = 1024


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
    """The layout whose documents use the fewest distinct names that still fit Jackson's table:
    `grouped` when every term splits and its groups and keys fit, else `flat` when the terms
    themselves fit, else `numbered`. No terms (semantic-ID exports) is `flat`."""
    terms = list(terms)
    if not terms:
        return FLAT
    parts = [_parts(t) for t in terms]
    if None not in parts and len({g for g, _ in parts}) + len({k for _, k in parts}) <= NAME_BUDGET:
        return GROUPED
    return FLAT if len(set(terms)) <= NAME_BUDGET else NUMBERED


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


class Numbering:
    """The `numbered` placement of an export's indexed terms: rank r -> (`n{r // K}`, `{r % K}`)."""

    def __init__(self, terms: Iterable[str], keys_per_field: int | None = None):
        ordered = sorted(set(terms))
        self.keys_per_field = int(keys_per_field or KEYS_PER_FIELD)
        self.rank = {term: r for r, term in enumerate(ordered)}
        self.digest = hashlib.sha256("\n".join(ordered).encode()).hexdigest()[:16]
        self.groups = [f"n{g}" for g in range(math.ceil(len(ordered) / self.keys_per_field))]

    def meta(self) -> dict:
        """What an index records so a backend can rebuild (and check) this numbering."""
        return {"digest": self.digest, "keys_per_field": self.keys_per_field, "terms": len(self.rank)}

    def document_codes(self, codes: Mapping[str, float]) -> dict[str, dict[str, float]]:
        """{term: value} as {group: {key: value}}; terms outside the table are dropped, since an
        index of this table has no postings for them."""
        placed: dict[str, dict[str, float]] = {}
        per_field = self.keys_per_field
        for term, value in codes.items():
            r = self.rank.get(term)
            if r is not None:
                placed.setdefault(f"n{r // per_field}", {})[str(r % per_field)] = value
        return placed


def placement(terms: Iterable[str]) -> tuple[str, Numbering | None]:
    """The layout an index of these terms gets, with its numbering when it is `numbered`."""
    terms = list(terms)
    chosen = choose(terms)
    return chosen, Numbering(terms) if chosen == NUMBERED else None


def by_field(query: Mapping[str, float], layout: str,
             numbering: Numbering | None = None) -> dict[str, dict[str, float]]:
    """A query's {term: count} per document field: {`codes.c0412`: {`0077`: count}} when
    grouped, {`codes.n12`: {`345`: count}} when numbered, {`codes`: query} when flat."""
    if layout == FLAT:
        return {FIELD: dict(query)} if query else {}
    if layout == GROUPED:
        placed = document_codes(query)
    elif layout == NUMBERED:
        if numbering is None:
            raise ValueError("a numbered layout needs the export's term numbering")
        placed = numbering.document_codes(query)
    else:
        raise ValueError(f"layout {layout!r}: expected one of {LAYOUTS}")
    return {f"{FIELD}.{group}": keys for group, keys in placed.items()}
