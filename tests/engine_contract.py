"""What every engine must do, written once. `test_es_integration.py` and
`test_opensearch_integration.py` import these tests and define the `engine` fixture they run on;
each index uses that engine's default field type (sparse_vector / rank_features).
"""
from __future__ import annotations

import threading
import time

import numpy as np
import pytest

from conftest import FINGERPRINT, drop_alias_family, random_items, random_queries, write_export
from sparcode.featurefield import truncate
from sparcode.pipeline import bulk, indexer, layout
from sparcode.pipeline.backends import BackendError, EngineBackend, LocalBackend
from sparcode.pipeline.bulk import BulkFailed
from sparcode.pipeline.export import Export, ExportError
from sparcode.pipeline.mappings import load_template
from sparcode.pipeline.query import hit_item


@pytest.fixture(scope="module")
def built(engine, export_dir):
    """One index of the shared export, built once for the read-only tests of a module."""
    alias = f"sparcode-test-shared-{engine.name}-" + FINGERPRINT[:6]
    drop_alias_family(engine, alias)
    result = indexer.build(engine, Export.open(export_dir), alias, progress=False)
    yield alias, result
    drop_alias_family(engine, alias)


def test_documents_are_the_export_lines_without_nulls_or_codes(engine, built, export_dir):
    """`_source` holds the export's attributes with nulls left out; `codes` are indexed, not stored."""
    alias, _ = built
    hits = engine.search(alias, {"size": 1000, "query": {"match_all": {}}})["hits"]["hits"]
    stored = {h["_id"]: h["_source"] for h in hits}
    items = list(Export.open(export_dir).items())
    assert len(stored) == len(items)
    for item in items:
        expected = {k: v for k, v in item.items() if v is not None and k != "codes"}
        assert stored[item["item_id"]] == expected


def test_every_stored_pair_is_indexed(engine, built, export_dir):
    """An item queried with each of its own terms once scores the sum of its stored values."""
    alias, _ = built
    backend = EngineBackend.open(alias, export_dir, connection=engine)
    items = [it for it in Export.open(export_dir).items() if it["codes"]][:12]
    results = backend.batch_search([{t: 1.0 for t in it["codes"]} for it in items], 400)
    for item, hits in zip(items, results):
        score = {h.item_id: h.score for h in hits}[item["item_id"]]
        want = np.float32(np.sum(truncate(list(item["codes"].values())), dtype=np.float64))
        assert score == want


def test_build_reports_node_and_client_cpu(engine, alias, export_dir, monkeypatch):
    # The node's figure is shifted by an hour per reading, so a total that left the node out
    # could not reach it whatever the node really spent (a remote node's figure may not move
    # at all during a short load).
    readings, read_node = [], engine.process_cpu_seconds

    def shifted():
        seconds = read_node()
        readings.append(None if seconds is None else seconds + 3600.0 * len(readings))
        return readings[-1]

    monkeypatch.setattr(engine, "process_cpu_seconds", shifted)
    client = time.process_time()
    result = indexer.build(engine, Export.open(export_dir), alias, progress=False)
    client = time.process_time() - client
    assert len(readings) == 2 and None not in readings and result.cpu_bulk is not None
    node = readings[1] - readings[0]
    # Node time plus some client time, and no more client time than the whole build took.
    assert node < result.cpu_bulk <= node + client
    assert result.docs_per_cpu_second == result.docs / result.cpu_bulk


