"""EASE against its closed form on a hand-sized matrix, and on data where the answer is obvious."""
from __future__ import annotations

import types

import numpy as np
import pytest
import torch

from sparcode.data.dataset import Dataset
from sparcode.data.splits import make_split
from sparcode.encoder.ease import MODE, EaseModel, ease_weights, fit_at, fit_ease, gram_matrix, training_rows
from sparcode.encoder.ease_run import EASE_DIR, evaluate_ease


def test_closed_form_by_numpy():
    rows = [np.array([0, 1]), np.array([1, 2, 2]), np.array([0, 1, 3]), np.array([3])]
    x = np.zeros((4, 4))
    for r, items in enumerate(rows):
        x[r, items] = 1  # binary: the repeated 2 counts once
    gram = gram_matrix(rows, 4)
    assert np.array_equal(gram.numpy(), x.T @ x)
    lam = 0.5
    p = np.linalg.inv(x.T @ x + lam * np.eye(4))
    expected = -p / np.diag(p)[None, :]
    np.fill_diagonal(expected, 0.0)
    b = ease_weights(gram, lam).numpy()
    assert np.allclose(b, expected) and np.all(np.diag(b) == 0)
    # float32 agrees closely enough for ranking.
    assert np.allclose(ease_weights(gram.float(), lam).numpy(), expected, atol=1e-5)


def pairs_dataset() -> Dataset:
    # Items come in pairs (2k, 2k+1) that users always take together; item 8 is everywhere.
    rng = np.random.default_rng(0)
    seqs = []
    for _ in range(60):
        pairs = rng.choice(4, size=2, replace=False)
        seq = [8] + [i for p in pairs for i in (2 * p, 2 * p + 1)]
        seqs.append(np.array(seq, dtype=np.int64))
    return Dataset("pairs", [str(i) for i in range(60)], [str(i) for i in range(9)], seqs)


def test_recommends_the_co_occurring_item(tmp_path):
    ds = pairs_dataset()
    split = make_split(ds, "multi-target", seed=0)
    model = fit_ease(ds, split, lambdas=(1.0, 10.0), history=None)
    scores = model.score_histories([np.array([4]), np.array([1, 8])])
    assert scores[0].argmax() == 5 and scores[1].argmax() == 0
    assert model.lam in (1.0, 10.0) and len(model.info["selection"]) == 2
    model.save(tmp_path)
    loaded = EaseModel.load(tmp_path)
    assert torch.equal(loaded.B, model.B) and loaded.lam == model.lam and loaded.history is None
    assert torch.load(tmp_path / "weights.pt", weights_only=True).keys() == {"B"}


def test_history_window():
    b = torch.zeros(3, 3)
    b[0, 2], b[1, 2] = 1.0, 10.0
    model = EaseModel(b, 1.0, history=1)
    # Only the most recent item (0) counts with a window of 1; all with None; repeats once.
    assert model.score_histories([np.array([1, 0])])[0, 2] == 1.0
    model.history = None
    assert model.score_histories([np.array([1, 0, 1])])[0, 2] == 11.0


def test_training_rows_per_protocol():
    ds = pairs_dataset()
    mt = make_split(ds, "multi-target", seed=0)
    assert len(training_rows(ds, mt)) == len(mt.train_users)
    assert len(training_rows(ds, mt, fold_in=True)) == ds.n_users
    loo = make_split(ds, "leave-one-out", seed=0)
    assert [len(r) for r in training_rows(ds, loo, "test")] == [len(s) - 2 for s in ds.sequences]
    assert [len(r) for r in training_rows(ds, loo, "test", fold_in=True)] == [len(s) - 1 for s in ds.sequences]
    with pytest.raises(ValueError):
        training_rows(ds, type(loo)("random", 0, 20, loo.train, loo.valid, loo.test, loo.train_users))


