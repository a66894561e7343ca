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


def nearest_indexed(codes_npz, term: str) -> str:
    """The fallback worked out apart from CodeTable: every codeword is rebuilt from the codebooks,
    the nearest by squared distance wins, and a tie goes to the earlier indexed term."""
    with np.load(codes_npz) as npz:
        books, indexed = npz["codebooks"].astype(np.float64), [str(x) for x in npz["terms"]]
    if term in indexed:
        return term

    def word(t):
        return np.concatenate([books[m, int(i)] for m, i in enumerate(t[1:].split("_"))])

    dists = [float(((word(t) - word(term)) ** 2).sum()) for t in indexed]
    return indexed[dists.index(min(dists))]


def resolve_independently(codes_npz, query: dict) -> dict:
    resolved: dict[str, float] = {}
    for term, count in query.items():
        target = nearest_indexed(codes_npz, term)
        resolved[target] = resolved.get(target, 0.0) + float(count)
    return resolved


def test_unindexed_term_falls_back_to_nearest_code(tiny):
    backend, path = tiny
    table = CodeTable.load(path / "codes.npz")
    # Every unindexed code of the 16 x 16 grid, so a rule that ignores distance cannot pass by
    # luck; A, B and C each give a different result list, so the search tells them apart.
    unindexed = [f"c{a:04d}_{b:04d}" for a in range(16) for b in range(16)]
    unindexed = [u for u in unindexed if u not in table]
    targets = {u: nearest_indexed(path / "codes.npz", u) for u in unindexed}
    assert set(targets.values()) == {A, B, C}
    for term, nearest in targets.items():
        assert backend.search({term: 2}, 10) == backend.search({nearest: 2}, 10), term
    # Counts of a fallback and its target merge.
    term, nearest = next(iter(targets.items()))
    assert backend.search({term: 1, nearest: 1}, 10) == backend.search({nearest: 2}, 10)


def test_equidistant_indexed_codes_resolve_to_the_earlier_term(tmp_path):
    path = write_export(tmp_path / "ties", tiny_items(), item_fields={"genres": ["keyword"], "year": "integer"})
    # All codewords zero except index 5 in both codebooks: A and B share the zero codeword, so an
    # unindexed all-zero code is equally near both, and C (5, 5) is far.
    books = np.zeros((2, 16, 4), np.float32)
    books[:, 5] = 3.0
    with np.load(path / "codes.npz") as npz:
        terms = npz["terms"]
    vectors = np.stack([np.concatenate([books[m, int(i)] for m, i in enumerate(str(t)[1:].split("_"))]) for t in terms])
    np.savez(path / "codes.npz", terms=terms, vectors=vectors, codebooks=books)
    assert nearest_indexed(path / "codes.npz", "c0009_0009") == A
    backend = LocalBackend(path)
    assert backend.search({"c0009_0009": 1}, 10) == backend.search({A: 1}, 10) != backend.search({B: 1}, 10)


def test_random_queries_match_brute_force(export_dir):
    backend = LocalBackend(export_dir)
    export = Export.open(export_dir)
    items = list(export.items())
    queries = random_queries(export_dir, 50)
    # The queries must exercise the fallback, or a broken one would go unnoticed here.
    assert sum(t not in export.code_table() for q in queries for t in q) >= 5
    for query in queries:
        resolved = resolve_independently(export_dir / "codes.npz", query)
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