def test_mapping_comes_from_the_shipped_file(engine, built, export_dir):
    alias, result = built
    mapping = engine.mappings(alias)[result.index]
    shipped = load_template(engine.default_field_type)["mappings"]
    assert mapping["dynamic"] == shipped["dynamic"] == "strict"
    assert mapping["_source"] == shipped["_source"] == {"excludes": ["codes"]}
    for name, spec in shipped["properties"].items():
        if name != "codes":
            assert mapping["properties"][name] == spec
    # One feature map per first code (layout.py): c0003_0017 is key 0017 of codes.c0003.
    groups = layout.groups(Export.open(export_dir).code_table().terms)
    assert len(groups) > 1
    assert mapping["properties"]["codes"] == {"properties": {g: {"type": engine.default_field_type} for g in groups}}
    assert mapping["properties"]["genres"] == {"type": "keyword"}
    assert mapping["properties"]["title"] == {"type": "text"}
    meta = mapping["_meta"]
    assert meta["fingerprint"] == FINGERPRINT and meta["complete"] is True
    assert meta["field_type"] == engine.default_field_type and meta["manifest"]["items"] == 400
    assert meta["layout"] == layout.GROUPED
    settings = engine.client.indices.get_settings(index=result.index)[result.index]["settings"]["index"]
    assert settings["number_of_shards"] == "1" and settings["number_of_replicas"] == "0"
    assert "refresh_interval" not in settings  # restored to the default after loading


def test_document_count_equals_manifest(engine, built, export_dir):
    alias, result = built
    assert engine.count(alias) == Export.open(export_dir).n_items == result.docs
    segments = engine.client.indices.segments(index=result.index)["indices"][result.index]["shards"]["0"][0]
    assert segments["num_search_segments"] == 1


def test_scores_and_rankings_equal_local(engine, built, export_dir):
    alias, _ = built
    backend = EngineBackend.open(alias, export_dir, connection=engine)
    local = LocalBackend(export_dir)
    queries = random_queries(export_dir, 60, seed=3)
    got, want = backend.batch_search(queries, 15), local.batch_search(queries, 15)
    # Same float32 scores bit for bit, and ties ordered by ord in both: exact equality.
    assert got == want
    assert sum(len(h) for h in got) > 0


def test_filters_and_exclusions_match_local(engine, built, export_dir):
    alias, _ = built
    backend = EngineBackend.open(alias, export_dir, connection=engine)
    local = LocalBackend(export_dir)
    for query in random_queries(export_dir, 10, seed=4):
        top = [h.item_id for h in local.search(query, 3)]
        for kwargs in ({"filters": {"genres": "Drama"}}, {"filters": {"year": ["1995", 1999], "rating": 1.5}},
                       {"exclude_items": top}):
            assert backend.search(query, 10, **kwargs) == local.search(query, 10, **kwargs)


def test_explain_is_the_body_sent_and_score_is_the_model_score(engine, built, export_dir):
    alias, _ = built
    backend = EngineBackend.open(alias, export_dir, connection=engine)
    local = LocalBackend(export_dir)
    for query in random_queries(export_dir, 5, seed=5):
        body = backend.explain(query, 5)
        hits = engine.search(alias, body)["hits"]["hits"]
        # Hits carry the item id as a doc value (no stored-field fetch); it is the document's _id.
        assert all("_id" not in h for h in hits)
        assert [hit_item(h) for h in hits] == [h.item_id for h in backend.search(query, 5)]
        # `_score` is printed as the shortest decimal of a float32: compare as float32.
        scores = [(hit_item(h), float(np.float32(h["_score"]))) for h in hits]
        assert scores == [(h.item_id, h.score) for h in local.search(query, 5)]


def test_mismatched_fingerprint_is_refused(engine, built):
    alias, _ = built
    with pytest.raises(BackendError, match="serves model ab12cd34"):
        EngineBackend(engine, alias, expected_fingerprint="f" * 64)


def test_missing_alias_is_one_line(engine):
    with pytest.raises(BackendError, match=f"no index or alias 'sparcode-test-none' on this {engine.label}"):
        EngineBackend(engine, "sparcode-test-none")


def test_zero_value_is_refused_before_any_request(engine, alias, tmp_path):
    items = random_items(30, 20)
    items[5]["codes"][next(iter(items[5]["codes"]))] = 0.0
    export = Export.open(write_export(tmp_path / "bad", items))
    with pytest.raises(ExportError, match=r"item 'i0005', term 'c\d{4}_\d{4}'"):
        indexer.build(engine, export, alias, progress=False)
    assert engine.matching(f"{alias}-*") == {}


