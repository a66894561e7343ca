"""Pseudo-terms: how a product-quantized code is spelled inside the search engine.

A code is a tuple of M codebook indices. Its term is ``c`` followed by the indices joined by
``_`` (``c0412_0077``): no dots, because a dot in a `rank_features` key would be read as an
object path, and fixed width so terms sort like the tuples they spell.
"""
from __future__ import annotations

import re
from typing import Sequence

_TERM = re.compile(r"^c\d{4}(?:_\d{4})*$")


def code_to_term(code: Sequence[int]) -> str:
    return "c" + "_".join(f"{int(i):04d}" for i in code)


def term_to_code(term: str) -> tuple[int, ...]:
    if not _TERM.match(term):
        raise ValueError(f"not a sparcode pseudo-term: {term!r}")
    return tuple(int(part) for part in term[1:].split("_"))
