"""Request bodies for each query form: the DSL Elasticsearch receives is the contract."""
import pytest

from sparcode.pipeline import query as dsl

Q = {"c0001_0002": 2.0, "c0003_0004": 1.0}


def test_sparse_vector_form_is_one_clause():
    body = dsl.search_body(Q, 10, form="sparse_vector")
    assert body == {
        "size": 10, "track_total_hits": False, "stored_fields": "_none_", "docvalue_fields": ["item_id"],
        # pruning off: Elasticsearch 8.19 prunes by default and would drop terms the model's score counts
        "query": {"sparse_vector": {"field": "codes", "query_vector": Q, "prune": False}},
        "sort": ["_score", {"ord": "asc"}],
    }


def test_term_form_boosts_each_term_by_its_count():
    body = dsl.search_body(Q, 5, form="term", tiebreak=False)
    assert body["query"] == {"bool": {"should": [
        {"term": {"codes": {"value": "c0001_0002", "boost": 2.0}}},
        {"term": {"codes": {"value": "c0003_0004", "boost": 1.0}}},
    ]}}
    assert "sort" not in body and body["track_total_hits"] is False


def test_rank_feature_form_is_linear_per_term():
    should = dsl.search_body(Q, 5, form="rank_feature")["query"]["bool"]["should"]
    assert should[0] == {"rank_feature": {"field": "codes.c0001_0002", "linear": {}, "boost": 2.0}}
    assert dsl.form_for("rank_features") == "rank_feature"
    assert dsl.form_for("sparse_vector") == "term" == dsl.DEFAULT_FORM


def test_filters_and_exclusions_wrap_the_scoring_query_without_scoring():
    filters = dsl.coerce_filters({"genres": "Drama", "year": ["1990", 1991]},
                                 {"genres": "keyword", "year": "integer"})
    body = dsl.search_body(Q, 3, form="sparse_vector", filters=filters, exclude_items={"b", "a"})
    assert body["query"]["bool"] == {
        "must": [{"sparse_vector": {"field": "codes", "query_vector": Q, "prune": False}}],
        "filter": [{"term": {"genres": "Drama"}}, {"terms": {"year": [1990, 1991]}}],
        "must_not": [{"ids": {"values": ["a", "b"]}}],
    }


def test_term_form_under_filters_still_needs_a_matching_term():
    body = dsl.search_body(Q, 3, form="term", exclude_items=["x"])
    inner = body["query"]["bool"]["must"][0]
    # The should-only bool is nested under must, so a doc matching no term is never returned.
    assert set(inner["bool"]) == {"should"}


def test_empty_query_matches_nothing_and_zero_counts_drop():
    assert dsl.search_body({}, 3)["query"] == {"match_none": {}}
    assert dsl.clean_query({"a": 0, "b": 2}) == {"b": 2.0}


@pytest.mark.parametrize("bad", [-1.0, float("nan"), float("inf")])
def test_bad_counts_are_refused(bad):
    with pytest.raises(dsl.QueryError, match="c9"):
        dsl.clean_query({"c9": bad})


def test_filter_errors_are_one_clear_line():
    types = {"title": "text", "year": "integer"}
    with pytest.raises(dsl.QueryError, match="unknown filter field 'genre'"):
        dsl.coerce_filters({"genre": "x"}, types)
    with pytest.raises(dsl.QueryError, match="title.*text"):
        dsl.coerce_filters({"title": "x"}, types)
    with pytest.raises(dsl.QueryError, match="not a valid integer"):
        dsl.coerce_filters({"year": "soon"}, types)
    assert dsl.parse_filter("genres=Sci-Fi=x") == ("genres", "Sci-Fi=x")
    with pytest.raises(dsl.QueryError):
        dsl.parse_filter("genres")


def test_unknown_form_is_refused():
    with pytest.raises(dsl.QueryError):
        dsl.search_body(Q, 3, form="knn")


def test_filters_drop_spaces_around_name_and_value_as_feature_files_do():
    assert dsl.parse_filter(" studio = 7 ") == ("studio", "7")
    assert dsl.parse_filter("genres=Sci-Fi Fantasy") == ("genres", "Sci-Fi Fantasy")
    with pytest.raises(dsl.QueryError, match="expected field=value"):
        dsl.parse_filter("genres= ")


def test_a_filter_value_collection_is_several_values_and_bytes_are_refused():
    import numpy as np

    types = {"genres": "keyword", "year": "integer"}
    assert dsl.coerce_filters({"year": np.asarray([1990, 1991]), "genres": (g for g in ["Drama"])}, types) == \
        {"year": [1990, 1991], "genres": ["Drama"]}
    for value in (b"Drama", [b"Drama"]):
        with pytest.raises(dsl.QueryError, match="pass text, not bytes"):
            dsl.coerce_filters({"genres": value}, types)


def test_filter_shapes_that_would_match_nothing_are_refused_and_spaces_dropped():
    types = {"genres": "keyword"}
    assert dsl.coerce_filters({"genres": " Comedy "}, types) == {"genres": ["Comedy"]}
    for bad in (None, {"a": 1}, [], [None]):
        with pytest.raises(dsl.QueryError, match="expected one value or a list of values"):
            dsl.coerce_filters({"genres": bad}, types)
    for bad in ([("genres", "Comedy")], "genres=Comedy"):
        with pytest.raises(dsl.QueryError, match="filters is a mapping"):
            dsl.coerce_filters(bad, types)


def test_a_query_that_is_no_mapping_of_numbers_is_a_query_error():
    for bad in (["c0001_0001"], "c0001_0001", None):
        with pytest.raises(dsl.QueryError, match="a query is a mapping"):
            dsl.clean_query(bad)
    with pytest.raises(dsl.QueryError, match="counts are numbers"):
        dsl.clean_query({"c0001_0001": "x"})
