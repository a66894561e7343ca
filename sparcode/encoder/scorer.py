"""The all-to-all scorer: S = MLP([t ⊙ c_1; …; t ⊙ c_Kc]) for a user token t and an item's K_c tokens.

Cost is what this module is engineered for. The first layer is linear in the concatenation,
so W1 · [t ⊙ c_k]_k = Σ_k (W1_k ⊙ t) c_k: each user token turns into an (H × K_c·d) matrix once,
and scoring a whole candidate set is a single GEMM against the stacked item tokens, instead
of materialising U × n concatenated inputs.
"""
from __future__ import annotations

import math

import torch
from torch import nn


class AllToAllScorer(nn.Module):
    def __init__(self, dim: int, item_tokens: int, hidden: int, linear_skip: bool = False):
        super().__init__()
        self.dim, self.item_tokens, self.hidden = dim, item_tokens, hidden
        fan_in = dim * item_tokens
        self.w1 = nn.Parameter(torch.randn(hidden, item_tokens * dim) / math.sqrt(fan_in))
        self.b1 = nn.Parameter(torch.zeros(hidden))
        self.w2 = nn.Parameter(torch.randn(hidden) / math.sqrt(hidden))
        self.b2 = nn.Parameter(torch.zeros(()))
        # A linear path w0 · [t ⊙ c_k]_k beside the hidden layer (wide & deep): a weighted dot
        # product is then one parameter vector away, instead of something the ReLU layer has to
        # approximate. Zero at the start, so the scorer begins as the plain MLP.
        self.w0 = nn.Parameter(torch.zeros(item_tokens * dim)) if linear_skip else None

    def flops_per_pair(self) -> int:
        # First layer multiply-adds, bias+ReLU, and the output dot product (+ the linear path).
        skip = 0 if self.w0 is None else 2 * self.item_tokens * self.dim
        return 2 * self.hidden * self.item_tokens * self.dim + 2 * self.hidden + 2 * self.hidden + skip

    def _linear(self, user_tokens: torch.Tensor, flat_items: torch.Tensor) -> torch.Tensor:
        """(n, U) linear-path scores; flat_items may carry extra trailing columns, ignored."""
        weights = user_tokens.repeat(1, self.item_tokens) * self.w0  # (U, Kd)
        return flat_items[:, :weights.shape[1]] @ weights.T

    def _user_matrices(self, user_tokens: torch.Tensor) -> torch.Tensor:
        """(U, d) → (U, H, K_c·d): W1 with each K_c block scaled by the user token."""
        return self.w1.unsqueeze(0) * user_tokens.repeat(1, self.item_tokens).unsqueeze(1)

    def all_pairs(self, user_tokens: torch.Tensor, item_tokens: torch.Tensor) -> torch.Tensor:
        """S for every (user token, item): (U, d) × (n, K_c, d) → (U, n)."""
        if not torch.is_grad_enabled():
            return self._all_pairs_blocked(user_tokens, item_tokens)
        users = user_tokens.shape[0]
        mats = self._user_matrices(user_tokens).reshape(users * self.hidden, -1)  # (U·H, Kd)
        flat_items = item_tokens.reshape(item_tokens.shape[0], -1)  # (n, Kd)
        # One large GEMM is markedly faster on CPU than U small batched ones.
        hidden = torch.relu((flat_items @ mats.T).view(-1, users, self.hidden) + self.b1)  # (n, U, H)
        out = torch.matmul(hidden, self.w2) + self.b2
        if self.w0 is not None:
            out = out + self._linear(user_tokens, flat_items)
        return out.T

    def _all_pairs_blocked(self, user_tokens: torch.Tensor, item_tokens: torch.Tensor,
                           item_block: int = 256) -> torch.Tensor:
        """Export's path: every (code, item) pair, with nothing to keep for a backward pass.

        Done naively the (n, U, H) hidden tensor is hundreds of MB, and the passes that add
        b1, apply ReLU and contract with w2 are memory-bound and cost more than the GEMM.
        Folding b1 into the GEMM (a ones column on the items) and walking the items in blocks
        whose hidden slab stays in cache keeps the export at the GEMM's own rate.
        """
        users = user_tokens.shape[0]
        mats = torch.cat([self._user_matrices(user_tokens),
                          self.b1.view(1, -1, 1).expand(users, -1, 1)], dim=2)
        mats = mats.reshape(users * self.hidden, -1).T.contiguous()  # (Kd + 1, U·H)
        flat_items = item_tokens.reshape(item_tokens.shape[0], -1)
        flat_items = torch.cat([flat_items, flat_items.new_ones(flat_items.shape[0], 1)], dim=1)
        n = flat_items.shape[0]
        out = flat_items.new_empty(n, users)
        slab = flat_items.new_empty(min(item_block, n), users * self.hidden)
        for start in range(0, n, item_block):
            rows = min(item_block, n - start)
            hidden = slab[:rows]
            torch.mm(flat_items[start:start + rows], mats, out=hidden)
            hidden.relu_()
            torch.mv(hidden.view(rows * users, self.hidden), self.w2, out=out[start:start + rows].view(-1))
        if self.w0 is not None:
            out.add_(self._linear(user_tokens, flat_items))
        return out.add_(self.b2).T

    def paired(self, user_tokens: torch.Tensor, item_tokens: torch.Tensor) -> torch.Tensor:
        """S for aligned rows: (U, d) × (U, K_c, d) → (U,). One item per user token, so the
        MLP runs on the concatenated products directly; the per-token matrices that make
        `all_pairs` cheap would cost U·H·K_c·d here for nothing."""
        products = user_tokens.repeat(1, self.item_tokens) * item_tokens.reshape(item_tokens.shape[0], -1)
        out = torch.relu(products @ self.w1.T + self.b1) @ self.w2 + self.b2
        if self.w0 is not None:
            out = out + products @ self.w0
        return out
