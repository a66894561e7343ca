"""scripts/merge_bench.py: bad input is one line and writes nothing; a merge never keeps two rows
of one path and size."""
import json
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "merge_bench.py"
META = {"synthetic": "x", "sparcode_shape_from": "a", "vector_shape_from": "b", "queries": 10, "warmup": 1,
        "qps_threads": 2, "k": 50, "hnsw": {"m": 16, "ef_construction": 100, "ef": 100},
        "es_knn": {"m": 16, "ef_construction": 100, "num_candidates": 100}, "engines": {}, "cpus": 2}


def bench_dir(path: Path, created: str, *paths_items) -> Path:
    path.mkdir()
    rows = [{"path": p, "items": n, "synthetic": True, "p50_ms": 1.0, "p99_ms": 2.0, "took_p50_ms": None,
             "took_p99_ms": None, "floor_p50_ms": None, "qps": 100.0, "recall@50": 1.0, "index_bytes": 10,
             "build_s": 0.1, "bulk_docs_per_s": None} for p, n in paths_items]
    (path / "bench.json").write_text(json.dumps(rows))
    (path / "bench.meta.json").write_text(json.dumps(META | {"created": created}))
    return path


def merge(*args):
    return subprocess.run([sys.executable, SCRIPT, *map(str, args)], capture_output=True, text=True)


@pytest.fixture
def runs(tmp_path):
    return (bench_dir(tmp_path / "a", "2026-01-01T00:00:00Z", ("exact", 1000), ("hnswlib", 1000)),
            bench_dir(tmp_path / "b", "2026-01-02T00:00:00Z", ("exact", 1000), ("exact", 10000)))


def test_two_rows_of_one_path_and_size_are_refused(tmp_path, runs):
    refused = merge(tmp_path / "out", *runs)
    assert refused.returncode == 1 and "exact at 1,000 items comes from two runs" in refused.stderr
    assert "Traceback" not in refused.stderr and not (tmp_path / "out").exists()
    picked = merge(tmp_path / "out", runs[0], f"{runs[1]}@10000")
    assert picked.returncode == 0, picked.stderr
    rows = json.loads((tmp_path / "out" / "bench.json").read_text())
    assert sorted((r["path"], r["items"]) for r in rows) == [("exact", 1000), ("exact", 10000), ("hnswlib", 1000)]


@pytest.mark.parametrize("spec, says", [(":bogus", "selects no rows"), ("@1x", "sizes after @ are item counts"),
                                        ("/missing", "not found")])
def test_a_bad_spec_is_one_line_and_writes_nothing(tmp_path, runs, spec, says):
    result = merge(tmp_path / "out", f"{runs[0]}{spec}" if not spec.startswith("/") else tmp_path / "missing")
    assert result.returncode == 1 and says in result.stderr, result.stderr
    assert len(result.stderr.strip().splitlines()) == 1 and not (tmp_path / "out").exists()


def test_an_existing_out_keeps_other_files_and_is_untouched_by_a_refused_merge(tmp_path, runs):
    out = tmp_path / "out"
    assert merge(out, runs[0]).returncode == 0
    (out / "notes.md").write_text("mine")
    before = (out / "bench.json").read_text()
    assert merge(out, *runs).returncode == 1
    assert (out / "bench.json").read_text() == before
    # A forgotten OUT makes the first run the output: its measurements are never overwritten unasked.
    unasked = merge(out, f"{runs[1]}@10000")
    assert unasked.returncode == 1 and "--force" in unasked.stderr and (out / "bench.json").read_text() == before
    assert merge(out, f"{runs[1]}@10000", "--force").returncode == 0
    assert (out / "notes.md").read_text() == "mine" and (out / "bench.json").read_text() != before
    assert sorted(p.name for p in out.iterdir()) == ["bench.json", "bench.md", "bench.meta.json",
                                                     "latency_vs_items.png", "latency_vs_recall.png", "notes.md"]
