"""One bench row per retrieval path: build its index from a synthetic catalog, then measure it.

Each `run_*` returns the fields of the CLI contract (docs/bench.md) that belong to the path;
`hits` are kept so quality can be computed against the path's exact reference.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from sparcode.bench.measure import latency, percentiles, qps
from sparcode.pipeline.backends import EngineBackend, Hit, LocalBackend
from sparcode.pipeline.export import Export

K = 50
FLOOR_INDEX = "sparcode-bench-floor"


@dataclass
class Measured:
    row: dict
    hits: list[list[Hit]] = field(default_factory=list)


def _timed(search):
    def call(q):
        search(q)
        return None
    return call


def _measure(row: dict, call, hits_of, queries, warmup: int, threads: int) -> Measured:
    row.update(latency(call, queries, warmup))
    row["qps"] = qps(call, queries, threads)
    return Measured(row, [hits_of(q) for q in queries])


def index_store_bytes(engine, index: str) -> int:
    stats = engine._call(engine.client.indices.stats, index=index, metric="store")
    return int(stats["_all"]["primaries"]["store"]["size_in_bytes"])


def floor(engine, queries: int, warmup: int) -> float | None:
    """Client p50 of a match_all on a one-document index: the round trip no index design removes."""
    from sparcode.pipeline.engine import EngineError

    try:
        if not engine.exists(FLOOR_INDEX):
            engine.create_index(FLOOR_INDEX, {"settings": {"index": {"number_of_shards": 1, "number_of_replicas": 0}}})
        engine._call(engine.client.index, index=FLOOR_INDEX, id="1", body={"x": 1}, refresh=True)
    except EngineError:
        return None
    body = {"size": 1, "query": {"match_all": {}}, "track_total_hits": False, "_source": False}

    def call(_):
        return float(engine.search(FLOOR_INDEX, body)["took"])

    return latency(call, list(range(queries)), warmup)["p50_ms"]


PROFILED = 200


def _profile_ns(shard: dict) -> int:
    # A kNN request walks the graph in its dfs phase (the knn query's rewrite); the query phase
    # then only reads the k hits back.
    phases = shard.get("searches", []) + shard.get("dfs", {}).get("knn", [])
    return sum(q["time_in_nanos"] for s in phases for q in s.get("query", [])) + \
        sum(s.get("rewrite_time", 0) for s in phases) + \
        sum(c["time_in_nanos"] for s in phases for c in s.get("collector", []))


def engine_profile(engine, index: str, bodies: list[dict]) -> dict:
    """Where an engine request's time goes: Lucene's own query + collector time per request
    (the search profile API, over the first PROFILED queries) next to `took`, which adds the
    node's request handling and waiting for a CPU on a shared machine."""
    times = []
    for body in bodies[:PROFILED]:
        answer = engine.search(index, dict(body, profile=True))
        times.append(sum(_profile_ns(shard) for shard in answer["profile"]["shards"]) / 1e6)
    p50, p99 = percentiles(times)
    return {"lucene_p50_ms": p50, "lucene_p99_ms": p99}


def _cpu_row(built) -> dict:
    rate = built.docs_per_cpu_second
    return {"bulk_docs_per_cpu_s": None if rate is None else round(rate)}


def _drop_family(engine, alias: str) -> None:
    names = engine.matching(f"{alias}-*")
    if names:
        engine.delete_indices(sorted(names))


def run_sparcode_es(engine, export_dir: Path, alias: str, queries, warmup: int, threads: int) -> Measured:
    """SparCode as term lookups on a search engine (sparse_vector on ES, rank_features on OpenSearch)."""
    from sparcode.pipeline.indexer import build

    export = Export.open(export_dir)
    _drop_family(engine, alias)
    started = time.perf_counter()
    built = build(engine, export, alias, progress=False)
    build_s = time.perf_counter() - started
    backend = EngineBackend.open(alias, export_dir, connection=engine)
    bodies = {id(q): backend.explain(q, K) for q in queries}
    index = built.index

    def call(q):
        return float(engine.search(index, bodies[id(q)])["took"])

    row = {"index_bytes": index_store_bytes(engine, index), "build_s": round(build_s, 2),
           "bulk_docs_per_s": round(built.docs_per_second), **_cpu_row(built)}
    measured = _measure(row, call, lambda q: backend.search(q, K), queries, warmup, threads)
    measured.row.update(engine_profile(engine, index, [bodies[id(q)] for q in queries]))
    _drop_family(engine, alias)
    return measured


