"""Invariants of the model parts: the scorer is the paper's MLP, the quantizer round-trips."""
import numpy as np
import pytest
import torch

from sparcode.config import DEAD_CODE_SHARE, ConfigError, RunConfig
from sparcode.encoder.quantizer import ProductQuantizer
from sparcode.encoder.scorer import AllToAllScorer


@pytest.mark.parametrize("linear_skip", [False, True])
def test_scorer_equals_mlp_on_concatenated_products(linear_skip):
    torch.manual_seed(0)
    scorer = AllToAllScorer(dim=8, item_tokens=3, hidden=5, linear_skip=linear_skip)
    with torch.no_grad():
        scorer.b1.normal_()
        scorer.b2.fill_(0.3)
        if linear_skip:
            scorer.w0.normal_()
    users = torch.randn(4, 8)
    items = torch.randn(6, 3, 8)
    # The definition: S = w2 · ReLU(W1 [t ⊙ c_1; t ⊙ c_2; t ⊙ c_3] + b1) + b2 (+ w0 · [...])
    concat = (users[:, None, None, :] * items[None]).reshape(4, 6, 24)
    expected = torch.relu(concat @ scorer.w1.T + scorer.b1) @ scorer.w2 + scorer.b2
    if linear_skip:
        expected = expected + concat @ scorer.w0
    assert torch.allclose(scorer.all_pairs(users, items), expected, atol=1e-5)
    with torch.no_grad():  # export's blocked path: b1 folded into the GEMM, items in slabs
        assert torch.allclose(scorer.all_pairs(users, items), expected, atol=1e-5)
    paired = scorer.paired(users, items[:4])
    assert torch.allclose(paired, expected.diagonal(), atol=1e-5)


@pytest.mark.parametrize("linear_skip", [False, True])
def test_blocked_scoring_covers_every_item_across_slabs(linear_skip):
    torch.manual_seed(1)
    scorer = AllToAllScorer(dim=4, item_tokens=2, hidden=3, linear_skip=linear_skip)
    if linear_skip:
        torch.nn.init.normal_(scorer.w0)
    users, items = torch.randn(5, 4), torch.randn(601, 2, 4)  # 601: three slabs, the last partial
    with torch.no_grad():
        blocked = scorer._all_pairs_blocked(users, items, item_block=256)
    assert torch.allclose(blocked, scorer.all_pairs(users, items), atol=1e-5)


@pytest.mark.parametrize("linear_skip", [False, True])
def test_code_tables_score_a_product_code_as_the_scorer_scores_its_codeword(linear_skip):
    from sparcode.encoder.code_tables import CodeTables

    torch.manual_seed(2)
    scorer = AllToAllScorer(dim=6, item_tokens=2, hidden=5, linear_skip=linear_skip)
    with torch.no_grad():
        scorer.b1.normal_()
        scorer.b2.fill_(-0.7)
        if linear_skip:
            scorer.w0.normal_()
    codebook = torch.randn(3, 4, 2)  # M = 3 codebooks of N = 4 codes, 2 dims each
    items = torch.randn(13, 2, 6)  # 13 items: the last block of 8 is partial
    codes = torch.tensor([[a, b, c] for a in range(4) for b in range(4) for c in range(4)])
    # A code's token is its M sub-codewords side by side.
    words = torch.cat([codebook[m][codes[:, m]] for m in range(3)], dim=1)
    with torch.no_grad():
        tables = CodeTables(scorer, codebook, items, item_block=8)
        assert torch.allclose(tables.scores(codes), scorer.all_pairs(words, items), atol=1e-5)
        assert tables.scores(codes[:1]).shape == (1, 13)


