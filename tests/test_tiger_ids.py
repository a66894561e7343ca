"""RQ-VAE shapes and training, semantic-ID uniqueness, the prefix trie and cold-item prefixes."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from sparcode.generative.beam import ColdIndex
from sparcode.generative.rqvae import RQVAE, RQVAEConfig, fit_rqvae, kmeans, usage
from sparcode.generative.semantic_ids import PrefixTrie, add_dedup_token, collision_stats, load_ids, save_ids
from sparcode.staging import UnreadableFile

torch.set_num_threads(1)


def small_cfg(**kw) -> RQVAEConfig:
    base = dict(input_dim=16, hidden=[32], latent_dim=8, levels=3, codes=8, epochs=40, batch_size=64,
                lr=3e-3, kmeans_iters=5, seed=0)
    return RQVAEConfig(**{**base, **kw})


def clustered(n=300, dim=16, seed=0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    centers = rng.standard_normal((6, dim))
    return (centers[rng.integers(6, size=n)] + 0.3 * rng.standard_normal((n, dim))).astype(np.float32)


def test_rqvae_forward_shapes():
    cfg = small_cfg()
    model = RQVAE(cfg)
    out = model(torch.randn(10, 16))
    assert out["recon"].shape == (10, 16)
    assert out["codes"].shape == (10, 3) and out["codes"].dtype == torch.long
    assert int(out["codes"].max()) < cfg.codes
    assert len(out["residuals"]) == 3 and out["residuals"][0].shape == (10, 8)
    assert out["loss"].ndim == 0 and torch.isfinite(out["loss"])
    out["loss"].backward()
    assert model.codebooks.grad is not None and model.encoder[0].weight.grad is not None


def test_rqvae_loss_decreases_and_codes_are_used():
    x = clustered()
    model, fit = fit_rqvae(x, small_cfg(), log=lambda *_: None)
    losses = [row["loss"] for row in fit["history"]]
    assert losses[-1] < 0.7 * losses[0]
    codes = model.encode(torch.as_tensor(x)).numpy()
    assert codes.shape == (300, 3)
    assert min(usage(codes, 8)) > 0.5  # k-means init + dead-code re-seeding keep codes alive


def test_kmeans_finds_separated_clusters():
    points = torch.tensor([[0.0, 0.0], [0.1, 0.0], [10.0, 10.0], [10.1, 10.0]])
    centers = kmeans(points, 2, 10, torch.Generator().manual_seed(0))
    assert sorted(round(float(c[0])) for c in centers) == [0, 10]


def test_dedup_token_makes_ids_unique():
    rng = np.random.default_rng(1)
    codes = rng.integers(0, 3, size=(200, 3))  # 27 possible IDs for 200 items: many collisions
    stats = collision_stats(codes)
    assert stats["collision_rate"] > 0.9 and stats["distinct_ids"] <= 27
    ids = add_dedup_token(codes)
    assert ids.shape == (200, 4)
    assert np.array_equal(ids[:, :3], codes)
    assert len(np.unique(ids, axis=0)) == 200
    for key in {tuple(c) for c in codes.tolist()}:
        group = np.flatnonzero((codes == key).all(axis=1))
        assert ids[group, 3].tolist() == list(range(len(group)))  # 0, 1, 2, … in item order
    assert collision_stats(ids)["collision_rate"] == 0.0


def test_collision_rate_by_hand():
    codes = np.array([[0, 0, 0], [0, 0, 0], [1, 2, 3], [0, 0, 1]])
    assert collision_stats(codes) == {"items": 4, "distinct_ids": 3, "collision_rate": 0.5, "max_group": 2}


def test_trie_lookup_and_prefixes(tmp_path):
    ids = np.array([[0, 1, 2, 0], [0, 1, 2, 1], [0, 3, 0, 0], [2, 1, 2, 0]])
    trie = PrefixTrie.build(ids, [4, 4, 4, 2])
    for item, row in enumerate(ids):
        assert trie.item(row.tolist()) == item
    assert trie.item([0, 1, 3, 0]) == -1 and trie.item([1, 0, 0, 0]) == -1  # no such prefix
    assert trie.item([0, 1, 2, 5]) == -1  # token outside the level's vocabulary
    assert trie.items_with_prefix([0, 1]).tolist() == [0, 1]
    assert trie.items_with_prefix([0]).tolist() == [0, 1, 2]
    assert trie.items_with_prefix([3]).tolist() == []
    save_ids(tmp_path, ids, {"vocab": [4, 4, 4, 2]})
    loaded, meta = load_ids(tmp_path)
    assert np.array_equal(loaded, ids) and meta["vocab"] == [4, 4, 4, 2]
    array = tmp_path / "semantic_ids.npy"
    array.write_bytes(array.read_bytes()[:60])  # cut inside the header
    with pytest.raises(UnreadableFile, match="semantic_ids.npy: not a complete array file"):
        load_ids(tmp_path)


def test_prefix_retrieval_surfaces_item_never_trained():
    ids = np.array([[1, 2, 3, 0],   # 0 warm: the model generates it
                    [1, 2, 3, 1],   # 1 cold, same (c0, c1, c2) as item 0
                    [1, 2, 5, 0],   # 2 cold, shares only (c0, c1)
                    [4, 4, 4, 0],   # 3 warm
                    [7, 7, 7, 0]])  # 4 cold, unrelated
    cold = ColdIndex(ids, np.array([1, 2, 4]), depth=3)
    assert cold.candidates(np.array([0, 3]), skip=set()) == [1, 2]  # deeper match first
    mixed = cold.mix(np.array([0, 3]), k=2, slots=0.5)
    assert mixed.tolist() == [0, 1]  # one of two slots goes to the prefix-matched cold item
    assert 4 not in cold.mix(np.array([0, 3]), k=2, slots=1.0).tolist()
    assert cold.mix(np.array([0, 3]), k=2, slots=0.5, seen=np.array([1])).tolist() == [0, 2]


def test_a_tiger_run_records_the_settings_of_the_ids_it_finds(tmp_path):
    """Prebuilt IDs are reused: the config takes their RQ-VAE settings; one it sets otherwise is
    refused until a model is trained on the IDs, after which the IDs are what it decodes."""
    from types import SimpleNamespace

    from sparcode.config import ConfigError, RunConfig
    from sparcode.generative.semantic_ids import save_ids
    from sparcode.generative.train_tiger import adopt_built_ids, tiger_dir

    dataset = SimpleNamespace(item_ids=["a", "b"])
    save_ids(tiger_dir(tmp_path), np.array([[0, 0, 0, 0], [0, 1, 0, 0]]),
             {"item_ids": ["a", "b"], "rqvae_config": {"epochs": 3, "codes": 4, "input_dim": 8}})
    run_cfg = RunConfig(tiger={"rqvae": {"input_dim": 8, "codes": 4}})  # input_dim is the encoder's, not a choice
    adopt_built_ids(tmp_path, run_cfg, dataset)
    assert run_cfg.tiger["rqvae"] == {"epochs": 3, "codes": 4}
    other = RunConfig(tiger={"rqvae": {"epochs": 5}})
    with pytest.raises(ConfigError, match=r"tiger.rqvae.epochs 5 \(the IDs: 3\)"):
        adopt_built_ids(tmp_path, other, dataset)
    (tiger_dir(tmp_path) / "weights.pt").write_bytes(b"")
    adopt_built_ids(tmp_path, other, dataset)
    assert other.tiger["rqvae"] == {"epochs": 3, "codes": 4}


@pytest.mark.parametrize("damage", ["truncated vectors", "vectors gone", "meta not json", "fewer vectors"])
def test_the_item_text_embedding_cache_is_used_when_whole_and_redone_when_not(tmp_path, monkeypatch, damage):
    """The cache saves minutes of sentence encoding; a damaged one must be recomputed, never
    returned (or crash), and a whole one must be used."""
    from types import SimpleNamespace

    from sparcode.generative import text

    calls = []

    def fake_embed(texts, **_):
        calls.append(len(texts))
        return np.arange(len(texts) * 4, dtype=np.float32).reshape(len(texts), 4)

    monkeypatch.setattr(text, "embed_texts", fake_embed)
    dataset = SimpleNamespace(name="toy", item_ids=["a", "b", "c"],
                              item_attributes=[{"title": ["A"]}, {"title": ["B"]}, {"title": ["C"]}])
    first = text.item_embeddings(dataset, tmp_path, log=lambda _: None)
    again = text.item_embeddings(dataset, tmp_path, log=lambda _: None)
    assert calls == [3] and np.array_equal(first, again)
    array, meta = tmp_path / text.EMBEDDINGS, tmp_path / text.EMBEDDINGS_META
    if damage == "truncated vectors":
        array.write_bytes(array.read_bytes()[:90])
    elif damage == "vectors gone":
        array.unlink()
    elif damage == "meta not json":
        meta.write_text("{")
    else:
        np.save(array, first[:2])
    redone = text.item_embeddings(dataset, tmp_path, log=lambda _: None)
    assert calls == [3, 3] and np.array_equal(redone, first)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([array.name, meta.name])  # no temporary left
