"""Against a live node: the index serves exactly the scores and rankings of the local backend."""
from __future__ import annotations

import threading

import pytest

from conftest import FINGERPRINT, random_items, random_queries, write_export
from sparcode.pipeline import indexer
from sparcode.pipeline.backends import BackendError, EsBackend, LocalBackend
from sparcode.pipeline.export import Export, ExportError
from sparcode.pipeline.mappings import load_template

pytestmark = pytest.mark.es


@pytest.fixture(scope="module")
def built(es_client, export_dir):
    """One index of the shared export, built once for the read-only tests of this module."""
    from conftest import drop_alias_family

    alias = "sparcode-test-shared-" + FINGERPRINT[:6]
    drop_alias_family(es_client, alias)
    result = indexer.build(es_client, Export.open(export_dir), alias, progress=False)
    yield alias, result
    drop_alias_family(es_client, alias)


def test_mapping_comes_from_the_shipped_file(es_client, built, export_dir):
    alias, result = built
    mapping = es_client.indices.get_mapping(index=alias)[result.index]["mappings"]
    shipped = load_template("sparse_vector")["mappings"]
    assert mapping["dynamic"] == shipped["dynamic"] == "strict"
    for name, spec in shipped["properties"].items():
        assert mapping["properties"][name] == spec
    assert mapping["properties"]["genres"] == {"type": "keyword"}
    assert mapping["properties"]["title"] == {"type": "text"}
    meta = mapping["_meta"]
    assert meta["fingerprint"] == FINGERPRINT and meta["complete"] is True
    assert meta["manifest"]["items"] == 400
    settings = es_client.indices.get_settings(index=result.index)[result.index]["settings"]["index"]
    assert settings["number_of_shards"] == "1" and settings["number_of_replicas"] == "0"
    assert "refresh_interval" not in settings  # restored to the default after loading


def test_document_count_equals_manifest(es_client, built, export_dir):
    alias, result = built
    assert es_client.count(index=alias)["count"] == Export.open(export_dir).n_items == result.docs
    segments = es_client.indices.segments(index=result.index)["indices"][result.index]["shards"]["0"][0]
    assert segments["num_search_segments"] == 1


@pytest.mark.parametrize("form", ["sparse_vector", "term"])
def test_es_scores_and_rankings_equal_local(es_client, built, export_dir, form):
    alias, _ = built
    es = EsBackend.open(alias, export_dir, client=es_client, form=form)
    local = LocalBackend(export_dir)
    queries = random_queries(export_dir, 60, seed=3)
    got, want = es.batch_search(queries, 15), local.batch_search(queries, 15)
    # Same float32 scores bit for bit, and ties ordered by ord in both: exact equality.
    assert got == want
    assert sum(len(h) for h in got) > 0


def test_filters_and_exclusions_match_local(es_client, built, export_dir):
    alias, _ = built
    es = EsBackend.open(alias, export_dir, client=es_client)
    local = LocalBackend(export_dir)
    for query in random_queries(export_dir, 10, seed=4):
        top = [h.item_id for h in local.search(query, 3)]
        for kwargs in ({"filters": {"genres": "Drama"}}, {"filters": {"year": ["1995", 1999], "rating": 1.5}},
                       {"exclude_items": top}):
            assert es.search(query, 10, **kwargs) == local.search(query, 10, **kwargs)


def test_explain_is_the_body_sent(es_client, built, export_dir):
    alias, _ = built
    es = EsBackend.open(alias, export_dir, client=es_client)
    query = random_queries(export_dir, 1, seed=5)[0]
    body = es.explain(query, 5)
    hits = es_client.search(index=alias, **body)["hits"]["hits"]
    assert [h["_id"] for h in hits] == [h.item_id for h in es.search(query, 5)]


def test_mismatched_fingerprint_is_refused(es_client, built):
    alias, _ = built
    with pytest.raises(BackendError, match="serves model ab12cd34"):
        EsBackend(es_client, alias, expected_fingerprint="f" * 64)


def test_zero_value_is_refused_before_any_request(es_client, alias, tmp_path):
    items = random_items(30, 20)
    items[5]["codes"][next(iter(items[5]["codes"]))] = 0.0
    export = Export.open(write_export(tmp_path / "bad", items))
    with pytest.raises(ExportError, match=r"item 'i0005', term 'c\d{4}_\d{4}'"):
        indexer.build(es_client, export, alias, progress=False)
    assert not es_client.indices.get(index=f"{alias}-*", allow_no_indices=True).body