def test_code_scorer_keeps_the_gemm_when_the_tables_would_pass_the_budget(tmp_path, monkeypatch):
    from sparcode.encoder import code_tables
    from sparcode.encoder.serving import code_scorer

    model = _tiny_sparcode(tmp_path)
    codes = torch.tensor([[a, b] for a in range(4) for b in range(4)])
    with torch.no_grad():
        items = model.item_tokens()
        assert code_tables.CodeTables.nbytes(model.scorer, model.quantizer.codebook, len(items)) > 64
        within_budget = code_scorer(model, items)
        monkeypatch.setattr(code_tables, "TABLE_BUDGET_BYTES", 64)
        over_budget = code_scorer(model, items)
        by_tables, by_gemm = within_budget.scores(codes), over_budget.scores(codes)
    assert (within_budget.method, over_budget.method) == ("tables", "gemm")
    with torch.no_grad():
        expected = model.scorer.all_pairs(model.quantizer.decode(codes), items)
    assert torch.equal(by_gemm, expected)
    assert torch.allclose(by_tables, expected, atol=1e-5)


def test_index_sample_is_a_seeded_sorted_subset():
    from sparcode.encoder.serving import index_sample

    codes = np.array([[a, b] for a in range(8) for b in range(8)])
    assert index_sample(codes, None) is codes and index_sample(codes, 64) is codes
    sample = index_sample(codes, 10)
    assert len(sample) == 10 and len(np.unique(sample, axis=0)) == 10
    assert sample.tolist() == sorted(sample.tolist())  # codes stay in term order
    assert set(map(tuple, sample)) <= set(map(tuple, codes))
    assert np.array_equal(index_sample(codes, 10), sample)  # export and evaluate draw the same codes
    assert not np.array_equal(sample, codes[:10])


def test_posting_cap_keeps_each_codes_best_scores_in_item_order():
    from sparcode.encoder.serving import _cap_postings
    scores = np.array([[0.5, 0.9, 0.0, 0.9, 0.1],
                       [0.0, 0.0, 0.0, 0.2, 0.0],
                       [0.3, 0.4, 0.5, 0.6, 0.7]], dtype=np.float32)
    rows, cols = np.nonzero(scores > 0)
    rows, cols = _cap_postings(scores, rows, cols, cap=2)
    # Code 0: the two 0.9s (tie with 0.5 excluded); code 1: its only posting; code 2: 0.6, 0.7.
    assert rows.tolist() == [0, 0, 1, 2, 2]
    assert cols.tolist() == [1, 3, 3, 3, 4]
    ties = np.array([[0.5, 0.5, 0.5]], dtype=np.float32)
    r, c = _cap_postings(ties, *np.nonzero(ties > 0), cap=2)
    assert c.tolist() == [0, 1]  # equal scores: lower item index wins, deterministically


def test_flops_per_pair_counts_both_layers():
    scorer = AllToAllScorer(dim=64, item_tokens=2, hidden=32)
    assert scorer.flops_per_pair() == 2 * 32 * 128 + 4 * 32
    assert AllToAllScorer(dim=64, item_tokens=2, hidden=32, linear_skip=True).flops_per_pair() == 2 * 32 * 128 + 4 * 32 + 2 * 128


def _trained_quantizer():
    torch.manual_seed(0)
    pq = ProductQuantizer(dim=8, codebooks=2, codes=16, decay=0.9, commit_weight=0.25, kmeans_iters=5,
                          dead_code_threshold=0.0)
    pq.train()
    pq(torch.randn(64, 4, 8))  # k-means init on the first batch
    pq.eval()
    return pq


def _codewords_that_jump(threshold: float) -> int:
    """Codewords that move > 0.5 over the last 50 of 300 steps of a stationary stream: 16
    well-separated clusters, 8 vectors per step, so each of 16 codes is used 0.5 times per step."""
    torch.manual_seed(0)
    centres = torch.randn(16, 8) * 3
    pq = ProductQuantizer(dim=8, codebooks=1, codes=16, decay=0.9, commit_weight=0.25, kmeans_iters=5,
                          dead_code_threshold=threshold)
    pq.train()
    for step in range(300):
        pq((centres[torch.randint(0, 16, (8,))] + 0.05 * torch.randn(8, 8))[:, None])
        if step == 249:
            before = pq.codebook.clone()
    return int((pq.codebook - before).norm(dim=-1).gt(0.5).sum())


