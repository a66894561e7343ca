"""SparCode as the index serves it: quantized user codes, per-code item scores ReLU(S + b̃)
truncated to FeatureField precision, optionally capped per code.

`build_postings` is the single implementation behind both `sparcode export` (which writes it
out) and served-exact evaluation (which scores users from it in memory), so the two cannot
drift apart.
"""
from __future__ import annotations

import functools
import math
import time
from dataclasses import dataclass

import numpy as np
import torch
from tqdm.auto import tqdm

from sparcode.codes_fallback import CodeTable
from sparcode.config import PER_CODE_BIAS_FRACTION, check_allocation
from sparcode.encoder.code_tables import code_tables
from sparcode.featurefield import storable, truncate
from sparcode.terms import code_to_term


@torch.no_grad()
def user_codes(model, users: np.ndarray, histories: np.ndarray, device, batch_size: int = 1024) -> np.ndarray:
    """(B,) users with (B, L) histories → (B, K_u, M) code indices."""
    model.eval()
    out = []
    for start in range(0, len(users), batch_size):
        u = torch.as_tensor(users[start:start + batch_size], device=device)
        h = torch.as_tensor(histories[start:start + batch_size], device=device)
        tokens = model.pre_quantization_tokens(u, h)
        out.append(model.quantizer.encode(tokens).cpu().numpy())
    return np.concatenate(out) if out else np.zeros((0, model.cfg.user_tokens, model.cfg.codebooks), np.int64)


def distinct_codes(codes: np.ndarray) -> np.ndarray:
    """Unique (M,) code rows, sorted lexicographically (so terms come out sorted)."""
    return np.unique(codes.reshape(-1, codes.shape[-1]), axis=0)


def index_sample(codes: np.ndarray, max_codes: int | None) -> np.ndarray:
    """The codes an index holds: all of `codes`, or a seeded sample of `max_codes` of them, in
    their sorted order. Seed 0 whatever the run's seed: export and evaluate must draw the same."""
    if max_codes is None or len(codes) <= max_codes:
        return codes
    return codes[np.sort(np.random.default_rng(0).choice(len(codes), max_codes, replace=False))]


class GemmCodeScorer:
    """S for (code, item) pairs by the scorer's own GEMM: any quantizer, any memory budget."""

    method = "gemm"
    CODES_PER_GEMM = 256  # the hidden slab of one block stays in cache (AllToAllScorer)

    def __init__(self, model, item_tokens: torch.Tensor):
        self.model, self.item_tokens = model, item_tokens

    def scores(self, codes: torch.Tensor) -> torch.Tensor:
        decode, all_pairs = self.model.quantizer.decode, self.model.scorer.all_pairs
        return torch.cat([all_pairs(decode(codes[start:start + self.CODES_PER_GEMM]), self.item_tokens)
                          for start in range(0, len(codes), self.CODES_PER_GEMM)])


def code_scorer(model, item_tokens: torch.Tensor):
    """What scores codes (C, M) → S (C, n) against `item_tokens`: per-codebook tables when they
    fit (code_tables.py), else the scorer's GEMM. One export or evaluation uses one scorer for
    every score it stores, so its thresholds and postings come from the same arithmetic."""
    return code_tables(model.scorer, model.quantizer.codebook, item_tokens) or GemmCodeScorer(model, item_tokens)


@torch.no_grad()
def code_item_scores(model, codes: np.ndarray, device, items: np.ndarray | None = None,
                     batch_codes: int = 1024, scorer=None) -> torch.Tensor:
    """S (before bias and ReLU) for every (code, item): (C, M) → (C, n) float32 on CPU.
    `scorer` = `code_scorer(model, item tokens of items)`, when the caller already has one."""
    model.eval()
    if scorer is None:
        scorer = code_scorer(model, model.item_tokens(None if items is None else torch.as_tensor(items, device=device)))
    out = [scorer.scores(torch.as_tensor(codes[start:start + batch_codes], device=device)).float().cpu()
           for start in range(0, len(codes), batch_codes)]
    return torch.cat(out) if out else torch.zeros(0, model.n_items if items is None else len(items))


def choose_bias(sample_scores: torch.Tensor, stored_fraction: float) -> float:
    """The b̃ for which a `stored_fraction` share of S + b̃ is positive on the sample."""
    flat = sample_scores.reshape(-1)
    if flat.numel() > 20_000_000:
        flat = flat[torch.randperm(flat.numel(), generator=torch.Generator().manual_seed(0))[:20_000_000]]
    threshold = torch.quantile(flat.double(), 1.0 - stored_fraction).item()
    return -float(threshold)