def test_alias_swap_loses_no_query(engine, alias, export_dir, tmp_path):
    first = Export.open(export_dir)
    second = Export.open(write_export(tmp_path / "v2", random_items(400, seed=7), fingerprint="cd" * 32))
    indexer.build(engine, first, alias, progress=False)
    backend = EngineBackend(engine, alias)
    query = random_queries(export_dir, 1, seed=6, unindexed=False)[0]
    errors, answered, stop = [], [0], threading.Event()

    def loop():
        while not stop.is_set():
            try:
                if len(backend.search(query, 5)) != 5:
                    errors.append("short result")
                answered[0] += 1
            except Exception as exc:  # any failure during the swap is what we are testing for
                errors.append(repr(exc))

    thread = threading.Thread(target=loop)
    thread.start()
    try:
        result = indexer.build(engine, second, alias, delete_old=True, progress=False)
    finally:
        stop.set()
        thread.join()
    assert errors == [] and answered[0] > 0
    assert engine.alias_holders(alias) == [result.index]
    assert len(result.deleted) == 1 and not engine.exists(result.deleted[0])


def test_two_builds_at_once_leave_the_alias_on_one_index(engine, alias, export_dir, tmp_path):
    """A build that swaps after another one moved the alias (both read the old holder at their
    start) must still leave the alias on exactly one index, or no search can use it."""
    indexer.build(engine, Export.open(export_dir), alias, progress=False)
    second = Export.open(write_export(tmp_path / "v2", random_items(300, seed=8), fingerprint="ab" * 32))
    third = Export.open(write_export(tmp_path / "v3", random_items(300, seed=9), fingerprint="9c" * 32))
    meanwhile = []

    def another_build_swaps_first(_chunk):
        if not meanwhile:
            meanwhile.append(indexer.build(engine, third, alias, progress=False))

    result = indexer.build(engine, second, alias, progress=False, chunk_size=100, on_chunk=another_build_swaps_first)
    assert meanwhile and engine.alias_holders(meanwhile[0].alias) == [result.index]
    assert EngineBackend(engine, alias).search(random_queries(export_dir, 1, seed=2, unindexed=False)[0], 3)


def test_two_index_builds_of_one_new_alias_at_once_leave_it_to_the_first(engine, alias, export_dir, tmp_path):
    """`sparcode index` creates an alias and never moves one: of two builds of the same new alias
    (both found it absent at their start), the second to finish is refused, the alias stays on
    the first's index, and the second's complete index is kept, named, serving nothing."""
    second = Export.open(write_export(tmp_path / "v2", random_items(300, seed=8), fingerprint="ab" * 32))
    meanwhile = []

    def another_index_build_finishes_first(_chunk):
        if not meanwhile:
            meanwhile.append(indexer.build(engine, Export.open(export_dir), alias, replace=False, progress=False))

    with pytest.raises(indexer.AliasTaken, match=f"alias {alias} was created by another build") as refused:
        indexer.build(engine, second, alias, replace=False, progress=False, chunk_size=100,
                      on_chunk=another_index_build_finishes_first)
    assert engine.alias_holders(alias) == [meanwhile[0].index]
    (left,) = [name for name in indexer.versioned_indices(engine, alias) if name != meanwhile[0].index]
    assert left in str(refused.value) and engine.count(left) == 300