def test_dead_code_threshold_follows_the_batch_shape():
    from sparcode.presets import run_config

    cfg = run_config("sparcode", "ml-1m", "multi-target")
    uniform_rate = cfg.train.batch_size * cfg.model.user_tokens / cfg.model.codes
    assert cfg.model.dead_code_threshold == pytest.approx(DEAD_CODE_SHARE * uniform_rate)
    explicit = RunConfig.from_dict({"model": {"dead_code_threshold": 2.0}}).validate()
    assert explicit.model.dead_code_threshold == 2.0
    # At 0.5 uses per code per step, an absolute threshold of 2 re-seeds nearly every code every
    # step, so the codebook never settles; a tenth of the uniform rate lets it converge.
    assert _codewords_that_jump(2.0) >= 12
    assert _codewords_that_jump(DEAD_CODE_SHARE * 8 / 16) == 0


def test_presets_layer_model_then_dataset_then_config_file_then_flags(tmp_path):
    from sparcode.presets import run_config

    ml1m = run_config("sparcode", "ml-1m", "multi-target")
    assert ml1m.train.epochs == 10
    beauty = run_config("sparcode", "beauty", "leave-one-out")
    assert (beauty.train.epochs, beauty.train.patience, beauty.train.select_metric) == (20, 3, "recall@10")
    assert (beauty.model.codebooks, beauty.serve.stored_fraction, beauty.train.window_fraction) == (8, 0.005, 1.0)
    assert ml1m.train.window_fraction == 0.4
    # ml-1m: 8 codebooks give nearly one code per window, so its index holds a sample of them.
    assert (ml1m.model.codebooks, ml1m.serve.stored_fraction, ml1m.serve.max_codes) == (8, 0.02, 50_000)
    assert beauty.serve.max_codes is None
    # The unindexed upper bound trains as SparCode does on every dataset.
    assert run_config("all-to-all", "beauty", "leave-one-out").train == beauty.train
    assert run_config("all-to-all", "ml-1m", "multi-target").train == ml1m.train
    # ml-1m's neural models train on each window's next 10 items; Beauty was measured on 1.
    assert {run_config(m, "ml-1m", "multi-target").train.future_targets for m in ("sparcode", "two-tower")} == {10}
    assert beauty.train.future_targets == run_config("two-tower", "beauty", "leave-one-out").train.future_targets == 1
    override = {"train": {"epochs": 5}}
    from_file = run_config("sparcode", "beauty", "leave-one-out", override)
    assert (from_file.train.epochs, from_file.train.patience) == (5, 3)
    assert run_config("sparcode", "beauty", "leave-one-out", override, epochs=7).train.epochs == 7


def test_quantizer_is_a_product_quantizer_round_trip():
    pq = _trained_quantizer()
    tokens = torch.randn(10, 4, 8)
    quantized, codes, _ = pq(tokens)
    assert codes.shape == (10, 4, 2)
    # decode(codes) is exactly what the scorer sees, and encode() finds the same codes.
    assert torch.allclose(pq.decode(codes), quantized, atol=1e-6)
    assert torch.equal(pq.encode(tokens), codes)
    # Each half is nearest in its own codebook: no other codeword is closer.
    book = pq.codebook
    for m in range(2):
        sub = tokens[..., m * 4:(m + 1) * 4]
        dists = ((sub.unsqueeze(-2) - book[m]) ** 2).sum(-1)
        assert torch.equal(dists.argmin(-1), codes[..., m])
    # A codeword quantizes to itself.
    assert torch.equal(pq.encode(pq.decode(codes)), codes)


def test_quantizer_tracks_usage_per_epoch():
    pq = _trained_quantizer()
    pq.train()
    pq.usage_stats()  # drop the k-means batch: the epoch under test starts here
    # Few vectors per batch, so the histogram is uneven and some codes go unused: a count or
    # perplexity that ignored the data could not match.
    batches = [torch.randn(2, 4, 8), torch.randn(3, 4, 8) * 2.0]
    codes = torch.cat([pq(b)[1].reshape(-1, 2) for b in batches]).numpy()
    stats = pq.usage_stats()
    for m in range(2):
        counts = np.bincount(codes[:, m], minlength=16)
        assert 1 < (counts > 0).sum() < 16 and counts.max() > 1
        p = counts[counts > 0] / counts.sum()
        assert stats[f"codes_used_{m}"] == (counts > 0).sum()
        assert stats[f"perplexity_{m}"] == pytest.approx(float(np.exp(-(p * np.log(p)).sum())), rel=1e-5)
    assert pq.usage.sum() == 0  # reset after reading
    pq.eval()
    pq(torch.randn(4, 4, 8))
    assert pq.usage.sum() == 0  # evaluation batches are not part of the training epoch


