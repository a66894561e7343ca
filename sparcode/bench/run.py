"""`sparcode bench`: every retrieval path on the same synthetic catalogs, one table.

Paths run one after another (nothing else of ours runs during a latency loop). Quality is
recall@50 against the path family's exact ranking: the embedded SparCode backend for the
SparCode paths (the engines must equal it), exact flat search for the vector paths.
"""
from __future__ import annotations

import os
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from sparcode.bench import PATHS, paths, synthetic
from sparcode.pipeline.hnsw import HnswParams
from sparcode.pipeline.vectors import VectorSet

FIELDS = ("path", "items", "synthetic", "p50_ms", "p99_ms", "took_p50_ms", "took_p99_ms", "floor_p50_ms", "qps",
          "recall@50", "index_bytes", "build_s", "bulk_docs_per_s")


@dataclass
class BenchConfig:
    sizes: list[int]
    queries: int = 1000
    warmup: int = 100
    threads: int = 2
    # Raw inner-product graphs: the synthetic vectors are clustered, near-isotropic data, the
    # regime where they beat the MIPS transform (which the real ml-1m tower needs, and the product
    # defaults to; results/bench/ann_ml1m.md). The transform is recorded in every ANN row.
    hnsw: HnswParams = field(default_factory=lambda: HnswParams(m=16, ef_construction=100, seed=0, threads=2,
                                                                transform="none"))
    ef: int = 100
    num_candidates: int = 100
    sparcode_shape: synthetic.SparcodeShape = field(default_factory=synthetic.SparcodeShape)
    vector_shape: synthetic.VectorShape = field(default_factory=synthetic.VectorShape)
    seed: int = 0
    # A 1M-item dense_vector HNSW build takes hours on 2 cores; --paths leaves it out explicitly.
    paths: tuple[str, ...] = PATHS


def engines(url: str | None, paths: tuple[str, ...] = PATHS) -> dict:
    """{engine name: connection} for the engines the chosen `paths` query: Elasticsearch for
    sparcode-es and es-knn, OpenSearch (from OPENSEARCH_URL) for sparcode-os."""
    from sparcode.pipeline.connect import connect

    found = {}
    if {"sparcode-es", "es-knn"} & set(paths):
        found["es"] = connect(url, engine="elasticsearch", request_timeout=600)
    if "sparcode-os" in paths:
        found["os"] = connect(os.environ.get("OPENSEARCH_URL"), engine="opensearch", request_timeout=600)
    return found


def run_bench(config: BenchConfig, work: Path, conns: dict, log: Callable[[str], None] = print) -> list[dict]:
    rows: list[dict] = []
    for items in config.sizes:
        log(f"[{items:,} items] generating synthetic catalogs")
        sparse_dir = synthetic.sparcode_catalog(work / f"sparcode-{items}", config.sparcode_shape, items, config.seed)
        vector_dir = synthetic.vector_catalog(work / f"vectors-{items}", config.vector_shape, items, config.seed)
        sparse_q = synthetic.sparcode_queries(config.sparcode_shape, config.queries, config.seed + 1, items)
        vector_q = synthetic.vector_queries(config.vector_shape, config.queries, config.seed + 1)
        common = (config.warmup, config.threads)

        def status(line: str) -> None:  # a 1M build waits minutes after its load; say for what
            log(f"    {line}")

        def add(name: str, measured: paths.Measured, truth):
            # Engine rows carry the floor measured next to their own latency loop.
            row = {"path": name, "items": items, "synthetic": True, "floor_p50_ms": None,
                   **measured.row, "recall@50": paths.recall_at(measured.hits, truth)}
            rows.append({key: row.get(key) for key in FIELDS} | {k: v for k, v in row.items() if k not in FIELDS})
            log(f"  {name:15s} p50 {row['p50_ms']} ms  took p50 {row['took_p50_ms']}  qps {row['qps']}  "
                f"recall@50 {row['recall@50']}  build {row['build_s']} s")

        log("  sparcode-local")
        # Always measured: it is the exact reference the engines' recall is taken against.
        local = paths.run_sparcode_local(sparse_dir, sparse_q, *common)
        add("sparcode-local", local, local.hits)
        for name, label in (("es", "sparcode-es"), ("os", "sparcode-os")):
            if name in conns and label in config.paths:
                log(f"  {label}")
                measured = paths.run_sparcode_es(conns[name], sparse_dir, f"sparcode-bench-{label}-{items}",
                                                 sparse_q, *common, status=status)
                add(label, measured, local.hits)

        vectors = VectorSet.load(vector_dir)
        log("  exact")
        exact = paths.run_exact(vectors, vector_q, *common)
        add("exact", exact, exact.hits)
        if "hnswlib" in config.paths:
            log("  hnswlib")
            add("hnswlib", paths.run_hnswlib(vectors, vector_dir, config.hnsw, config.ef, vector_q, *common),
                exact.hits)
        if "es-knn" in config.paths:
            log("  es-knn")
            knn = paths.run_es_knn(conns["es"], vector_dir, f"sparcode-bench-knn-{items}", config.hnsw.m,
                                   config.hnsw.ef_construction, config.num_candidates, vector_q, *common,
                                   transform=config.hnsw.transform, status=status)
            add("es-knn", knn, exact.hits)
        shutil.rmtree(sparse_dir, ignore_errors=True)
        shutil.rmtree(vector_dir, ignore_errors=True)
    return rows


def describe(config: BenchConfig, conns: dict) -> dict:
    return {
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "synthetic": "every row: catalogs and queries are generated (sparcode/bench/synthetic.py); "
                     "recall@50 is against the exact ranking of the same synthetic model",
        "sparcode_shape_from": config.sparcode_shape.source,
        "sparcode_shape": {"codes": config.sparcode_shape.codes,
                           "codes_per_item": config.sparcode_shape.codes_per_item,
                           "query_codes": config.sparcode_shape.query_codes,
                           "posting_cap": config.sparcode_shape.posting_cap},
        "vector_shape_from": config.vector_shape.source,
        "queries": config.queries, "warmup": config.warmup, "qps_threads": config.threads, "k": paths.K,
        "hnsw": {"m": config.hnsw.m, "ef_construction": config.hnsw.ef_construction, "ef": config.ef,
                 "seed": config.hnsw.seed, "transform": config.hnsw.transform},
        "es_knn": {"m": config.hnsw.m, "ef_construction": config.hnsw.ef_construction,
                   "transform": config.hnsw.transform,
                   "num_candidates": config.num_candidates},
        "paths": list(config.paths),
        "engines": {name: f"{engine.label} {engine.version}" for name, engine in conns.items()},
        "cpus": os.cpu_count(),
        # Latency on a shared machine includes waiting for a CPU; the load says how much to expect.
        "loadavg": list(os.getloadavg()),
    }
