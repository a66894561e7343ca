"""How pseudo-terms are spelled in index documents (pipeline/layout.py)."""
import pytest

from sparcode.pipeline import layout
from sparcode.pipeline import query as dsl

Q = {"c0001_0002": 2.0, "c0003_0004": 1.0, "c0001_0009": 3.0}


def test_a_term_splits_at_its_first_underscore():
    assert layout.split("c0412_0077") == ("c0412", "0077")
    assert layout.split("c0001_0002_0003") == ("c0001", "0002_0003")
    for bad in ("c0412", "_0077", "c0412_"):
        with pytest.raises(ValueError, match="has no group"):
            layout.split(bad)


def test_grouped_only_when_every_term_splits():
    assert layout.choose(["c0001_0002", "c0003_0004"]) == layout.GROUPED
    assert layout.choose(["c0001_0002", "c0003"]) == layout.FLAT
    assert layout.choose([]) == layout.FLAT


def test_grouping_keeps_every_pair_and_bounds_the_names():
    terms = [f"c{a:04d}_{b:04d}" for a in range(40) for b in range(40)]
    grouped = layout.document_codes({t: float(i) for i, t in enumerate(terms)})
    names = set(grouped) | {key for keys in grouped.values() for key in keys}
    assert len(names) == 80 < len(terms)  # 2N names for N x N terms: what keeps Jackson's table small
    pairs = {f"{group}_{key}": v for group, keys in grouped.items() for key, v in keys.items()}
    assert pairs == {t: float(i) for i, t in enumerate(terms)}
    assert layout.groups(terms) == [f"c{a:04d}" for a in range(40)]


def test_grouped_sparse_vector_query_is_one_clause_per_field():
    assert dsl.scoring_query(Q, "sparse_vector", layout.GROUPED) == {"bool": {"should": [
        {"sparse_vector": {"field": "codes.c0001", "query_vector": {"0002": 2.0, "0009": 3.0}}},
        {"sparse_vector": {"field": "codes.c0003", "query_vector": {"0004": 1.0}}},
    ]}}
    one = {"c0001_0002": 2.0}
    assert dsl.scoring_query(one, "sparse_vector", layout.GROUPED) == {
        "sparse_vector": {"field": "codes.c0001", "query_vector": {"0002": 2.0}}}


def test_grouped_term_and_rank_feature_forms_address_the_group_field():
    should = dsl.scoring_query(Q, "term", layout.GROUPED)["bool"]["should"]
    assert should[0] == {"term": {"codes.c0001": {"value": "0002", "boost": 2.0}}} and len(should) == 3
    should = dsl.scoring_query(Q, "rank_feature", layout.GROUPED)["bool"]["should"]
    assert should[2] == {"rank_feature": {"field": "codes.c0003.0004", "linear": {}, "boost": 1.0}}


def test_unknown_layout_is_refused():
    with pytest.raises(ValueError, match="layout 'nested'"):
        dsl.scoring_query(Q, "sparse_vector", "nested")
