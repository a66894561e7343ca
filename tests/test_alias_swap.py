"""The alias swap when two builds swap at the same moment, on an engine that expands "*" in a
remove action before it applies the request (both Elasticsearch and OpenSearch do)."""
import pytest

from sparcode.pipeline import indexer


class RacingEngine:
    """Holds aliases in memory; the first swap request sees the holders as they were before a
    concurrent build's add landed, as the server's early wildcard expansion does."""

    def __init__(self, holders: set[str], concurrent_add: str):
        self.holders, self.concurrent_add, self.requests = set(holders), concurrent_add, 0

    def update_aliases(self, actions):
        expanded = set(self.holders)  # what "*" means to this request
        if self.requests == 0:
            self.holders.add(self.concurrent_add)  # the other build's swap lands in between
        self.requests += 1
        for action in actions:
            (kind, body), = action.items()
            if kind == "remove":
                self.holders -= expanded if body["index"] == "*" else {body["index"]}
            else:
                self.holders.add(body["index"])

    def alias_holders(self, alias):
        return sorted(self.holders)


OLD = "sc-aaaa-20261204t100000000000z"


@pytest.mark.parametrize("ours,theirs,kept", [
    # The other build's index is newer: both keep it.
    ("sc-bbbb-20261204t110000000000z", "sc-cccc-20261204t110500000000z", "theirs"),
    # Ours is newer: it stays.
    ("sc-cccc-20261204t110000000000z", "sc-bbbb-20261204t105000000000z", "ours"),
])
def test_the_newest_index_keeps_the_alias_and_it_ends_on_one(ours, theirs, kept):
    engine = RacingEngine({OLD}, concurrent_add=theirs)
    newest = ours if kept == "ours" else theirs
    assert indexer._swap(engine, "sc", ours) == newest
    assert engine.alias_holders("sc") == [newest]


@pytest.mark.parametrize("ours,theirs,kept", [
    ("sc-bbbb-20261204t110000000000z", "sc-cccc-20261204t110500000000z", "theirs"),
    ("sc-cccc-20261204t110000000000z", "sc-bbbb-20261204t105000000000z", "ours"),
])
def test_a_new_alias_claimed_while_a_reindex_moves_it_ends_on_the_newest_and_a_losing_claim_says_so(ours, theirs,
                                                                                                      kept):
    """A reindex adds without the write-index mark, so the server lets both adds land; the claim
    must then settle on the same index the reindex keeps, or the alias ends on nothing."""
    engine = RacingEngine(set(), concurrent_add=theirs)
    if kept == "ours":
        assert indexer._claim(engine, "sc", ours) == ours
    else:
        with pytest.raises(indexer.AliasTaken, match=f"complete index {ours} is kept and serves nothing"):
            indexer._claim(engine, "sc", ours)
    assert engine.alias_holders("sc") == [ours if kept == "ours" else theirs]


class FlakyEngine:
    """An in-memory engine whose requests of one kind fail as `fail` says, to check the state
    `publish` reports after a failure once the documents are loaded."""

    def __init__(self, holders, indices, fail: dict):
        self.holders, self.indices, self.fail, self.calls = set(holders), set(indices), dict(fail), {}
        self.fingerprints: dict[str, str] = {}

    def _maybe_fail(self, kind):
        self.calls[kind] = self.calls.get(kind, 0) + 1
        rule = self.fail.get(kind)
        if rule and (rule[1] is None or self.calls[kind] <= rule[1]):
            raise rule[0]

    def put_meta(self, name, meta):
        self._maybe_fail("meta")

    def mappings(self, name):
        return {name: {"_meta": {"fingerprint": self.fingerprints.get(name, "f" * 64)}}}

    def update_aliases(self, actions):
        for action in actions:
            (kind, body), = action.items()
            if kind == "remove":
                self.holders -= set(self.holders) if body["index"] == "*" else {body["index"]}
            else:
                self.holders.add(body["index"])
        self._maybe_fail("alias")  # applied, then the answer fails: the lost-answer case too

    def alias_holders(self, alias):
        return sorted(self.holders)

    def matching(self, pattern):
        return {name: {} for name in self.indices}

    def delete_indices(self, names):
        self._maybe_fail("delete")
        self.indices -= set(names)

    def exists(self, name):
        return name in self.indices


