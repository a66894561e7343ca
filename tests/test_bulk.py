"""The bulk loader sends each export line as it was written: the same documents the old
dict-per-document path built, with nothing re-serialized unless the engine would refuse it."""
import gzip

import orjson

from conftest import random_items, write_export
from sparcode.pipeline import bulk, layout
from sparcode.pipeline.export import Export


def _old_source(item: dict) -> dict:
    # What the loader built per document before it streamed raw lines (the reference semantics).
    source = {k: v for k, v in item.items() if v is not None}
    if not source.get("codes"):
        source.pop("codes", None)
    return source


def test_actions_are_the_documents_of_the_dict_path(tmp_path):
    items = random_items(120, 30)
    export = Export.open(write_export(tmp_path / "e", items))
    pairs = list(bulk.actions(export))
    assert len(pairs) == len(items)
    for item, (action, body) in zip(items, pairs):
        assert action == {"index": {"_id": item["item_id"]}}  # _id = item id: reruns overwrite
        assert isinstance(body, bytes) and orjson.loads(body) == _old_source(item)
    # The fixture has both kinds of line that must be rewritten: null attributes and empty codes.
    assert any(it["rating"] is None for it in items) and any(not it["codes"] for it in items)


def test_clean_lines_go_out_byte_for_byte(tmp_path):
    items = [it for it in random_items(60, 20) if it["codes"] and it["rating"] is not None]
    path = write_export(tmp_path / "e", items)
    with gzip.open(path / "items.jsonl.gz", "rb") as fh:
        written = [line.rstrip(b"\n") for line in fh]
    bodies = [body for _, body in bulk.actions(Export.open(path))]
    assert bodies == written


def test_rewritten_lines_drop_nulls_and_empty_codes():
    item_id, body = bulk.source_line(b'{"item_id":"x","ord":3,"codes":{},"year":null,"title":"t"}\n')
    assert item_id == "x" and orjson.loads(body) == {"item_id": "x", "ord": 3, "title": "t"}
    item_id, body = bulk.source_line(b'{"item_id":"y","ord":4,"codes":{"c0001_0002":1.5}}\r\n')
    assert body == b'{"item_id":"y","ord":4,"codes":{"c0001_0002":1.5}}'


def test_grouped_lines_regroup_codes_by_first_code():
    line = b'{"item_id":"y","ord":4,"codes":{"c0001_0002":1.5,"c0001_0007":0.5,"c0003_0002":2.0},"year":null}\n'
    item_id, body = bulk.source_line(line, layout.GROUPED)
    assert item_id == "y" and orjson.loads(body) == {
        "item_id": "y", "ord": 4, "codes": {"c0001": {"0002": 1.5, "0007": 0.5}, "c0003": {"0002": 2.0}}}
    _, body = bulk.source_line(b'{"item_id":"x","ord":3,"codes":{}}', layout.GROUPED)
    assert orjson.loads(body) == {"item_id": "x", "ord": 3}


class _PushyEngine:
    """Answers the parallel load with one 429 and one 400; records what is sent again."""

    def __init__(self, push_back: str, refuse: str):
        self.push_back, self.refuse, self.resent = push_back, refuse, []

    def parallel_bulk(self, actions, *, index, chunk_size, threads, filter_path=None):
        assert threads == 2
        for action, _ in actions:
            item_id = action["index"]["_id"]
            if item_id in (self.push_back, self.refuse):
                status = 429 if item_id == self.push_back else 400
                yield False, {"index": {"_id": item_id, "status": status, "error": {"reason": f"HTTP {status}"}}}
            else:
                yield True, {"index": {"_id": item_id, "status": 201}}

    def streaming_bulk(self, actions, *, index, chunk_size, max_retries, filter_path=None):
        for action, body in actions:
            self.resent.append(action["index"]["_id"])
            yield True, {"index": {"_id": action["index"]["_id"], "status": 201}}


