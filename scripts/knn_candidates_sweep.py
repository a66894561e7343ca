"""ES kNN recall@50 and speed as `num_candidates` rises, on one synthetic catalog: the other half
of "QPS at equal recall" (issue 5), since SparCode-ES is exact against its own model.

    .venv/bin/python scripts/knn_candidates_sweep.py --items 100000 --candidates 50,100,200,400,800 \
        --out results/bench/2026-12-01-grouped/knn_candidates_100k.json

Builds the same dense_vector index `sparcode bench` builds (m 16, ef_construction 100), then
times 1,000 one-at-a-time queries (after 100 warm-up ones) and QPS with 2 client threads at each
`num_candidates`, with recall@50 against exact flat search of the same vectors.
"""
from __future__ import annotations

import json
import shutil
import tempfile
import time
from pathlib import Path

import click

from sparcode.bench import measure, paths, synthetic
from sparcode.pipeline import knn
from sparcode.pipeline.connect import connect
from sparcode.pipeline.vectors import VectorSet


def _candidates(ctx, param, value):
    try:
        values = [int(v) for v in value.split(",") if v.strip()]
    except ValueError:
        raise click.BadParameter("expected comma-separated integers") from None
    # Below k the search would run at k anyway, and its row would be labelled with a number never measured.
    if not values or min(values) < paths.K:
        raise click.BadParameter(f"need at least one value, each at least k = {paths.K}")
    return values


@click.command()
@click.option("--items", type=click.IntRange(min=100), default=100_000, show_default=True)
@click.option("--candidates", callback=_candidates, default="50,100,200,400,800", show_default=True)
@click.option("--queries", type=click.IntRange(min=10), default=1000, show_default=True)
@click.option("--url", default=None, help="Elasticsearch URL (default: ELASTICSEARCH_URL, else the local node).")
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path), required=True)
def main(items, candidates, queries, url, out):
    engine = connect(url, engine="elasticsearch", request_timeout=600)
    shape = synthetic.VectorShape()
    work = Path(tempfile.mkdtemp(prefix="knn-sweep-"))
    alias = f"sparcode-knn-sweep-{items}"
    try:
        vector_dir = synthetic.vector_catalog(work / "vectors", shape, items, seed=0)
        vector_q = synthetic.vector_queries(shape, queries, seed=0)  # the catalog's seed: its centres
        exact = paths.run_exact(VectorSet.load(vector_dir), vector_q, 100, 2)
        started = time.perf_counter()
        # Raw inner products, as `sparcode bench` builds its ES kNN rows.
        built = knn.build(engine, vector_dir, alias, transform="none", replace=True, delete_old=True, progress=False)
        build_s = time.perf_counter() - started
        rows = []
        for nc in candidates:
            backend = knn.KnnBackend(engine, alias, num_candidates=nc)
            bodies = {id(q): backend.explain(q, paths.K) for q in vector_q}

            def call(q):
                return float(engine.search(built.index, bodies[id(q)])["took"])

            timing = measure.latency(call, vector_q, 100)
            hits = [backend.search(q, paths.K) for q in vector_q]
            rows.append({"num_candidates": nc, **timing, "qps": measure.qps(call, vector_q, 2),
                         "recall@50": paths.recall_at(hits, exact.hits)})
            click.echo(json.dumps(rows[-1]))
    finally:
        leftover = engine.matching(f"{alias}-*")
        if leftover:
            engine.delete_indices(sorted(leftover))
        shutil.rmtree(work, ignore_errors=True)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"items": items, "synthetic": True, "build_s": round(build_s, 1),
                               "engine": f"{engine.label} {engine.version}", "queries": queries,
                               "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "rows": rows},
                              indent=2) + "\n")


if __name__ == "__main__":
    main()
