"""Stream an export's items into one index with explicit ids, so a retried or resumed load
overwrites instead of duplicating.

Documents go to the bulk helper as `(header, raw body)` pairs it passes through unserialized.
Per line we parse the export's JSON once (orjson) to learn its `_id`, to catch the two things
the engines refuse — a null attribute and an empty `codes` object — and, for a grouped index
(`layout`), to regroup `codes` by field; a flat index takes clean lines as they were read.
Building every document as a Python dict through the client's serializer had capped a load at
≈ 5k docs/s, client-bound.

Two requests are kept in flight (`helpers.parallel_bulk`): with one, client and node take turns
and the node indexes on one write thread; with two, the node indexes both on its two cores
while the client prepares the next chunk (on 2 cores, 100k documents: 21k → 34–38k docs/s).
`parallel_bulk` does not retry, so documents the node pushes back (429) are sent again at the
end through `streaming_bulk`, which retries them with backoff.

A load abandoned half-way (a raised `on_chunk`, a rejected chunk, Ctrl-C) must not leave the
helper's thread pool behind: its generator only shuts the pool down when closed, and one left to
the garbage collector can be closed at interpreter exit, where joining the pool's threads hangs
the process. So the input stops at the next document and the generator is closed on the spot.
"""
from __future__ import annotations

import threading
from contextlib import closing
from dataclasses import dataclass, field
from typing import Callable, Iterable, Iterator

import orjson
from tqdm import tqdm

from sparcode.errors import SparcodeError
from sparcode.pipeline import layout

CHUNK_SIZE = 1000
STREAMS = 2
MAX_RETRIES = 5
SHOW_FAILURES = 10


class BulkFailed(SparcodeError, RuntimeError):
    def __init__(self, report: "BulkReport"):
        self.report = report
        super().__init__(report.describe())


@dataclass
class BulkReport:
    ok: int = 0
    failed: int = 0
    failures: list[tuple[str, int, str]] = field(default_factory=list)  # first few (id, status, reason)

    def describe(self) -> str:
        lines = [f"{self.failed} of {self.ok + self.failed} documents failed to index"]
        lines += [f"  {item_id}: HTTP {status} {reason}" for item_id, status, reason in self.failures]
        if self.failed > len(self.failures):
            lines.append(f"  … and {self.failed - len(self.failures)} more")
        return "\n".join(lines)


def source_line(line: bytes, term_layout: str = layout.FLAT,
                numbering: layout.Numbering | None = None) -> tuple[str, bytes]:
    """(item id, the document's JSON) for one export line, re-serialized only when it must be."""
    item = orjson.loads(line)
    codes = item.get("codes")
    if term_layout == layout.FLAT and codes and None not in item.values():
        return item["item_id"], line.rstrip(b"\r\n")
    source = {k: v for k, v in item.items() if v is not None}
    if codes:
        if term_layout == layout.GROUPED:
            source["codes"] = layout.document_codes(codes)
        elif term_layout == layout.NUMBERED:
            source["codes"] = numbering.document_codes(codes)
    else:
        # An empty object is not a valid sparse_vector/rank_features value; the item stays a document.
        source.pop("codes", None)
    return item["item_id"], orjson.dumps(source)


def actions(export, term_layout: str = layout.FLAT,
            numbering: layout.Numbering | None = None) -> Iterator[tuple[dict, bytes]]:
    """Bulk `(action, source)` pairs; the target index travels in the request URL, not per line."""
    for line in export.lines():
        item_id, source = source_line(line, term_layout, numbering)
        yield {"index": {"_id": item_id}}, source


def _until(stop: threading.Event, pairs: Iterable[tuple[dict, bytes]]) -> Iterator[tuple[dict, bytes]]:
    for pair in pairs:
        if stop.is_set():
            return
        yield pair


# Each response item keeps only what the failure report reads; the rest of a bulk answer
# (index name, version, shard counts, seq_no per document) was most of the client's parse work.
RESPONSE_FILTER = "errors,items.*._id,items.*.status,items.*.error"


def load(engine, export, index: str, *, term_layout: str = layout.FLAT, numbering: layout.Numbering | None = None,
         chunk_size: int = CHUNK_SIZE, max_retries: int = MAX_RETRIES, streams: int = STREAMS,
         on_chunk: Callable[[int], None] | None = None, progress: bool | None = None) -> BulkReport:
    """Index every item of `export` into `index`; raise BulkFailed listing rejected documents.
    A `numbered` layout places terms by `numbering` (default: the export's own code table).

    `on_chunk(docs_done)` runs after each acknowledged chunk (tests use it to interrupt a load).
    """
    if term_layout == layout.NUMBERED and numbering is None:
        numbering = layout.Numbering(export.indexed_terms())
    report = BulkReport()
    pushed_back: set[str] = set()
    abandoned = threading.Event()
    documents = _until(abandoned, actions(export, term_layout, numbering))
    if streams > 1:
        results = engine.parallel_bulk(documents, index=index, chunk_size=chunk_size, threads=streams,
                                       filter_path=RESPONSE_FILTER)
    else:
        results = engine.streaming_bulk(documents, index=index, chunk_size=chunk_size,
                                        max_retries=max_retries, filter_path=RESPONSE_FILTER)
    with tqdm(total=export.n_items, unit="doc", desc=f"bulk {index}",
              disable=None if progress is None else not progress) as bar, closing(results):
        try:
            _count(results, report, pushed_back, chunk_size, bar, on_chunk)
        except BaseException:
            abandoned.set()  # before `closing` joins the pool: it then waits for in-flight chunks only
            raise
        if pushed_back:
            again = (pair for pair in actions(export, term_layout, numbering) if pair[0]["index"]["_id"] in pushed_back)
            _count(engine.streaming_bulk(again, index=index, chunk_size=chunk_size, max_retries=max_retries,
                                         filter_path=RESPONSE_FILTER), report, None, chunk_size, None, None)
    if report.failed:
        raise BulkFailed(report)
    return report


def _count(results, report: BulkReport, pushed_back: set[str] | None, chunk_size: int, bar,
           on_chunk: Callable[[int], None] | None) -> None:
    """Tally (ok, info) answers into `report`; 429s go to `pushed_back` when it is given.
    The bar counts first answers only, so a pushed-back document is not counted twice."""
    done_in_chunk = 0
    for ok, info in results:
        if ok:
            report.ok += 1
        else:
            (_, detail), = info.items()
            if pushed_back is not None and int(detail.get("status", 0)) == 429:
                pushed_back.add(str(detail.get("_id")))
            else:
                report.failed += 1
                if len(report.failures) < SHOW_FAILURES:
                    error = detail.get("error", {})
                    reason = error.get("reason", error) if isinstance(error, dict) else error
                    report.failures.append((str(detail.get("_id")), int(detail.get("status", 0)), str(reason)))
        done_in_chunk += 1
        if done_in_chunk == chunk_size:
            done_in_chunk = 0
            if bar is not None:
                bar.update(chunk_size)  # per chunk: a per-document update costs as much as the parse
            if on_chunk is not None:
                on_chunk(report.ok + report.failed)
    if bar is not None:
        bar.update(done_in_chunk)
