"""Two-tower item vectors in Elasticsearch: a `dense_vector` HNSW field queried with `knn`.

Similarity is `max_inner_product`: the tower scores by raw dot product and its vectors are not
unit length, which `dot_product` refuses at index time on 8.x ("can only be used with
unit-length vectors") and `cosine` would rank differently. Elasticsearch reports
max_inner_product scores as dot + 1 (dot ≥ 0) or 1 / (1 - dot) (dot < 0); hits carry the dot
product back, so scores compare with the exact and hnswlib backends.

Index builds reuse the SparCode indexer's versioned index + alias flip (`indexer.py`).
"""
from __future__ import annotations

import copy
import json
from importlib import resources
from typing import Iterator, Sequence

import numpy as np
import orjson

from sparcode.pipeline import bulk
from sparcode.pipeline import query as dsl
from sparcode.pipeline.backends import BackendError, Hit, _per_query
from sparcode.pipeline.engine import Engine, EngineError
from sparcode.pipeline.export import SUMMARY_KEYS
from sparcode.pipeline.indexer import BuildResult, CpuMeter, IndexProblem, _create, _finalize, _step, _swap, versioned_name
from sparcode.pipeline.vectors import VectorSet, open_vector_export

FIELD = "vector"
FIELD_TYPE = "dense_vector"
MAX_DIMS = 4096


def index_body(export, *, m: int = 16, ef_construction: int = 100) -> dict:
    body = json.loads(resources.files("sparcode.es_mappings").joinpath("dense_vector.json").read_text())
    body = copy.deepcopy(body)
    dim = int(export.manifest["dim"])
    if not 1 <= dim <= MAX_DIMS:
        raise IndexProblem(f"dense_vector takes 1..{MAX_DIMS} dims; the export has {dim}")
    props = body["mappings"]["properties"]
    props[FIELD].update(dims=dim)
    props[FIELD]["index_options"].update(m=int(m), ef_construction=int(ef_construction))
    for name, kind in export.item_fields.items():
        if name in props:
            raise IndexProblem(f"item field {name!r} clashes with a reserved field")
        props[name] = {"type": kind}
    body["settings"]["index"]["refresh_interval"] = "-1"
    body["mappings"]["_meta"] = index_meta(export, m, ef_construction, complete=False)
    return body


def index_meta(export, m: int, ef_construction: int, *, complete: bool) -> dict:
    return {"fingerprint": export.fingerprint, "field_type": FIELD_TYPE, "complete": complete,
            "hnsw": {"m": m, "ef_construction": ef_construction, "similarity": "max_inner_product"},
            "manifest": {k: export.manifest[k] for k in (*SUMMARY_KEYS, "dim") if k in export.manifest}}


class _VectorDocs:
    """An export-shaped view (`lines()`, `n_items`) whose lines carry each item's vector, so the
    SparCode bulk loader (streaming_bulk, retries, failure report) loads it unchanged."""

    def __init__(self, export):
        self.export = export
        self.n_items = export.n_items
        self.vectors = np.load(export.path / export.manifest["files"]["vectors"], allow_pickle=False)

    def lines(self) -> Iterator[bytes]:
        for line in self.export.lines():
            item = orjson.loads(line)
            # orjson writes a float32 numpy row as its shortest round-tripping decimals.
            item[FIELD] = self.vectors[int(item["ord"])]
            yield orjson.dumps(item, option=orjson.OPT_SERIALIZE_NUMPY)


def build(engine: Engine, export_dir, alias: str, *, m: int = 16, ef_construction: int = 100,
          replace: bool = False, delete_old: bool = False, progress: bool | None = None) -> BuildResult:
    """A new versioned dense_vector index of the export's vectors; `alias` moved onto it."""
    export = open_vector_export(export_dir)
    previous = engine.alias_holders(alias)
    if engine.exists(alias) and not previous:
        raise IndexProblem(f"{alias!r} is a concrete index, not an alias; pick another --alias")
    if previous and not replace:
        raise IndexProblem(f"alias {alias!r} already points at {', '.join(previous)}; "
                           "use `sparcode reindex` to replace it")
    name = versioned_name(alias, export.fingerprint)
    _create(engine, name, index_body(export, m=m, ef_construction=ef_construction), FIELD_TYPE)
    with CpuMeter(engine) as meter:
        _step(bulk.load)(engine, _VectorDocs(export), name, progress=progress)
    docs = _finalize(engine, name)
    if docs != export.n_items:
        raise IndexProblem(f"{name} holds {docs} documents, the export has {export.n_items}; alias not moved")
    _step(engine.put_meta)(name, index_meta(export, m, ef_construction, complete=True))
    _swap(engine, alias, name, previous)
    deleted = [old for old in previous if old != name] if delete_old else []
    if deleted:
        _step(engine.delete_indices)(deleted)
    return BuildResult(name, alias, docs, meter.wall, previous, deleted, False, meter.seconds)


