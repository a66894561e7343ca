"""Trie-constrained decoding: only real items, exact on a model whose logits we set, exclusions hold."""
from __future__ import annotations

import numpy as np
import torch

from sparcode.generative.beam import beam_search
from sparcode.generative.semantic_ids import PrefixTrie, add_dedup_token
from sparcode.generative.seq2seq import TigerSeq2Seq

torch.set_num_threads(1)


class TableModel:
    """Decoder double: the logits after a prefix are a fixed random function of that prefix.

    `decode` returns the prefix itself as the "hidden state", so `level_logits` can look the
    prefix up; the sequence score of every ID can then be computed by brute force."""

    def __init__(self, vocab, seed=0):
        self.vocab = vocab
        self.offsets = list(np.cumsum([1] + vocab[:-1]))
        self.seed = seed

    def tokens(self, codes):
        return codes + torch.as_tensor(self.offsets[:codes.shape[-1]])

    def decode(self, memory, mask, prefix):
        # beam_search repeats memory per beam, so row r of memory belongs to row r of prefix;
        # memory[:, 0, 0] carries the user number.
        user = memory[:, 0, 0]
        return torch.cat([user[:, None, None].expand(-1, prefix.shape[1], 1).float(),
                          prefix[:, None, :].expand(-1, prefix.shape[1], -1).float()], dim=2)

    def logits_for(self, user: int, prefix: tuple, level: int) -> np.ndarray:
        rng = np.random.default_rng([self.seed, user, level, *prefix])
        return rng.normal(scale=2.0, size=self.vocab[level])

    def level_logits(self, hidden, level):
        rows = [self.logits_for(int(h[0]), tuple(int(t) for t in h[1:].tolist()), level) for h in hidden]
        return torch.as_tensor(np.stack(rows), dtype=torch.float32)


def brute_force(model: TableModel, ids: np.ndarray, trie: PrefixTrie, user: int, exclude=()) -> list[tuple[float, int]]:
    """Every item's log-probability, renormalised over the tokens the trie allows."""
    scored = []
    for item, row in enumerate(ids):
        if item in exclude:
            continue
        node, total, prefix = 0, 0.0, (0,)
        for level, token in enumerate(row):
            # A token is allowed when some item not excluded lies below the prefix it makes.
            unseen = [other for other in range(len(ids)) if other not in exclude]
            allowed = np.zeros(trie.vocab[level], dtype=bool)
            for other in unseen:
                if tuple(ids[other, :level]) == tuple(row[:level]):
                    allowed[ids[other, level]] = True
            logits = model.logits_for(user, prefix, level)
            logz = np.log(np.exp(logits[allowed]).sum())
            total += logits[token] - logz
            node = trie.children[level][node, token]
            prefix = prefix + (int(token) + int(model.offsets[level]),)
        scored.append((total, item))
    return sorted(scored, key=lambda t: (-t[0], t[1]))


def random_ids(rng, n, vocab=(4, 3, 5)):
    codes = np.stack([rng.integers(0, v, size=n) for v in vocab], axis=1)
    return add_dedup_token(codes)


def test_exact_ranking_when_beam_covers_every_item():
    rng = np.random.default_rng(0)
    ids = random_ids(rng, 25)
    trie = PrefixTrie.build(ids)
    model = TableModel(trie.vocab, seed=3)
    memory = torch.tensor([[[0.0]], [[1.0]]])  # two users
    items, scores = beam_search(model, memory, torch.zeros(2, 1, dtype=torch.bool), trie, beam_size=len(ids))
    for user in range(2):
        expected = brute_force(model, ids, trie, user)
        assert items[user].tolist() == [item for _, item in expected]
        np.testing.assert_allclose(scores[user], [s for s, _ in expected], rtol=1e-4, atol=1e-4)


def test_top1_is_the_argmax_sequence_with_a_sufficient_beam():
    rng = np.random.default_rng(1)
    ids = random_ids(rng, 40)
    trie = PrefixTrie.build(ids)
    model = TableModel(trie.vocab, seed=11)
    memory = torch.tensor([[[u]] for u in range(4)], dtype=torch.float32)
    mask = torch.zeros(4, 1, dtype=torch.bool)
    items, _ = beam_search(model, memory, mask, trie, beam_size=len(ids))
    for user in range(4):
        assert items[user, 0] == brute_force(model, ids, trie, user)[0][1]


def test_exclude_seen_matches_brute_force_without_those_items():
    rng = np.random.default_rng(2)
    ids = random_ids(rng, 20)
    trie = PrefixTrie.build(ids)
    model = TableModel(trie.vocab, seed=5)
    seen = [np.array([0, 3, 7]), np.array([], dtype=np.int64)]
    memory = torch.tensor([[[0.0]], [[1.0]]])
    items, _ = beam_search(model, memory, torch.zeros(2, 1, dtype=torch.bool), trie, beam_size=len(ids), exclude=seen)
    expected = [item for _, item in brute_force(model, ids, trie, 0, exclude={0, 3, 7})]
    assert items[0][items[0] >= 0].tolist() == expected
    assert items[1].tolist() == [item for _, item in brute_force(model, ids, trie, 1)]


