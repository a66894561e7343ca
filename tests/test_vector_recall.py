"""The two-tower vector path without a search engine: export, exact flat search, hnswlib.

hnswlib is checked the way its own suite does it (bindings_test_recall.py): recall against
brute force on random vectors, again after save/load; plus the rules we add (ef ≥ k, the
graph refuses other vectors, hits re-scored so scores equal the exact backend's).
"""
import json

import numpy as np
import pytest

from sparcode.pipeline import mips
from sparcode.pipeline.hnsw import HnswBackend, HnswIndex, HnswParams, open_index
from sparcode.pipeline.query import QueryError
from sparcode.pipeline.vectors import ExactBackend, VectorSet, recall_vs_exact
from test_cli_end_to_end import invoke, trained  # noqa: F401  (module-scoped fixture)


def random_vectors(n=3000, dim=32, seed=0) -> VectorSet:
    rng = np.random.default_rng(seed)
    vectors = (rng.standard_normal((n, dim)) * rng.lognormal(0, 0.3, (n, 1))).astype(np.float32)
    attrs = [{"colour": ["red", "blue"][i % 2]} for i in range(n)]
    return VectorSet("f" * 64, [f"x{i}" for i in range(n)], vectors, {"colour": "keyword"}, attrs)


@pytest.fixture(scope="module")
def vectors():
    return random_vectors()


@pytest.fixture(scope="module")
def queries():
    return list(np.random.default_rng(1).standard_normal((100, 32)).astype(np.float32))


def test_hnsw_recall_vs_exact_is_high_and_survives_save_load(vectors, queries, tmp_path):
    exact = ExactBackend(vectors).batch_search(queries, 50)
    # Isotropic Gaussian vectors are raw inner product's good case (the MIPS transform's bad one).
    index = HnswIndex.build(vectors, HnswParams(m=16, ef_construction=200, seed=0, transform="none"))
    hnsw = HnswBackend(index, vectors, ef=200)
    assert recall_vs_exact(hnsw.batch_search(queries, 50), exact, 50) >= 0.95
    index.save(tmp_path / "idx")
    meta = json.loads((tmp_path / "idx" / "meta.json").read_text())
    assert {k: meta[k] for k in ("space", "dim", "m", "ef_construction", "seed", "transform")} == \
        {"space": "ip", "dim": 32, "m": 16, "ef_construction": 200, "seed": 0, "transform": "none"}
    again = HnswBackend(HnswIndex.load(tmp_path / "idx"), vectors, ef=200)
    assert again.batch_search(queries, 50) == hnsw.batch_search(queries, 50)


def test_mips_transform_keeps_the_dot_product_ranking(vectors, queries):
    radius = mips.max_norm(vectors.vectors)
    items = mips.items(vectors.vectors, radius)
    assert np.allclose(np.linalg.norm(items, axis=1), 1.0, atol=1e-5)  # what ES dot_product demands
    for q in queries[:20]:
        dots = vectors.vectors.astype(np.float64) @ q
        cosines = items.astype(np.float64) @ mips.queries(q)[0]
        assert list(np.argsort(-cosines)[:50]) == list(np.argsort(-dots)[:50])
        norm = float(np.linalg.norm(q))
        assert np.allclose([mips.dot_from_cosine(c, norm, radius) for c in cosines[:10]], dots[:10], rtol=1e-4, atol=1e-4)


def test_mips_graph_is_exact_when_the_walk_sees_everything(queries):
    small = random_vectors(n=300)
    index = HnswIndex.build(small, HnswParams(m=16, ef_construction=300))
    assert index.meta["transform"] == mips.TRANSFORM
    got = HnswBackend(index, small, ef=300).batch_search(queries[:20], 50)
    assert recall_vs_exact(got, ExactBackend(small).batch_search(queries[:20], 50), 50) >= 0.99


def test_hits_are_exact_scores_ordered_by_score_then_ord(queries):
    # Every vector twice (ords i and i + 1000): random vectors never tie, so without copies
    # the ord tie-break would go unexercised.
    single = random_vectors(n=1000)
    doubled = VectorSet("f" * 64, single.item_ids + [f"y{i}" for i in range(1000)],
                        np.vstack([single.vectors, single.vectors]), {}, [{}] * 2000)
    ord_of = {item_id: i for i, item_id in enumerate(doubled.item_ids)}
    hnsw = HnswBackend(HnswIndex.build(doubled), doubled, ef=100)
    ties = 0
    for q, hits in zip(queries[:10], hnsw.batch_search(queries[:10], 10)):
        for found in (hits, hnsw.search(q, 10)):
            truth = {h.item_id: h.score for h in ExactBackend(doubled).search(q, 2000)}  # every item's score
            assert len(found) == 10 and all(h.score == truth[h.item_id] for h in found)
            keys = [(-h.score, ord_of[h.item_id]) for h in found]
            assert keys == sorted(keys)
            ties += sum(a[0] == b[0] for a, b in zip(keys, keys[1:]))
    assert ties, "no tied scores among the hits: the ord tie-break was not exercised"