def run_sparcode_local(export_dir: Path, queries, warmup: int, threads: int) -> Measured:
    started = time.perf_counter()
    backend = LocalBackend(export_dir)
    build_s = time.perf_counter() - started
    # In-memory postings: item ords (int64) + stored scores (float32) per term.
    size = sum(o.nbytes + v.nbytes for o, v in backend.postings.values())
    row = {"index_bytes": int(size), "build_s": round(build_s, 2), "bulk_docs_per_s": None}
    return _measure(row, _timed(lambda q: backend.search(q, K)), lambda q: backend.search(q, K), queries,
                    warmup, threads)


def run_exact(vectors, queries, warmup: int, threads: int) -> Measured:
    from sparcode.pipeline.vectors import ExactBackend

    backend = ExactBackend(vectors)
    row = {"index_bytes": int(vectors.vectors.nbytes), "build_s": 0.0, "bulk_docs_per_s": None}
    return _measure(row, _timed(lambda q: backend.search(q, K)), lambda q: backend.search(q, K), queries,
                    warmup, threads)


def run_hnswlib(vectors, export_dir: Path, params, ef: int, queries, warmup: int, threads: int) -> Measured:
    from sparcode.pipeline.hnsw import HnswBackend, HnswIndex, index_dir

    index = HnswIndex.build(vectors, params)
    directory = index.save(index_dir(export_dir, params))
    backend = HnswBackend(index, vectors, ef=ef)
    row = {"index_bytes": index.size_bytes(directory), "build_s": round(index.meta["build_seconds"], 2),
           "bulk_docs_per_s": None, "settings": {"m": params.m, "ef_construction": params.ef_construction, "ef": ef,
                                                 "transform": params.transform}}
    return _measure(row, _timed(lambda q: backend.search(q, K)), lambda q: backend.search(q, K), queries,
                    warmup, threads)


def run_es_knn(engine, export_dir: Path, alias: str, m: int, ef_construction: int, num_candidates: int,
               queries, warmup: int, threads: int, transform: str = "none") -> Measured:
    from sparcode.pipeline import knn

    _drop_family(engine, alias)
    started = time.perf_counter()
    built = knn.build(engine, export_dir, alias, m=m, ef_construction=ef_construction, transform=transform,
                      progress=False)
    build_s = time.perf_counter() - started
    backend = knn.KnnBackend(engine, alias, num_candidates=num_candidates)
    bodies = {id(q): backend.explain(q, K) for q in queries}

    def call(q):
        return float(engine.search(built.index, bodies[id(q)])["took"])

    row = {"index_bytes": index_store_bytes(engine, built.index), "build_s": round(build_s, 2),
           "bulk_docs_per_s": round(built.docs_per_second), **_cpu_row(built),
           "settings": {"m": m, "ef_construction": ef_construction, "num_candidates": num_candidates,
                        "transform": transform}}
    measured = _measure(row, call, lambda q: backend.search(q, K), queries, warmup, threads)
    measured.row.update(engine_profile(engine, built.index, [bodies[id(q)] for q in queries]))
    _drop_family(engine, alias)
    return measured


def recall_at(hits: list[list[Hit]], truth: list[list[Hit]], k: int = K) -> float:
    shares = [len({h.item_id for h in t[:k]} & {h.item_id for h in a[:k]}) / len(t[:k])
              for a, t in zip(hits, truth) if t]
    return round(float(np.mean(shares)), 4) if shares else None
