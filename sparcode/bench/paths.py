"""One bench row per retrieval path: build its index from a synthetic catalog, then measure it.

Each `run_*` returns the fields of the CLI contract (docs/bench.md) that belong to the path;
`hits` are kept so quality can be computed against the path's exact reference.
"""
from __future__ import annotations

import time
from typing import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from sparcode.bench.measure import latency, qps
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


def _measure_engine(engine, row: dict, call, hits_of, queries, warmup: int, threads: int) -> Measured:
    """`_measure` for a search engine, plus the round-trip floor taken right before (under the same
    machine load as this path) and the CPU the node and the client spend per query: `took` is wall
    time inside the node and includes waiting for a CPU on a shared machine, CPU time does not."""
    row["floor_p50_ms"] = floor(engine, min(len(queries), 500), warmup)
    node, client = engine.process_cpu_seconds(), time.process_time()
    row.update(latency(call, queries, warmup))
    calls = len(queries) + min(warmup, len(queries))
    client = time.process_time() - client
    node = None if node is None else engine.process_cpu_seconds() - node
    row["node_cpu_ms_per_query"] = None if node is None else round(node / calls * 1000, 3)
    row["client_cpu_ms_per_query"] = round(client / calls * 1000, 3)
    row["qps"] = qps(call, queries, threads)
    return Measured(row, [hits_of(q) for q in queries])


def _cpu_row(built) -> dict:
    rate = built.docs_per_cpu_second
    return {"bulk_docs_per_cpu_s": None if rate is None else round(rate)}


def _drop_family(engine, alias: str) -> None:
    names = engine.matching(f"{alias}-*")
    if names:
        engine.delete_indices(sorted(names))


def run_sparcode_es(engine, export_dir: Path, alias: str, queries, warmup: int, threads: int,
                    status: Callable[[str], None] | None = None) -> Measured:
    """SparCode as term lookups on a search engine (sparse_vector on ES, rank_features on OpenSearch).
    `status` hears what the build waits for after the load, as in `sparcode index`."""
    from sparcode.pipeline.indexer import build

    export = Export.open(export_dir)
    _drop_family(engine, alias)
    started = time.perf_counter()
    built = build(engine, export, alias, progress=False, status=status)
    build_s = time.perf_counter() - started
    backend = EngineBackend.open(alias, export_dir, connection=engine)
    bodies = {id(q): backend.explain(q, K) for q in queries}
    index = built.index

    def call(q):
        return float(engine.search(index, bodies[id(q)])["took"])

    row = {"index_bytes": index_store_bytes(engine, index), "build_s": round(build_s, 2),
           "bulk_docs_per_s": round(built.docs_per_second), **_cpu_row(built)}
    measured = _measure_engine(engine, row, call, lambda q: backend.search(q, K), queries, warmup, threads)
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
               queries, warmup: int, threads: int, transform: str = "none",
               status: Callable[[str], None] | None = None) -> Measured:
    from sparcode.pipeline import knn

    _drop_family(engine, alias)
    started = time.perf_counter()
    built = knn.build(engine, export_dir, alias, m=m, ef_construction=ef_construction, transform=transform,
                      progress=False, status=status)
    build_s = time.perf_counter() - started
    backend = knn.KnnBackend(engine, alias, num_candidates=num_candidates)
    bodies = {id(q): backend.explain(q, K) for q in queries}

    def call(q):
        return float(engine.search(built.index, bodies[id(q)])["took"])

    row = {"index_bytes": index_store_bytes(engine, built.index), "build_s": round(build_s, 2),
           "bulk_docs_per_s": round(built.docs_per_second), **_cpu_row(built),
           "settings": {"m": m, "ef_construction": ef_construction, "num_candidates": num_candidates,
                        "transform": transform}}
    measured = _measure_engine(engine, row, call, lambda q: backend.search(q, K), queries, warmup, threads)
    _drop_family(engine, alias)
    return measured


def recall_at(hits: list[list[Hit]], truth: list[list[Hit]], k: int = K) -> float:
    shares = [len({h.item_id for h in t[:k]} & {h.item_id for h in a[:k]}) / len(t[:k])
              for a, t in zip(hits, truth) if t]
    return round(float(np.mean(shares)), 4) if shares else None