def test_exact_breaks_ties_by_ord():
    vs = VectorSet("f" * 64, ["a", "b", "c", "d"], np.asarray([[1, 0], [2, 0], [2, 0], [0, 1]], np.float32), {}, [{}] * 4)
    assert [h.item_id for h in ExactBackend(vs).search([1, 0], 3)] == ["b", "c", "a"]
    assert [h.item_id for h in ExactBackend(vs).search([1, 0], 2)] == ["b", "c"]


def test_vector_backends_refuse_one_string_of_exclusions_and_k_below_one():
    """As the term backends do: "ab" would exclude the items "a" and "b", not the item "ab"."""
    vs = VectorSet("f" * 64, ["a", "b", "ab", "d"], np.asarray([[1, 0], [2, 0], [3, 0], [0, 1]], np.float32), {},
                   [{}] * 4)
    for backend in (ExactBackend(vs), HnswBackend(HnswIndex.build(vs), vs, ef=10)):
        with pytest.raises(QueryError, match="exclude_items takes a collection of item ids, not one string"):
            backend.search([1, 0], 2, exclude_items="ab")
        assert [h.item_id for h in backend.search([1, 0], 2, exclude_items=["ab"])] == ["b", "a"]
        with pytest.raises(QueryError, match="expected at least 1"):
            backend.search([1, 0], 0)


def test_ef_below_k_is_refused(vectors, queries):
    hnsw = HnswBackend(HnswIndex.build(vectors), vectors, ef=20)
    with pytest.raises(QueryError, match="ef=20 is below k=50"):
        hnsw.search(queries[0], 50)
    with pytest.raises(QueryError, match="ef"):
        hnsw.batch_search(queries, 50)
    assert len(hnsw.search(queries[0], 20)) == 20


def test_filters_and_exclusions_match_exact(vectors, queries):
    raw = HnswIndex.build(vectors, HnswParams(transform="none"))  # isotropic data: see the first test
    exact, hnsw = ExactBackend(vectors), HnswBackend(raw, vectors, ef=200)
    top = exact.search(queries[0], 5)
    excluded = [h.item_id for h in top[:2]]
    hits = hnsw.search(queries[0], 10, filters={"colour": "red"}, exclude_items=excluded)
    assert len(hits) == 10 and not set(excluded) & {h.item_id for h in hits}
    assert all(int(h.item_id[1:]) % 2 == 0 for h in hits)
    truth = exact.search(queries[0], 10, filters={"colour": "red"}, exclude_items=excluded)
    assert len({h.item_id for h in hits} & {h.item_id for h in truth}) >= 8


def test_graph_from_other_vectors_is_refused(vectors):
    other = random_vectors(seed=5)
    other.fingerprint = "0" * 64
    from sparcode.pipeline.backends import BackendError

    with pytest.raises(BackendError, match="other vectors"):
        HnswBackend(HnswIndex.build(vectors), other)


