"""Pseudo-terms for TIGER semantic-ID prefixes: how "every item whose ID starts with (c0, c1)"
becomes one keyword term.

A prefix of depth d is ``sid`` followed by its d codes, each after an ``_``, in plain decimal:
``sid_12``, ``sid_12_201``, ``sid_12_201_7`` (the spelling issue 6 names). The ``sid_`` stem
keeps them apart from SparCode's ``c0412_0077`` terms, and no two prefixes of any depth share a
spelling, so all depths live in one keyword field. Shared by the export writer and the query
builder so the two can never disagree.
"""
from __future__ import annotations

import re
from typing import Sequence

FIELD = "sid"  # the keyword field holding an item's prefix terms
COLD_FIELD = "cold"  # integer 1 for items held out of TIGER training, else 0
_TERM = re.compile(r"^sid(?:_\d+)+$")


def prefix_term(prefix: Sequence[int]) -> str:
    if len(prefix) == 0:
        raise ValueError("an empty prefix matches every item; it has no term")
    return "sid_" + "_".join(str(int(c)) for c in prefix)


def prefix_terms(semantic_id: Sequence[int], depths: Sequence[int]) -> list[str]:
    """The terms of `semantic_id`'s prefixes at each depth in `depths`, in that order."""
    return [prefix_term(semantic_id[:d]) for d in depths]


def term_prefix(term: str) -> tuple[int, ...]:
    if not _TERM.match(term):
        raise ValueError(f"not a semantic-ID prefix term: {term!r}")
    return tuple(int(part) for part in term[4:].split("_"))