NEW = "sc-dddd-20261204t120000000000z"
META = {"fingerprint": "f" * 64, "complete": True}
ORPHAN = "sc-eeeeeeee-20261204t090000000000z"  # a complete index an earlier failed swap left


@pytest.fixture(autouse=True)
def no_backoff(monkeypatch):
    import tenacity

    monkeypatch.setattr(tenacity.nap.time, "sleep", lambda seconds: None)  # the retries' waits


def test_a_busy_node_is_waited_out_and_delete_old_removes_every_other_index_of_the_alias():
    from sparcode.pipeline.engine import EngineError

    engine = FlakyEngine({OLD}, {OLD, NEW, ORPHAN}, {"alias": (EngineError(429, "busy"), 2)})
    deleted = indexer.publish(engine, "sc", NEW, META, [OLD], delete_old=True)
    assert engine.alias_holders("sc") == [NEW] and engine.calls["alias"] == 3
    assert deleted == sorted([OLD, ORPHAN]) and engine.indices == {NEW}


def test_a_refused_swap_says_the_alias_did_not_move_and_names_the_complete_index():
    from sparcode.pipeline.engine import EngineError

    engine = FlakyEngine({OLD}, {OLD, NEW}, {"alias": (EngineError(403, "unauthorized"), None)})
    engine.update_aliases = lambda actions: engine._maybe_fail("alias")  # refused: nothing applied
    with pytest.raises(indexer.IndexProblem, match=rf"HTTP 403: unauthorized; alias sc not moved \(it serves {OLD}\); "
                                                   rf"the complete index {NEW} is kept"):
        indexer.publish(engine, "sc", NEW, META, [OLD], delete_old=True)
    assert engine.indices == {OLD, NEW}


def test_a_lost_answer_to_an_applied_swap_is_a_success():
    from sparcode.pipeline.engine import EngineUnavailable

    engine = FlakyEngine({OLD}, {OLD, NEW}, {"alias": (EngineUnavailable("connection reset"), None)})
    assert indexer.publish(engine, "sc", NEW, META, [OLD], delete_old=False) == []
    assert engine.alias_holders("sc") == [NEW]


def test_a_failed_delete_says_the_alias_moved_and_what_is_left():
    from sparcode.pipeline.engine import EngineError

    engine = FlakyEngine({OLD}, {OLD, NEW}, {"delete": (EngineError(403, "index read-only"), None)})
    with pytest.raises(indexer.IndexProblem, match=rf"alias sc serves {NEW}, but {OLD} were not deleted: rerun with"):
        indexer.publish(engine, "sc", NEW, META, [OLD], delete_old=True)
    assert engine.alias_holders("sc") == [NEW]


def test_a_delete_racing_another_builds_delete_of_the_same_index_is_a_success():
    """Two builds with --delete-old: the other one deleted OLD a moment before this build's delete
    of OLD and ORPHAN reached the node, which answers 404 for the whole request. OLD is gone (as
    asked) and ORPHAN is deleted again; the alias serves this build's index: nothing failed."""
    from sparcode.pipeline.engine import EngineError

    engine = FlakyEngine({OLD}, {OLD, NEW, ORPHAN}, {"delete": (EngineError(404, "index_not_found_exception"), 1)})
    real_delete = engine.delete_indices

    def the_other_build_deletes_old_first(names):
        engine.indices.discard(OLD)
        real_delete(names)

    engine.delete_indices = the_other_build_deletes_old_first
    assert indexer.publish(engine, "sc", NEW, META, [OLD], delete_old=True) == sorted([OLD, ORPHAN])
    assert engine.alias_holders("sc") == [NEW] and engine.indices == {NEW}


