"""A backend living in a long-running service: alias moves it must refuse every time, threads
sharing it through a move, arguments refused before any request, and a down node reported fast."""
from __future__ import annotations

import socket
import threading
import time
import uuid

import pytest

from conftest import drop_alias_family, random_items, random_queries, write_export
from sparcode.pipeline import indexer, layout
from sparcode.pipeline.backends import MAX_RESULT_WINDOW, BackendError, LocalBackend, open_backend
from sparcode.pipeline.connect import engine_class
from sparcode.pipeline.engine import EngineUnavailable
from sparcode.pipeline.export import Export
from sparcode.pipeline.query import QueryError

ENGINE = "elasticsearch"


@pytest.fixture
def os_alias(os_engine):
    name = f"sparcode-test-{uuid.uuid4().hex[:10]}"
    yield name
    drop_alias_family(os_engine, name)


def other_model(tmp_path):
    return write_export(tmp_path / "other-model", random_items(300, seed=8), fingerprint="cd" * 32)


def other_export_of_the_model(tmp_path):
    return write_export(tmp_path / "other-export", random_items(300, seed=8))


def refused_on_every_later_search(engine, alias, export_dir, moved_to, expected):
    """The alias moves to `moved_to` while a backend of `export_dir` serves: the first search and
    every later one raise `expected`; an index of the backend's own model is served again."""
    first = indexer.build(engine, Export.open(export_dir), alias, progress=False)
    backend = open_backend(alias=alias, export_dir=export_dir, connection=engine)
    queries = random_queries(export_dir, 3, seed=5, unindexed=False)
    want = LocalBackend(export_dir).batch_search(queries, 5)
    assert backend.batch_search(queries, 5) == want
    second = indexer.build(engine, Export.open(moved_to), alias, delete_old=True, progress=False)
    for query in queries:
        with pytest.raises(BackendError, match=f"moved from {first.index} to {second.index}: .*{expected}"):
            backend.search(query, 5)
    indexer.build(engine, Export.open(export_dir), alias, delete_old=True, progress=False)
    assert backend.batch_search(queries, 5) == want


@pytest.mark.parametrize("moved_to,expected", [(other_model, "serves model cdcdcdcd"),
                                               (other_export_of_the_model, "built from another export")])
def test_a_refused_move_is_refused_on_every_later_search(engine, alias, export_dir, tmp_path, moved_to, expected):
    refused_on_every_later_search(engine, alias, export_dir, moved_to(tmp_path), expected)


def test_a_refused_move_is_refused_on_every_later_search_on_opensearch(os_engine, os_alias, export_dir, tmp_path):
    refused_on_every_later_search(os_engine, os_alias, export_dir, other_model(tmp_path), "serves model cdcdcdcd")


def test_threads_sharing_a_backend_follow_moves_to_other_layouts(engine, alias, export_dir, monkeypatch):
    """Threads searching while the alias moves between a grouped, a numbered and a flat index of
    the same export (other fields, other query bodies) all get a fresh backend's answers."""
    indexer.build(engine, Export.open(export_dir), alias, progress=False)
    backend = open_backend(alias=alias, export_dir=export_dir, connection=engine)
    assert backend.layout == layout.GROUPED
    queries = random_queries(export_dir, 8, seed=9, unindexed=False)
    want = LocalBackend(export_dir).batch_search(queries, 10)
    errors, answered, stop = [], [0], threading.Event()

    def loop(offset):
        i = offset
        while not stop.is_set():
            try:
                if backend.search(queries[i % len(queries)], 10) != want[i % len(queries)]:
                    errors.append(f"wrong hits for query {i % len(queries)}")
                answered[0] += 1
            except Exception as exc:  # any failure during the moves is what this test looks for
                errors.append(repr(exc))
            i += 1

    threads = [threading.Thread(target=loop, args=(n,)) for n in range(4)]
    for thread in threads:
        thread.start()
    try:
        for chosen in (layout.NUMBERED, layout.FLAT):
            # The layout follows from the export's terms; forced here to move between layouts.
            monkeypatch.setattr(layout, "choose", lambda terms, chosen=chosen: chosen)
            indexer.build(engine, Export.open(export_dir), alias, delete_old=True, progress=False)
            time.sleep(0.3)  # searches land on the new index before the next move
    finally:
        stop.set()
        for thread in threads:
            thread.join()
    assert errors == [] and answered[0] > 0
    assert backend.batch_search(queries, 10) == want and backend.layout == layout.FLAT


