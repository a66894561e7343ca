"""Metrics checked against values worked out by hand; deterministic top-K; seen-item masking."""
from __future__ import annotations

import json
import math
import re

import numpy as np
import pytest

from sparcode.data.dataset import EvalSet
from sparcode.eval.harness import evaluate_rankings, evaluate_scores, top_k
from sparcode.eval.metrics import hit_matrix, metrics_from_hits, ranking_metrics


def test_by_hand():
    # User A: ranked [3, 1, 7, 2], targets {1, 2, 9} → hits at ranks 2 and 4.
    #   @2: recall 1/3; DCG = 1/log2(3); IDCG over min(3, 2) = 2 ranks = 1 + 1/log2(3); hr 1.
    #   @4: recall 2/3; DCG = 1/log2(3) + 1/log2(5); IDCG = 1 + 1/log2(3) + 1/log2(4); hr 1.
    # User B: ranked [5, 6, 7, 8], targets {8} → hit at rank 4.
    #   @2: all 0.  @4: recall 1; DCG = 1/log2(5); IDCG = 1; hr 1.
    m = ranking_metrics(np.array([[3, 1, 7, 2], [5, 6, 7, 8]]), [np.array([1, 2, 9]), np.array([8])], ks=(2, 4))
    l3, l5 = math.log2(3), math.log2(5)
    assert m["recall@2"] == pytest.approx((1 / 3 + 0) / 2)
    assert m["ndcg@2"] == pytest.approx(((1 / l3) / (1 + 1 / l3) + 0) / 2)
    assert m["hr@2"] == pytest.approx(0.5)
    assert m["recall@4"] == pytest.approx((2 / 3 + 1) / 2)
    assert m["ndcg@4"] == pytest.approx(((1 / l3 + 1 / l5) / (1 + 1 / l3 + 0.5) + 1 / l5) / 2)
    assert m["hr@4"] == pytest.approx(1.0)
    assert m["users"] == 2


def test_perfect_ranking_and_empty_slots():
    # Targets {4, 6} at ranks 1-2 → everything 1. Empty slots (-1) never hit.
    m = ranking_metrics(np.array([[4, 6, -1]]), [np.array([6, 4])], ks=(1, 3))
    assert m["recall@1"] == pytest.approx(0.5) and m["ndcg@1"] == pytest.approx(1.0)
    assert m["recall@3"] == m["ndcg@3"] == m["hr@3"] == pytest.approx(1.0)
    assert ranking_metrics(np.array([[-1, -1]]), [np.array([0])], ks=(2,))["hr@2"] == 0.0


def test_repeated_targets_count_once():
    # Targets [1, 1, 3] are the set {1, 3}: rank 1 hits, rank 2 does not.
    #   @2: recall 1/2 (not 1/3); DCG = 1; IDCG = 1 + 1/log2(3); hr 1.
    hits, n_targets = hit_matrix(np.array([[1, 2]]), [np.array([1, 1, 3])])
    assert hits.tolist() == [[True, False]] and n_targets.tolist() == [2]
    m = ranking_metrics(np.array([[1, 2]]), [np.array([1, 1, 3])], ks=(2,))
    assert m["recall@2"] == pytest.approx(0.5)
    assert m["ndcg@2"] == pytest.approx(1 / (1 + 1 / math.log2(3)))


def test_a_user_without_targets_is_refused():
    with pytest.raises(ValueError, match=r"^user row 1 has no targets$"):
        hit_matrix(np.array([[0, 1], [0, 1], [0, 1]]), [np.array([0]), np.array([], np.int64), np.array([1])])


def test_an_item_ranked_twice_is_refused_not_counted_twice():
    # [1, 1] against {1, 2} would read recall@2 = 1 with one distinct hit; empty slots may repeat.
    with pytest.raises(ValueError, match=r"^user row 1 ranks the same item twice$"):
        ranking_metrics(np.array([[1, 2], [1, 1]]), [np.array([1, 2]), np.array([1, 2])], ks=(2,))
    assert ranking_metrics(np.array([[1, -1, -1]]), [np.array([1, 2])], ks=(3,))["recall@3"] == pytest.approx(0.5)


