"""`sparcode bench`: the synthetic catalogs keep the shape they are given, and `--quick` writes
the contract's files against the live Elasticsearch node."""
import json
import os
import re

import numpy as np
import pytest

from conftest import random_items, write_export
from sparcode.bench import report, synthetic
from sparcode.pipeline.backends import LocalBackend
from sparcode.pipeline.export import Export
from sparcode.pipeline.vectors import VectorSet
from test_cli_end_to_end import invoke

ROW_KEYS = {"path", "items", "synthetic", "p50_ms", "p99_ms", "took_p50_ms", "took_p99_ms", "floor_p50_ms", "qps",
            "recall@50", "index_bytes", "build_s", "bulk_docs_per_s"}


def test_the_shape_of_an_export_keeps_every_code_it_stores(tmp_path):
    """Beyond 4,096 codes too: cutting the list piled the export's postings onto fewer, longer lists."""
    items = [{"item_id": f"i{i}", "ord": i, "codes": {f"c{i:04d}_{j:04d}": 1.0 for j in range(3)}}
             for i in range(2000)]
    shape = synthetic.SparcodeShape.from_export(write_export(tmp_path / "wide", items, N=3000))
    assert shape.codes == 6000 and len(shape.popularity) == 6000 and shape.codes_per_item == 3
    out = synthetic.sparcode_catalog(tmp_path / "syn", shape, 2000, seed=0)
    assert json.loads((out / "manifest.json").read_text())["postings_per_code"]["mean"] < 1.2  # 4,096 codes: 1.46


def test_sparcode_catalog_is_a_valid_export_with_the_measured_shape(tmp_path):
    real = write_export(tmp_path / "real", random_items(n_items=400, n_terms=60))
    shape = synthetic.SparcodeShape.from_export(real)
    assert shape.codes == 60 and len(shape.popularity) == 60 and len(shape.score_quantiles) == 101
    out = synthetic.sparcode_catalog(tmp_path / "syn", shape, 3000, seed=0)
    export = Export.open(out)
    assert export.validate() == 3000  # every stored value is a storable FeatureField value
    counts = np.sort(np.bincount([int(t[1:5]) * 64 + int(t[6:]) for it in export.items() for t in it["codes"]],
                                 minlength=64 * 64))[::-1][:60]
    # The most popular code holds about the share of postings it held in the real export.
    assert counts[0] / counts.sum() == pytest.approx(shape.popularity[0], rel=0.25)
    queries = synthetic.sparcode_queries(shape, 20)
    assert all(sum(q.values()) == shape.tokens_per_user for q in queries)
    assert sum(len(h) > 0 for h in LocalBackend(out).batch_search(queries, 50)) == 20


def test_vector_catalog_keeps_dim_and_norms(tmp_path):
    shape = synthetic.VectorShape(dim=24, norm_mean=2.0, norm_std=0.2, clusters=16)
    vs = VectorSet.load(synthetic.vector_catalog(tmp_path / "v", shape, 4000))
    norms = np.linalg.norm(vs.vectors, axis=1)
    assert vs.dim == 24 and norms.mean() == pytest.approx(2.0, rel=0.05) and norms.std() == pytest.approx(0.2, rel=0.2)
    again = synthetic.VectorShape.from_export(tmp_path / "v")
    assert again.dim == 24 and again.norm_mean == pytest.approx(2.0, rel=0.05)


def test_report_marks_missed_goals(tmp_path):
    rows = [{"path": "sparcode-es", "items": 1000, "p50_ms": 9.0, "p99_ms": 20.0, "took_p50_ms": 5.0,
             "took_p99_ms": 12.0, "floor_p50_ms": 3.0, "qps": 300.0, "recall@50": 1.0, "index_bytes": 10,
             "build_s": 1.0, "bulk_docs_per_s": 25000},
            {"path": "es-knn", "items": 1000, "p50_ms": 8.0, "p99_ms": 20.0, "took_p50_ms": 4.0, "took_p99_ms": 9.0,
             "floor_p50_ms": 3.0, "qps": 100.0, "recall@50": 0.95, "index_bytes": 20, "build_s": 1.0,
             "bulk_docs_per_s": 2000}]
    status = {name: ok for name, _, ok in report.goals(rows)}
    assert status["SparCode-ES took p50 ≤ 3 ms"] is False and status["SparCode-ES QPS ≥ 1.5 × ES-kNN QPS"] is True
    assert status["SparCode-ES bulk ≥ 20,000 docs/s"] is True