def test_one_string_of_exclusions_is_refused_on_every_backend(engine, os_engine, alias, os_alias, export_dir):
    indexer.build(engine, Export.open(export_dir), alias, progress=False)
    indexer.build(os_engine, Export.open(export_dir), os_alias, progress=False)
    backends = [LocalBackend(export_dir), open_backend(alias=alias, export_dir=export_dir, connection=engine),
                open_backend(alias=os_alias, export_dir=export_dir, connection=os_engine)]
    query = random_queries(export_dir, 1, seed=2, unindexed=False)[0]
    top = LocalBackend(export_dir).search(query, 1)[0].item_id
    for backend in backends:
        for exclusions in (top, top.encode()):
            with pytest.raises(QueryError, match="exclude_items takes a collection of item ids, not one string"):
                backend.search(query, 5, exclude_items=exclusions)
        with pytest.raises(QueryError, match="exclude_items of a batch takes one collection of item ids per query"):
            backend.batch_search([query, query], 5, exclude_items="ab")
        with pytest.raises(QueryError, match="exclude_items takes a collection of item ids, not one string"):
            backend.batch_search([query], 5, exclude_items=[top])
        assert top not in [h.item_id for h in backend.search(query, 5, exclude_items=[top])]
        # A filter's one value needs no list: it is one value, not its characters.
        assert backend.search(query, 5, filters={"genres": "Drama"}) == \
            backend.search(query, 5, filters={"genres": ["Drama"]})


def test_k_beyond_the_result_window_is_refused_before_any_request(engine, os_engine, alias, os_alias, export_dir):
    indexer.build(engine, Export.open(export_dir), alias, progress=False)
    indexer.build(os_engine, Export.open(export_dir), os_alias, progress=False)
    query = random_queries(export_dir, 1, seed=2, unindexed=False)[0]
    for connection, name in ((engine, alias), (os_engine, os_alias)):
        backend = open_backend(alias=name, export_dir=export_dir, connection=connection)
        backend.served._send = lambda bodies: pytest.fail("a request was sent")
        with pytest.raises(QueryError, match=f"k = 20,000 is above {MAX_RESULT_WINDOW:,}"):
            backend.search(query, 20_000)
        for k in (0, -3):
            with pytest.raises(QueryError, match=f"k = {k}: expected at least 1"):
                backend.batch_search([query], k)
    local = LocalBackend(export_dir)
    assert len(local.search(query, 20_000)) == len(local.search(query, 400)) > 10  # no cap
    with pytest.raises(QueryError, match="k = 0: expected at least 1"):
        local.search(query, 0)
    with pytest.raises(QueryError, match="k must be a whole number"):
        local.search(query, 2.5)


def test_a_down_node_is_reported_after_the_retries_asked_for(engine, alias, export_dir):
    indexer.build(engine, Export.open(export_dir), alias, progress=False)
    query = random_queries(export_dir, 1, seed=2, unindexed=False)[0]
    backend = open_backend(alias=alias, export_dir=export_dir, connection=engine, retries=1)
    with socket.socket() as closed:
        closed.bind(("127.0.0.1", 0))  # bound, not listening: every connection is refused
        down = engine_class(engine.name).from_settings(f"http://127.0.0.1:{closed.getsockname()[1]}", {},
                                                       request_timeout=1)
        sent, msearch = [], down.msearch
        down.msearch = lambda *args: sent.append(1) or msearch(*args)
        backend.served.engine = down
        started = time.monotonic()
        with pytest.raises(EngineUnavailable):
            backend.search(query, 5)
    # One resend after a 1 s pause, where the default waits out about 15 s.
    assert len(sent) == 2 and time.monotonic() - started < 5