def test_ranked_lists_and_target_sets_must_pair_up():
    with pytest.raises(ValueError, match=r"^2 ranked lists for 1 target sets$"):
        hit_matrix(np.array([[0], [1]]), [np.array([0])])


def test_metrics_at_k_need_rankings_at_least_k_long():
    with pytest.raises(ValueError, match=r"^metrics @5 need rankings of length 5; got 3$"):
        metrics_from_hits(np.zeros((1, 3), bool), np.array([1]), ks=(2, 5))
    with pytest.raises(ValueError, match=r"^metrics @5 need rankings of length 5; got 3$"):
        ranking_metrics(np.array([[0, 1, 2]]), [np.array([0])], ks=(5,))


def test_top_k_tie_break():
    scores = np.array([[1, 2, 2, 0, 2], [0, 0, 0, 0, 0]], dtype=np.float32)
    assert top_k(scores, 2)[0].tolist() == [[1, 2], [0, 1]]
    assert top_k(scores, 4)[0].tolist() == [[1, 2, 4, 0], [0, 1, 2, 3]]
    assert top_k(scores, 9)[0].shape == (2, 5)


def test_top_k_matches_full_sort():
    rng = np.random.default_rng(0)
    scores = rng.integers(0, 6, size=(50, 300)).astype(np.float32)  # many ties
    expected = np.lexsort((np.broadcast_to(np.arange(300), scores.shape), -scores), axis=1)[:, :20]
    assert np.array_equal(top_k(scores, 20)[0], expected)


def make_evalset(seen, targets):
    n = len(targets)
    return EvalSet(np.arange(n), np.zeros((n, 1), np.int64), [np.array(s, np.int64) for s in seen],
                   [np.array(t, np.int64) for t in targets])


def test_exclude_seen_masking():
    table = np.array([[9, 8, 7, 6, 5, 4], [1, 1, 1, 1, 1, 1]], dtype=np.float32)
    evalset = make_evalset(seen=[[0, 2], [3]], targets=[[1, 3], [0]])
    calls = []

    def score(rows):
        calls.append(rows.tolist())
        return table[rows]

    m, ranked = evaluate_scores(score, evalset, 6, ks=(1, 2), exclude_seen=True, batch_size=1, return_rankings=True)
    assert calls == [[0], [1]]
    assert [r.tolist() for r in ranked] == [[1, 3], [0, 1]]
    assert m["recall@2"] == pytest.approx(1.0) and m["hr@1"] == pytest.approx(1.0)
    kept = evaluate_scores(score, evalset, 6, ks=(1, 2), exclude_seen=False)
    # Row 0 ranks 0, 1: one of two targets. Row 1 ranks 0, 1: its target.
    assert kept["recall@2"] == pytest.approx((0.5 + 1) / 2)
    assert table[0, 0] == 9  # the caller's scores are not masked in place


def test_ranked_lists_come_with_the_scores_that_ranked_them():
    table = np.array([[0.5, 2.0, 2.0, -1.0, 7.0], [1.0, 1.0, 1.0, 1.0, 1.0]], dtype=np.float32)
    evalset = make_evalset(seen=[[4], [0, 1, 2]], targets=[[1], [3]])
    m, ranked, scores = evaluate_scores(lambda rows: table[rows], evalset, 5, ks=(3,), batch_size=1,
                                        return_scores=True)
    assert [r.tolist() for r in ranked] == [[1, 2, 0], [3, 4]]  # seen excluded, never refilled
    assert [s.tolist() for s in scores] == [[2.0, 2.0, 0.5], [1.0, 1.0]]
    plain, plain_ranked = evaluate_scores(lambda rows: table[rows], evalset, 5, ks=(3,), return_rankings=True)
    assert m == plain and [r.tolist() for r in plain_ranked] == [r.tolist() for r in ranked]