def test_an_export_replaced_during_the_build_is_never_served(engine, alias, tmp_path):
    """`export --force` swapping a new folder in while a build reads the old one: the build read
    the manifest, the code table and the items at different times, so its index could hold one
    export's documents under the other's `_meta`, and every search would trust that label."""
    first = indexer.build(engine, Export.open(write_export(tmp_path / "e", random_items(300, seed=1))), alias,
                          progress=False)
    folder = write_export(tmp_path / "exp", random_items(300, seed=2), fingerprint="ab" * 32)
    replacement = write_export(tmp_path / "next", random_items(300, seed=3), fingerprint="9c" * 32)

    def another_export_lands(_chunk):
        if replacement.exists():
            folder.rename(tmp_path / "old")
            replacement.rename(folder)

    with pytest.raises(indexer.IncompleteLoad, match=f"{folder} was replaced while it was being read"):
        indexer.build(engine, Export.open(folder), alias, progress=False, chunk_size=100, on_chunk=another_export_lands)
    assert engine.alias_holders(alias) == [first.index]
    assert indexer.unfinished_indices(engine, alias)  # the mixed index is left unfinished, for --delete-old


def test_a_build_repairs_an_alias_left_on_two_indices(engine, alias, export_dir, tmp_path):
    first = indexer.build(engine, Export.open(export_dir), alias, progress=False)
    stray = indexer.build(engine, Export.open(export_dir), f"{alias}-stray", progress=False)
    engine.update_aliases([{"add": {"index": stray.index, "alias": alias}}])
    assert len(engine.alias_holders(alias)) == 2
    again = indexer.build(engine, Export.open(write_export(tmp_path / "v2", random_items(300, seed=4),
                                                           fingerprint="ab" * 32)), alias, progress=False)
    assert engine.alias_holders(alias) == [again.index] and first.index in again.previous


def test_another_export_of_the_same_model_is_refused_for_an_index(engine, built, tmp_path):
    """Same fingerprint, other postings (another stored fraction): its probe count and code
    table would be applied to an index that was not made with them."""
    alias, _ = built
    other = write_export(tmp_path / "other", random_items(seed=11))
    with pytest.raises(BackendError, match="built from another export of this model"):
        EngineBackend.open(alias, other, connection=engine)


