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