def test_a_failed_delete_never_advises_deleting_what_another_build_made_the_alias_serve():
    """Two builds with --delete-old: the other one moved the alias onto THEIRS (an index this
    build was about to delete as old) and deleted this build's index. The way on must not be
    "delete THEIRS": that would leave the alias on nothing."""
    from sparcode.pipeline.engine import EngineError

    theirs = "sc-ffff-20261204t120500000000z"
    engine = FlakyEngine({OLD}, {OLD, NEW, theirs}, {"delete": (EngineError(404, "index_not_found_exception"), None)})
    real_delete = engine.delete_indices

    def the_other_build_wins(names):
        engine.holders, engine.indices = {theirs}, {theirs}  # its swap and its --delete-old land first
        real_delete(names)

    engine.delete_indices = the_other_build_wins
    with pytest.raises(indexer.IndexProblem) as problem:
        indexer.publish(engine, "sc", NEW, META, [OLD], delete_old=True)
    assert f"alias sc serves {theirs}" in str(problem.value) and "gone or serving" in str(problem.value)
    assert "delete them" not in str(problem.value)


def test_a_load_failing_because_another_build_deleted_its_index_says_so():
    from sparcode.pipeline.engine import EngineError

    engine = FlakyEngine({OLD}, {OLD}, {})  # NEW is already gone
    with pytest.raises(indexer.IncompleteLoad, match=rf"the partial index {NEW} no longer exists \(deleted meanwhile"):
        with indexer.kept_if_failed(engine, NEW, "sc"):
            raise EngineError(404, "index_not_found_exception")

def test_a_refused_completion_mark_is_an_incomplete_load():
    from sparcode.pipeline.engine import EngineError

    engine = FlakyEngine({OLD}, {OLD, NEW}, {"meta": (EngineError(403, "no"), None)})
    with pytest.raises(indexer.IncompleteLoad, match=f"alias sc not moved; the partial index {NEW} is kept"):
        indexer.publish(engine, "sc", NEW, META, [OLD], delete_old=True)
    assert engine.alias_holders("sc") == [OLD]


def test_searches_a_busy_node_rejected_inside_an_msearch_are_sent_again(monkeypatch):
    from sparcode.pipeline import backends
    from sparcode.pipeline.engine import EngineError

    monkeypatch.setattr(backends.time, "sleep", lambda seconds: None)

    class BusyNode:
        def __init__(self):
            self.sent = []

        def msearch(self, alias, bodies):
            self.sent.append(len(bodies))
            if len(self.sent) == 1:
                raise EngineError(503, "node restarting")  # the whole request, once
            if len(self.sent) == 2:  # then one search of three rejected inside the answer
                return [{"hits": {"hits": [{"q": b["q"]}]}} if b["q"] != 1 else
                        {"error": {"reason": "rejected execution"}, "status": 429} for b in bodies]
            return [{"hits": {"hits": [{"q": b["q"]}]}} for b in bodies]

    served = backends.ServedIndex.__new__(backends.ServedIndex)
    served.engine, served.alias, served.retries = BusyNode(), "sc", None
    responses = served._send([{"q": 0}, {"q": 1}, {"q": 2}])
    assert [r["hits"]["hits"][0]["q"] for r in responses] == [0, 1, 2]
    assert served.engine.sent == [3, 3, 1]  # only the rejected search went again


def test_an_index_re_created_during_the_load_is_never_served():
    """Deleted mid-load (another build's --delete-old), the node's auto-create makes it again from
    the next bulk request, with guessed mappings and no _meta: marking that complete would serve nothing."""
    engine = FlakyEngine({OLD}, {OLD, NEW}, {})
    engine.fingerprints[NEW] = None
    with pytest.raises(indexer.IndexProblem, match=f"stopped: {NEW} is no longer the index this build created") as err:
        indexer.publish(engine, "sc", NEW, META, [OLD], delete_old=True)
    assert "--resume" not in str(err.value) and "search engine answered" not in str(err.value)
    assert engine.alias_holders("sc") == [OLD] and engine.indices == {OLD, NEW}


