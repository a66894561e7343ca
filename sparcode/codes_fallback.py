"""Map query codes that have no postings to the nearest indexed code.

Used identically by offline served-exact evaluation and by every search backend, so a user
whose token lands on a code no training user produced is still served the same way everywhere.
"""
from __future__ import annotations

from typing import Mapping

import numpy as np

from sparcode.terms import term_to_code


class CodeTable:
    """The indexed terms with their codeword vectors, and the full codebooks."""

    def __init__(self, terms: np.ndarray, vectors: np.ndarray, codebooks: np.ndarray):
        self.terms = [str(t) for t in terms]
        self.vectors = np.asarray(vectors, dtype=np.float32)
        self.codebooks = np.asarray(codebooks, dtype=np.float32)
        self._index = {t: i for i, t in enumerate(self.terms)}
        self._sq_norms = (self.vectors**2).sum(axis=1)

    @classmethod
    def load(cls, path) -> "CodeTable":
        with np.load(path, allow_pickle=False) as npz:
            return cls(npz["terms"], npz["vectors"], npz["codebooks"])

    def save(self, path) -> None:
        np.savez(path, terms=np.asarray(self.terms), vectors=self.vectors, codebooks=self.codebooks)

    def __contains__(self, term: str) -> bool:
        return term in self._index

    def codeword(self, term: str) -> np.ndarray:
        code = term_to_code(term)
        if len(code) != self.codebooks.shape[0] or max(code) >= self.codebooks.shape[1]:
            raise ValueError(f"term {term!r} does not fit codebooks of shape {self.codebooks.shape}")
        return np.concatenate([self.codebooks[m, i] for m, i in enumerate(code)])

    def nearest(self, term: str) -> str:
        """The term itself when indexed, else the indexed term with the nearest codeword."""
        if term in self._index:
            return term
        q = self.codeword(term)
        dists = self._sq_norms - 2.0 * self.vectors @ q
        # Ties go to the first indexed term, so every backend resolves them identically.
        return self.terms[int(np.argmin(dists))]

    def nearest_to(self, vectors: np.ndarray, count: int) -> np.ndarray:
        """(B, d) token vectors → (B, count) rows of the indexed codes nearest to each, nearest
        first; equal distances go to the earlier row so every caller picks the same codes."""
        vectors = np.asarray(vectors, dtype=np.float32)
        count = min(count, len(self.terms))
        dists = self._sq_norms[None, :] - 2.0 * vectors @ self.vectors.T
        if count < len(self.terms):
            part = np.argpartition(dists, count - 1, axis=1)[:, :count]
        else:
            part = np.broadcast_to(np.arange(len(self.terms)), dists.shape)
        picked = np.take_along_axis(dists, part, axis=1)
        order = np.lexsort((part, picked), axis=1)
        return np.take_along_axis(part, order, axis=1)

    def resolve(self, query: Mapping[str, float]) -> dict[str, float]:
        """Replace unindexed terms by their nearest indexed term, merging their counts."""
        resolved: dict[str, float] = {}
        for term, count in query.items():
            target = self.nearest(term)
            resolved[target] = resolved.get(target, 0.0) + float(count)
        return resolved