def test_quantizer_straight_through_reaches_tokens():
    pq = _trained_quantizer()
    pq.train()
    tokens = torch.randn(5, 4, 8, requires_grad=True)
    quantized, _, _ = pq(tokens)
    # The task loss alone: the commitment loss would give tokens a gradient even if the
    # straight-through path were cut. Straight-through passes d(sum)/d(quantized) = 1 unchanged.
    quantized.sum().backward()
    assert tokens.grad is not None and torch.equal(tokens.grad, torch.ones_like(tokens))


def test_cosine_schedule_starts_at_lr_and_ends_at_the_floor():
    from sparcode.encoder.train import learning_rate

    cfg = RunConfig.from_dict({"train": {"lr": 1e-3, "lr_schedule": "cosine", "lr_floor": 0.1}}).validate()
    rates = [learning_rate(cfg, step, 100) for step in range(101)]
    assert rates[0] == pytest.approx(1e-3) and rates[100] == pytest.approx(1e-4)
    assert rates[50] == pytest.approx(0.55e-3)  # halfway down the cosine: floor + half the span
    assert all(a >= b for a, b in zip(rates, rates[1:]))
    assert learning_rate(cfg, 500, 100) == pytest.approx(1e-4)  # past the plan: stays at the floor
    constant = RunConfig.from_dict({"train": {"lr": 1e-3}}).validate()
    assert learning_rate(constant, 77, 100) == 1e-3
    with pytest.raises(ConfigError, match="lr_schedule"):
        RunConfig.from_dict({"train": {"lr_schedule": "linear"}}).validate()


def test_config_rejects_unknown_keys_and_bad_values(tmp_path):
    with pytest.raises(ConfigError, match="unknown key"):
        RunConfig.from_dict({"train": {"epochz": 3}})
    with pytest.raises(ConfigError, match="divisible"):
        RunConfig.from_dict({"model": {"dim": 63}}).validate()
    path = tmp_path / "c.json"
    RunConfig.from_dict({"seed": 7, "model": {"user_tokens": 2}}).save(path)
    loaded = RunConfig.load(path)
    assert loaded.seed == 7 and loaded.model.user_tokens == 2
    path.write_text("{not json")
    with pytest.raises(ConfigError, match="not valid JSON"):
        RunConfig.load(path)


def test_featurefield_truncation_keeps_nine_bits():
    from sparcode.featurefield import storable, truncate

    values = np.array([1.0, 1.00390625, 1.0029, 0.0, -1.0, 3.4e-39], dtype=np.float32)
    out = truncate(values)
    assert out[0] == 1.0 and out[1] == np.float32(1.00390625)  # exactly representable in 9 bits
    assert out[2] == 1.0  # 1.0029 loses its low bits
    assert storable(values).tolist() == [True, True, True, False, False, False]


@pytest.mark.parametrize("tokenizer", ["dnn", "interests"])
def test_served_codes_are_the_codes_the_model_quantizes_to(tmp_path, tokenizer):
    """Serving encodes users outside the training forward pass; it must land on the very codes
    the model's own quantized tokens use (it once skipped the token normalisation)."""
    import numpy as np

    from sparcode.config import ModelConfig
    from sparcode.data.readers import load_dataset
    from sparcode.data.splits import make_split
    from sparcode.encoder.models import build_model
    from sparcode.encoder.serving import user_codes

    rng = np.random.default_rng(0)
    lines = [f"u{u} " + " ".join(f"i{i}" for i in rng.choice(30, 8, replace=False)) for u in range(40)]
    (tmp_path / "sequences.txt").write_text("\n".join(lines) + "\n")
    dataset = load_dataset(tmp_path)
    split = make_split(dataset, "leave-one-out", seed=0, max_history=5)
    torch.manual_seed(0)
    model = build_model(ModelConfig(dim=16, codebooks=2, codes=8, user_tokens=3, scorer_hidden=8, dead_code_threshold=2.0,
                                    tokenizer=tokenizer, kmeans_iters=2), dataset, 5)
    train = split.train
    users, histories = torch.as_tensor(train.users[:64]), torch.as_tensor(train.histories[:64])
    model.train()
    model.user_tokens(users, histories)  # k-means initialises the codebooks on the first batch
    model.eval()
    with torch.no_grad():
        quantized, codes = model.user_tokens(users, histories)
    served = user_codes(model, train.users[:64], train.histories[:64], torch.device("cpu"))
    assert np.array_equal(served, codes.numpy())
    assert torch.allclose(model.quantizer.decode(torch.as_tensor(served)), quantized, atol=1e-6)


