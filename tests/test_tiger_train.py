"""TIGER end to end on a toy catalogue: train, checkpoint with weights_only, resume, evaluate,
search one user, and the `semantic-ids` command (the embedding model is replaced by fixed
vectors so the test needs no sentence encoder)."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from sparcode.data.dataset import Dataset
from sparcode.data.splits import make_split
from sparcode.generative.config import TigerConfig
from sparcode.generative.semantic_ids import add_dedup_token, save_ids, vocab_sizes
from sparcode.generative.train_tiger import (TigerSearcher, evaluate_tiger, load_tiger, tiger_dir,
                                             train_tiger)

torch.set_num_threads(1)
N_ITEMS, N_USERS = 30, 40


def toy_dataset() -> Dataset:
    rng = np.random.default_rng(0)
    # Users walk through consecutive items, so the next item is learnable.
    seqs = [(int(rng.integers(N_ITEMS)) + np.arange(int(rng.integers(5, 12)))) % N_ITEMS for _ in range(N_USERS)]
    attributes = [{"title": f"item {i}", "categories": ["Beauty", f"cat{i % 4}"]} for i in range(N_ITEMS)]
    return Dataset("toy", [f"u{i}" for i in range(N_USERS)], [f"i{i}" for i in range(N_ITEMS)],
                   [s.astype(np.int64) for s in seqs], item_attributes=attributes)


def toy_config(**kw) -> TigerConfig:
    base = dict(dataset="toy", d_model=16, heads=2, encoder_layers=1, decoder_layers=1, ff_dim=32, dropout=0.0,
                user_buckets=7, epochs=2, batch_size=16, lr=3e-3, warmup_steps=5, eval_users=0, beam_size=10,
                cold_fraction=0.1)
    return TigerConfig(**{**base, **kw})


def write_toy_ids(run_dir, dataset):
    codes = np.stack([np.arange(N_ITEMS) % 4, (np.arange(N_ITEMS) // 4) % 3, np.arange(N_ITEMS) % 2], axis=1)
    ids = add_dedup_token(codes)
    save_ids(tiger_dir(run_dir), ids, {"vocab": vocab_sizes(ids, 4), "collisions": {"collision_rate": 1.0},
                                       "codebook_usage": [1.0, 0.75, 0.5], "item_ids": dataset.item_ids})
    return ids


def test_bf16_steps_only_where_the_hardware_has_them_and_weights_stay_float32(tmp_path):
    from sparcode.encoder.train import bf16_supported

    dataset = toy_dataset()
    split = make_split(dataset, "leave-one-out", max_history=5)
    write_toy_ids(tmp_path, dataset)
    summary = train_tiger(tmp_path, dataset, split, toy_config(bf16=True, epochs=1), log=lambda *_: None, device="cpu")
    assert summary["bf16"] == bf16_supported(torch.device("cpu"))
    weights = torch.load(tiger_dir(tmp_path) / "weights.pt", weights_only=True)
    assert {w.dtype for w in weights.values() if w.is_floating_point()} == {torch.float32}
    metrics, _ = evaluate_tiger(tmp_path, dataset, split, ks=(5, 10), device="cpu")
    assert 0.0 <= metrics["recall@10"] <= 1.0


def test_train_checkpoint_roundtrip_evaluate_and_search(tmp_path, monkeypatch):
    from sparcode.generative import train_tiger as module

    dataset = toy_dataset()
    split = make_split(dataset, "leave-one-out", max_history=5)
    write_toy_ids(tmp_path, dataset)
    # The targets the optimiser actually saw: the split itself still holds the cold positives.
    trained_on, batch = [], module.Tiger.batch

    def recording_batch(self, histories, users, positives=None):
        if positives is not None:
            trained_on.append(np.asarray(positives).copy())
        return batch(self, histories, users, positives)

    monkeypatch.setattr(module.Tiger, "batch", recording_batch)
    said = []
    summary = train_tiger(tmp_path, dataset, split, toy_config(), log=said.append, device="cpu")
    folder = tiger_dir(tmp_path)
    assert summary["epochs"] == 2 and summary["steps"] > 0
    weights = torch.load(folder / "weights.pt", weights_only=True)
    state = torch.load(folder / "state.pt", weights_only=True)
    assert all(isinstance(v, torch.Tensor) for v in weights.values())
    assert int(state["epoch"]) == 2
    assert TigerConfig.from_dict(json.loads((folder / "config.json").read_text())) == toy_config(max_history=5)
    tiger = load_tiger(tmp_path, dataset, device="cpu")
    for name, tensor in tiger.model.state_dict().items():
        assert torch.equal(tensor, weights[name])
    cold = np.load(folder / "cold_items.npy")
    dropped = int(np.isin(split.train.positives, cold).sum())
    assert len(cold) == 3 and dropped > 0
    targets = np.concatenate(trained_on)
    assert len(targets) == summary["steps"] * 16 and not np.isin(targets, cold).any()
    assert any(f"({dropped} with a cold positive dropped)" in line for line in said)

    metrics, rankings = evaluate_tiger(tmp_path, dataset, split, ks=(5, 10), device="cpu")
    for key in ("recall@5", "ndcg@5", "recall@10", "ndcg@10", "cold_recall@10", "entropy@10"):
        assert key in metrics
    assert len(rankings) == len(split.test) and all(len(r) == 10 for r in rankings)
    assert 0.0 <= metrics["entropy@10"] <= np.log(4) + 1e-9
    excluded, ranked_ex = evaluate_tiger(tmp_path, dataset, split, ks=(5, 10), exclude_seen=True, device="cpu")
    assert excluded["exclude_seen"]
    for row, ranked in enumerate(ranked_ex):
        assert not np.isin(ranked, split.test.seen[row]).any()

    hits = TigerSearcher(tmp_path, dataset=dataset, device="cpu").search("u3", k=4)
    assert len(hits) == 4 and all(item in dataset.item_ids for item, _ in hits)
    assert not {item for item, _ in hits} & {dataset.item_ids[i] for i in dataset.sequences[3]}
    assert [s for _, s in hits] == sorted((s for _, s in hits), reverse=True)

    # Resume: a further epoch continues from the saved state instead of starting over.
    (folder / "finished").unlink()
    more = train_tiger(tmp_path, dataset, split, toy_config(epochs=3), log=lambda *_: None, device="cpu")
    assert more["epochs"] == 3 and more["steps"] == summary["steps"] * 3 // 2


def write_text_dataset(tmp_path, monkeypatch):
    """12 items in a generic-format folder; fixed vectors stand in for the sentence encoder."""
    from sparcode.generative import text

    data = tmp_path / "data"
    data.mkdir()
    (data / "sequences.txt").write_text("".join(f"u{u} " + " ".join(f"i{(u + j) % 12}" for j in range(5)) + "\n"
                                                for u in range(10)))
    (data / "items.tsv").write_text("".join(f"i{i}\tcategories=c{i % 3}\n" for i in range(12)))
    vectors = np.random.default_rng(0).standard_normal((12, 8)).astype(np.float32)
    monkeypatch.setattr(text, "item_embeddings", lambda dataset, out_dir, **_: vectors)
    return data


def test_semantic_ids_command(tmp_path, monkeypatch):
    from sparcode.commands.semantic_ids import command

    data = write_text_dataset(tmp_path, monkeypatch)
    result = CliRunner().invoke(command, ["--dataset", str(data), "--out", str(tmp_path / "run"), "--epochs", "3"])
    assert result.exit_code == 0, result.output
    ids = np.load(tmp_path / "run" / "tiger" / "semantic_ids.npy")
    assert ids.shape == (12, 4) and len(np.unique(ids, axis=0)) == 12
    assert "collision_rate" in result.output
    again = CliRunner().invoke(command, ["--dataset", str(data), "--out", str(tmp_path / "run"), "--epochs", "3"])
    assert again.exit_code == 0, again.output  # same settings: the IDs are reused
    other = CliRunner().invoke(command, ["--dataset", str(data), "--out", str(tmp_path / "run"), "--epochs", "4"])
    assert other.exit_code == 1 and "built with other settings (epochs 3)" in other.output
    assert np.array_equal(np.load(tmp_path / "run" / "tiger" / "semantic_ids.npy"), ids)
    forced = CliRunner().invoke(command, ["--dataset", str(data), "--out", str(tmp_path / "run"), "--epochs", "4",
                                          "--force"])
    assert forced.exit_code == 0, forced.output


def test_train_and_search_through_the_cli(tmp_path, monkeypatch):
    from sparcode.cli import main

    data = write_text_dataset(tmp_path, monkeypatch)
    run = tmp_path / "run"
    runner = CliRunner()
    config = tmp_path / "tiny.json"
    too_big = runner.invoke(main, ["train", "--model", "tiger", "--dataset", str(data), "--split", "leave-one-out",
                                   "--out", str(tmp_path / "big"), "--epochs", "1", "--quiet"])
    assert too_big.exit_code == 1 and "batch_size" in too_big.output
    config.write_text(json.dumps({"train": {"batch_size": 4}}))
    # As docs/tiger.md shows: semantic IDs first, then TIGER trains in the same folder.
    built = runner.invoke(main, ["semantic-ids", "--dataset", str(data), "--out", str(run), "--epochs", "3"])
    assert built.exit_code == 0, built.output
    other_ids = tmp_path / "other-ids.json"
    other_ids.write_text(json.dumps({"train": {"batch_size": 4}, "tiger": {"rqvae": {"epochs": 5}}}))
    refused = runner.invoke(main, ["train", "--model", "tiger", "--dataset", str(data), "--split", "leave-one-out",
                                   "--out", str(run), "--epochs", "1", "--quiet", "--config", str(other_ids)])
    assert refused.exit_code == 1 and "tiger.rqvae.epochs 5 (the IDs: 3)" in refused.output, refused.output
    assert sorted(p.name for p in run.iterdir()) == ["tiger"]
    trained = runner.invoke(main, ["train", "--model", "tiger", "--dataset", str(data), "--split", "leave-one-out",
                                   "--out", str(run), "--epochs", "1", "--quiet", "--config", str(config)])
    assert trained.exit_code == 0, trained.output
    # The run records the settings of the IDs it decodes, not the defaults it was not given.
    assert json.loads((run / "config.json").read_text())["tiger"]["rqvae"]["epochs"] == 3
    assert json.loads((run / "tiger" / "config.json").read_text())["rqvae"]["epochs"] == 3
    for flags in (["--backend", "es"], ["--backend", "local", "--export", str(tmp_path)]):
        served = runner.invoke(main, ["evaluate", str(run), *flags])
        assert served.exit_code == 1 and "constrained beam search only" in served.output, served.output
    under_model = runner.invoke(main, ["semantic-ids", "--dataset", str(data), "--out", str(run), "--force"])
    assert under_model.exit_code == 1 and "holds a trained TIGER model" in under_model.output
    filtered = runner.invoke(main, ["search", "--run", str(run), "--user", "u3", "--filter", "categories=c1"])
    assert filtered.exit_code == 2 and "--filter do not apply to TIGER" in filtered.output
    found = runner.invoke(main, ["search", "--run", str(run), "--user", "u3", "--k", "4", "--json"])
    assert found.exit_code == 0, found.output
    payload = json.loads(found.stdout)
    seen = {f"i{(3 + j) % 12}" for j in range(5)}
    assert payload["backend"] == "tiger" and 1 <= len(payload["hits"]) <= 4
    assert not seen & {h["item_id"] for h in payload["hits"]}
    (tmp_path / "history.txt").write_text("i1\ni2\n")
    anonymous = runner.invoke(main, ["search", "--run", str(run), "--history-file", str(tmp_path / "history.txt")])
    assert anonymous.exit_code == 1 and "--history-file is not supported for TIGER runs" in anonymous.output
    unknown = runner.invoke(main, ["search", "--run", str(run), "--user", "nobody", "--backend", "tiger"])
    assert unknown.exit_code != 0 and "nobody" in unknown.output
    wrong = runner.invoke(main, ["search", "--run", str(run), "--user", "u3", "--backend", "es"])
    assert wrong.exit_code != 0 and "tiger" in wrong.output


def test_run_config_tiger_section_overrides_and_rejects_unknown_keys():
    from sparcode.config import ConfigError, RunConfig

    cfg = TigerConfig.from_run_config(RunConfig.from_dict({"tiger": {"max_minutes": 30, "rqvae": {"codes": 64}}}))
    assert cfg.max_minutes == 30 and cfg.rqvae.codes == 64 and cfg.rqvae.levels == 3
    with pytest.raises(ConfigError, match="nope"):
        TigerConfig.from_run_config(RunConfig.from_dict({"tiger": {"nope": 1}}))


def test_learning_rate_schedules():
    from sparcode.generative.train_tiger import _lr_factor

    # Warm-up is linear in both; open-ended runs then decay as 1/sqrt(step), as before.
    assert _lr_factor(0, 10) == pytest.approx(0.1) and _lr_factor(9, 10) == 1.0
    assert _lr_factor(39, 10) == pytest.approx(0.5)
    # A step budget decays linearly from the end of warm-up to 0 at the last step.
    assert _lr_factor(4, 10, 110) == pytest.approx(0.5)
    assert _lr_factor(10, 10, 110) == pytest.approx(1.0)
    assert _lr_factor(60, 10, 110) == pytest.approx(0.5)
    assert _lr_factor(109, 10, 110) == pytest.approx(0.01) and _lr_factor(110, 10, 110) == 0.0


def test_a_step_budget_ends_training_at_that_step(tmp_path):
    dataset = toy_dataset()
    split = make_split(dataset, "leave-one-out", max_history=5)
    write_toy_ids(tmp_path, dataset)
    summary = train_tiger(tmp_path, dataset, split, toy_config(epochs=50, patience=50, total_steps=7),
                          log=lambda *_: None, device="cpu")
    assert summary["steps"] == 7 and summary["epochs"] < 50


def test_a_step_budget_outlasts_epochs_and_patience(tmp_path):
    # Stopping at `epochs` or on patience would leave the learning rate mid-decay.
    dataset = toy_dataset()
    split = make_split(dataset, "leave-one-out", max_history=5)
    write_toy_ids(tmp_path, dataset)
    config = toy_config(epochs=1, patience=1, total_steps=9, lr=0.0, steps_per_epoch=2)
    summary = train_tiger(tmp_path, dataset, split, config, log=lambda *_: None, device="cpu")
    assert summary["steps"] == 9 and summary["epochs"] == 5


def test_a_step_budget_that_outlasts_max_minutes_is_announced_after_the_first_epoch():
    from sparcode.generative.train_tiger import _warn_if_budget_outlasts_time

    said = []
    config = TigerConfig(total_steps=7500, max_minutes=100, warmup_steps=300)
    # 483 steps in 483 s: 1 s/step, so 100 min reach step 6,000 of 7,500.
    _warn_if_budget_outlasts_time(config, step=483, elapsed=483.0, steps_run=483, log=said.append)
    assert len(said) == 1
    assert "needs about 125 min" in said[0] and "near step 6,000" in said[0] and "at 21% of its peak" in said[0]
    fits = TigerConfig(total_steps=6000, max_minutes=100, warmup_steps=300)
    _warn_if_budget_outlasts_time(fits, step=483, elapsed=483.0, steps_run=483, log=said.append)
    open_ended = TigerConfig(total_steps=0, max_minutes=100)
    _warn_if_budget_outlasts_time(open_ended, step=483, elapsed=483.0, steps_run=483, log=said.append)
    assert len(said) == 1


def test_the_checkpoint_is_picked_on_the_configured_validation_metric(tmp_path):
    from sparcode.generative.train_tiger import validation_metrics

    dataset = toy_dataset()
    split = make_split(dataset, "leave-one-out", max_history=5)
    write_toy_ids(tmp_path, dataset)
    said = []
    config = toy_config(epochs=6, patience=6, select_on="ndcg@5", steps_per_epoch=2)
    summary = train_tiger(tmp_path, dataset, split, config, log=said.append, device="cpu")
    rows = [json.loads(line) for line in (tmp_path / "tiger" / "history.jsonl").read_text().splitlines()]
    best = max(r["valid_ndcg@5"] for r in rows)
    chosen = next(r for r in rows if r["valid_ndcg@5"] == best)
    assert summary["select_on"] == "ndcg@5" and summary["best_epoch"] == chosen["epoch"]
    assert summary["best_valid_recall@10"] == chosen["valid_recall@10"]
    # The saved weights are that epoch's: re-evaluated on the same users they give its numbers.
    assert validation_metrics(tmp_path, dataset, split, device="cpu")["ndcg@5"] == pytest.approx(best)
    assert sum("* (ndcg@5)" in line for line in said) >= 1
    with pytest.raises(ValueError, match="select_on"):
        TigerConfig(select_on="mrr")


def test_tiger_needs_item_content_and_says_so_before_making_the_run(tmp_path):
    from sparcode.cli import main

    data = tmp_path / "sequences.txt"
    data.write_text("".join(f"u{u} " + " ".join(f"i{(u + j) % 12}" for j in range(6)) + "\n" for u in range(12)))
    result = CliRunner().invoke(main, ["train", "--model", "tiger", "--dataset", str(data), "--out",
                                       str(tmp_path / "run"), "--epochs", "1", "--quiet"])
    assert result.exit_code == 1 and "Traceback" not in result.output
    assert f"{data}: has no item features to build item text from" in result.output
    assert not (tmp_path / "run").exists()


def test_generic_features_are_words_in_the_item_text():
    from sparcode.generative.text import item_text

    generic = {"title": ["Blue Shoe"], "colour": ["blue", "navy"], "size": [], "categories": ["shoes", "men"]}
    assert item_text(generic, other_fields=True) == "Title: Blue Shoe. Categories: shoes > men. Colour: blue navy"
    # The named datasets keep the text their recorded semantic IDs were built from.
    assert item_text({"title": "Heat (1995)", "genres": ["Action"], "year": 1995, "extra": "x"}) == \
        "Title: Heat (1995). Categories: Action. Year: 1995"
