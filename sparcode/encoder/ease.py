"""EASE (Steck, WWW 2019): a closed-form item-item model, the linear baseline for every split.

    G = XᵀX (binary user × item matrix X),   P = (G + λI)⁻¹,   B_ij = −P_ij / P_jj,   B_ii = 0

A user is scored as x_u B, x_u the binary vector of the last ``history`` items they saw
(None = all of them; on ml-1m the recent 20 beat the full history).

Which users make X (``training_rows``):

* multi-target: the train users' full sequences. ``fold_in=True`` adds the valid/test users'
  ``seen`` prefixes (never their targets): transductive, so off by default to match what the
  learned models see.
* leave-one-out: every user's ``seq[:-2]``. ``fold_in=True`` refits with ``seq[:-1]`` for the
  test users once λ is chosen (the validation item is known at test time); λ is still chosen
  on ``seq[:-2]`` so the validation targets never enter X.

λ is chosen on the validation users by recall@50 (multi-target) or recall@10 (leave-one-out),
once for each way of scoring: with seen items kept and with them excluded. The two differ (on
Beauty, λ = 300 with history kept, 100 with it excluded), and a baseline tuned for the other
protocol understates itself.
"""
from __future__ import annotations

import logging
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from sparcode.data.dataset import Dataset, EvalSet, Split
from sparcode.encoder import checkpoint as ckpt
from sparcode.eval.harness import evaluate_scores

log = logging.getLogger(__name__)

FORMAT = "sparcode-ease/1"
WEIGHTS = "weights.pt"
META = "ease.json"
SELECT_METRIC = {"multi-target": "recall@50", "leave-one-out": "recall@10"}
# Above this many items the inverse is taken in float32: float64 costs more and changed
# P by < 1e-6 relative on Beauty (12,101 items).
FLOAT64_MAX_ITEMS = 8192
# How a run is scored → the key its λ is recorded under.
MODE = {False: "keep_seen", True: "exclude_seen"}


def training_rows(dataset: Dataset, split: Split, part: str = "valid", fold_in: bool = False) -> list[np.ndarray]:
    """The item lists that form X when evaluating ``part`` ("valid" or "test")."""
    seqs = dataset.sequences
    if split.kind == "multi-target":
        rows = [seqs[u] for u in split.train_users]
        if fold_in:
            rows += list(split.valid.seen) + list(split.test.seen)
        return rows
    if split.kind == "leave-one-out":
        cut = 1 if (fold_in and part == "test") else 2
        return [s[:-cut] for s in seqs]
    raise ValueError(f"unknown split kind {split.kind!r}")