def test_lambda_is_chosen_for_each_way_of_scoring(caplog):
    ds = pairs_dataset()
    split = make_split(ds, "leave-one-out", seed=0)
    with caplog.at_level("WARNING"):
        model = fit_ease(ds, split, lambdas=(0.1, 3.0, 100.0), history=None)
    table, chosen = model.info["selection"], model.info["lambda_by_mode"]
    assert [r["lambda"] for r in table] == [0.1, 3.0, 100.0]
    for mode in MODE.values():
        assert table[[r["lambda"] for r in table].index(chosen[mode])][mode] == max(r[mode] for r in table)
    # Leave-one-out keeps seen items by default, so the stored B is that way's choice.
    assert model.lam == chosen["keep_seen"]
    edges = [m for m in MODE.values() if chosen[m] in (0.1, 100.0)]
    assert len([r for r in caplog.records if "edge of the grid" in r.message]) == len(edges)


def _ease_run(tmp_path, ds, split, model):
    model.save(tmp_path / EASE_DIR)
    return types.SimpleNamespace(path=tmp_path, dataset=ds, split=split)


def test_the_other_way_of_scoring_is_refitted_at_its_own_lambda(tmp_path):
    ds = pairs_dataset()
    split = make_split(ds, "leave-one-out", seed=0)
    model = fit_ease(ds, split, lambdas=(1.0, 10.0), history=None)
    model.info["lambda_by_mode"] = {"keep_seen": model.lam, "exclude_seen": 37.0}
    run = _ease_run(tmp_path, ds, split, model)
    metrics, kept = evaluate_ease(run, split.test, exclude_seen=False)
    assert metrics["lambda"] == model.lam and not metrics["refitted"]
    stored_rankings = model.evaluate(split.test, False, return_rankings=True)[1]
    # zip() stops at the shorter list: without the lengths an empty ranking list would pass.
    assert len(kept) == len(stored_rankings) == len(split.test) > 0
    assert all(np.array_equal(a, b) for a, b in zip(kept, stored_rankings))
    metrics, excluded = evaluate_ease(run, split.test, exclude_seen=True)
    assert metrics["lambda"] == 37.0 and metrics["refitted"]
    expected_metrics, expected = fit_at(ds, split, 37.0, None, False, "test").evaluate(split.test, True,
                                                                                        return_rankings=True)
    assert expected_metrics and all(metrics[k] == v for k, v in expected_metrics.items())
    assert len(excluded) == len(expected) == len(split.test)
    assert all(np.array_equal(a, b) for a, b in zip(excluded, expected))


def test_a_folded_in_model_never_scores_the_validation_users_it_saw(tmp_path):
    ds = pairs_dataset()
    split = make_split(ds, "leave-one-out", seed=0)
    model = fit_ease(ds, split, lambdas=(1.0,), history=None, fold_in=True)
    assert model.info["refit_for_test"] and model.fold_in
    # The stored B was fitted on seq[:-1], which holds every validation target.
    assert torch.equal(model.B, fit_at(ds, split, 1.0, None, True, "test").B)
    run = _ease_run(tmp_path, ds, split, model)
    metrics, _ = evaluate_ease(run, split.valid, exclude_seen=False, part="valid")
    assert metrics.pop("refitted") and metrics.pop("lambda") == 1.0
    assert metrics == fit_at(ds, split, 1.0, None, True, "valid").evaluate(split.valid, False)
    assert metrics != model.evaluate(split.valid, False)


def test_train_ease_selects_lambda_on_the_configured_metric(tmp_path):
    from sparcode.config import RunConfig
    from sparcode.encoder.ease_run import train_ease

    ds = pairs_dataset()
    split = make_split(ds, "leave-one-out", seed=0)
    cfg = RunConfig.from_dict({"model": {"kind": "ease", "ease_lambda": [1.0, 10.0]},
                               "train": {"select_metric": "ndcg@5"}})
    report = train_ease(tmp_path, cfg, ds, split, progress=False)
    # leave-one-out's own default is recall@10: a train.select_metric must not be ignored.
    assert {row["metric"] for row in report["selection"]} == {"ndcg@5"}
    assert EaseModel.load(tmp_path / EASE_DIR).info["select_metric"] == "ndcg@5"