@dataclass
class Postings:
    """Stored (code, item) scores in CSR layout by code: row r holds term `terms[r]`."""

    terms: list[str]
    indptr: np.ndarray  # int64 (C + 1,)
    items: np.ndarray  # int32 item indices
    scores: np.ndarray  # float32, truncated, > 0
    n_items: int
    bias: float
    seconds: float = 0.0
    scored_by: str = ""  # "tables" or "gemm": which code scorer computed the scores

    @property
    def pairs(self) -> int:
        return int(len(self.items))

    def nonempty(self) -> np.ndarray:
        """Rows that kept at least one posting above b̃: the codes a query term may resolve to."""
        return np.diff(self.indptr) > 0

    def row(self, r: int) -> tuple[np.ndarray, np.ndarray]:
        return self.items[self.indptr[r]:self.indptr[r + 1]], self.scores[self.indptr[r]:self.indptr[r + 1]]

    def stats(self) -> dict:
        per_code = np.diff(self.indptr)
        total = len(self.terms) * self.n_items
        return {
            "codes": len(self.terms),
            "pairs": self.pairs,
            "stored_fraction": self.pairs / total if total else 0.0,
            "postings_per_code": postings_per_code(per_code),
        }

    def user_scores(self, table: CodeTable, query: dict[str, float]) -> np.ndarray:
        """Σ count × stored score over the user's (fallback-resolved) terms.

        Each term's float32 product is summed in float64 and rounded once to float32, as
        Lucene's disjunction scorer does; items no term matches score -inf (the engine does
        not return them at all)."""
        total = np.zeros(self.n_items, dtype=np.float64)
        matched = np.zeros(self.n_items, dtype=bool)
        for term, count in table.resolve(query).items():
            items, values = self.row(self.row_of[term])
            total[items] += np.float32(count) * values
            matched[items] = True
        scores = total.astype(np.float32)
        scores[~matched] = -np.inf
        return scores

    @functools.cached_property
    def row_of(self) -> dict[str, int]:
        return {t: i for i, t in enumerate(self.terms)}


def postings_per_code(per_code: np.ndarray) -> dict:
    """The manifest's postings_per_code from each code's posting count (a sharded export's merged
    manifest sums its parts' counts first, so it reports what one unsharded export would)."""
    return {
        "mean": float(per_code.mean()) if len(per_code) else 0.0,
        "p50": float(np.percentile(per_code, 50)) if len(per_code) else 0.0,
        "p99": float(np.percentile(per_code, 99)) if len(per_code) else 0.0,
        "max": int(per_code.max()) if len(per_code) else 0,
    }


THRESHOLD_SAMPLE_ITEMS = 16_384


