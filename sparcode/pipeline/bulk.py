"""Stream an export's items into one index with explicit ids, so a retried or resumed load
overwrites instead of duplicating."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Iterator

import orjson
from tqdm import tqdm

CHUNK_SIZE = 500
MAX_RETRIES = 5
SHOW_FAILURES = 10


class BulkFailed(RuntimeError):
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


def actions(export, index: str) -> Iterator[dict]:
    for line in export.lines():
        item = orjson.loads(line)
        source = {k: v for k, v in item.items() if v is not None}
        if not source.get("codes"):
            # An empty object is not a valid sparse_vector/rank_features value; the item stays a document.
            source.pop("codes", None)
        yield {"_index": index, "_id": item["item_id"], "_source": source}


def load(engine, export, index: str, *, chunk_size: int = CHUNK_SIZE, max_retries: int = MAX_RETRIES,
         on_chunk: Callable[[int], None] | None = None, progress: bool | None = None) -> BulkReport:
    """Index every item of `export` into `index`; raise BulkFailed listing rejected documents.

    `on_chunk(docs_done)` runs after each acknowledged chunk (tests use it to interrupt a load).
    """
    report = BulkReport()
    done_in_chunk = 0
    results = engine.streaming_bulk(actions(export, index), chunk_size=chunk_size, max_retries=max_retries)
    with tqdm(total=export.n_items, unit="doc", desc=f"bulk {index}",
              disable=None if progress is None else not progress) as bar:
        for ok, info in results:
            if ok:
                report.ok += 1
            else:
                report.failed += 1
                if len(report.failures) < SHOW_FAILURES:
                    (_, detail), = info.items()
                    error = detail.get("error", {})
                    reason = error.get("reason", error) if isinstance(error, dict) else error
                    report.failures.append((str(detail.get("_id")), int(detail.get("status", 0)), str(reason)))
            bar.update()
            done_in_chunk += 1
            if done_in_chunk == chunk_size:
                done_in_chunk = 0
                if on_chunk is not None:
                    on_chunk(report.ok + report.failed)
    if report.failed:
        raise BulkFailed(report)
    return report
