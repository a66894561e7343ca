"""Two-tower item vectors in Elasticsearch: a `dense_vector` HNSW field queried with `knn`.

The tower scores by raw dot product and its vectors are not unit length. Indexing them with
`max_inner_product` builds the HNSW graph on a non-metric score and misses most of the true
top-k on the ml-1m run (ann recall@50 0.34 at num_candidates 100), so by default the field holds
the items after the MIPS transform (`mips.py`: dim + 1, unit length) with `dot_product`
similarity, whose ranking for the transformed query is the dot-product ranking; ES reports that
score as (1 + cos) / 2. `transform="none"` indexes the raw vectors with `max_inner_product`
(score dot + 1 for dot ≥ 0, 1 / (1 − dot) below). Either way hits carry the tower's dot product
back (the index `_meta` says which transform and R), so scores compare with the exact and
hnswlib backends.

Index builds reuse the SparCode indexer's versioned index + alias flip (`indexer.py`).
"""
from __future__ import annotations

import copy
import json
from importlib import resources
from typing import Callable, Iterator, Sequence

import numpy as np
import orjson

from sparcode.pipeline import bulk, mips
from sparcode.pipeline import query as dsl
from sparcode.pipeline.backends import (MAX_RESULT_WINDOW, BackendError, Hit, ServedIndex, _per_query,
                                        check_fingerprint, checked_exclusions, checked_k)
from sparcode.pipeline.engine import Engine
from sparcode.pipeline.export import SUMMARY_KEYS, ExportError
from sparcode.pipeline.indexer import (SETTLE_MIN_DOCS, BuildResult, CpuMeter, IncompleteLoad, IndexProblem, _create,
                                       _finalize, checked_alias, kept_if_failed, load_step, publish, versioned_name)
from sparcode.pipeline.vectors import VectorSet, open_vector_export

FIELD = "vector"
DEFAULT_NUM_CANDIDATES = 100  # kNN candidates per shard when the caller sets none
FIELD_TYPE = "dense_vector"
MAX_DIMS = 4096


def index_body(export, *, m: int = 16, ef_construction: int = 100, transform: str = mips.TRANSFORM) -> dict:
    body = json.loads(resources.files("sparcode.es_mappings").joinpath("dense_vector.json").read_text())
    body = copy.deepcopy(body)
    dim = int(export.manifest["dim"])
    if not 1 <= dim < MAX_DIMS:
        raise IndexProblem(f"dense_vector takes 1..{MAX_DIMS} dims (one goes to the MIPS transform); "
                           f"the export has {dim}")
    if transform not in mips.TRANSFORMS:
        raise IndexProblem(f"transform {transform!r}: expected one of {mips.TRANSFORMS}")
    augment = transform == mips.TRANSFORM
    props = body["mappings"]["properties"]
    props[FIELD].update(dims=dim + augment, similarity="dot_product" if augment else "max_inner_product")
    props[FIELD]["index_options"].update(m=int(m), ef_construction=int(ef_construction))
    for name, kind in export.item_fields.items():
        if name in props:
            raise IndexProblem(f"item field {name!r} clashes with a reserved field")
        props[name] = {"type": kind}
    body["settings"]["index"]["refresh_interval"] = "-1"
    body["mappings"]["_meta"] = index_meta(export, m, ef_construction, transform, complete=False)
    return body


def radius(export) -> float:
    return mips.max_norm(np.load(export.path / export.manifest["files"]["vectors"], allow_pickle=False,
                                 mmap_mode="r"))


def index_meta(export, m: int, ef_construction: int, transform: str, *, complete: bool) -> dict:
    augment = transform == mips.TRANSFORM
    return {"fingerprint": export.fingerprint, "field_type": FIELD_TYPE, "complete": complete,
            "hnsw": {"m": m, "ef_construction": ef_construction, "transform": transform,
                     "similarity": "dot_product" if augment else "max_inner_product",
                     **({"radius": radius(export)} if augment else {})},
            "manifest": {k: export.manifest[k] for k in (*SUMMARY_KEYS, "dim") if k in export.manifest}}