def dot_from_score(score: float) -> float:
    """Invert Elasticsearch's max_inner_product score transform."""
    return score - 1.0 if score >= 1.0 else 1.0 - 1.0 / score


class KnnBackend:
    """Top-k by Elasticsearch's `knn` search option over the dense_vector field."""

    name = "es-knn"

    def __init__(self, engine: Engine, alias: str, *, dim: int | None = None, num_candidates: int = 100,
                 expected_fingerprint: str | None = None, field_types: dict | None = None):
        self.engine, self.alias, self.num_candidates = engine, alias, int(num_candidates)
        try:
            mapping = engine.mappings(alias)
        except EngineError as exc:
            if exc.status != 404:
                raise
            raise BackendError(f"no index or alias {alias!r} on this {engine.label}") from None
        if len(mapping) != 1:
            raise BackendError(f"{alias!r} points at {len(mapping)} indices; expected one")
        mappings = next(iter(mapping.values()))
        props = mappings.get("properties", {})
        if props.get(FIELD, {}).get("type") != FIELD_TYPE:
            raise BackendError(f"{alias!r} has no {FIELD_TYPE} field {FIELD!r}: index a two-tower vector export")
        self.fingerprint = mappings.get("_meta", {}).get("fingerprint")
        if expected_fingerprint is not None and self.fingerprint != expected_fingerprint:
            raise BackendError(f"{alias!r} serves model {str(self.fingerprint)[:12]}…, expected "
                               f"{expected_fingerprint[:12]}… (reindex the export or pick its alias)")
        self.dim = int(props[FIELD]["dims"])
        self.field_types = field_types if field_types is not None else {
            k: v.get("type", "object") for k, v in props.items() if k not in ("item_id", "ord", FIELD)}

    @classmethod
    def open(cls, alias: str, export_dir=None, *, connection: Engine | None = None, **kwargs) -> "KnnBackend":
        from sparcode.pipeline.connect import connect

        if export_dir is not None:
            kwargs.setdefault("expected_fingerprint", VectorSet.load(export_dir).fingerprint)
        return cls(connection or connect(engine="elasticsearch"), alias, **kwargs)

    def explain(self, query, k: int, filters=None, exclude_items=None) -> dict:
        q = np.asarray(query, dtype=np.float32).reshape(-1)
        if q.shape != (self.dim,) or not np.isfinite(q).all():
            raise dsl.QueryError(f"query vector must be {self.dim} finite floats, got shape {q.shape}")
        if self.num_candidates < k:
            raise dsl.QueryError(f"num_candidates={self.num_candidates} is below k={k}; use num_candidates ≥ {k}")
        knn = {"field": FIELD, "query_vector": q.tolist(), "k": int(k), "num_candidates": self.num_candidates}
        clauses = [dsl._filter_clause(name, values)
                   for name, values in dsl.coerce_filters(filters, self.field_types).items()]
        must_not = [{"ids": {"values": sorted(set(exclude_items))}}] if exclude_items else []
        if clauses or must_not:
            # A knn filter is applied during the graph walk, so k allowed items still come back.
            knn["filter"] = {"bool": {"filter": clauses, "must_not": must_not}}
        return {"knn": knn, "size": int(k), "_source": False, "track_total_hits": False}

    def search(self, query, k: int, filters=None, exclude_items=None) -> list[Hit]:
        return self.batch_search([query], k, filters, None if exclude_items is None else [exclude_items])[0]

    def batch_search(self, queries: Sequence, k: int, filters=None, exclude_items=None) -> list[list[Hit]]:
        excludes = _per_query(exclude_items, len(queries))
        bodies = [self.explain(q, k, filters, ex) for q, ex in zip(queries, excludes)]
        results: list[list[Hit]] = []
        for start in range(0, len(bodies), 100):
            for response in self.engine.msearch(self.alias, bodies[start:start + 100]):
                if "error" in response:
                    reason = response["error"].get("reason", response["error"])
                    raise BackendError(f"knn search on {self.alias!r} failed: {reason}")
                results.append(hits_of(response))
        return results


def hits_of(response: dict) -> list[Hit]:
    return [Hit(h["_id"], dot_from_score(float(h["_score"]))) for h in response["hits"]["hits"]]
