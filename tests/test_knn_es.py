"""Two-tower vectors in the live Elasticsearch node: dense_vector (HNSW; dot_product after the MIPS
transform, or max_inner_product on raw vectors) + `knn`.

ES kNN is approximate, so it is checked against exact flat search of the same vectors (recall),
and its scores are checked to be the dot product after undoing ES's score transform.
"""
import json
import uuid

import numpy as np
import pytest

from conftest import drop_alias_family
from sparcode.pipeline import knn
from sparcode.pipeline.query import QueryError
from sparcode.pipeline.vectors import ExactBackend, VectorSet, recall_vs_exact, write_vector_export
from test_cli_end_to_end import invoke, trained  # noqa: F401  (module-scoped fixture)

pytestmark = pytest.mark.es
ENGINE = "elasticsearch"


@pytest.fixture(scope="module")
def vector_export(tmp_path_factory):
    rng = np.random.default_rng(0)
    # Not unit length, negative dot products included: what dot_product similarity would refuse.
    vectors = rng.standard_normal((2000, 16)) * rng.lognormal(0, 0.4, (2000, 1))
    return write_vector_export(tmp_path_factory.mktemp("vectors"), vectors, fingerprint="cd" * 32)


@pytest.mark.parametrize("transform, similarity, dims, candidates", [
    ("none", "max_inner_product", 16, 200),
    # Isotropic vectors are the transform's hard case: more candidates for the same recall bar.
    ("mips-augment-v1", "dot_product", 17, 1000),
])
def test_knn_recall_and_scores(engine, alias, vector_export, transform, similarity, dims, candidates):
    result = knn.build(engine, vector_export, alias, m=16, ef_construction=100, transform=transform,
                       progress=False, replace=True)
    assert result.docs == 2000
    mapping = next(iter(engine.mappings(alias).values()))
    field = mapping["properties"]["vector"]
    assert field["similarity"] == similarity and field["dims"] == dims and field["index_options"]["type"] == "hnsw"
    assert mapping["_meta"]["hnsw"]["transform"] == transform
    backend = knn.KnnBackend.open(alias, vector_export, connection=engine, num_candidates=candidates)
    exact = ExactBackend(VectorSet.load(vector_export))
    queries = list(np.random.default_rng(1).standard_normal((50, 16)).astype(np.float32))
    got, truth = backend.batch_search(queries, 20), exact.batch_search(queries, 20)
    assert recall_vs_exact(got, truth, 20) >= 0.9
    # Every hit of every query, not only those the exact top 20 also holds: ANN may return others.
    items = exact.vectors
    ord_of = {item_id: i for i, item_id in enumerate(items.item_ids)}
    for q, hits in zip(queries, got):
        assert len(hits) == 20
        dots = items.vectors[[ord_of[h.item_id] for h in hits]].astype(np.float64) @ q.astype(np.float64)
        assert [h.score for h in hits] == pytest.approx(list(dots), rel=1e-5, abs=1e-5)
        assert [h.score for h in hits] == sorted((h.score for h in hits), reverse=True)
    excluded = [h.item_id for h in truth[0][:3]]
    assert not set(excluded) & {h.item_id for h in backend.search(queries[0], 20, exclude_items=excluded)}
    with pytest.raises(QueryError, match=f"num_candidates={candidates} is below k={candidates + 100}"):
        backend.search(queries[0], candidates + 100)


def test_knn_refuses_other_model(engine, alias, vector_export):
    knn.build(engine, vector_export, alias, progress=False)
    from sparcode.pipeline.backends import BackendError

    with pytest.raises(BackendError, match="serves model"):
        knn.KnnBackend(engine, alias, expected_fingerprint="ef" * 32)


def test_knn_build_refuses_an_alias_no_index_can_have_before_creating_one(engine, alias, vector_export):
    from sparcode.pipeline.indexer import IndexProblem

    with pytest.raises(IndexProblem, match="use lowercase letters"):
        knn.build(engine, vector_export, alias.upper(), progress=False)
    assert not engine.matching(f"{alias}*") and not engine.matching(f"{alias.upper()}*")


def test_knn_backend_refuses_the_model_its_alias_moved_to(engine, alias, vector_export, tmp_path):
    knn.build(engine, vector_export, alias, progress=False)
    backend = knn.KnnBackend.open(alias, vector_export, connection=engine)
    query = np.ones(16, dtype=np.float32)
    assert len(backend.search(query, 5)) == 5
    vectors = np.random.default_rng(3).standard_normal((300, 16))
    knn.build(engine, write_vector_export(tmp_path / "other", vectors, fingerprint="ef" * 32), alias, replace=True,
              progress=False)
    from sparcode.pipeline.backends import BackendError

    with pytest.raises(BackendError, match="moved from .*serves model efefefef"):
        backend.search(query, 5)


def test_cli_two_tower_es_knn(trained, es_engine, tmp_path):  # noqa: F811
    root, data, cfg, _ = trained
    run = root / "run-tt-knn"
    assert invoke("train", "--model", "two-tower", "--dataset", data, "--split", "leave-one-out", "--out", run,
                  "--config", cfg, "--quiet").exit_code == 0
    export = tmp_path / "vectors"
    assert invoke("export", run, "--out", export).exit_code == 0
    alias = f"sparcode-test-{uuid.uuid4().hex[:10]}"
    try:
        result = invoke("index", export, "--alias", alias, "--engine", "elasticsearch")
        assert result.exit_code == 0, result.output
        exact = json.loads(invoke("evaluate", run, "--backend", "exact", "--json").output)
        served = invoke("evaluate", run, "--backend", "es-knn", "--alias", alias, "--json")
        assert served.exit_code == 0, served.output
        served = json.loads(served.stdout)
        assert served["ann_recall@50"] == 1.0 and served["recall@10"] == exact["recall@10"]
        a = invoke("search", "--run", run, "--user", "u5", "--k", "5", "--backend", "es-knn", "--alias", alias, "--json")
        b = invoke("search", "--run", run, "--user", "u5", "--k", "5", "--backend", "exact", "--json")
        assert [h["item_id"] for h in json.loads(a.stdout)["hits"]] == [h["item_id"] for h in json.loads(b.stdout)["hits"]]
        # --url alone serves a two-tower run from the node (es-knn), whatever ELASTICSEARCH_URL says.
        with pytest.MonkeyPatch.context() as env:
            env.setenv("ELASTICSEARCH_URL", "http://127.0.0.1:9")
            c = invoke("search", "--run", run, "--user", "u5", "--k", "5", "--alias", alias, "--url", es_engine.url,
                       "--json")
            assert c.exit_code == 0, c.output
            assert json.loads(c.stdout)["backend"] == "es-knn" and json.loads(c.stdout)["hits"] == json.loads(a.stdout)["hits"]
            d = invoke("evaluate", run, "--backend", "es-knn", "--alias", alias, "--url", es_engine.url, "--json")
            assert d.exit_code == 0 and json.loads(d.stdout)["recall@10"] == exact["recall@10"]
    finally:
        drop_alias_family(es_engine, alias)