def test_two_tower_export_search_and_evaluate(trained, tmp_path):  # noqa: F811
    root, data, cfg, _ = trained
    run = root / "run-tt-vectors"
    assert invoke("train", "--model", "two-tower", "--dataset", data, "--split", "leave-one-out", "--out", run,
                  "--config", cfg, "--quiet").exit_code == 0
    export = tmp_path / "vectors"
    out = invoke("export", run, "--out", export)
    assert out.exit_code == 0, out.output
    manifest = json.loads((export / "manifest.json").read_text())
    assert manifest["kind"] == "two-tower-vectors" and manifest["items"] == 40
    assert np.load(export / "vectors.npy").shape == (40, manifest["dim"])
    refused = invoke("export", run, "--out", tmp_path / "x", "--max-postings", "3")
    # Exit 1 and our sentence: click's "No such option: --max-postings" exits 2.
    assert refused.exit_code == 1, refused.output
    assert refused.output == f"Error: --max-postings applies to SparCode exports; {run} is a two-tower run\n"
    assert not (tmp_path / "x").exists()

    model = json.loads(invoke("evaluate", run, "--json").output)
    for backend in ("exact", "hnsw"):
        result = invoke("evaluate", run, "--backend", backend, "--json")
        assert result.exit_code == 0, result.output
        metrics = json.loads(result.stdout)
        assert metrics["recall@10"] == model["recall@10"], backend
    assert json.loads(invoke("evaluate", run, "--backend", "hnsw", "--json").output)["ann_recall@50"] == 1.0
    assert (export / "hnsw" / HnswParams().dirname() / "meta.json").exists()

    hits = {}
    for backend in ("exact", "hnsw"):
        result = invoke("search", "--run", run, "--user", "u3", "--k", "5", "--backend", backend, "--json")
        assert result.exit_code == 0, result.output
        hits[backend] = json.loads(result.stdout)["hits"]
    assert hits["hnsw"] == hits["exact"] and len(hits["exact"]) == 5
    low = invoke("search", "--run", run, "--user", "u3", "--k", "5", "--ef", "4")
    assert low.exit_code != 0 and "ef=4 is below k=5" in low.output and "Traceback" not in low.output
    wrong = invoke("search", "--run", run, "--user", "u3", "--backend", "local")
    assert wrong.exit_code != 0 and "two-tower" in wrong.output
    # The default candidate pool grows with k (as in evaluate); only an explicit --ef below k is refused.
    many = invoke("search", "--run", run, "--user", "u3", "--k", "120", "--json")
    assert many.exit_code == 0 and len(json.loads(many.stdout)["hits"]) == 40 - 8, many.output  # all unseen items


def test_open_index_rebuilds_for_another_export(vectors, tmp_path):
    index, built = open_index(tmp_path, vectors)
    assert built
    _, built_again = open_index(tmp_path, vectors)
    assert not built_again
    other = random_vectors(seed=3)
    other.fingerprint = "1" * 64
    rebuilt, built = open_index(tmp_path, other)
    assert built and rebuilt.meta["fingerprint"] == "1" * 64


@pytest.mark.parametrize("damage", ["truncated meta", "truncated graph", "meta of another shape", "meta gone",
                                    "graph gone"])
def test_a_damaged_saved_graph_is_rebuilt_like_a_missing_one(vectors, queries, tmp_path, damage):
    """The graph under export/hnsw/ is a cache: a damaged copy must not stop a search."""
    from sparcode.pipeline.hnsw import INDEX_FILE, META_FILE, index_dir

    open_index(tmp_path, vectors)
    folder = index_dir(tmp_path, HnswParams())
    meta, graph = folder / META_FILE, folder / INDEX_FILE
    if damage == "truncated meta":
        meta.write_bytes(meta.read_bytes()[:35])
    elif damage == "truncated graph":
        graph.write_bytes(graph.read_bytes()[:1000])
    elif damage == "meta of another shape":
        meta.write_text("[1, 2]")
    elif damage == "graph gone":
        graph.unlink()
    else:
        meta.unlink()
    index, built = open_index(tmp_path, vectors)
    assert built
    fresh, _ = open_index(tmp_path / "fresh", vectors)  # the same seeded build, never damaged
    walked = HnswBackend(index, vectors).batch_search(list(queries[:20]), 10)
    assert walked == HnswBackend(fresh, vectors).batch_search(list(queries[:20]), 10)
    assert not open_index(tmp_path, vectors)[1]  # and the rebuilt copy is used next time


def test_a_saved_graph_folder_holding_other_files_is_left_alone(vectors, tmp_path):
    from sparcode.pipeline.hnsw import META_FILE, index_dir
    from sparcode.staging import OccupiedTarget

    open_index(tmp_path, vectors)
    folder = index_dir(tmp_path, HnswParams())
    (folder / META_FILE).write_text("{")
    (folder / "notes.txt").write_text("mine")
    with pytest.raises(OccupiedTarget):
        open_index(tmp_path, vectors)
    assert (folder / "notes.txt").read_text() == "mine"



@pytest.mark.parametrize("code", ["EROFS", "EACCES"])
def test_a_read_only_export_is_served_from_a_graph_built_in_memory(vectors, tmp_path, monkeypatch, code):
    import errno

    def refused(self, directory):  # a read-only mount, another user's folder (root would write through a chmod)
        raise OSError(getattr(errno, code), code, str(directory))

    monkeypatch.setattr(HnswIndex, "save", refused)
    index, built = open_index(tmp_path, vectors)
    assert built and index.meta["items"] == len(vectors.item_ids) and not any(tmp_path.iterdir())