def build_postings(model, codes: np.ndarray, device, bias: float | None, stored_fraction: float,
                   max_postings: int | None, items: np.ndarray | None = None, batch_codes: int = 1024,
                   progress: bool = True, allocation: str = "per-code") -> Postings:
    """Score every indexed code against every item (or the given items, for one export
    shard) and keep the storable postings.

    `global`: b̃ is the quantile of all scores that stores `stored_fraction` of the pairs.
    `per-code`: every code keeps its own best `stored_fraction` of the items (S at or above the
    code's threshold, and ReLU(S + b̃) > 0 with b̃ at the median S). A global threshold leaves
    codes whose scores all sit low with no postings at all, and their users fall back to
    another code; ml-1m served R@50 went from 0.330 (global) to 0.342 (per-code) at the same
    5 % stored. Thresholds and b̃ come from samples that do not depend on `items`, so every
    shard of one export makes the same choices."""
    n_items = model.n_items
    # Bound each block's (codes × items) score matrix to ~256 MB, whatever the catalog size.
    batch_codes = max(1, min(batch_codes, (1 << 26) // max(len(items) if items is not None else n_items, 1)))
    if allocation not in ("global", "per-code"):
        raise ValueError(f"allocation must be global or per-code, not {allocation!r}")
    per_code = allocation == "per-code"
    check_allocation(allocation, stored_fraction, bias)
    threshold_items = _threshold_sample(n_items) if per_code else None
    # The shard's own block already holds every sample score when it covers every item.
    thresholds_from_block = per_code and items is None and len(threshold_items) == n_items
    # Timed from here: building the scorer, choosing b̃ and scoring, which the export's pairs/s reports.
    started = time.perf_counter()
    model.eval()
    counts = []
    kept_items, kept_scores = [], []
    with torch.no_grad():
        item_index = torch.arange(n_items) if items is None else torch.as_tensor(items)
        scorer = code_scorer(model, model.item_tokens(item_index.to(device)))
        sample_scorer = (code_scorer(model, model.item_tokens(torch.as_tensor(threshold_items, device=device)))
                        if per_code and not thresholds_from_block else None)
        if bias is None:
            # b̃ is chosen over every item; a shard reuses the threshold sample's scorer when that
            # sample is every item, rather than building the same tables a third time.
            every_item = scorer if items is None else (
                sample_scorer if per_code and len(threshold_items) == n_items else None)
            rng = np.random.default_rng(0)
            sample = codes if len(codes) <= 4096 else codes[np.sort(rng.choice(len(codes), 4096, replace=False))]
            bias = choose_bias(code_item_scores(model, sample, device, scorer=every_item),
                               PER_CODE_BIAS_FRACTION if per_code else stored_fraction)
        global_items = item_index.numpy().astype(np.int32)
        bar = tqdm(total=len(codes), desc="scoring codes", unit="code", disable=not progress, dynamic_ncols=True)
        for start in range(0, len(codes), batch_codes):
            block_codes = torch.as_tensor(codes[start:start + batch_codes], device=device)
            raw = scorer.scores(block_codes).float()
            keep = None
            if per_code:
                sample = raw if thresholds_from_block else sample_scorer.scores(block_codes).float()
                keep = (raw >= _per_code_thresholds(sample, stored_fraction)[:, None]).cpu().numpy()
            s = truncate(raw.add_(bias).relu_().cpu().numpy())
            mask = storable(s) if keep is None else storable(s) & keep
            rows, cols = np.nonzero(mask)  # row-major: each code's postings in item order
            if max_postings is not None:
                rows, cols = _cap_postings(s, rows, cols, max_postings)
            counts.append(np.bincount(rows, minlength=len(block_codes)))
            kept_items.append(global_items[cols])
            kept_scores.append(s[rows, cols])
            bar.update(len(block_codes))
    indptr = np.concatenate([[0], np.cumsum(np.concatenate(counts))]) if counts else np.zeros(1, np.int64)
    bar.close()
    return Postings(
        terms=[code_to_term(c) for c in codes],
        indptr=indptr.astype(np.int64),
        items=np.concatenate(kept_items) if kept_items else np.zeros(0, np.int32),
        scores=np.concatenate(kept_scores) if kept_scores else np.zeros(0, np.float32),
        n_items=n_items,
        bias=float(bias),
        seconds=time.perf_counter() - started,
        scored_by=scorer.method,
    )


def _threshold_sample(n_items: int) -> np.ndarray:
    """The items each code's threshold is computed on: all of them up to 16k, else a seeded sample."""
    if n_items <= THRESHOLD_SAMPLE_ITEMS:
        return np.arange(n_items)
    return np.sort(np.random.default_rng(0).choice(n_items, THRESHOLD_SAMPLE_ITEMS, replace=False))


def _per_code_thresholds(sample_scores: torch.Tensor, stored_fraction: float) -> torch.Tensor:
    """Each code's k-th best sample score, k = ⌈stored_fraction · sample⌉: its posting threshold."""
    k = max(1, math.ceil(stored_fraction * sample_scores.shape[1]))
    return sample_scores.topk(k, dim=1).values[:, -1]


def _cap_postings(scores: np.ndarray, rows: np.ndarray, cols: np.ndarray, cap: int):
    """Keep each code's `cap` highest scores; ties broken by item index for determinism."""
    order = np.lexsort((cols, -scores[rows, cols], rows))  # by code, then score desc, then item
    rows, cols = rows[order], cols[order]
    first = np.searchsorted(rows, rows, side="left")
    keep = (np.arange(len(rows)) - first) < cap
    rows, cols = rows[keep], cols[keep]
    back = np.lexsort((cols, rows))  # restore item order within each code
    return rows[back], cols[back]


def code_table(model, codes: np.ndarray) -> CodeTable:
    book = model.quantizer.codebook.cpu()
    vectors = model.quantizer.decode(torch.as_tensor(codes)).cpu().numpy() if len(codes) else np.zeros((0, model.cfg.dim), np.float32)
    return CodeTable(np.asarray([code_to_term(c) for c in codes]), vectors, book.numpy())


def user_queries(model, users: np.ndarray, histories: np.ndarray, device, table: CodeTable,
                 probes: int = 1, batch_size: int = 1024) -> list[dict[str, float]]:
    """Each user's term query: every token's `probes` nearest indexed codes, one count each.

    probes = 1 is the paper's query, the code each token quantizes to (an unindexed one falls
    back when the query is resolved). More probes send a token's nearest codes as well, which
    soften the quantization of the query side: ml-1m served R@50 0.342 → 0.350 with 8 probes
    (the unindexed model: 0.360), at the cost of 8× the term lookups.
    """
    if probes == 1:
        return [query_for(c) for c in user_codes(model, users, histories, device, batch_size)]
    model.eval()
    queries = []
    with torch.no_grad():
        for start in range(0, len(users), batch_size):
            u = torch.as_tensor(users[start:start + batch_size], device=device)
            h = torch.as_tensor(histories[start:start + batch_size], device=device)
            tokens = model.pre_quantization_tokens(u, h).float().cpu().numpy()
            batch, k, dim = tokens.shape
            rows = table.nearest_to(tokens.reshape(-1, dim), probes).reshape(batch, k, -1)
            for user_rows in rows:
                query: dict[str, float] = {}
                for row in user_rows.reshape(-1):
                    term = table.terms[row]
                    query[term] = query.get(term, 0.0) + 1.0
                queries.append(query)
    return queries


def query_for(codes_of_user: np.ndarray) -> dict[str, float]:
    """(K_u, M) codes → {term: number of the user's tokens on that code}."""
    query: dict[str, float] = {}
    for code in codes_of_user:
        term = code_to_term(code)
        query[term] = query.get(term, 0.0) + 1.0
    return query