def test_an_unreadable_alias_after_a_failed_swap_is_reported_as_unknown():
    from sparcode.pipeline.engine import EngineError

    engine = FlakyEngine({OLD}, {OLD, NEW}, {"alias": (EngineError(503, None), None)})

    def unreadable(alias):
        raise EngineError(503, None)

    engine.alias_holders = unreadable
    with pytest.raises(indexer.IndexProblem, match=r"HTTP 503: no reason given; whether alias sc moved is unknown"):
        indexer.publish(engine, "sc", NEW, META, [OLD], delete_old=False)


def test_ctrl_c_while_the_alias_moves_says_what_to_check():
    engine = FlakyEngine({OLD}, {OLD, NEW}, {"alias": (KeyboardInterrupt(), None)})
    with pytest.raises(KeyboardInterrupt) as interrupt:
        indexer.publish(engine, "sc", NEW, META, [OLD], delete_old=True)
    assert interrupt.value.__notes__[-1].startswith(f"interrupted while moving alias sc to the complete index {NEW}")


def test_a_single_stream_load_leaves_busy_answers_to_the_bulk_helper():
    from sparcode.pipeline.engine import retry_transient, retry_unavailable

    assert indexer.load_step(1) is retry_unavailable and indexer.load_step(2) is retry_transient


class MergingEngine:
    """Counts the requests of the finishing steps; its force merge fails as `merge_fails` says."""

    def __init__(self, merge_fails):
        self.merge_fails, self.calls = list(merge_fails), []

    def __getattr__(self, request):  # refresh settings, refresh, flush: answered at once
        return lambda *args, **kwargs: self.calls.append(request)

    def forcemerge(self, name, timeout_s):
        self.calls.append("forcemerge")
        if self.merge_fails:
            raise self.merge_fails.pop(0)

    def count(self, name):
        return 7


def test_a_merge_that_outlives_its_timeout_is_not_sent_again_and_the_build_goes_on():
    """Re-sending a merge still running in the node waits another hour each time."""
    from sparcode.pipeline.engine import EngineTimeout

    engine, said = MergingEngine([EngineTimeout("ConnectionTimeout: read timed out")]), []
    assert indexer._finalize(engine, "sc-x", settle=False, status=said.append) == 7
    assert engine.calls.count("forcemerge") == 1
    assert "did not finish within 3600 s; it goes on in the node" in said[-1]


def test_a_merge_refused_by_a_busy_node_is_sent_again():
    from sparcode.pipeline.engine import EngineError, EngineUnavailable

    engine, said = MergingEngine([EngineError(429, "busy"), EngineUnavailable("ConnectionError: refused")]), []
    assert indexer._finalize(engine, "sc-x", settle=False, status=said.append) == 7
    assert engine.calls.count("forcemerge") == 3 and said[-1].startswith("merged in")


def test_delete_old_spares_newer_builds_and_whatever_the_alias_serves_when_read_again():
    """Two builds with --delete-old at once each deleted the other's index, leaving the alias
    on nothing: a build deletes only indices older than its own, minus the alias's holders read
    just before the delete."""
    newer = "sc-ffff-20261204t130000000000z"  # another build, started later (loading, or about to swap)
    engine = FlakyEngine({OLD}, {OLD, NEW, newer, ORPHAN}, {})
    assert indexer.publish(engine, "sc", NEW, META, [OLD], delete_old=True) == sorted([OLD, ORPHAN])
    assert engine.indices == {NEW, newer}
    # The other build swapped between this build's swap and its delete: its index serves now.
    engine = FlakyEngine({OLD}, {OLD, NEW, ORPHAN}, {})
    real_holders = engine.alias_holders
    reads = []

    def moved_meanwhile(alias):
        reads.append(alias)
        return [ORPHAN] if len(reads) > 1 else real_holders(alias)  # after the swap's own read-back

    engine.alias_holders = moved_meanwhile
    assert ORPHAN not in indexer.publish(engine, "sc", NEW, META, [OLD], delete_old=True)
    assert ORPHAN in engine.indices
