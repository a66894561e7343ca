"""The dense all-action loss (train.future_targets): which items count as a window's upcoming
positives, that one upcoming item is exactly the next-item loss, and the masking by hand."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from sparcode.data.splits import sliding_windows
from sparcode.encoder.train import SampledSoftmax


def test_upcoming_items_stay_inside_their_own_sequence():
    ex = sliding_windows([np.array([5, 6, 7]), np.array([8, 9])], np.array([10, 11]), width=2, padding=99)
    assert ex.upcoming(np.arange(3), 3, padding=99).tolist() == [[6, 7, 99], [7, 99, 99], [9, 99, 99]]
    assert ex.upcoming(np.array([2, 0]), 1, padding=99).tolist() == [[9], [6]]


def _model(tmp_path, kind):
    from sparcode.config import ModelConfig
    from sparcode.data.readers import load_dataset
    from sparcode.encoder.models import build_model

    rng = np.random.default_rng(1)
    lines = [f"u{u} " + " ".join(f"i{i}" for i in rng.choice(30, 8, replace=False)) for u in range(20)]
    (tmp_path / "sequences.txt").write_text("\n".join(lines) + "\n")
    dataset = load_dataset(tmp_path)
    torch.manual_seed(0)
    model = build_model(ModelConfig(kind=kind, dim=8, user_tokens=1, scorer_hidden=4, tokenizer="dnn", dropout=0.0),
                        dataset, 5)
    return model.eval(), dataset


@pytest.mark.parametrize("kind", ["all-to-all", "two-tower"])
@pytest.mark.parametrize("negatives,in_batch", [(12, True), (12, False), (0, False)])
def test_one_upcoming_item_is_the_next_item_loss(tmp_path, kind, negatives, in_batch):
    model, dataset = _model(tmp_path, kind)
    popularity = np.random.default_rng(2).dirichlet(np.ones(dataset.n_items))
    sampler = SampledSoftmax(popularity, negatives, in_batch, "cpu")
    users = torch.arange(6)
    histories = torch.randint(0, dataset.n_items, (6, 5), generator=torch.Generator().manual_seed(3))
    positives = torch.tensor([0, 3, 3, 7, 11, 2])  # a repeated positive exercises the accidental-hit mask
    cands, log_q = sampler.candidates(positives, torch.Generator().manual_seed(4))
    with torch.no_grad():
        next_item = sampler.loss(model, users, histories, positives, cands, log_q)
        upcoming = sampler.upcoming_loss(model, users, histories, positives[:, None], cands, log_q)
    assert upcoming.item() == pytest.approx(next_item.item(), rel=1e-5)


def test_each_upcoming_item_competes_with_the_negatives_but_not_with_its_siblings(tmp_path):
    model, dataset = _model(tmp_path, "two-tower")
    sampler = SampledSoftmax(np.full(dataset.n_items, 1 / dataset.n_items), 0, False, "cpu")
    users, histories = torch.arange(2), torch.randint(0, dataset.n_items, (2, 5), generator=torch.Generator().manual_seed(5))
    pad = dataset.padding_item
    upcoming = torch.tensor([[4, 9, 1], [6, pad, pad]])
    with torch.no_grad():
        loss = sampler.upcoming_loss(model, users, histories, upcoming, None, None).item()
        scores = model.score_all(model.encode_users(users, histories), model.item_tokens()).double()
    terms = []
    for row, items in enumerate(upcoming.tolist()):
        positives = [i for i in items if i != pad]
        for item in positives:
            pool = [scores[row, i] for i in range(dataset.n_items) if i == item or i not in positives]
            terms.append(torch.logsumexp(torch.stack(pool), 0).item() - scores[row, item].item())
    assert len(terms) == 4  # padding is no target
    assert loss == pytest.approx(float(np.mean(terms)), rel=1e-5)


def test_training_with_upcoming_targets_learns_the_sequence_order(tmp_path):
    """Every user walks the same cycle of items, so the next items are fully predictable: a few
    epochs on the upcoming-items loss must put them on top (random ranking would put the
    4 targets in a top 5 of 30 items about 17 % of the time)."""
    from sparcode.config import RunConfig
    from sparcode.data.readers import load_dataset
    from sparcode.data.splits import make_split
    from sparcode.encoder import train as training

    lines = [f"u{u} " + " ".join(f"i{(u + k) % 30}" for k in range(20)) for u in range(60)]
    (tmp_path / "sequences.txt").write_text("\n".join(lines) + "\n")
    dataset = load_dataset(tmp_path)
    cfg = RunConfig.from_dict({"model": {"kind": "two-tower", "dim": 16, "tokenizer": "dnn"},
                               "train": {"epochs": 8, "batch_size": 64, "negatives": 0, "future_targets": 3,
                                         "max_history": 5, "threads": 1, "patience": 8, "bf16": False,
                                         "select_metric": "recall@5"}}).validate()
    split = make_split(dataset, "multi-target", seed=0, max_history=5)
    result = training.train(tmp_path / "run", cfg, dataset, split, progress=False)
    assert result["valid_recall@5"] > 0.6