def gram_matrix(rows: list[np.ndarray], n_items: int, dtype=torch.float64) -> torch.Tensor:
    """XᵀX for the binary matrix whose row r has ones at ``rows[r]`` (repeats count once)."""
    users = np.repeat(np.arange(len(rows), dtype=np.int64), [len(r) for r in rows])
    items = np.concatenate([np.asarray(r, np.int64) for r in rows] + [np.zeros(0, np.int64)])
    keys = np.unique(users * n_items + items)
    index = torch.from_numpy(np.stack([keys // n_items, keys % n_items]))
    x = torch.sparse_coo_tensor(index, torch.ones(len(keys)), (len(rows), n_items), is_coalesced=True,
                                check_invariants=True)
    # Sparse × sparse keeps the cost at Σ_u |items_u|² instead of users × items²; torch warns
    # that its sparse CSR path is beta, which says nothing about this result (tested exact).
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        return torch.sparse.mm(x.t().coalesce(), x).to_dense().to(dtype)


def ease_weights(gram: torch.Tensor, lam: float) -> torch.Tensor:
    """B = −P / diag(P) with a zero diagonal, P = (G + λI)⁻¹, in the Gram matrix's dtype."""
    a = gram.clone()
    a.diagonal().add_(lam)
    # Plain LU inverse: torch's float64 cholesky_inverse measured 8x slower than it here.
    p = torch.linalg.inv(a)
    b = p / (-p.diagonal())[None, :]
    b.diagonal().zero_()
    return b


@dataclass
class EaseModel:
    B: torch.Tensor  # float32 (n_items, n_items)
    lam: float
    history: int | None = 20
    fold_in: bool = False
    info: dict = field(default_factory=dict)  # selection table, timings

    @property
    def n_items(self) -> int:
        return self.B.shape[0]

    def score_histories(self, histories: list[np.ndarray]) -> np.ndarray:
        """(len(histories), n_items) float32 scores; each history is time-ordered item indices."""
        bags = [np.unique(h[-self.history:] if self.history else h) for h in histories]
        flat = torch.from_numpy(np.concatenate(bags + [np.zeros(0, np.int64)]).astype(np.int64))
        offsets = torch.from_numpy(np.concatenate([[0], np.cumsum([len(b) for b in bags])[:-1]]).astype(np.int64))
        with torch.no_grad():
            scores = torch.nn.functional.embedding_bag(flat, self.B, offsets, mode="sum")
        return scores.numpy()

    def score_fn(self, evalset: EvalSet):
        """For `evaluate_scores`: scores from the users' seen items (their known history)."""
        return lambda rows: self.score_histories([evalset.seen[r] for r in rows])

    def evaluate(self, evalset: EvalSet, exclude_seen: bool, ks=(5, 10, 20, 50), return_rankings: bool = False):
        return evaluate_scores(self.score_fn(evalset), evalset, self.n_items, ks=ks, exclude_seen=exclude_seen,
                               return_rankings=return_rankings)

    def save(self, directory: Path) -> None:
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        ckpt.atomic_torch_save({"B": self.B.contiguous()}, directory / WEIGHTS)
        ckpt.write_json(directory / META, {"format": FORMAT, "lambda": self.lam, "history": self.history,
                                           "fold_in": self.fold_in, "n_items": self.n_items, "info": self.info})

    @classmethod
    def load(cls, directory: Path) -> "EaseModel":
        directory = Path(directory)
        meta = ckpt.read_json(directory / META)
        if meta.get("format") != FORMAT:
            raise ckpt.UnreadableFile(f"{directory / META}: format {meta.get('format')!r}, expected {FORMAT!r}")
        b = ckpt.load_tensors(directory / WEIGHTS)["B"]
        if b.shape != (meta["n_items"], meta["n_items"]):
            raise ckpt.UnreadableFile(f"{directory / WEIGHTS}: B has shape {tuple(b.shape)}, "
                             f"expected ({meta['n_items']}, {meta['n_items']})")
        return cls(b, meta["lambda"], meta["history"], meta["fold_in"], meta.get("info", {}))


def fit_at(dataset: Dataset, split: Split, lam: float, history: int | None, fold_in: bool, part: str,
           dtype=None) -> EaseModel:
    """The model at a given λ, fitted on the rows allowed when evaluating ``part``."""
    dtype = dtype or _dtype(dataset.n_items)
    gram = gram_matrix(training_rows(dataset, split, part, fold_in), dataset.n_items, dtype)
    return EaseModel(ease_weights(gram, lam).float(), float(lam), history, fold_in)


def _dtype(n_items: int):
    return torch.float64 if n_items <= FLOAT64_MAX_ITEMS else torch.float32


def fit_ease(dataset: Dataset, split: Split, lambdas, history: int | None = 20, fold_in: bool = False,
             select_metric: str | None = None, dtype=None, progress: bool = False, report=None) -> EaseModel:
    """Choose λ on the validation users for both ways of scoring, then return the model to
    evaluate the test users the split's default way; ``info["lambda_by_mode"]`` holds both
    choices (see `MODE`), so the other way can be refitted at its own λ. ``report`` gets one
    line per λ (a large catalog takes minutes per inverse).
    """
    n = dataset.n_items
    dtype = dtype or _dtype(n)
    metric = select_metric or SELECT_METRIC[split.kind]
    default_mode = MODE[split.exclude_seen_default]
    started = time.perf_counter()
    gram = gram_matrix(training_rows(dataset, split, "valid", fold_in), n, dtype)
    table, kept, kept_score = [], None, -1.0
    for lam in tqdm(lambdas, desc="EASE λ grid", unit="λ", disable=not progress):
        t0 = time.perf_counter()
        model = EaseModel(ease_weights(gram, lam).float(), float(lam), history, fold_in)
        fit_seconds = time.perf_counter() - t0
        row = {"lambda": float(lam), "metric": metric, "fit_seconds": round(fit_seconds, 2)}
        for exclude, mode in MODE.items():
            row[mode] = round(model.evaluate(split.valid, exclude)[metric], 5)
        table.append(row)
        if report is not None:
            report(f"EASE λ={lam:g}: valid {metric} {row['keep_seen']:.4f} with seen items kept, "
                   f"{row['exclude_seen']:.4f} excluded (inverse {fit_seconds:.0f}s)")
        if row[default_mode] > kept_score:
            kept, kept_score = model, row[default_mode]
        del model
    chosen = {mode: max(table, key=lambda r: r[mode])["lambda"] for mode in MODE.values()}
    for mode, lam in chosen.items():
        if len(table) > 1 and lam in (min(lambdas), max(lambdas)):
            log.warning("EASE: λ=%g chosen for %s is at the edge of the grid %s; widen model.ease_lambda",
                        lam, mode, sorted(lambdas))
    model = kept
    refit = split.kind == "leave-one-out" and fold_in
    if refit:
        del kept, gram
        model = fit_at(dataset, split, model.lam, history, fold_in, "test", dtype)
    model.info = {"select_metric": metric, "lambda_by_mode": chosen, "selection": table,
                  "refit_for_test": refit, "fit_seconds": round(time.perf_counter() - started, 1)}
    return model
