"""S for (code, item) pairs of a product-quantized token, by table lookup instead of a GEMM.

A code is the concatenation of M sub-codewords, and the scorer's first layer is linear in
t ⊙ c, so W1 · [t ⊙ c_k]_k splits into one term per codebook:
P_m[n, i] = Σ_k W1_{k,m} (book_m[n] ⊙ c_{i,k,m}), an H-vector for every (codebook, code, item).
With those tables built once, a code's hidden layer against every item is M gathered rows
added up (`embedding_bag`), not a (n × K_c·d) by (K_c·d × H) product: M·H adds per pair
instead of 2·H·K_c·d multiply-adds. On ml-1m with 8 codebooks that is 256 against 4,096; the
gathers are memory-bound, so one thread scored 15.8 M pairs/s against the GEMM path's 8.7 M
(README, "Serving").

The tables hold M·N·n·H floats (ml-1m, 8 × 256 codes × 3,416 items × 32: 0.9 GB), so
`code_tables` returns None above a memory budget and the caller keeps the GEMM path. The two
paths agree to float32 rounding (sums in another order), not bit for bit, so everything one
export or evaluation stores must come from one path: `sparcode.encoder.serving.code_scorer`
picks it once.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from sparcode.encoder.scorer import AllToAllScorer

TABLE_BUDGET_BYTES = 4 << 30
# Items per table row: a row of 8 items × H floats is one contiguous gather; measured best
# between 4 and 16 on ml-1m.
ITEM_BLOCK = 8


class CodeTables:
    method = "tables"

    def __init__(self, scorer: AllToAllScorer, codebook: torch.Tensor, item_tokens: torch.Tensor,
                 item_block: int = ITEM_BLOCK):
        books, codes, sub = codebook.shape
        n, k_c, dim = item_tokens.shape
        self.books, self.codes, self.n_items, self.item_block = books, codes, n, item_block
        self.hidden, self.skip = scorer.hidden, scorer.w0 is not None
        self.w2, self.b2 = scorer.w2.detach(), float(scorer.b2)
        width = _row_width(scorer)
        blocks = math.ceil(n / item_block)
        items = F.pad(item_tokens, (0, 0, 0, 0, 0, blocks * item_block - n)).view(-1, k_c, books, sub)
        weights = scorer.w1.detach().view(self.hidden, k_c, books, sub)
        if self.skip:
            weights = torch.cat([weights, scorer.w0.detach().view(1, k_c, books, sub)])
        self.tables = item_tokens.new_empty(blocks, books * codes, item_block * width)
        for m in range(books):
            part = torch.einsum("hkj,nj,ikj->nih", weights[:, :, m], codebook[m], items[:, :, m])  # (N, n, width)
            if m == 0:
                part[..., :self.hidden] += scorer.b1.detach()  # every code has exactly one codebook-0 entry
            self.tables[:, m * codes:(m + 1) * codes].view(blocks, codes, item_block, width).copy_(
                part.view(codes, blocks, item_block, width).transpose(0, 1))
        self.offsets = torch.arange(books, device=item_tokens.device) * codes

    @staticmethod
    def nbytes(scorer: AllToAllScorer, codebook: torch.Tensor, n_items: int, item_block: int = ITEM_BLOCK) -> int:
        books, codes, _ = codebook.shape
        return books * codes * math.ceil(n_items / item_block) * item_block * _row_width(scorer) * 4

    def scores(self, codes: torch.Tensor) -> torch.Tensor:
        """(C, M) code indices → (C, n) S before bias and ReLU."""
        count = codes.shape[0]
        flat = (codes + self.offsets).reshape(-1)
        bag_starts = torch.arange(0, count * self.books, self.books, device=codes.device)
        out = self.tables.new_empty(self.tables.shape[0], count, self.item_block)
        for block, table in enumerate(self.tables):
            hidden = F.embedding_bag(flat, table, bag_starts, mode="sum").view(count, self.item_block, -1)
            torch.matmul(hidden[..., :self.hidden].relu_(), self.w2, out=out[block])
            if self.skip:
                out[block] += hidden[..., self.hidden]
        return out.transpose(0, 1).reshape(count, -1)[:, :self.n_items].add_(self.b2)


def _row_width(scorer: AllToAllScorer) -> int:
    """Floats per (code, item) entry: H, plus the linear path as one more column outside the ReLU."""
    return scorer.hidden + (scorer.w0 is not None)


def code_tables(scorer: AllToAllScorer, codebook: torch.Tensor, item_tokens: torch.Tensor) -> CodeTables | None:
    """Tables for these items, or None when they would take more than TABLE_BUDGET_BYTES."""
    if CodeTables.nbytes(scorer, codebook, item_tokens.shape[0]) > TABLE_BUDGET_BYTES:
        return None
    return CodeTables(scorer, codebook, item_tokens)