def test_token_similarity_is_the_mean_squared_cosine_of_distinct_tokens():
    from sparcode.encoder.models import SparCode

    orthogonal = torch.eye(3).unsqueeze(0) * 5.0  # one user, three orthogonal tokens
    assert SparCode._token_similarity(orthogonal).item() == pytest.approx(0.0)
    same = torch.ones(2, 4, 3)  # every token equal: cosine 1
    assert SparCode._token_similarity(same).item() == pytest.approx(1.0)
    # Tokens (1,0), (1,1), (0,1): cosines 1/√2, 0, 1/√2 → mean square over ordered pairs = 1/3.
    mixed = torch.tensor([[[1.0, 0.0], [1.0, 1.0], [0.0, 1.0]]])
    assert SparCode._token_similarity(mixed).item() == pytest.approx(1 / 3)


def test_diversity_penalty_enters_the_training_loss_only(tmp_path):
    from sparcode.config import ModelConfig
    from sparcode.data.readers import load_dataset
    from sparcode.encoder.models import SparCode, build_model

    lines = [f"u{u} " + " ".join(f"i{(u + k) % 20}" for k in range(6)) for u in range(10)]
    (tmp_path / "sequences.txt").write_text("\n".join(lines) + "\n")
    dataset = load_dataset(tmp_path)
    users, histories = torch.arange(4), torch.randint(0, dataset.n_items, (4, 5))
    losses = {}
    for weight in (0.0, 2.0):
        torch.manual_seed(0)
        cfg = ModelConfig(kind="all-to-all", dim=8, codebooks=2, codes=4, user_tokens=3, scorer_hidden=4, dead_code_threshold=2.0,
                          tokenizer="interests", token_diversity=weight, dropout=0.0)
        model = build_model(cfg, dataset, 5)
        model.train()
        tokens, _ = model.user_tokens(users, histories)
        losses[weight] = model.aux_loss.item()
        expected = weight * SparCode._token_similarity(tokens).item()
        assert losses[weight] == pytest.approx(expected, rel=1e-5)
        model.eval()
        model.user_tokens(users, histories)
        assert model.aux_loss.item() == 0.0  # evaluation never pays the penalty
    assert losses[2.0] > 0.0 and losses[0.0] == 0.0


def _tiny_sparcode(tmp_path):
    from sparcode.config import ModelConfig
    from sparcode.data.readers import load_dataset
    from sparcode.encoder.models import build_model

    rng = np.random.default_rng(0)
    lines = [f"u{u} " + " ".join(f"i{i}" for i in rng.choice(60, 8, replace=False)) for u in range(40)]
    (tmp_path / "sequences.txt").write_text("\n".join(lines) + "\n")
    dataset = load_dataset(tmp_path)
    torch.manual_seed(0)
    model = build_model(ModelConfig(dim=8, codebooks=2, codes=4, user_tokens=2, scorer_hidden=4, dead_code_threshold=2.0, tokenizer="dnn",
                                    kmeans_iters=2), dataset, 5)
    model.train()
    model.user_tokens(torch.arange(32), torch.randint(0, dataset.n_items, (32, 5)))  # k-means init
    model.eval()
    return model


