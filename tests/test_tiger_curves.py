"""TIGER's diversity sweep and training curve: what the scripts under scripts/ plot is what the
model does (T = 0 is beam search, T → 0 sampling is greedy decoding, the re-evaluated best
checkpoint reproduces the recorded validation score, time keeps running across a resume)."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from sparcode.data.splits import make_split
from sparcode.generative.beam import beam_search
from sparcode.generative.curves import curve_points, plot_curve, read_history
from sparcode.generative.diversity import KEYS, level_temperatures, markdown_table, plot, temperature_sweep
from sparcode.generative.semantic_ids import PrefixTrie, add_dedup_token
from sparcode.generative.seq2seq import BOS, TigerSeq2Seq
from sparcode.generative.train_tiger import evaluate_tiger, tiger_dir, train_tiger, validation_metrics
from test_tiger_train import toy_config, toy_dataset, write_toy_ids

torch.set_num_threads(1)
PNG = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    run = tmp_path_factory.mktemp("tiger")
    dataset = toy_dataset()
    split = make_split(dataset, "leave-one-out", max_history=5)
    write_toy_ids(run, dataset)
    train_tiger(run, dataset, split, toy_config(epochs=2, patience=5), log=lambda *_: None, device="cpu")
    return run, dataset, split


def test_history_records_validation_metrics_and_time_across_resume(trained):
    run, dataset, split = trained
    rows = read_history(tiger_dir(run) / "history.jsonl")
    assert [r["epoch"] for r in rows] == [1, 2]
    for row in rows:
        assert {"valid_recall@5", "valid_ndcg@5", "valid_recall@10", "valid_ndcg@10", "train_seconds"} <= set(row)
        assert 0 <= row["valid_recall@5"] <= row["valid_recall@10"] <= 1
    # The saved best checkpoint, evaluated again, is the epoch that training recorded as best.
    best = max(r["valid_recall@10"] for r in rows)
    again = validation_metrics(run, dataset, split, device="cpu")
    assert again["recall@10"] == pytest.approx(best)
    assert again["ndcg@10"] == pytest.approx(max(rows, key=lambda r: r["valid_recall@10"])["valid_ndcg@10"])

    (tiger_dir(run) / "finished").unlink()
    train_tiger(run, dataset, split, toy_config(epochs=3, patience=5), log=lambda *_: None, device="cpu")
    rows = read_history(tiger_dir(run) / "history.jsonl")
    assert [r["epoch"] for r in rows] == [1, 2, 3]
    for clock in ("elapsed", "train_seconds"):
        assert rows[2][clock] > rows[1][clock] > rows[0][clock] > 0


def test_curve_uses_training_seconds_when_recorded_and_wall_time_otherwise(trained, tmp_path):
    run, _, _ = trained
    rows = read_history(tiger_dir(run) / "history.jsonl")
    points = curve_points(rows)
    assert points["clock"] == "train_seconds"
    assert points["minutes"] == [round(r["train_seconds"] / 60, 2) for r in rows]
    assert points["valid_ndcg@10"] == [r["valid_ndcg@10"] for r in rows]
    old = [{"epoch": 1, "elapsed": 60.0, "valid_recall@10": 0.1}, {"epoch": 2, "elapsed": 150.0, "valid_recall@10": 0.2}]
    legacy = curve_points(old)
    assert legacy["clock"] == "elapsed" and legacy["minutes"] == [1.0, 2.5] and legacy["valid_recall@5"] == [None, None]
    plot_curve({**legacy, "best_checkpoint": {"minutes": 2.5, "valid_recall@5": 0.05, "valid_ndcg@10": 0.04}},
               tmp_path / "curve.png", "toy")
    assert (tmp_path / "curve.png").read_bytes().startswith(PNG)


def untimed(row: dict) -> dict:
    return {k: v for k, v in row.items() if k != "seconds"}


def test_sweep_at_zero_is_beam_search_and_is_reproducible(trained, tmp_path):
    run, dataset, split = trained
    rows = temperature_sweep(run, dataset, split, (0.0, 1.5), users=20, seed=3, device="cpu", log=lambda *_: None)
    beam, _ = evaluate_tiger(run, dataset, split, ks=(5, 10), max_users=20, seed=3, device="cpu")
    for key in KEYS:
        assert rows[0][key] == beam[key]
    # A sweep that dropped the temperature would give the beam row again at T = 1.5.
    assert [rows[1][k] for k in KEYS] != [rows[0][k] for k in KEYS]
    again = temperature_sweep(run, dataset, split, (1.5,), users=20, seed=3, device="cpu", log=lambda *_: None)
    assert untimed(again[0]) == untimed(rows[1])
    # Every user (users=0) so that only the sampling seed differs, not the sampled users.
    seeded = [temperature_sweep(run, dataset, split, (1.5,), users=0, seed=s, device="cpu", log=lambda *_: None)[0]
              for s in (3, 4)]
    assert [seeded[0][k] for k in KEYS] != [seeded[1][k] for k in KEYS]
    assert rows[0]["users"] == 20 and level_temperatures(0, 4) is None and level_temperatures(2, 4) == (2.0,) * 4
    assert level_temperatures(2, 4, fine=0.5) == (2.0, 2.0, 0.5, 0.5)
    with pytest.raises(ValueError):
        level_temperatures(1, 4, fine=-1)
    assert "| 0 (beam) |" in markdown_table(rows, "toy")
    plot(rows, tmp_path / "t.png", "toy")
    assert (tmp_path / "t.png").read_bytes().startswith(PNG)


def greedy(model, memory, mask, trie) -> list[int]:
    """Argmax over the allowed tokens at every level, one user at a time."""
    out = []
    for row in range(memory.shape[0]):
        node, codes = 0, []
        for level in range(trie.levels):
            prefix = torch.cat([torch.tensor([[BOS]]), model.tokens(torch.tensor([codes], dtype=torch.long))], dim=1)
            hidden = model.decode(memory[row:row + 1], mask[row:row + 1], prefix)
            logits = model.level_logits(hidden[:, -1], level)[0].float()
            allowed = torch.as_tensor(trie.children[level][node] >= 0)
            token = int(torch.argmax(logits.masked_fill(~allowed, float("-inf"))))
            codes.append(token)
            node = int(trie.children[level][node, token])
        out.append(node)
    return out


def test_sampling_as_temperature_goes_to_zero_is_greedy_decoding():
    rng = np.random.default_rng(4)
    torch.manual_seed(4)
    for trial in range(6):
        ids = add_dedup_token(np.stack([rng.integers(0, v, size=50) for v in (5, 4, 6)], axis=1))
        trie = PrefixTrie.build(ids)
        model = TigerSeq2Seq(trie.vocab, d_model=16, heads=2, encoder_layers=1, decoder_layers=1, ff_dim=16,
                             dropout=0.0, max_history=3, user_buckets=5).eval()
        history = torch.stack([torch.as_tensor(ids[rng.integers(len(ids), size=3)]) for _ in range(4)])
        memory, mask = model.encode(history, torch.zeros(4, 3, dtype=torch.bool), torch.arange(4))
        items, _ = beam_search(model, memory, mask, trie, 8, temperatures=(1e-6,) * 4,
                               generator=torch.Generator().manual_seed(trial))
        assert items[:, 0].tolist() == greedy(model, memory, mask, trie)
