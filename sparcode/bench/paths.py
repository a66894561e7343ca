"""One bench row per retrieval path: build its index from a synthetic catalog, then measure it.

Each `run_*` returns the fields of the CLI contract (docs/bench.md) that belong to the path;
`hits` are kept so quality can be computed against the path's exact reference.
"""
from __future__ import annotations

import contextlib
import re
import secrets
import time
from typing import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from sparcode.bench.measure import latency, qps
from sparcode.pipeline.backends import EngineBackend, Hit, LocalBackend
from sparcode.pipeline.engine import EngineError, EngineUnavailable
from sparcode.pipeline.export import Export
from sparcode.pipeline.indexer import IndexProblem, answered

K = 50
PREFIX = "sparcode-bench"


class BenchFailed(IndexProblem):
    """A bench build or measurement stopped; one line saying what the bench cleaned up."""


@dataclass(frozen=True)
class RunNames:
    """The index names of one bench run. The random tag keeps two benches running at once (or a
    bench and the leftovers of a killed one) from ever touching each other's indices."""
    tag: str = field(default_factory=lambda: secrets.token_hex(4))

    @property
    def pattern(self) -> str:
        return f"{PREFIX}-{self.tag}-*"

    def alias(self, path: str, items: int) -> str:
        return f"{PREFIX}-{self.tag}-{path}-{items}"

    def others(self, engine) -> list[str]:
        """Bench indices on the node that are not this run's: another bench's, running or killed."""
        own = f"{PREFIX}-{self.tag}-"
        return sorted(name for name in engine.matching(f"{PREFIX}-*") if not name.startswith(own))


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


def floor(engine, index: str, queries: int, warmup: int) -> float | None:
    """Client p50 of a match_all on a one-document `index`: the round trip no index design removes."""
    try:
        if not engine.exists(index):
            engine.create_index(index, {"settings": {"index": {"number_of_shards": 1, "number_of_replicas": 0}}})
        engine._call(engine.client.index, index=index, id="1", body={"x": 1}, refresh=True)
    except EngineError:
        return None
    body = {"size": 1, "query": {"match_all": {}}, "track_total_hits": False, "_source": False}

    def call(_):
        return float(engine.search(index, body)["took"])

    return latency(call, list(range(queries)), warmup)["p50_ms"]


def _measure_engine(engine, floor_index: str, row: dict, call, hits_of, queries, warmup: int,
                    threads: int) -> Measured:
    """`_measure` for a search engine, plus the round-trip floor taken right before (under the same
    machine load as this path) and the CPU the node and the client spend per query: `took` is wall
    time inside the node and includes waiting for a CPU on a shared machine, CPU time does not."""
    row["floor_p50_ms"] = floor(engine, floor_index, min(len(queries), 500), warmup)
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


def drop(engine, pattern: str) -> str | None:
    """Delete the indices matching `pattern` (their aliases go with them); None when done, else
    one line naming what is left. Never raises: it runs while another error may be on its way out."""
    try:
        names = sorted(engine.matching(pattern))
    except (EngineError, EngineUnavailable) as exc:
        return f"the bench's indices {pattern} could not be listed to delete them ({exc}): delete them by name"
    try:
        if names:
            engine.delete_indices(names)
    except (EngineError, EngineUnavailable) as exc:
        return f"the bench's indices {', '.join(names)} could not be deleted ({exc}): delete them by name"
    return None


def _cause(exc: IndexProblem) -> str:
    """What went wrong, without the indexer's advice: --resume and --delete-old are `sparcode
    index` options, and the bench deletes what it built instead."""
    if exc.__cause__ is not None:
        return answered(exc.__cause__)
    clauses = [re.sub(r"\s*\([^)]*--[^)]*\)", "", clause) for clause in str(exc).split("; ")]
    # "alias … not moved" and the like: the alias goes with the indices the bench deletes.
    kept = [clause for clause in clauses if "--" not in clause and not clause.startswith("alias ")]
    return "; ".join(kept) or "the build stopped"


@contextlib.contextmanager
def deleted_after(engine, pattern: str):
    """Delete the indices matching `pattern` however the block ends, Ctrl-C included."""
    try:
        yield
    except IndexProblem as exc:
        left = drop(engine, pattern)
        raise BenchFailed(f"{_cause(exc)}; {left or 'the indices it built were deleted'}") from exc
    except KeyboardInterrupt as exc:
        left = drop(engine, pattern)
        # The last note is the line the CLI prints (commands/_common.user_errors).
        exc.add_note(f"interrupted; {left or 'the indices the bench built were deleted'}")
        raise
    except BaseException:
        drop(engine, pattern)
        raise
    left = drop(engine, pattern)
    if left:
        raise BenchFailed(left)


def run_sparcode_es(engine, export_dir: Path, alias: str, queries, warmup: int, threads: int,
                    status: Callable[[str], None] | None = None) -> Measured:
    """SparCode as term lookups on a search engine (sparse_vector on ES, rank_features on OpenSearch).
    `status` hears what the build waits for after the load, as in `sparcode index`. Every index
    named `alias-*` (the build's and the floor's) is deleted when it returns or fails, so `alias`
    must be this run's own."""
    with deleted_after(engine, f"{alias}-*"):
        return _sparcode_es(engine, export_dir, alias, queries, warmup, threads, status)


def _sparcode_es(engine, export_dir, alias, queries, warmup, threads, status) -> Measured:
    from sparcode.pipeline.indexer import build

    export = Export.open(export_dir)
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
    return _measure_engine(engine, f"{alias}-floor", row, call, lambda q: backend.search(q, K), queries, warmup,
                           threads)


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
    """Dense vectors in an ES `dense_vector` HNSW index; as `run_sparcode_es`, every `alias-*`
    index is deleted when it returns or fails."""
    with deleted_after(engine, f"{alias}-*"):
        return _es_knn(engine, export_dir, alias, m, ef_construction, num_candidates, queries, warmup, threads,
                       transform, status)


def _es_knn(engine, export_dir, alias, m, ef_construction, num_candidates, queries, warmup, threads, transform,
            status) -> Measured:
    from sparcode.pipeline import knn

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
    return _measure_engine(engine, f"{alias}-floor", row, call, lambda q: backend.search(q, K), queries, warmup,
                           threads)


def recall_at(hits: list[list[Hit]], truth: list[list[Hit]], k: int = K) -> float:
    shares = [len({h.item_id for h in t[:k]} & {h.item_id for h in a[:k]}) / len(t[:k])
              for a, t in zip(hits, truth) if t]
    return round(float(np.mean(shares)), 4) if shares else None