def test_alias_swap_loses_no_query(es_client, alias, export_dir, tmp_path):
    first = Export.open(export_dir)
    second = Export.open(write_export(tmp_path / "v2", random_items(400, seed=7), fingerprint="cd" * 32))
    indexer.build(es_client, first, alias, progress=False)
    es = EsBackend(es_client, alias)
    query = random_queries(export_dir, 1, seed=6, unindexed=False)[0]
    errors, answered, stop = [], [0], threading.Event()

    def loop():
        while not stop.is_set():
            try:
                if len(es.search(query, 5)) != 5:
                    errors.append("short result")
                answered[0] += 1
            except Exception as exc:  # any failure during the swap is what we are testing for
                errors.append(repr(exc))

    thread = threading.Thread(target=loop)
    thread.start()
    try:
        result = indexer.build(es_client, second, alias, delete_old=True, progress=False)
    finally:
        stop.set()
        thread.join()
    assert errors == [] and answered[0] > 0
    assert indexer.alias_holders(es_client, alias) == [result.index]
    assert len(result.deleted) == 1 and not es_client.indices.exists(index=result.deleted[0])


class Interrupt(Exception):
    pass


def test_interrupted_load_resumes_without_duplicates(es_client, alias, export_dir):
    export = Export.open(export_dir)

    def crash(done: int):
        raise Interrupt(done)

    with pytest.raises(Interrupt):
        indexer.build(es_client, export, alias, chunk_size=100, on_chunk=crash, progress=False)
    assert indexer.alias_holders(es_client, alias) == []
    partial = indexer.unfinished_index(es_client, alias, export.fingerprint)
    assert partial is not None
    result = indexer.build(es_client, export, alias, resume=True, chunk_size=100, progress=False)
    assert result.resumed and result.index == partial
    assert es_client.count(index=alias)["count"] == export.n_items
    ids = {h["_id"] for h in es_client.search(index=alias, size=1000, query={"match_all": {}})["hits"]["hits"]}
    assert len(ids) == export.n_items
    assert indexer.unfinished_index(es_client, alias, export.fingerprint) is None


def test_index_refuses_an_existing_alias_and_reindex_keeps_field_type(es_client, alias, export_dir):
    export = Export.open(export_dir)
    first = indexer.build(es_client, export, alias, replace=False, progress=False)
    for resume in (False, True):  # nothing unfinished to resume: still a refusal
        with pytest.raises(indexer.IndexProblem, match="use `sparcode reindex`"):
            indexer.build(es_client, export, alias, replace=False, resume=resume, progress=False)
    second = indexer.build(es_client, export, alias, progress=False)
    assert second.previous == [first.index]
    assert indexer.index_meta(es_client, alias)["field_type"] == "sparse_vector"
    assert es_client.indices.exists(index=first.index)  # kept without --delete-old


def test_rank_features_variant(es_client, alias, export_dir):
    export = Export.open(export_dir)
    try:
        indexer.build(es_client, export, alias, field_type="rank_features", progress=False)
    except indexer.IndexProblem as exc:
        if "rank_features" in str(exc):
            pytest.skip("this node has no mapper-extras module (integ-test distribution)")
        raise
    es = EsBackend.open(alias, export.path, client=es_client)
    assert es.form == "rank_feature"
    queries = random_queries(export.path, 30, seed=8)
    assert es.batch_search(queries, 10) == LocalBackend(export.path).batch_search(queries, 10)


def test_rejected_documents_are_reported_and_the_alias_stays(es_client, alias, tmp_path):
    from sparcode.pipeline.bulk import BulkFailed

    items = random_items(60, 20)
    for i in (3, 41):
        items[i]["year"] = "not a year"  # passes our checks, refused by the integer mapping
    export = Export.open(write_export(tmp_path / "rejects", items))
    with pytest.raises(BulkFailed) as info:
        indexer.build(es_client, export, alias, progress=False)
    report = info.value.report
    assert report.failed == 2 and report.ok == 58
    assert [f[0] for f in report.failures] == ["i0003", "i0041"]
    assert "2 of 60 documents failed" in str(info.value) and "HTTP 400" in str(info.value)
    assert indexer.alias_holders(es_client, alias) == []
