"""A two-tower vector export (docs/export-format.md, kind "two-tower-vectors") and exact flat
search over it: the reference every ANN path (hnswlib, ES kNN) is measured against.

Every vector backend takes the user's vector as the query, scores an item by the raw dot
product, and orders equal scores by smaller `ord`, like the SparCode backends.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from functools import cached_property
from typing import Collection, Mapping, Sequence

import numpy as np

from sparcode.pipeline import query as dsl
from sparcode.pipeline.backends import BackendError, Hit, _per_query, checked_exclusions, checked_k
from sparcode.pipeline.export import Export, ExportError

KIND = "two-tower-vectors"


def open_vector_export(path) -> Export:
    export = Export.open(path)
    kind = export.manifest.get("kind")
    if kind != KIND:
        raise ExportError(f"{path} holds a {kind!r} export; this backend needs two-tower vectors "
                          "(`sparcode export` of a two-tower run)")
    if "vectors" not in export.manifest["files"] or "dim" not in export.manifest:
        raise ExportError(f"{path}/manifest.json lacks files.vectors or dim")
    return export


@dataclass
class VectorSet:
    """Item vectors by `ord`, their ids and filterable attributes."""

    fingerprint: str
    item_ids: list[str]
    vectors: np.ndarray  # float32 (n, dim), row = ord
    field_types: dict[str, str]
    attributes: list[dict]

    @classmethod
    def load(cls, path) -> "VectorSet":
        export = open_vector_export(path)
        vectors = np.load(export.path / export.manifest["files"]["vectors"], allow_pickle=False, mmap_mode="r")
        n, dim = export.n_items, int(export.manifest["dim"])
        if vectors.shape != (n, dim) or vectors.dtype != np.float32:
            raise ExportError(f"{path}: vectors are {vectors.dtype}{vectors.shape}, manifest says float32({n}, {dim})")
        item_ids: list[str] = [""] * n
        attributes: list[dict] = [{}] * n
        fields = export.item_fields
        for item in export.items():
            ord_ = int(item["ord"])
            if not 0 <= ord_ < n or item_ids[ord_]:
                raise ExportError(f"item {item['item_id']!r} has ord {ord_}, out of range or repeated")
            item_ids[ord_] = item["item_id"]
            if fields:
                attributes[ord_] = {k: item.get(k) for k in fields}
        return cls(export.fingerprint, item_ids, np.ascontiguousarray(vectors), fields, attributes)

    @property
    def dim(self) -> int:
        return int(self.vectors.shape[1])

    @cached_property
    def index_of(self) -> dict[str, int]:
        return {item_id: i for i, item_id in enumerate(self.item_ids)}

    @cached_property
    def _by_value(self) -> dict[str, dict[object, list[int]]]:
        """field -> value -> ords holding it (a list attribute holds each of its values)."""
        index: dict[str, dict[object, list[int]]] = {name: {} for name in self.field_types}
        for i, attrs in enumerate(self.attributes):
            for name, values in attrs.items():
                for v in values if isinstance(values, list) else [values]:
                    if v is not None and name in index:
                        index[name].setdefault(v, []).append(i)
        return index

    def check_query(self, vector) -> np.ndarray:
        q = np.asarray(vector, dtype=np.float32).reshape(-1)
        if q.shape != (self.dim,) or not np.isfinite(q).all():
            raise dsl.QueryError(f"query vector must be {self.dim} finite floats, got shape {q.shape}")
        return q

    def allowed(self, filters: Mapping[str, object] | None, exclude_items: Collection[str] | None) -> np.ndarray | None:
        """Mask of items a search may return, or None when every item may be."""
        filters = dsl.coerce_filters(filters, self.field_types)
        exclude_items = checked_exclusions(exclude_items)
        if not filters and not exclude_items:
            return None
        mask = np.ones(len(self.item_ids), dtype=bool)
        for name, values in filters.items():
            allowed = np.zeros_like(mask)
            for value in values:
                allowed[self._by_value[name].get(value, [])] = True
            mask &= allowed
        for item_id in exclude_items or ():
            i = self.index_of.get(item_id)
            if i is not None:
                mask[i] = False
        return mask

    def ranked(self, q: np.ndarray, candidates: np.ndarray, k: int) -> list[Hit]:
        """`candidates` re-scored exactly and cut at k: highest dot first, then smaller ord."""
        # In float64 then rounded once: the same item gets the same float32 score whichever
        # candidate set it is scored in (BLAS blocking differs with the set's size).
        scores = (self.vectors[candidates].astype(np.float64) @ q.astype(np.float64)).astype(np.float32)
        order = np.lexsort((candidates, -scores))[:k]
        return [Hit(self.item_ids[candidates[i]], float(scores[i])) for i in order]


class ExactBackend:
    """Flat scoring of every item: the exact top-k an ANN index approximates."""

    name = "exact"

    def __init__(self, vectors: VectorSet, expected_fingerprint: str | None = None):
        if expected_fingerprint is not None and vectors.fingerprint != expected_fingerprint:
            raise BackendError(f"vectors are from model {vectors.fingerprint[:12]}…, expected {expected_fingerprint[:12]}…")
        self.vectors = vectors
        self.fingerprint = vectors.fingerprint

    @classmethod
    def open(cls, export_dir, **kwargs) -> "ExactBackend":
        return cls(VectorSet.load(export_dir), **kwargs)

    def search(self, query, k: int, filters=None, exclude_items=None) -> list[Hit]:
        k = checked_k(k)
        q = self.vectors.check_query(query)
        scores = self.vectors.vectors @ q
        mask = self.vectors.allowed(filters, exclude_items)
        candidates = np.arange(len(scores)) if mask is None else np.flatnonzero(mask)
        if len(candidates) > k:
            # Everything scoring at least the k-th best, so ties at the cut are settled by ord.
            kth = np.partition(scores[candidates], len(candidates) - k)[len(candidates) - k]
            candidates = candidates[scores[candidates] >= kth]
        return self.vectors.ranked(q, candidates, k)

    def batch_search(self, queries: Sequence, k: int, filters=None, exclude_items=None) -> list[list[Hit]]:
        excludes = _per_query(exclude_items, len(queries))
        return [self.search(q, k, filters, ex) for q, ex in zip(queries, excludes)]


def recall_vs_exact(approx: Sequence[Sequence[Hit]], exact: Sequence[Sequence[Hit]], k: int) -> float:
    """Mean share of each exact top-k found in the approximate top-k."""
    shares = []
    for a, e in zip(approx, exact):
        truth = {h.item_id for h in e[:k]}
        if truth:
            shares.append(len(truth & {h.item_id for h in a[:k]}) / len(truth))
    if not shares:
        raise BackendError("no query had an exact result to compare with")
    return float(np.mean(shares))


def write_vector_export(path, vectors: np.ndarray, *, fingerprint: str, item_ids: Sequence[str] | None = None,
                        run: dict | None = None, extra: dict | None = None) -> Path:
    """A vector export directory from vectors held in memory (synthetic catalogs, tests); the
    model side writes real ones (`sparcode.encoder.vector_export`) in the same format."""
    import gzip
    import json

    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    vectors = np.ascontiguousarray(vectors, dtype=np.float32)
    n, dim = vectors.shape
    ids = list(item_ids) if item_ids is not None else [f"i{i}" for i in range(n)]
    np.save(path / "vectors.npy", vectors, allow_pickle=False)
    with gzip.open(path / "items.jsonl.gz", "wb", compresslevel=1) as fh:
        fh.writelines(b'{"item_id":"%s","ord":%d}\n' % (item_id.encode(), i) for i, item_id in enumerate(ids))
    norms = np.linalg.norm(vectors, axis=1) if n else np.zeros(1)
    manifest = {"format": "sparcode-export/1", "kind": KIND, "fingerprint": fingerprint, "run": run or {},
                "dim": dim, "similarity": "dot_product", "items": n,
                "norms": {"mean": float(norms.mean()), "std": float(norms.std()), "min": float(norms.min()),
                          "max": float(norms.max())},
                "item_fields": {}, "files": {"items": ["items.jsonl.gz"], "vectors": "vectors.npy"}, **(extra or {})}
    (path / "manifest.json").write_text(json.dumps(manifest, indent=2))
    return path