class _VectorDocs:
    """An export-shaped view (`lines()`, `n_items`) whose lines carry each item's vector, so the
    SparCode bulk loader (streaming_bulk, retries, failure report) loads it unchanged."""

    def __init__(self, export, transform: str):
        self.export = export
        self.n_items = export.n_items
        raw = np.load(export.path / export.manifest["files"]["vectors"], allow_pickle=False)
        self.vectors = mips.items(raw, mips.max_norm(raw)) if transform == mips.TRANSFORM else raw

    def lines(self) -> Iterator[bytes]:
        for item in self.export.items():  # the export's reader names a bad file and line
            # orjson writes a float32 numpy row as its shortest round-tripping decimals.
            item[FIELD] = self.vectors[int(item["ord"])]
            yield orjson.dumps(item, option=orjson.OPT_SERIALIZE_NUMPY)


def build(engine: Engine, export_dir, alias: str, *, m: int = 16, ef_construction: int = 100,
          transform: str = mips.TRANSFORM, replace: bool = False, delete_old: bool = False,
          streams: int = bulk.STREAMS, progress: bool | None = None,
          status: Callable[[str], None] | None = None) -> BuildResult:
    """A new versioned dense_vector index of the export's vectors; `alias` moved onto it.
    `status(line)` hears what the build waits for after the load (the HNSW graph is built by the merge)."""
    export = open_vector_export(export_dir)
    _check_vectors(export_dir)  # before any write: a bad file never leaves an empty index behind
    previous = checked_alias(engine, alias)
    if previous and not replace:
        raise IndexProblem(f"alias {alias!r} already points at {', '.join(previous)}; "
                           "use `sparcode reindex` to replace it")
    name = versioned_name(alias, export.fingerprint)
    _create(engine, name, index_body(export, m=m, ef_construction=ef_construction, transform=transform), FIELD_TYPE)
    with kept_if_failed(engine, name, alias, resumable=False), CpuMeter(engine) as meter:
        load_step(streams)(bulk.load)(engine, _VectorDocs(export, transform), name, streams=streams,
                                      progress=progress)
    with kept_if_failed(engine, name, alias, resumable=False):
        docs = _finalize(engine, name, export.n_items >= SETTLE_MIN_DOCS, status)
    if docs != export.n_items:
        raise IncompleteLoad(f"{name} holds {docs} documents, the export has {export.n_items}", name, alias,
                             resumable=False)
    meta = index_meta(export, m, ef_construction, transform, complete=True)
    deleted = publish(engine, alias, name, meta, previous, delete_old, status, resumable=False,
                      claim=not replace and not previous)
    return BuildResult(name, alias, docs, meter.wall, previous, deleted, False, meter.seconds)


def _check_vectors(export_dir) -> None:
    """What search checks (`VectorSet.load`: shape, dtype, ords) plus finite values: a NaN row
    is refused by the node document by document, which reads as a failed load of every item."""
    vectors = VectorSet.load(export_dir).vectors
    bad = np.flatnonzero(~np.isfinite(vectors).all(axis=1))
    if len(bad):
        raise ExportError(f"{export_dir}: vectors.npy holds non-finite values in {len(bad)} of its rows (first: ord "
                          f"{int(bad[0])}); export it again")


def dot_from_score(score: float, query_norm: float, radius: float | None) -> float:
    """The tower's dot product from the `_score`: dot_product on transformed vectors when
    `radius` is set, else max_inner_product on raw ones."""
    if radius is not None:
        return mips.dot_from_cosine(2.0 * score - 1.0, query_norm, radius)
    return score - 1.0 if score >= 1.0 else 1.0 - 1.0 / score


