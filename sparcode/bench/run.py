"""`sparcode bench`: every retrieval path on the same synthetic catalogs, one table.

Paths run one after another (nothing else of ours runs during a latency loop). Quality is
recall@50 against the path family's exact ranking: the embedded SparCode backend for the
SparCode paths (the engines must equal it), exact flat search for the vector paths.
"""
from __future__ import annotations

import json
import os
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from sparcode.bench import PATHS, paths, synthetic
from sparcode.errors import SparcodeError
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


ES_PATHS = frozenset({"sparcode-es", "es-knn"})


class UrlAmbiguous(SparcodeError, ValueError):
    """--url names one node, but the chosen paths query both engines."""


def engines(url: str | None, paths: tuple[str, ...] = PATHS) -> dict:
    """{engine name: connection} for the engines the chosen `paths` query: Elasticsearch for
    sparcode-es and es-knn, OpenSearch for sparcode-os. `url` is the node of whichever one engine
    the paths query; with both, it would silently apply to one of them, so it is refused."""
    from sparcode.pipeline.connect import connect

    es, opensearch = bool(ES_PATHS & set(paths)), "sparcode-os" in paths
    if url is not None and es and opensearch:
        raise UrlAmbiguous("--url names one node, but these paths query Elasticsearch (sparcode-es, es-knn) and "
                           "OpenSearch (sparcode-os): pick one engine's paths with --paths, or set ELASTICSEARCH_URL "
                           "and OPENSEARCH_URL instead of --url")
    found = {}
    if es:
        found["es"] = connect(url, engine="elasticsearch", request_timeout=600)
    if opensearch:
        found["os"] = connect(url or os.environ.get("OPENSEARCH_URL"), engine="opensearch", request_timeout=600)
    return found


def catalog_facts(sparse_dir: Path) -> dict:
    """What the SparCode catalog really stores: fewer postings per item than drawn, as a code drawn
    twice for one item is stored once."""
    manifest = json.loads((sparse_dir / "manifest.json").read_text())
    return {"pairs": manifest["pairs"], "postings_per_item": round(manifest["postings_per_item"]["mean"], 2)}


def queries_for(config: BenchConfig, items: int) -> tuple[list, list]:
    """(SparCode queries, vector queries). Vector queries take the vector catalog's own seed: its
    centres come from it, and queries about other centres would measure another geometry."""
    return (synthetic.sparcode_queries(config.sparcode_shape, config.queries, config.seed + 1, items),
            synthetic.vector_queries(config.vector_shape, config.queries, config.seed))


def announce(names: paths.RunNames, conns: dict, log: Callable[[str], None]) -> None:
    """Say which indices are this run's, and name other benches' without touching them: they may
    be a bench running right now, and a killed one's cannot be told apart from it."""
    log(f"bench indices: {names.pattern} (each deleted when its path ends)")
    for engine in conns.values():
        others = names.others(engine)
        if others:
            shown = ", ".join(others[:6]) + (f" and {len(others) - 6} more" if len(others) > 6 else "")
            log(f"left alone on {engine.label}: {shown} (another bench's, running or killed; delete them by name "
                "once no other bench runs)")


def run_bench(config: BenchConfig, work: Path, conns: dict, log: Callable[[str], None] = print,
              names: paths.RunNames | None = None) -> list[dict]:
    names = names or paths.RunNames()
    if conns:
        announce(names, conns, log)
    rows: list[dict] = []
    for items in config.sizes:
        log(f"[{items:,} items] generating synthetic catalogs")
        sparse_dir = synthetic.sparcode_catalog(work / f"sparcode-{items}", config.sparcode_shape, items, config.seed)
        vector_dir = synthetic.vector_catalog(work / f"vectors-{items}", config.vector_shape, items, config.seed)
        catalog = catalog_facts(sparse_dir)
        sparse_q, vector_q = queries_for(config, items)
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
        local.row.update(catalog)
        add("sparcode-local", local, local.hits)
        for name, label in (("es", "sparcode-es"), ("os", "sparcode-os")):
            if name in conns and label in config.paths:
                log(f"  {label}")
                measured = paths.run_sparcode_es(conns[name], sparse_dir, names.alias(label, items),
                                                 sparse_q, *common, status=status)
                measured.row.update(catalog)
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
            knn = paths.run_es_knn(conns["es"], vector_dir, names.alias("knn", items), config.hnsw.m,
                                   config.hnsw.ef_construction, config.num_candidates, vector_q, *common,
                                   transform=config.hnsw.transform, status=status)
            add("es-knn", knn, exact.hits)
        shutil.rmtree(sparse_dir, ignore_errors=True)
        shutil.rmtree(vector_dir, ignore_errors=True)
    return rows


def describe(config: BenchConfig, conns: dict, rows: list[dict] = ()) -> dict:
    from sparcode.pipeline.engine import redact

    return {
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "synthetic": "every row: catalogs and queries are generated (sparcode/bench/synthetic.py); "
                     "recall@50 is against the exact ranking of the same synthetic model",
        "sparcode_shape_from": config.sparcode_shape.source,
        "sparcode_shape": {"codes": config.sparcode_shape.codes,
                           "codes_per_item": config.sparcode_shape.codes_per_item,
                           "query_codes": config.sparcode_shape.query_codes,
                           "posting_cap": config.sparcode_shape.posting_cap},
        # What each catalog stores, not what was drawn (`sparcode_shape.codes_per_item`).
        "catalogs": {str(r["items"]): {"pairs": r["pairs"], "postings_per_item": r["postings_per_item"]}
                     for r in rows if r["path"] == "sparcode-local" and "pairs" in r},
        "vector_shape_from": config.vector_shape.source,
        # Fewer warm-up queries than asked when there are fewer queries: the loop warms on them.
        "queries": config.queries, "warmup": min(config.warmup, config.queries), "qps_threads": config.threads,
        "k": paths.K,
        # With more than one thread hnswlib inserts in a racy order: the graph, and its recall,
        # differ between runs with the same seed.
        "hnsw": {"m": config.hnsw.m, "ef_construction": config.hnsw.ef_construction, "ef": config.ef,
                 "seed": config.hnsw.seed, "threads": config.hnsw.threads,
                 "reproducible": config.hnsw.threads == 1, "transform": config.hnsw.transform},
        "es_knn": {"m": config.hnsw.m, "ef_construction": config.hnsw.ef_construction,
                   "transform": config.hnsw.transform,
                   "num_candidates": config.num_candidates},
        "paths": list(config.paths),
        "engines": {name: f"{engine.label} {engine.version}" for name, engine in conns.items()},
        "urls": {name: redact(engine.url) for name, engine in conns.items()},
        "cpus": os.cpu_count(),
        # Latency on a shared machine includes waiting for a CPU; the load says how much to expect.
        "loadavg": list(os.getloadavg()),
    }
