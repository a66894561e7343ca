"""The in-process backend: scores worked out by hand, ties, fallback, filters, validation."""
import numpy as np
import pytest

from sparcode.codes_fallback import CodeTable
from sparcode.featurefield import truncate
from sparcode.pipeline.backends import Hit, LocalBackend
from sparcode.pipeline.export import Export, ExportError
from conftest import random_queries, write_export

A, B, C = "c0000_0001", "c0002_0003", "c0005_0005"


def t(x: float) -> float:
    return float(truncate([x])[0])


def tiny_items():
    return [
        {"item_id": "x", "ord": 0, "codes": {A: t(1.5), B: t(0.25)}, "genres": ["Drama"], "year": 1990},
        {"item_id": "y", "ord": 1, "codes": {A: t(0.5), C: t(3.0)}, "genres": ["Comedy"], "year": 1991},
        {"item_id": "z", "ord": 2, "codes": {B: t(1.0)}, "genres": ["Drama", "Comedy"], "year": None},
        {"item_id": "w", "ord": 3, "codes": {}, "genres": [], "year": 1990},
        {"item_id": "v", "ord": 4, "codes": {A: t(1.5), B: t(0.25)}, "genres": ["Drama"], "year": 1992},
    ]


@pytest.fixture
def tiny(tmp_path):
    path = write_export(tmp_path / "tiny", tiny_items(), item_fields={"genres": ["keyword"], "year": "integer"})
    return LocalBackend(path), path


def test_score_is_sum_of_count_times_stored_value(tiny):
    backend, _ = tiny
    hits = backend.search({A: 2, B: 1}, 10)
    # x and v tie at 2*1.5 + 0.25 = 3.25 (x first: smaller ord), then y = 1.0, z = 1.0 (ord 1 < 2).
    assert hits == [Hit("x", 3.25), Hit("v", 3.25), Hit("y", 1.0), Hit("z", 1.0)]
    assert backend.search({C: 1}, 10) == [Hit("y", 3.0)]


def test_items_matching_no_term_are_never_returned(tiny):
    backend, _ = tiny
    ids = [h.item_id for h in backend.search({A: 1, B: 1, C: 1}, 10)]
    assert "w" not in ids and len(ids) == 4
    assert backend.search({}, 10) == []


def test_k_filters_and_exclusions(tiny):
    backend, _ = tiny
    assert [h.item_id for h in backend.search({A: 1, B: 1}, 2)] == ["x", "v"]
    assert [h.item_id for h in backend.search({A: 1, B: 1}, 10, filters={"genres": "Comedy"})] == ["z", "y"]
    assert [h.item_id for h in backend.search({A: 1}, 10, filters={"year": ["1990", 1992]})] == ["x", "v"]
    assert [h.item_id for h in backend.search({A: 1}, 10, exclude_items={"x"})] == ["v", "y"]


def test_unindexed_term_falls_back_to_nearest_code(tiny):
    backend, path = tiny
    table = CodeTable.load(path / "codes.npz")
    unindexed = "c0009_0009"
    assert unindexed not in table
    nearest = table.nearest(unindexed)
    assert backend.search({unindexed: 2}, 10) == backend.search({nearest: 2}, 10)
    # Counts of a fallback and its target merge.
    assert backend.search({unindexed: 1, nearest: 1}, 10) == backend.search({nearest: 2}, 10)


def test_random_queries_match_brute_force(export_dir):
    backend = LocalBackend(export_dir)
    export = Export.open(export_dir)
    items = list(export.items())
    table = export.code_table()
    for query in random_queries(export_dir, 50):
        resolved = table.resolve(query)
        expected = []
        for it in items:
            hit = [np.float32(c) * np.float32(it["codes"][term]) for term, c in resolved.items() if term in it["codes"]]
            if hit:
                expected.append((-np.float32(sum(float(h) for h in hit)), it["ord"], it["item_id"]))
        expected.sort()
        got = backend.search(query, 20)
        assert [h.item_id for h in got] == [e[2] for e in expected[:20]]
        assert [h.score for h in got] == [float(-e[0]) for e in expected[:20]]


def test_batch_search_equals_single_searches(export_dir):
    backend = LocalBackend(export_dir)
    queries = random_queries(export_dir, 5)
    excludes = [[f"i{i:04d}"] for i in range(5)]
    assert backend.batch_search(queries, 7, exclude_items=excludes) == [
        backend.search(q, 7, exclude_items=ex) for q, ex in zip(queries, excludes)]


@pytest.mark.parametrize("bad", [0.0, -1.0, float("nan"), 1e-40, 1e39])
def test_unstorable_values_are_refused_naming_item_and_term(tmp_path, bad):
    items = tiny_items()
    items[2]["codes"][C] = bad
    path = write_export(tmp_path / "bad", items, item_fields={"genres": ["keyword"], "year": "integer"})
    with pytest.raises(ExportError, match=r"item 'z', term 'c0005_0005'"):
        Export.open(path).validate()


def test_manifest_count_mismatch_is_refused(tmp_path):
    path = write_export(tmp_path / "e", tiny_items(), item_fields={"genres": ["keyword"], "year": "integer"})
    manifest = (path / "manifest.json").read_text().replace('"items": 5', '"items": 6')
    (path / "manifest.json").write_text(manifest)
    with pytest.raises(ExportError, match="says 6 items, files hold 5"):
        Export.open(path).validate()