def test_goals_compare_with_es_knn_at_the_largest_size_that_has_it():
    def row(path, items, qps, size):
        return {"path": path, "items": items, "p50_ms": 5.0, "p99_ms": 9.0, "took_p50_ms": 2.0, "took_p99_ms": 4.0,
                "floor_p50_ms": 1.0, "qps": qps, "recall@50": 1.0, "index_bytes": size, "build_s": 1.0,
                "bulk_docs_per_s": 1000, "run": "a"}
    rows = [row("sparcode-es", 100_000, 300.0, 10), row("es-knn", 100_000, 100.0, 20),
            row("sparcode-es", 1_000_000, 250.0, 100)]
    checked = {name: (detail, ok) for name, detail, ok in report.goals(rows)}
    detail, ok = checked["SparCode-ES QPS ≥ 1.5 × ES-kNN QPS"]
    assert ok and "at 100,000 items (no es-knn row at 1,000,000)" in detail
    assert checked["SparCode-ES took p50 ≤ 3 ms"][0].endswith("at 1,000,000 items")


def test_report_profiles_engine_rows_and_says_the_machine_was_loaded(tmp_path):
    row = {"path": "sparcode-es", "items": 1000, "p50_ms": 9.0, "p99_ms": 20.0, "took_p50_ms": 5.0,
           "took_p99_ms": 12.0, "floor_p50_ms": 3.0, "qps": 300.0, "recall@50": 1.0, "index_bytes": 10,
           "build_s": 1.0, "bulk_docs_per_s": 2500, "bulk_docs_per_cpu_s": 9000, "node_cpu_ms_per_query": 1.25,
           "client_cpu_ms_per_query": 0.5}
    meta = {"synthetic": "x", "sparcode_shape_from": "a", "vector_shape_from": "b", "queries": 10, "warmup": 1,
            "qps_threads": 2, "k": 50, "hnsw": {"m": 16, "ef_construction": 100, "ef": 100},
            "es_knn": {"m": 16, "ef_construction": 100, "num_candidates": 100}, "engines": {"es": "ES 8"},
            "cpus": 2, "loadavg": [5.0, 4.0, 3.0]}
    report.write_markdown(tmp_path / "bench.md", [row], meta)
    text = (tmp_path / "bench.md").read_text()
    assert "| sparcode-es | 1,000 | 5 / 12 | 1.25 | 3.75 | 9 | 4 | 0.5 | 3 |" in text
    assert "Load average when the run ended: 5.0" in text
    assert "2,500 docs/s wall, 9,000 docs per CPU-second" in text


def test_bench_refuses_unknown_paths(tmp_path):
    result = invoke("bench", "--out", tmp_path / "b", "--quick", "--paths", "sparcode-es,faiss")
    assert result.exit_code != 0 and "unknown path(s) faiss" in result.output
    assert not (tmp_path / "b").exists()


def test_bench_connects_only_to_the_engines_its_paths_query(tmp_path, monkeypatch):
    monkeypatch.setenv("ELASTICSEARCH_URL", "http://127.0.0.1:9")
    monkeypatch.setenv("OPENSEARCH_URL", "http://127.0.0.1:9")
    offline = invoke("bench", "--out", tmp_path / "b", "--sizes", "200", "--queries", "10", "--paths", "hnswlib")
    assert offline.exit_code == 0, offline.output
    assert {r["path"] for r in json.loads((tmp_path / "b" / "bench.json").read_text())} == \
        {"hnswlib", "sparcode-local", "exact"}
    asked = invoke("bench", "--out", tmp_path / "c", "--sizes", "200", "--queries", "10", "--paths", "sparcode-os")
    assert asked.exit_code == 1 and "OpenSearch not reachable" in asked.output, asked.output
    assert not (tmp_path / "c").exists()