def test_request_timeout_and_retries_reach_the_connection_and_are_checked(engine, alias, export_dir, monkeypatch):
    from sparcode.pipeline import connect

    indexer.build(engine, Export.open(export_dir), alias, progress=False)
    asked = []
    monkeypatch.setattr(connect, "_checked", lambda name, url, auth_from, timeout: asked.append(timeout) or engine)
    backend = open_backend(alias=alias, export_dir=export_dir, engine=engine.name, request_timeout=2.5, retries=0)
    assert asked == [2.5] and backend.served.retries == 0
    open_backend(alias=alias, export_dir=export_dir, engine=engine.name)
    assert asked == [2.5, 30.0]  # connect's own default when none is asked for
    for bad in ({"request_timeout": 0}, {"retries": -1}, {"retries": 1.5}):
        with pytest.raises(BackendError, match="must be"):
            open_backend(alias=alias, export_dir=export_dir, engine=engine.name, **bad)
    with pytest.raises(BackendError, match="request_timeout applies to the connection a backend opens"):
        open_backend(alias=alias, export_dir=export_dir, connection=engine, request_timeout=2.5)


def test_an_export_replaced_while_a_backend_reads_it_is_refused(tmp_path, monkeypatch):
    """`export --force` landing between the manifest and the items: the backend would score one
    export's postings with the other's code table under the first one's fingerprint."""
    from sparcode.pipeline.export import ExportError

    folder = write_export(tmp_path / "exp", random_items(50, seed=1))
    replacement = write_export(tmp_path / "next", random_items(50, seed=2), fingerprint="ab" * 32)
    code_table = Export.code_table

    def another_export_lands(export):
        table = code_table(export)
        if replacement.exists():
            folder.rename(tmp_path / "old")
            replacement.rename(folder)
        return table

    monkeypatch.setattr(Export, "code_table", another_export_lands)
    with pytest.raises(ExportError, match=f"{folder} was replaced while it was being read"):
        LocalBackend(folder)
    assert LocalBackend(folder).fingerprint == "ab" * 32  # opened afresh, the new export serves


def test_an_index_serves_the_same_export_made_again_and_names_the_way_on_for_another(engine, alias, tmp_path):
    """`export --force` of the same run and settings writes the same `content` with a new
    `created`: the index built from the first keeps serving it. Another export of the model is
    refused naming the reindex that would serve it."""
    import json

    def export_with(folder, seed, content, created):
        path = write_export(tmp_path / folder, random_items(300, seed=seed))
        manifest = json.loads((path / "manifest.json").read_text())
        (path / "manifest.json").write_text(json.dumps({**manifest, "content": content, "created": created}))
        return path

    built = export_with("built", 3, "sha256:aa", "2026-12-05T09:00:00+00:00")
    indexer.build(engine, Export.open(built), alias, progress=False)
    again = export_with("again", 3, "sha256:aa", "2026-12-05T10:00:00+00:00")
    queries = random_queries(again, 3, seed=5, unindexed=False)
    assert open_backend(alias=alias, export_dir=again, connection=engine).batch_search(queries, 5) == \
        LocalBackend(again).batch_search(queries, 5)
    other = export_with("other", 4, "sha256:bb", "2026-12-05T11:00:00+00:00")
    with pytest.raises(BackendError, match=rf"than this one \({other}, made 2026-12-05T11:00:00\+00:00, \d+ postings\): "
                                           rf"`sparcode reindex {other} --alias {alias}` to serve this one"):
        open_backend(alias=alias, export_dir=other, connection=engine)


def test_an_export_replaced_while_it_is_opened_is_refused(tmp_path, monkeypatch):
    """A swap between reading the manifest and stamping the folder would stamp the new export
    under the old manifest, and every later check would pass."""
    from sparcode.pipeline.export import ExportError

    folder = write_export(tmp_path / "exp", random_items(50, seed=1))
    replacement = write_export(tmp_path / "next", random_items(50, seed=2), fingerprint="ab" * 32)
    check_files = Export.check_files

    def another_export_lands(export):
        check_files(export)
        if replacement.exists():
            folder.rename(tmp_path / "old")
            replacement.rename(folder)

    monkeypatch.setattr(Export, "check_files", another_export_lands)
    with pytest.raises(ExportError, match=f"{folder} was replaced while it was being opened"):
        Export.open(folder)
    assert Export.open(folder).fingerprint == "ab" * 32


def test_a_term_of_no_code_of_the_export_is_a_query_error(tmp_path):
    folder = write_export(tmp_path / "exp", random_items(50, seed=1))
    backend = LocalBackend(folder)
    for term in ("garbage", "c0012_0077", "c0001_0002_0003"):
        with pytest.raises(QueryError, match="spell a query in this export's codes"):
            backend.search({term: 1.0}, 5)
