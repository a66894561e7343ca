"""What a failed load tells the user, without a node: the cause, that the alias stayed, and the way on."""
from __future__ import annotations

from sparcode.pipeline.bulk import BulkFailed, BulkReport
from sparcode.pipeline.engine import EngineError, EngineUnavailable
from sparcode.pipeline.indexer import IncompleteLoad


def test_a_single_line_cause_stays_one_line():
    for cause, opening in [(EngineUnavailable("Elasticsearch not reachable at http://***@127.0.0.1:9"),
                            "Elasticsearch not reachable"),
                           (EngineError(503, "cluster_block_exception"), "the search engine answered HTTP 503")]:
        message = str(IncompleteLoad(cause, "movies-ab12cd34-20261202t101010000000z", "movies"))
        assert "\n" not in message and message.startswith(opening)
        assert "alias movies not moved" in message and "movies-ab12cd34-20261202t101010000000z" in message
        assert "--resume" in message and "--delete-old" in message


def test_refused_documents_keep_their_list_and_the_way_on_closes_it():
    report = BulkReport(ok=98, failed=2, failures=[("i1", 400, "mapper_parsing_exception"),
                                                   ("i2", 400, "mapper_parsing_exception")])
    lines = str(IncompleteLoad(BulkFailed(report), "m-1", "m")).splitlines()
    assert lines[0] == "2 of 100 documents failed to index" and lines[1].startswith("  i1: HTTP 400")
    assert lines[-1].startswith("alias m not moved") and len(lines) == 4
