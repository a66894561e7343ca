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
        {"sparse_vector": {"field": "codes.c0001", "query_vector": {"0002": 2.0, "0009": 3.0}, "prune": False}},
        {"sparse_vector": {"field": "codes.c0003", "query_vector": {"0004": 1.0}, "prune": False}},
    ]}}
    one = {"c0001_0002": 2.0}
    assert dsl.scoring_query(one, "sparse_vector", layout.GROUPED) == {
        "sparse_vector": {"field": "codes.c0001", "query_vector": {"0002": 2.0}, "prune": False}}


def test_grouped_term_and_rank_feature_forms_address_the_group_field():
    should = dsl.scoring_query(Q, "term", layout.GROUPED)["bool"]["should"]
    assert should[0] == {"term": {"codes.c0001": {"value": "0002", "boost": 2.0}}} and len(should) == 3
    should = dsl.scoring_query(Q, "rank_feature", layout.GROUPED)["bool"]["should"]
    assert should[2] == {"rank_feature": {"field": "codes.c0003.0004", "linear": {}, "boost": 1.0}}


def test_unknown_layout_is_refused():
    with pytest.raises(ValueError, match="layout 'nested'"):
        dsl.scoring_query(Q, "sparse_vector", "nested")


def test_past_the_name_budget_terms_are_numbered(monkeypatch):
    """Grouping bounds names only while keys repeat; when they do not (M = 8: a code per training
    window), the terms are numbered, unless the flat names themselves fit."""
    many = [f"c{a:04d}_{b:04d}_{c:04d}" for a in range(3) for b in range(10) for c in range(10)]
    assert layout.choose(many) == layout.GROUPED  # 3 groups + 100 keys
    monkeypatch.setattr(layout, "NAME_BUDGET", 50)
    assert layout.choose(many) == layout.NUMBERED  # 103 grouped names, 300 flat ones
    diagonal = [f"c{i:04d}_{i:04d}" for i in range(30)]
    assert layout.choose(diagonal) == layout.FLAT  # 60 grouped names, but the 30 flat ones fit
    assert layout.choose(["c0001", *many]) == layout.NUMBERED  # unsplittable terms number too


def test_numbering_keeps_every_pair_and_bounds_the_names(monkeypatch):
    monkeypatch.setattr(layout, "KEYS_PER_FIELD", 16)
    terms = [f"c{a:04d}_{b:04d}_{c:04d}" for a in range(5) for b in range(9) for c in range(7)]  # 315
    numbering = layout.Numbering(reversed(terms))
    codes = {t: float(i) for i, t in enumerate(terms)}
    placed = numbering.document_codes(codes)
    names = set(placed) | {key for keys in placed.values() for key in keys}
    assert len(placed) == len(numbering.groups) == 20 and len(names) == 20 + 16  # ceil(315/16) + 16
    assert sum(len(keys) for keys in placed.values()) == len(terms)
    back = {sorted(terms)[int(g[1:]) * 16 + int(k)]: v for g, keys in placed.items() for k, v in keys.items()}
    assert back == codes
    assert numbering.document_codes({"c9999_9999_9999": 1.0}) == {}  # not in the table: no postings
    assert layout.Numbering(terms).digest == numbering.digest != layout.Numbering(terms[1:]).digest
    assert numbering.meta() == {"digest": numbering.digest, "keys_per_field": 16, "terms": 315}


def test_numbered_query_addresses_the_numbered_fields():
    numbering = layout.Numbering(Q, keys_per_field=2)  # ranks: c0001_0002 0, c0001_0009 1, c0003_0004 2
    should = dsl.scoring_query(Q, "term", layout.NUMBERED, numbering)["bool"]["should"]
    assert should == [{"term": {"codes.n0": {"value": "0", "boost": 2.0}}},
                      {"term": {"codes.n0": {"value": "1", "boost": 3.0}}},
                      {"term": {"codes.n1": {"value": "0", "boost": 1.0}}}]
    with pytest.raises(ValueError, match="needs the export's term numbering"):
        dsl.scoring_query(Q, "term", layout.NUMBERED)