def test_per_code_allocation_keeps_each_codes_best_items_in_every_shard(tmp_path):
    from sparcode.encoder.serving import build_postings, code_item_scores
    from sparcode.featurefield import storable, truncate

    model = _tiny_sparcode(tmp_path)
    codes = np.array([[a, b] for a in range(4) for b in range(4)])
    device = torch.device("cpu")
    n = model.n_items
    whole = build_postings(model, codes, device, None, 0.1, None, progress=False)
    scores = code_item_scores(model, codes, device).numpy()
    # Per-code allocation puts b̃ at the median S over all (code, item) pairs.
    assert whole.bias == pytest.approx(-np.quantile(scores.astype(np.float64), 0.5), rel=1e-6)
    # The rule: an item is kept for a code when its S is at least that code's k-th best S and
    # its truncated ReLU(S + b̃) is storable; kept in item order.
    k = int(np.ceil(0.1 * n))
    kth = -np.sort(-scores, axis=1)[:, k - 1]
    stored = truncate(np.maximum(scores + np.float32(whole.bias), 0))
    expected = (scores >= kth[:, None]) & storable(stored)
    assert expected.sum(axis=1).min() >= 1

    def check(postings, items):
        for row in range(len(codes)):
            kept, values = postings.row(row)
            assert kept.tolist() == items[expected[row, items]].tolist(), row
            assert np.array_equal(values, stored[row, kept])

    check(whole, np.arange(n))
    # Shards choose the same b̃ and thresholds, so each stores exactly its items' share of the
    # whole export.
    for shard in range(3):
        items = np.arange(n)[shard::3]
        part = build_postings(model, codes, device, None, 0.1, None, items=items, progress=False)
        assert part.bias == whole.bias
        check(part, items)


def test_global_allocation_stores_the_requested_fraction(tmp_path):
    from sparcode.encoder.serving import build_postings

    model = _tiny_sparcode(tmp_path)
    codes = np.array([[a, b] for a in range(4) for b in range(4)])
    postings = build_postings(model, codes, torch.device("cpu"), None, 0.2, None, progress=False, allocation="global")
    assert postings.pairs / (len(codes) * model.n_items) == pytest.approx(0.2, abs=0.02)


def test_code_table_nearest_to_orders_codes_by_distance_with_stable_ties():
    from sparcode.codes_fallback import CodeTable

    vectors = np.array([[0.0, 0.0], [1.0, 0.0], [0.0, 2.0], [1.0, 0.0]], dtype=np.float32)
    table = CodeTable(np.array(["c0000_0000", "c0001_0000", "c0000_0001", "c0001_0001"]), vectors,
                      np.zeros((2, 2, 1), np.float32))
    rows = table.nearest_to(np.array([[0.9, 0.1], [0.0, 1.9]], dtype=np.float32), 3)
    # Rows 1 and 3 share a codeword: the earlier row wins the tie.
    assert rows.tolist() == [[1, 3, 0], [2, 0, 1]]
    assert table.nearest_to(np.zeros((1, 2), np.float32), 10).tolist() == [[0, 1, 3, 2]]


def test_multi_probe_queries_send_each_tokens_nearest_indexed_codes(tmp_path):
    from sparcode.encoder.serving import code_table, query_for, user_codes, user_queries

    model = _tiny_sparcode(tmp_path)
    codes = np.array([[a, b] for a in range(4) for b in range(4)])
    table = code_table(model, codes)  # every code indexed: one probe is the token's own code
    users, histories = np.arange(6), np.random.default_rng(1).integers(0, model.n_items, (6, 5))
    device = torch.device("cpu")
    one = user_queries(model, users, histories, device, table, probes=1)
    assert one == [query_for(c) for c in user_codes(model, users, histories, device)]
    three = user_queries(model, users, histories, device, table, probes=3)
    with torch.no_grad():
        tokens = model.pre_quantization_tokens(torch.as_tensor(users), torch.as_tensor(histories)).numpy()
    for u in range(6):
        expected: dict[str, float] = {}
        for token in tokens[u]:
            dists = ((table.vectors - token) ** 2).sum(1)
            for row in np.argsort(dists, kind="stable")[:3]:
                expected[table.terms[row]] = expected.get(table.terms[row], 0.0) + 1.0
        assert three[u] == expected
        assert set(one[u]) <= set(three[u])  # the token's own code is its nearest