class KnnBackend:
    """Top-k by Elasticsearch's `knn` search option over the dense_vector field. Threads may share
    one: its state is read, and each request built and its scores decoded from it, under `served.lock`."""

    name = "es-knn"

    def __init__(self, engine: Engine, alias: str, *, dim: int | None = None,
                 num_candidates: int = DEFAULT_NUM_CANDIDATES,
                 expected_fingerprint: str | None = None, field_types: dict | None = None):
        self.engine, self.alias, self.num_candidates = engine, alias, int(num_candidates)
        self.expected_fingerprint, self.requested_field_types = expected_fingerprint, field_types
        self.served = ServedIndex(engine, alias)
        self._read_mapping()

    def _read_mapping(self) -> None:
        # Every check before any attribute changes: a refused index leaves the state it refused intact.
        props = self.served.mapping.get("properties", {})
        if props.get(FIELD, {}).get("type") != FIELD_TYPE:
            raise BackendError(f"{self.alias!r} has no {FIELD_TYPE} field {FIELD!r}: index a two-tower vector export")
        fingerprint = check_fingerprint(self.served, self.expected_fingerprint)
        hnsw = self.served.meta.get("hnsw", {})
        # Indices built before the transform existed have no `transform`: raw max_inner_product.
        radius = float(hnsw["radius"]) if hnsw.get("transform") == mips.TRANSFORM else None
        dim = int(props[FIELD]["dims"]) - (radius is not None)
        self.fingerprint, self.radius, self.dim = fingerprint, radius, dim
        self.field_types = self.requested_field_types if self.requested_field_types is not None else {
            k: v.get("type", "object") for k, v in props.items() if k not in ("item_id", "ord", FIELD)}

    @classmethod
    def open(cls, alias: str, export_dir=None, *, connection: Engine | None = None, url: str | None = None,
             **kwargs) -> "KnnBackend":
        from sparcode.pipeline.connect import connect

        if export_dir is not None:
            kwargs.setdefault("expected_fingerprint", VectorSet.load(export_dir).fingerprint)
        return cls(connection or connect(url, engine="elasticsearch"), alias, **kwargs)

    def explain(self, query, k: int, filters=None, exclude_items=None) -> dict:
        k, exclude_items = checked_k(k, MAX_RESULT_WINDOW), checked_exclusions(exclude_items)
        with self.served.lock:
            return self._body(query, k, filters, exclude_items)

    def _body(self, query, k: int, filters, exclude_items) -> dict:
        q = np.asarray(query, dtype=np.float32).reshape(-1)
        if q.shape != (self.dim,) or not np.isfinite(q).all():
            raise dsl.QueryError(f"query vector must be {self.dim} finite floats, got shape {q.shape}")
        if self.num_candidates < k:
            raise dsl.QueryError(f"num_candidates={self.num_candidates} is below k={k}; use num_candidates ≥ {k}")
        vector = q if self.radius is None else mips.queries(q)[0]
        knn = {"field": FIELD, "query_vector": vector.tolist(), "k": int(k),
               "num_candidates": self.num_candidates}
        clauses = [dsl._filter_clause(name, values)
                   for name, values in dsl.coerce_filters(filters, self.field_types).items()]
        must_not = [{"ids": {"values": sorted(set(exclude_items))}}] if exclude_items else []
        if clauses or must_not:
            # A knn filter is applied during the graph walk, so k allowed items still come back.
            knn["filter"] = {"bool": {"filter": clauses, "must_not": must_not}}
        return {"knn": knn, "size": int(k), "track_total_hits": False, **dsl.HIT_FIELDS}

    def search(self, query, k: int, filters=None, exclude_items=None) -> list[Hit]:
        return self.batch_search([query], k, filters, None if exclude_items is None else [exclude_items])[0]

    def batch_search(self, queries: Sequence, k: int, filters=None, exclude_items=None) -> list[list[Hit]]:
        excludes = _per_query(exclude_items, len(queries))
        norms = [float(np.linalg.norm(np.asarray(q, dtype=np.float64))) for q in queries]
        sent_with = {}

        def bodies() -> list[dict]:
            # Scores are decoded with the radius the sent bodies were built with (called under the
            # lock), not whatever another thread's re-read has made it since.
            sent_with["radius"] = self.radius
            return [self.explain(q, k, filters, ex) for q, ex in zip(queries, excludes)]

        responses = self.served.msearch(bodies, self._read_mapping, "knn search")
        return [hits_of(response, norm, sent_with["radius"]) for response, norm in zip(responses, norms)]


def hits_of(response: dict, query_norm: float, radius: float | None) -> list[Hit]:
    return [Hit(dsl.hit_item(h), dot_from_score(float(h["_score"]), query_norm, radius))
            for h in response["hits"]["hits"]]