def test_ctrl_c_during_a_load_names_the_partial_index_it_leaves(engine, alias, export_dir, monkeypatch):
    from click.testing import CliRunner

    from sparcode.cli import main

    def ctrl_c(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(bulk, "load", ctrl_c)  # the index exists; its load is cut short
    result = CliRunner().invoke(main, ["index", str(export_dir), "--alias", alias, "--engine", engine.name],
                                env={engine.url_var: engine.url})
    partial = indexer.unfinished_index(engine, alias, Export.open(export_dir).fingerprint)
    assert partial is not None and engine.alias_holders(alias) == []
    assert result.exit_code == 1, result.output
    assert result.output.startswith(f"Error: interrupted; alias {alias} not moved; the partial index {partial} is kept")


def test_a_backend_follows_its_alias_to_another_layout(engine, alias, export_dir, tmp_path):
    """A reindex may move the alias to an index whose codes are laid out differently; a backend
    opened before keeps answering, with the new index's query form, not an empty list."""
    flat = write_export(tmp_path / "flat", random_items(300, M=1, N=64, seed=3), M=1, N=64, fingerprint="ef" * 32)
    indexer.build(engine, Export.open(flat), alias, progress=False)
    backend = EngineBackend(engine, alias)
    assert backend.layout == layout.FLAT
    indexer.build(engine, Export.open(export_dir), alias, delete_old=True, progress=False)
    local = LocalBackend(export_dir)
    for query in random_queries(export_dir, 5, seed=4, unindexed=False):
        assert backend.search(query, 10) == local.search(query, 10)
    assert backend.layout == layout.GROUPED and backend.fingerprint == FINGERPRINT


def test_a_backend_refuses_the_model_its_alias_moved_to(engine, alias, export_dir, tmp_path):
    """Queries spelled in one model's codes must not be scored against another model's index."""
    first = indexer.build(engine, Export.open(export_dir), alias, progress=False)
    backend = EngineBackend.open(alias, export_dir, connection=engine)
    query = random_queries(export_dir, 1, seed=5, unindexed=False)[0]
    assert backend.search(query, 5)
    other = write_export(tmp_path / "other", random_items(300, seed=8), fingerprint="cd" * 32)
    indexer.build(engine, Export.open(other), alias, progress=False)
    with pytest.raises(BackendError, match=f"moved from {first.index} to .*serves model cdcdcdcd"):
        backend.search(query, 5)


class Interrupt(Exception):
    pass


def test_interrupted_load_resumes_without_duplicates(engine, alias, export_dir):
    export = Export.open(export_dir)

    def crash(done: int):
        raise Interrupt(done)

    def pool_threads():
        return {t for t in threading.enumerate() if t.name.endswith(("(worker)", "(_handle_tasks)"))}

    before = pool_threads()
    with pytest.raises(Interrupt):
        indexer.build(engine, export, alias, chunk_size=100, on_chunk=crash, progress=False)
    # A pool left behind can hang the interpreter at exit (it did once, in CI, after all tests passed).
    assert pool_threads() <= before
    assert engine.alias_holders(alias) == []
    partial = indexer.unfinished_index(engine, alias, export.fingerprint)
    assert partial is not None
    result = indexer.build(engine, export, alias, resume=True, chunk_size=100, progress=False)
    assert result.resumed and result.index == partial
    assert engine.count(alias) == export.n_items
    hits = engine.search(alias, {"size": 1000, "query": {"match_all": {}}, "_source": False})["hits"]["hits"]
    assert len({h["_id"] for h in hits}) == export.n_items
    assert indexer.unfinished_index(engine, alias, export.fingerprint) is None


def test_one_stream_or_several_index_the_same_documents(engine, alias, export_dir):
    export = Export.open(export_dir)
    queries = random_queries(export_dir, 40, seed=8)
    stored, found = [], []
    for streams in (1, 3):
        result = indexer.build(engine, export, alias, streams=streams, chunk_size=50, delete_old=True, progress=False)
        hits = engine.search(alias, {"size": 1000, "query": {"match_all": {}}})["hits"]["hits"]
        assert result.docs == export.n_items == len(hits)
        stored.append({h["_id"]: h["_source"] for h in hits})
        found.append(EngineBackend.open(alias, export_dir, connection=engine).batch_search(queries, 400))
    assert stored[0] == stored[1] and found[0] == found[1]
    assert sum(map(len, found[0])) > 400


def test_index_refuses_an_existing_alias_and_reindex_keeps_field_type(engine, alias, export_dir):
    export = Export.open(export_dir)
    first = indexer.build(engine, export, alias, replace=False, progress=False)
    for resume in (False, True):  # nothing unfinished to resume: still a refusal
        with pytest.raises(indexer.IndexProblem, match="use `sparcode reindex`"):
            indexer.build(engine, export, alias, replace=False, resume=resume, progress=False)
    second = indexer.build(engine, export, alias, progress=False)
    assert second.previous == [first.index]
    assert indexer.index_meta(engine, alias)["field_type"] == engine.default_field_type
    assert engine.exists(first.index)  # kept without --delete-old


def test_more_groups_than_the_default_field_limit(engine, alias, tmp_path):
    """1,100 first codes -> 1,100 feature-map fields, past the engines' default limit of 1,000."""
    items = [{"item_id": f"i{i:04d}", "ord": i, "codes": {f"c{i:04d}_0001": 1.0, f"c{i + 1:04d}_0002": 2.5}}
             for i in range(1100)]
    export_path = write_export(tmp_path / "wide", items, N=1200)
    result = indexer.build(engine, Export.open(export_path), alias, progress=False)
    mapping = engine.mappings(alias)[result.index]
    assert len(mapping["properties"]["codes"]["properties"]) == 1101
    backend = EngineBackend.open(alias, export_path, connection=engine)
    query = {"c0500_0001": 1.0, "c0500_0002": 2.0, "c1100_0002": 1.0}
    assert backend.search(query, 5) == LocalBackend(export_path).search(query, 5)
    assert [h.item_id for h in backend.search(query, 5)] == ["i0499", "i1099", "i0500"]


def test_rejected_documents_are_reported_and_the_alias_stays(engine, alias, tmp_path):
    items = random_items(60, 20)
    for i in (3, 41):
        items[i]["year"] = "not a year"  # passes our checks, refused by the integer mapping
    export = Export.open(write_export(tmp_path / "rejects", items))
    with pytest.raises(indexer.IncompleteLoad) as info:
        indexer.build(engine, export, alias, progress=False)
    report = info.value.__cause__.report
    assert report.failed == 2 and report.ok == 58
    assert [f[0] for f in report.failures] == ["i0003", "i0041"]
    assert "2 of 60 documents failed" in str(info.value) and "HTTP 400" in str(info.value)
    assert engine.alias_holders(alias) == []


def _refuse_after_first_chunk(done: int):
    raise BulkFailed(bulk.BulkReport(ok=done, failed=1, failures=[("i0100", 429, "es_rejected_execution_exception")]))


def test_a_failed_load_names_its_partial_index_and_delete_old_clears_leftovers(engine, alias, export_dir, tmp_path):
    export = Export.open(export_dir)
    served = indexer.build(engine, export, alias, progress=False)
    with pytest.raises(indexer.IncompleteLoad, match="`--resume` continues it") as info:
        indexer.build(engine, export, alias, chunk_size=100, streams=1, on_chunk=_refuse_after_first_chunk,
                      progress=False)
    partial = info.value.index
    assert partial in str(info.value) and "HTTP 429" in str(info.value)
    engine.refresh(partial)  # a load holds refreshes off until it completes
    assert engine.alias_holders(alias) == [served.index] and 0 < engine.count(partial) < export.n_items
    # Another export's failed load: not this export's to resume, but a leftover all the same.
    other = Export.open(write_export(tmp_path / "other", random_items(300, seed=8), fingerprint="cd" * 32))
    with pytest.raises(indexer.IncompleteLoad) as other_info:
        indexer.build(engine, other, alias, chunk_size=100, on_chunk=_refuse_after_first_chunk, progress=False)
    assert indexer.unfinished_indices(engine, alias) == sorted([partial, other_info.value.index], reverse=True)

    result = indexer.build(engine, export, alias, resume=True, delete_old=True, progress=False)
    assert result.resumed and result.index == partial and engine.count(alias) == export.n_items
    assert sorted(result.deleted) == sorted([served.index, other_info.value.index])
    assert sorted(engine.matching(f"{alias}-*")) == [partial] and indexer.unfinished_indices(engine, alias) == []


def check_cli_index_then_reindex(engine, alias, export_dir, run, env: dict, *engine_args: str):
    """`sparcode index` then `reindex --delete-old` through the CLI (called by each CLI test file)."""
    first = run("index", str(export_dir), "--alias", alias, *engine_args, env=env)
    assert first.exit_code == 0, first.output
    assert f"on {engine.label} {engine.version}: 400 docs" in first.output
    assert f"alias {alias} -> {alias}-ab12cd34-" in first.stdout
    # What the build waits for goes to stderr (400 items: no settle wait, only the merge).
    assert "merging" in first.stderr and "merging" not in first.stdout and "history" not in first.stderr
    (old,) = engine.alias_holders(alias)
    assert indexer.index_meta(engine, alias)["field_type"] == engine.default_field_type

    again = run("index", str(export_dir), "--alias", alias, *engine_args, env=env)
    assert again.exit_code == 1 and "use `sparcode reindex`" in again.output

    # A reindex that fails half-way says so in one message that names the way on; the alias stays.
    real_load = bulk.load
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(bulk, "load", lambda *a, **kw: real_load(*a, **{**kw, "chunk_size": 100,
                                                                      "on_chunk": _refuse_after_first_chunk}))
        failed = run("reindex", str(export_dir), "--alias", alias, *engine_args, env=env)
    assert failed.exit_code == 1 and "Traceback" not in failed.output
    assert "1 of " in failed.output and f"alias {alias} not moved" in failed.output and "--resume" in failed.output
    assert engine.alias_holders(alias) == [old]

    second = run("reindex", str(export_dir), "--alias", alias, "--resume", "--delete-old", *engine_args, env=env)
    assert second.exit_code == 0, second.output
    assert "resumed into" in second.output and f"deleted {old}" in second.output
    (new,) = engine.alias_holders(alias)
    assert new != old and not engine.exists(old)
    assert engine.count(alias) == 400 and sorted(engine.matching(f"{alias}-*")) == [new]


def test_a_numbered_index_scores_as_its_export_and_refuses_another_table(engine, alias, export_dir, tmp_path,
                                                                        monkeypatch):
    """Past Jackson's name budget, terms are numbered by their rank in the export's code table
    (layout.py). The index must score exactly as the export does, and must not be read through
    another export's table, where the same rank is another code."""
    monkeypatch.setattr(layout, "NAME_BUDGET", 10)
    monkeypatch.setattr(layout, "KEYS_PER_FIELD", 8)
    terms = Export.open(export_dir).code_table().terms
    result = indexer.build(engine, Export.open(export_dir), alias, progress=False)
    mapping = engine.mappings(alias)[result.index]
    assert mapping["_meta"]["layout"] == layout.NUMBERED
    assert mapping["_meta"]["numbering"] == layout.Numbering(terms).meta()
    groups = [f"n{g}" for g in range(-(-len(terms) // 8))]
    assert mapping["properties"]["codes"] == {"properties": {g: {"type": engine.default_field_type} for g in groups}}
    backend = EngineBackend.open(alias, export_dir, connection=engine)
    assert backend.layout == layout.NUMBERED
    local = LocalBackend(export_dir)
    queries = random_queries(export_dir, 40, seed=6)
    got = backend.batch_search(queries, 15)
    assert got == local.batch_search(queries, 15) and sum(len(h) for h in got) > 0
    other = write_export(tmp_path / "other", random_items(), indexed=terms[1:])  # same model, one code fewer
    with pytest.raises(BackendError, match="built from another export of this model"):
        EngineBackend.open(alias, other, connection=engine)
    with pytest.raises(BackendError, match="--export DIR"):
        EngineBackend(engine, alias)


def test_a_numbered_load_resumes_only_with_the_table_it_started_with(engine, alias, export_dir, tmp_path,
                                                                     monkeypatch):
    monkeypatch.setattr(layout, "NAME_BUDGET", 10)
    export = Export.open(export_dir)
    terms = export.code_table().terms
    unused = next(t for t in (f"c{a:04d}_{b:04d}" for a in range(16) for b in range(16)) if t not in terms)
    other = Export.open(write_export(tmp_path / "other", random_items(), indexed=sorted([*terms, unused])))

    def crash(done: int):
        raise Interrupt(done)

    with pytest.raises(Interrupt):
        indexer.build(engine, export, alias, chunk_size=100, on_chunk=crash, progress=False)
    with pytest.raises(indexer.IndexProblem, match="started from another export of this model"):
        indexer.build(engine, other, alias, resume=True, chunk_size=100, progress=False)
    result = indexer.build(engine, export, alias, resume=True, chunk_size=100, progress=False)
    assert result.resumed and engine.count(alias) == export.n_items
    queries = random_queries(export_dir, 20, seed=7)
    assert EngineBackend.open(alias, export_dir, connection=engine).batch_search(queries, 10) == \
        LocalBackend(export_dir).batch_search(queries, 10)


def test_deleting_an_index_already_gone_is_the_state_asked_for(engine, alias, export_dir):
    """A retried delete whose first answer was lost, or two builds' --delete-old, find it gone."""
    built = indexer.build(engine, Export.open(export_dir), alias, progress=False)
    engine.delete_indices([f"{alias}-00000000-20000101t000000000000z", built.index])
    assert not engine.exists(built.index)