def _input_gradient(gradient: str, tokens: torch.Tensor, upstream: torch.Tensor):
    torch.manual_seed(0)
    pq = ProductQuantizer(dim=8, codebooks=2, codes=16, decay=0.9, commit_weight=0.0, kmeans_iters=5,
                          dead_code_threshold=0.0, gradient=gradient)
    pq.train()
    pq(torch.randn(64, 1, 8))  # the same k-means init for both
    x = tokens.clone().requires_grad_(True)
    quantized, codes, _ = pq(x)
    (quantized * upstream).sum().backward()
    return quantized.detach(), codes, x.grad


def test_rotation_gradient_changes_only_the_backward_pass():
    tokens, upstream = torch.randn(32, 1, 8), torch.randn(32, 1, 8)
    q_st, codes_st, grad_st = _input_gradient("straight-through", tokens, upstream)
    q_rot, codes_rot, grad_rot = _input_gradient("rotation", tokens, upstream)
    assert torch.equal(codes_st, codes_rot)
    torch.testing.assert_close(q_rot, q_st)
    torch.testing.assert_close(grad_st, upstream)  # the identity: the paper's sg[·]
    assert not torch.allclose(grad_rot, upstream, atol=1e-3)
    # The rotation maps each sub-vector onto its codeword: per head the gradient is rotated and
    # scaled by ‖codeword‖ / ‖token‖, so its norm scales by exactly that ratio.
    subs = lambda t: t.reshape(32, 2, 4)
    ratio = subs(q_st).norm(dim=-1) / subs(tokens).norm(dim=-1)
    torch.testing.assert_close(subs(grad_rot).norm(dim=-1), ratio * subs(upstream).norm(dim=-1), rtol=1e-4, atol=1e-5)


def test_unknown_quantizer_gradient_is_a_config_error():
    with pytest.raises(ConfigError, match="quantizer_gradient"):
        RunConfig.from_dict({"model": {"quantizer_gradient": "gumbel"}}).validate()


def test_codebook_seeding_clusters_many_windows_once(tmp_path):
    """`model.kmeans_init_windows`: k-means over many windows' tokens gives N distinct codewords
    that fit those tokens better than the first batch's few, touches no parameter, and is not
    redone by the first training step."""
    from sparcode.config import ModelConfig
    from sparcode.data.readers import load_dataset
    from sparcode.data.splits import make_split
    from sparcode.encoder.models import build_model
    from sparcode.encoder.train import seed_codebooks

    rng = np.random.default_rng(0)
    lines = [f"u{u} " + " ".join(f"i{i}" for i in rng.choice(60, 10, replace=False)) for u in range(60)]
    (tmp_path / "sequences.txt").write_text("\n".join(lines) + "\n")
    dataset = load_dataset(tmp_path)
    train = make_split(dataset, "leave-one-out", seed=0, max_history=5).train
    windows = 300
    assert len(train) >= windows
    cfg = ModelConfig(dim=8, codebooks=2, codes=16, user_tokens=1, scorer_hidden=4, tokenizer="dnn", kmeans_iters=10,
                      ema_decay=1.0, dead_code_threshold=0.0)  # the codebook moves only if k-means runs again

    def fresh():
        torch.manual_seed(0)
        return build_model(cfg, dataset, 5)

    def distortion(model, rows):
        model.eval()
        with torch.no_grad():
            tokens = model.pre_quantization_tokens(torch.as_tensor(train.users[rows]), torch.as_tensor(train.histories[rows]))
            quantized = model.quantizer.decode(model.quantizer.encode(tokens))
        model.train()
        return float((tokens - quantized).pow(2).sum(-1).mean())

    seeded = fresh()
    params = {k: v.clone() for k, v in seeded.named_parameters()}
    seed_codebooks(seeded, train, windows, seed=0, device=torch.device("cpu"), chunk=64)  # 5 chunks
    assert seeded.training
    assert all(torch.equal(v, params[k]) for k, v in seeded.named_parameters())
    assert int(seeded.quantizer.usage.sum()) == 0  # the init is not a training step
    book = seeded.quantizer.codebook.clone()
    for m in range(cfg.codebooks):
        assert torch.unique(book[m], dim=0).shape[0] == cfg.codes

    first_batch = fresh()
    eight = np.arange(8)
    first_batch.user_tokens(torch.as_tensor(train.users[eight]), torch.as_tensor(train.histories[eight]))  # 8 tokens, 16 codes
    every = np.arange(len(train))
    assert distortion(seeded, every) < 0.5 * distortion(first_batch, every)

    seeded.user_tokens(torch.as_tensor(train.users[eight]), torch.as_tensor(train.histories[eight]))
    assert torch.equal(seeded.quantizer.codebook, book)