def test_pushed_back_documents_are_sent_again_and_refusals_reported(tmp_path):
    items = random_items(30, 20)
    export = Export.open(write_export(tmp_path / "e", items))
    engine = _PushyEngine(push_back=items[4]["item_id"], refuse=items[9]["item_id"])
    try:
        bulk.load(engine, export, "idx", chunk_size=7, progress=False)
        raise AssertionError("a 400 must fail the load")
    except bulk.BulkFailed as failed:
        report = failed.report
    # The 429 is retried (through the retrying single stream) and counts as indexed; the 400 is not.
    assert engine.resent == [items[4]["item_id"]]
    assert report.ok == 29 and report.failed == 1
    assert report.failures == [(items[9]["item_id"], 400, "HTTP 400")]

    engine = _PushyEngine(push_back=items[0]["item_id"], refuse="none")
    assert bulk.load(engine, export, "idx", progress=False).ok == 30


class _PooledEngine:
    """Stands for the pooled helper: reads ahead of what it has answered, and shuts its pool down
    only when its generator is closed."""

    def __init__(self):
        self.read, self.closed = 0, False

    def parallel_bulk(self, actions, *, index, chunk_size, threads, filter_path=None):
        try:
            for action, _ in actions:
                self.read += 1
                yield True, {"index": {"_id": action["index"]["_id"], "status": 201}}
        finally:
            self.closed = True
            self.read += sum(1 for _ in actions)  # what a pool left running would go on sending


def test_an_abandoned_load_closes_the_helper_and_stops_its_input(tmp_path):
    export = Export.open(write_export(tmp_path / "e", random_items(50, 20)))
    engine = _PooledEngine()

    def interrupt(done: int):
        raise KeyboardInterrupt

    try:
        bulk.load(engine, export, "idx", chunk_size=10, on_chunk=interrupt, progress=False)
        raise AssertionError("the interrupt must propagate")
    except KeyboardInterrupt:
        pass
    assert engine.closed, "left to the garbage collector, the pool's threads outlive the load"
    assert engine.read == 10, "the pool kept reading the export after the load was abandoned"


def test_bulk_requests_stay_under_the_byte_cap_however_large_the_documents(monkeypatch):
    """A node refuses a request that takes its in-flight indexing bytes past 10 % of its heap;
    Beauty's 4-codebook documents (~50 kB) made 1,000-document chunks of 52 MB. Requests must be
    cut by bytes as well as by count, and every document must still arrive once."""
    from types import SimpleNamespace

    from elasticsearch import Elasticsearch

    from sparcode.pipeline.engine import MAX_CHUNK_BYTES
    from sparcode.pipeline.engine_es import ElasticsearchEngine

    sizes, sent = [], []

    def bulk_request(self, *, operations, **_):
        sizes.append(sum(len(line) + 1 for line in operations))
        ids = [orjson.loads(line)["index"]["_id"] for line in operations[::2]]
        sent.extend(ids)
        return SimpleNamespace(body={"errors": False, "items": [{"index": {"_id": i, "status": 201}} for i in ids]})

    monkeypatch.setattr(Elasticsearch, "bulk", bulk_request)
    engine = ElasticsearchEngine(Elasticsearch("http://127.0.0.1:9"), "http://127.0.0.1:9")
    body = orjson.dumps({"codes": {f"c{i:04d}_0001_0002_0003": 1.5 for i in range(25_000)}})  # ~0.8 MB
    docs = [({"index": {"_id": str(n)}}, body) for n in range(40)]
    for stream in (engine.parallel_bulk(iter(docs), index="i", chunk_size=1000, threads=2),
                   engine.streaming_bulk(iter(docs), index="i", chunk_size=1000, max_retries=0)):
        sizes.clear(), sent.clear()
        assert all(ok for ok, _ in stream)
        assert sorted(sent, key=int) == [str(n) for n in range(40)]
        assert len(sizes) > 1 and max(sizes) <= MAX_CHUNK_BYTES