def test_bench_refuses_a_foreign_out_dir(tmp_path):
    (tmp_path / "notes.txt").write_text("mine")
    result = invoke("bench", "--out", tmp_path, "--quick")
    assert result.exit_code != 0 and "not a bench output" in result.output
    assert (tmp_path / "notes.txt").exists()
    # --force replaces a bench output, never the user's files beside it
    (tmp_path / "bench.json").write_text("[]")
    (tmp_path / "cap50").mkdir()
    forced = invoke("bench", "--out", tmp_path, "--quick", "--force")
    assert forced.exit_code == 1 and "also holds cap50/, notes.txt" in forced.output, forced.output
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bench.json", "cap50", "notes.txt"]


@pytest.mark.es
@pytest.mark.timeout(300)
def test_bench_quick_writes_the_contract(es_engine, tmp_path):
    out = tmp_path / "bench"
    result = invoke("bench", "--out", out, "--quick")
    assert result.exit_code == 0, result.output
    # Each engine build says what it waits for after its load, as `sparcode index` does.
    tag = re.search(r"bench indices: sparcode-bench-([0-9a-f]+)-\*", result.output).group(1)
    assert f"    merging sparcode-bench-{tag}-sparcode-es-" in result.output
    assert f"    merging sparcode-bench-{tag}-knn-" in result.output
    rows = json.loads((out / "bench.json").read_text())
    assert {r["path"] for r in rows} >= {"sparcode-es", "sparcode-local", "hnswlib", "es-knn", "exact"}
    for row in rows:
        assert ROW_KEYS <= set(row) and row["synthetic"] is True and row["p50_ms"] > 0
    by = {r["path"]: r for r in rows}
    assert by["sparcode-es"]["recall@50"] == 1.0  # term lookups are exact: ES equals the embedded backend
    assert by["exact"]["recall@50"] == 1.0 and by["hnswlib"]["recall@50"] >= 0.9 and by["es-knn"]["recall@50"] >= 0.9
    assert by["sparcode-es"]["took_p50_ms"] is not None and by["hnswlib"]["took_p50_ms"] is None
    assert by["es-knn"]["index_bytes"] > 0 and by["sparcode-es"]["bulk_docs_per_s"] > 0
    assert (out / "bench.md").read_text().startswith("# sparcode bench")
    assert (out / "latency_vs_recall.png").stat().st_size > 1000 and (out / "latency_vs_items.png").exists()
    assert not es_engine.matching(f"sparcode-bench-{tag}-*")  # its indices are cleaned up, the floor's too
    assert by["sparcode-es"]["bulk_docs_per_cpu_s"] > 0 and by["sparcode-es"]["node_cpu_ms_per_query"] > 0
    assert by["es-knn"]["node_cpu_ms_per_query"] > 0 and by["es-knn"]["floor_p50_ms"] > 0
    if os.environ.get("OPENSEARCH_URL"):  # CI runs both nodes: the OpenSearch row must be there too
        assert by["sparcode-os"]["recall@50"] == 1.0 and by["sparcode-os"]["took_p50_ms"] is not None


def test_capped_catalog_keeps_lists_short_as_it_grows(tmp_path):
    shape = synthetic.SparcodeShape(codes_per_item=8, tokens_per_user=1, query_probes=4, posting_cap=20)
    for items in (500, 5000):
        out = synthetic.sparcode_catalog(tmp_path / f"cap{items}", shape, items, seed=0)
        export = Export.open(out)
        assert export.validate() == items and export.manifest["codes"] == shape.codes_at(items) == items * 8 // 20
        lists = np.bincount([int(t[1:5]) * export.manifest["quantizer"]["N"] + int(t[6:])
                             for it in export.items() for t in it["codes"]])
        # Lists stay near the cap at both sizes (draws are uniform over codes: Poisson around it).
        assert 17 <= lists[lists > 0].mean() <= 20 and lists.max() < 3 * 20
        queries = synthetic.sparcode_queries(shape, 30, items=items)
        assert all(sum(q.values()) == 4 for q in queries)
        assert sum(len(h) > 0 for h in LocalBackend(out).batch_search(queries, 50)) == 30