def test_exclusion_never_fills_with_seen_items():
    evalset = make_evalset(seen=[[0, 1, 2]], targets=[[1]])
    m, ranked = evaluate_scores(lambda rows: np.ones((len(rows), 4), np.float32), evalset, 4, ks=(3,),
                                return_rankings=True)
    assert ranked[0].tolist() == [3] and m["recall@3"] == 0.0


def test_nan_scores_refused():
    evalset = make_evalset(seen=[[]], targets=[[1]])
    with pytest.raises(ValueError, match="NaN"):
        evaluate_scores(lambda rows: np.full((1, 3), np.nan, np.float32), evalset, 3, ks=(1,))


def test_evaluate_rankings_dedups_and_excludes():
    evalset = make_evalset(seen=[[5]], targets=[[2, 7]])
    # Repeated 2 counts once; with exclusion the seen 5 drops out and 7 moves into the top 2.
    assert evaluate_rankings([np.array([2, 2, 5, 7])], evalset, ks=(2,))["recall@2"] == pytest.approx(0.5)
    assert evaluate_rankings([np.array([2, 5, 7])], evalset, ks=(2,), exclude_seen=True)["recall@2"] == 1.0


def test_score_fn_must_return_one_row_per_user_and_one_column_per_item():
    evalset = make_evalset(seen=[[], []], targets=[[1], [0]])
    for shape in ((2, 4), (1, 3), (3, 2), (6,)):
        with pytest.raises(ValueError, match=rf"^score_fn returned shape {re.escape(str(shape))}, expected \(2, 3\)$"):
            evaluate_scores(lambda rows, shape=shape: np.zeros(shape, np.float32), evalset, 3, ks=(1,))


def test_evaluate_rankings_needs_one_list_per_user():
    evalset = make_evalset(seen=[[]], targets=[[2]])
    with pytest.raises(ValueError, match=r"^2 ranked lists for 1 users$"):
        evaluate_rankings([np.array([2]), np.array([2])], evalset, ks=(1,))
    with pytest.raises(ValueError, match=r"^0 ranked lists for 1 users$"):
        evaluate_rankings([], evalset, ks=(1,))


def test_trec_round_trip(tmp_path):
    from sparcode.data.dataset import Dataset
    from sparcode.eval.trec import read_qrels, read_run, write_qrels, write_run

    ds = Dataset("t", ["ua", "ub"], ["x", "y", "z"], [np.array([0]), np.array([1])])
    evalset = EvalSet(np.array([1, 0]), np.zeros((2, 1), np.int64), [np.array([], np.int64)] * 2,
                      [np.array([2]), np.array([0, 1])])
    write_run(tmp_path / "run", [np.array([2, 0]), np.array([1])], evalset, ds, tag="t1")
    write_qrels(tmp_path / "qrels", evalset, ds)
    lines = (tmp_path / "run").read_text().splitlines()
    assert lines == ["ub Q0 z 1 2 t1", "ub Q0 x 2 1 t1", "ua Q0 y 1 1 t1"]  # scores fall with rank
    assert read_run(tmp_path / "run") == {"ub": ["z", "x"], "ua": ["y"]}
    assert read_qrels(tmp_path / "qrels") == {"ub": {"z"}, "ua": {"x", "y"}}


def test_json_output_is_strict_with_null_where_a_number_does_not_apply():
    import numpy as np

    from sparcode.commands._common import strict_json

    text = strict_json({"entropy@10": float("nan"), "hits": [{"score": float("-inf")}, {"score": np.float32(0.5)}],
                        "users": np.int64(3)}, sort_keys=True)
    assert json.loads(text, parse_constant=lambda name: pytest.fail(name)) == {
        "entropy@10": None, "hits": [{"score": None}, {"score": 0.5}], "users": 3}


def test_entropy_does_not_apply_when_no_item_has_a_category():
    from types import SimpleNamespace

    from sparcode.generative.train_tiger import leaf_categories

    assert leaf_categories(SimpleNamespace(item_attributes=[{"title": "a"}, {"title": "b"}])) is None
    codes = leaf_categories(SimpleNamespace(item_attributes=[{"categories": ["x", "y"]}, {"title": "b"}]))
    assert codes.tolist() == [1, 0]