def test_a_narrow_beam_is_not_spent_on_prefixes_holding_only_seen_items():
    """Seen items fill whole branches of the trie; masking only their last token let beams die
    at the last level, and K beams gave fewer than K items."""
    ids = add_dedup_token(np.array([[a, b, 0] for a in range(3) for b in range(3)] * 2))  # 18 items
    trie = PrefixTrie.build(ids)
    model = TableModel(trie.vocab, seed=1)
    best_first = [item for _, item in brute_force(model, ids, trie, 0)]
    seen = np.array([i for i in range(len(ids)) if ids[i, 0] == ids[best_first[0], 0]])  # the best first-level branch
    items, scores = beam_search(model, torch.tensor([[[0.0]]]), torch.zeros(1, 1, dtype=torch.bool), trie,
                                beam_size=5, exclude=[seen])
    assert (items[0] >= 0).all() and np.isfinite(scores[0]).all()
    assert not set(items[0].tolist()) & set(seen.tolist())
    assert items[0].tolist() == [item for _, item in brute_force(model, ids, trie, 0, exclude=set(seen.tolist()))][:5]


def test_item_paths_and_counts_describe_the_trie():
    ids = add_dedup_token(np.array([[0, 1, 0], [0, 1, 0], [0, 2, 1], [1, 0, 0]]))
    trie = PrefixTrie.build(ids)
    for item, path in enumerate(trie.item_paths):
        node = 0
        for level, token in enumerate(ids[item]):
            node = trie.children[level][node, token]
            assert path[level] == node
    assert [below.tolist() for below in trie.items_below][:2] == [[3, 1], [2, 1, 1]]


def test_property_every_beam_is_a_real_item_of_a_random_trie():
    rng = np.random.default_rng(7)
    torch.manual_seed(0)
    for trial in range(12):
        vocab = [int(v) for v in rng.integers(2, 9, size=3)]
        ids = random_ids(rng, int(rng.integers(1, 60)), vocab)
        n = len(ids)
        trie = PrefixTrie.build(ids)
        model = TigerSeq2Seq(trie.vocab, d_model=16, heads=2, encoder_layers=1, decoder_layers=1, ff_dim=16,
                             dropout=0.0, max_history=3, user_buckets=5).eval()
        batch = 3
        history = torch.stack([torch.as_tensor(ids[rng.integers(n, size=3)]) for _ in range(batch)])
        memory, mask = model.encode(history, torch.zeros(batch, 3, dtype=torch.bool), torch.arange(batch))
        beam = int(rng.integers(1, 15))
        exclude = [rng.choice(n, size=min(n, 2), replace=False) for _ in range(batch)]
        temps = [None, (1.0, 1.0, 1.0, 1.0), (0.5, 2.0, 1.0, 3.0)][trial % 3]
        for exc in (None, exclude):
            def search(width):
                return beam_search(model, memory, mask, trie, width, exclude=exc, temperatures=temps,
                                   generator=torch.Generator().manual_seed(trial))

            items, scores = search(beam)
            # With a beam as wide as the catalogue nothing is pruned: every allowed item comes out once.
            every, every_scores = search(n + 1)
            assert items.shape == (batch, beam)
            for row in range(batch):
                found = items[row][items[row] >= 0]
                assert len(set(found.tolist())) == len(found)  # no item twice
                assert all(trie.item(ids[i].tolist()) == i for i in found)
                assert np.all(np.isfinite(scores[row][items[row] >= 0]))
                assert np.all(items[row][len(found):] == -1)  # found items come first
                allowed = set(range(n)) - (set(exc[row].tolist()) if exc is not None else set())
                full = every[row][every[row] >= 0]
                assert sorted(full.tolist()) == sorted(allowed)
                # An item's score is its path's log-probability whatever the beam width.
                score_of = dict(zip(full.tolist(), every_scores[row][:len(full)]))
                np.testing.assert_allclose(scores[row][:len(found)], [score_of[i] for i in found.tolist()],
                                           rtol=1e-5, atol=1e-5)
                if temps is None:
                    for ranked in (scores[row][:len(found)], every_scores[row][:len(full)]):
                        assert np.all(np.diff(ranked) <= 1e-6)  # best first
                if exc is None:
                    assert len(found) == min(beam, n)  # K beams are K items when K items exist
                else:
                    assert not set(found.tolist()) & set(exc[row].tolist())


def test_temperature_sampling_is_seeded_and_spreads_out():
    rng = np.random.default_rng(3)
    ids = random_ids(rng, 60, (6, 6, 6))
    trie = PrefixTrie.build(ids)
    model = TableModel(trie.vocab, seed=2)
    memory = torch.zeros(1, 1, 1)
    mask = torch.zeros(1, 1, dtype=torch.bool)
    hot = (5.0,) * 4
    a, _ = beam_search(model, memory, mask, trie, 5, temperatures=hot, generator=torch.Generator().manual_seed(0))
    b, _ = beam_search(model, memory, mask, trie, 5, temperatures=hot, generator=torch.Generator().manual_seed(0))
    assert np.array_equal(a, b)
    draws = {tuple(beam_search(model, memory, mask, trie, 5, temperatures=hot,
                               generator=torch.Generator().manual_seed(s))[0][0].tolist()) for s in range(6)}
    assert len(draws) > 1
    assert all(-1 not in draw for draw in draws)  # every draw is 5 items, no empty slot