def test_a_first_batch_smaller_than_the_codebook_inits_without_a_word():
    """The library warns (through loguru, onto the progress bar) whenever k-means init has fewer
    vectors than codes; sparcode does that by design, so the warning must not show."""
    from loguru import logger

    heard = []
    sink = logger.add(heard.append, level="DEBUG")  # whatever loguru would print, it hands here too
    try:
        pq = ProductQuantizer(dim=8, codebooks=2, codes=16, decay=0.9, commit_weight=0.25, kmeans_iters=5,
                              dead_code_threshold=0.0)
        pq.train()
        pq(torch.randn(2, 4, 8))  # 8 vectors for 16 codes
    finally:
        logger.remove(sink)
    assert not [message for message in heard if "duplicates will be sampled" in message]


def test_a_profile_value_only_held_out_users_have_stays_absent_through_training(tmp_path):
    """A value no training user holds gets no gradient; it must act as padding, not as its
    random initial vector (which would move every held-out user holding it)."""
    import json

    from click.testing import CliRunner

    from sparcode.cli import main
    from sparcode.data.readers import load_dataset
    from sparcode.data.splits import make_split
    from sparcode.encoder.runs import open_run

    rng = np.random.default_rng(0)
    lines = [f"u{u} " + " ".join(f"i{i}" for i in rng.choice(30, 8, replace=False)) for u in range(60)]
    (tmp_path / "sequences.txt").write_text("\n".join(lines) + "\n")
    (tmp_path / "users.tsv").write_text("".join(f"u{u}\tcountry=c{u % 3}\n" for u in range(60)))
    config = tmp_path / "tiny.json"
    config.write_text(json.dumps({"model": {"dim": 8, "tokenizer": "dnn"},
                                  "train": {"epochs": 1, "batch_size": 32, "negatives": 8, "max_history": 5, "threads": 1}}))
    run_dir = tmp_path / "run"
    # Multi-target holds out a tenth of the users; give one of them a country of its own.
    held_out = load_dataset(tmp_path).user_ids[make_split(load_dataset(tmp_path), "multi-target", seed=0).test.users[0]]
    rows = [f"u{u}\tcountry={'only-here' if f'u{u}' == held_out else f'c{u % 3}'}\n" for u in range(60)]
    (tmp_path / "users.tsv").write_text("".join(rows))

    result = CliRunner().invoke(main, ["train", "--model", "two-tower", "--dataset", str(tmp_path), "--split", "multi-target",
                                       "--out", str(run_dir), "--config", str(config), "--quiet"])
    assert result.exit_code == 0, result.output
    run = open_run(run_dir)
    model, _ = run.load_model()
    feature = run.dataset.user_features[0]
    table = model.profile.features.tables[0].weight
    assert torch.count_nonzero(table[feature.vocab.index("only-here")]) == 0
    assert all(torch.count_nonzero(table[feature.vocab.index(f"c{c}")]) > 0 for c in range(3))


def test_a_silenced_value_leaves_the_mean_of_a_users_other_values_whole():
    from sparcode.data.readers import categorical
    from sparcode.encoder.features import FeatureBag

    torch.manual_seed(0)
    # user 0 (training) has tag a; user 1 (held out) has a and a tag only held-out users have.
    bag = FeatureBag([categorical("tags", [["a"], ["a", "held"]])], dim=4)
    assert bag.silence_values_absent_from([0]) == 1
    pooled = bag(torch.tensor([0, 1]))
    assert torch.equal(pooled[1], pooled[0])  # not halved by a value that was never trained
