"""`sparcode bench` as a run on a shared node: it names its indices for itself, deletes them
however it ends, leaves other runs' alone, says which node it measured, and reports the catalog
and warm-up it really used."""
import gzip
import json
import re

import numpy as np
import orjson
import pytest

from sparcode.bench import run, synthetic
from sparcode.pipeline import bulk
from sparcode.pipeline.engine import EngineError
from sparcode.pipeline.vectors import write_vector_export
from test_cli_end_to_end import invoke

TINY = ("--sizes", "200", "--queries", "10")


def _run_pattern(output: str) -> str:
    found = re.search(r"bench indices: (sparcode-bench-[0-9a-f]+-\*)", output)
    assert found, output
    return found.group(1)


def test_catalog_reports_the_postings_it_stores_not_the_codes_drawn(tmp_path):
    """Drawn codes repeat (popular ones most): asked 32, the default shape stores ≈ 26 per item."""
    out = synthetic.sparcode_catalog(tmp_path / "s", synthetic.SparcodeShape(), 500, seed=0)
    stored = [len(orjson.loads(line)["codes"]) for line in gzip.open(out / "items.jsonl.gz")]
    facts = run.catalog_facts(out)
    assert facts == {"pairs": sum(stored), "postings_per_item": round(float(np.mean(stored)), 2)}
    assert facts["postings_per_item"] < 30


def test_vector_queries_come_from_the_catalogs_centres(tmp_path, monkeypatch):
    seen = []
    centres = synthetic.VectorShape.centres

    def recorded(self, rng):
        seen.append(centres(self, rng))
        return seen[-1]

    monkeypatch.setattr(synthetic.VectorShape, "centres", recorded)
    config = run.BenchConfig(sizes=[300], queries=20, vector_shape=synthetic.VectorShape(dim=8, clusters=4))
    synthetic.vector_catalog(tmp_path / "v", config.vector_shape, 300, config.seed)
    run.queries_for(config, 300)
    assert len(seen) == 2 and np.array_equal(seen[0], seen[1])


def test_meta_records_the_warmup_and_catalog_really_used(tmp_path, monkeypatch):
    monkeypatch.setenv("ELASTICSEARCH_URL", "http://127.0.0.1:9")
    result = invoke("bench", "--out", tmp_path / "b", *TINY, "--paths", "hnswlib")
    assert result.exit_code == 0, result.output
    meta = json.loads((tmp_path / "b" / "bench.meta.json").read_text())
    assert meta["warmup"] == 10  # the preset's 100, but only 10 queries exist to warm up on
    assert meta["hnsw"]["threads"] == 2 and meta["hnsw"]["reproducible"] is False
    local = next(r for r in json.loads((tmp_path / "b" / "bench.json").read_text()) if r["path"] == "sparcode-local")
    assert meta["catalogs"] == {"200": {"pairs": local["pairs"], "postings_per_item": local["postings_per_item"]}}
    assert local["postings_per_item"] == round(local["pairs"] / 200, 2) < 32
    text = (tmp_path / "b" / "bench.md").read_text()
    assert f"32 codes drawn per item, a repeat stored once: {local['postings_per_item']:.1f} at 200 items" in text
    assert "after 10 warm-up ones" in text and "not reproducible" in text
    assert meta["urls"] == {}
    # Said of hnswlib only: a run that measured no hnswlib path has no such note.
    other = invoke("bench", "--out", tmp_path / "c", *TINY, "--paths", "exact")
    assert other.exit_code == 0 and "not reproducible" not in (tmp_path / "c" / "bench.md").read_text()


def test_unusable_vectors_are_refused_before_anything_is_measured(tmp_path, monkeypatch):
    monkeypatch.setenv("ELASTICSEARCH_URL", "http://127.0.0.1:9")
    wide = write_vector_export(tmp_path / "wide", np.ones((3, 4097), dtype=np.float32), fingerprint="f" * 64)
    result = invoke("bench", "--out", tmp_path / "b", *TINY, "--paths", "es-knn", "--from-vectors", wide)
    assert result.exit_code == 1 and "dense_vector takes 1..4096 dims" in result.output, result.output
    assert "sparcode-local" not in result.output and not (tmp_path / "b").exists()


def test_url_for_both_engines_is_refused(tmp_path, monkeypatch):
    monkeypatch.setenv("OPENSEARCH_URL", "http://127.0.0.1:9")
    result = invoke("bench", "--out", tmp_path / "b", *TINY, "--url", "http://127.0.0.1:9")
    assert result.exit_code == 2 and "--url names one node" in result.output, result.output
    assert not (tmp_path / "b").exists()


