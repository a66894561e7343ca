"""Against a live OpenSearch: the engine contract (engine_contract.py) with `rank_features` and
the `rank_feature` linear query, plus OpenSearch's refusal of `sparse_vector`."""
from __future__ import annotations

import pytest

from engine_contract import *  # noqa: F401,F403 (the shared tests run on this module's engine)
from engine_contract import built  # noqa: F401 (fixture, named for readers)
from sparcode.pipeline import indexer
from sparcode.pipeline.backends import EngineBackend
from sparcode.pipeline.export import Export

ENGINE = "opensearch"
pytestmark = pytest.mark.opensearch


def test_the_query_is_rank_feature_linear(engine, built, export_dir):
    alias, _ = built
    backend = EngineBackend.open(alias, export_dir, connection=engine)
    assert backend.form == "rank_feature"
    should = backend.explain({"c0001_0002": 2.0}, 3)["query"]["bool"]["should"]
    # Grouped layout: term c0001_0002 is feature 0002 of the rank_features field codes.c0001.
    assert should == [{"rank_feature": {"field": "codes.c0001.0002", "linear": {}, "boost": 2.0}}]


def test_sparse_vector_is_refused_before_any_request(engine, alias, export_dir):
    with pytest.raises(indexer.IndexProblem, match="OpenSearch has no sparse_vector field type; "
                                                   "use --field-type rank_features"):
        indexer.build(engine, Export.open(export_dir), alias, field_type="sparse_vector", progress=False)
    assert engine.matching(f"{alias}-*") == {}