@pytest.mark.opensearch
def test_url_names_the_opensearch_node_when_only_opensearch_is_measured(os_engine, tmp_path, monkeypatch):
    # OPENSEARCH_URL names a live node: a bench that ignored --url would measure it and succeed.
    monkeypatch.setenv("OPENSEARCH_URL", os_engine.url)
    result = invoke("bench", "--out", tmp_path / "b", *TINY, "--paths", "sparcode-os", "--url", "http://127.0.0.1:9")
    assert result.exit_code == 1 and "127.0.0.1:9" in result.output, result.output
    assert not (tmp_path / "b").exists()


@pytest.mark.es
@pytest.mark.timeout(120)
def test_bench_leaves_other_runs_indices_alone_and_deletes_its_own(es_engine, tmp_path, monkeypatch):
    # What the previous bench named its 200-item index (it deleted them all at startup), and its
    # floor index, which it never deleted.
    other = "sparcode-bench-sparcode-es-200-deadbeef-20990101t000000000000z"
    es_engine.create_index(other, {"settings": {"index": {"number_of_shards": 1, "number_of_replicas": 0}}})
    es_engine.delete_indices(["sparcode-bench-floor"])
    monkeypatch.setenv("ELASTICSEARCH_URL", es_engine.url.replace("://", "://bench:s3cret@", 1))
    try:
        result = invoke("bench", "--out", tmp_path / "b", *TINY, "--paths", "sparcode-es")
        assert result.exit_code == 0, result.output
        assert es_engine.exists(other) and f"left alone on Elasticsearch: {other}" in result.output
        assert not es_engine.matching(_run_pattern(result.output))
        assert not es_engine.exists("sparcode-bench-floor")
    finally:
        es_engine.delete_indices([other])
    meta = (tmp_path / "b" / "bench.meta.json").read_text()
    assert json.loads(meta)["urls"]["es"] == es_engine.url.replace("://", "://***@", 1) and "s3cret" not in meta


@pytest.mark.es
@pytest.mark.timeout(120)
@pytest.mark.parametrize("stop", [KeyboardInterrupt, lambda: EngineError(403, "flood-stage watermark exceeded")],
                         ids=["ctrl-c", "error"])
def test_a_bench_stopped_during_the_load_deletes_its_indices(es_engine, tmp_path, monkeypatch, stop):
    def load(*args, **kwargs):
        raise stop()

    monkeypatch.setattr(bulk, "load", load)
    result = invoke("bench", "--out", tmp_path / "b", *TINY, "--paths", "sparcode-es")
    assert result.exit_code == 1, result.output
    last = result.output.strip().splitlines()[-1]
    assert last.startswith("Error: ") and last.endswith("built were deleted"), result.output
    assert "--resume" not in result.output and "--delete-old" not in result.output
    assert not es_engine.matching(_run_pattern(result.output))
    assert not (tmp_path / "b").exists()


class _Node:
    """Just enough of an engine for the cleanup: which indices exist, and deleting them."""

    def __init__(self, *names):
        self.names = set(names)

    def matching(self, pattern):
        return {n: {} for n in self.names if n.startswith(pattern.rstrip("*"))}

    def delete_indices(self, names):
        self.names -= set(names)


@pytest.mark.parametrize("message", [
    "stopped: a-1 is no longer the index this build created (deleted during the load, perhaps by another build's "
    "--delete-old, and re-created by the node without its mapping); alias a not moved; that index cannot serve or "
    "be resumed: the next build with --delete-old removes it",
    "'a' is a concrete index, not an alias; pick another --alias",
    "a-1 holds 3 documents, the export has 4; alias a not moved; the partial index a-1 is kept: the next build with "
    "`--delete-old` removes it"])
def test_an_indexer_refusal_reaches_the_user_without_options_bench_lacks(message):
    from sparcode.bench import paths
    from sparcode.pipeline.indexer import IndexProblem

    node = _Node("sparcode-bench-t-a-1", "sparcode-bench-t-a-floor", "sparcode-bench-u-a-1")
    with pytest.raises(paths.BenchFailed) as failed:
        with paths.deleted_after(node, "sparcode-bench-t-a-*"):
            raise IndexProblem(message)
    assert "--" not in str(failed.value) and str(failed.value).endswith("the indices it built were deleted")
    assert node.names == {"sparcode-bench-u-a-1"}  # another run's index stays


def test_a_failed_cleanup_names_what_is_left():
    from sparcode.bench import paths

    class Down(_Node):
        def delete_indices(self, names):
            raise EngineError(503, "cluster_block_exception")

    node = Down("sparcode-bench-t-a-1")
    with pytest.raises(paths.BenchFailed, match=r"sparcode-bench-t-a-1 could not be deleted \(HTTP 503"):
        with paths.deleted_after(node, "sparcode-bench-t-a-*"):
            pass
