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
    def __init__(self, dim: int, item_tokens: int, hidden: int):
        super().__init__()
        self.dim, self.item_tokens, self.hidden = dim, item_tokens, hidden
        fan_in = dim * item_tokens
        self.w1 = nn.Parameter(torch.randn(hidden, item_tokens * dim) / math.sqrt(fan_in))
        self.b1 = nn.Parameter(torch.zeros(hidden))
        self.w2 = nn.Parameter(torch.randn(hidden) / math.sqrt(hidden))
        self.b2 = nn.Parameter(torch.zeros(()))

    def flops_per_pair(self) -> int:
        # First layer multiply-adds, bias+ReLU, and the output dot product.
        return 2 * self.hidden * self.item_tokens * self.dim + 2 * self.hidden + 2 * self.hidden

    def _user_matrices(self, user_tokens: torch.Tensor) -> torch.Tensor:
        """(U, d) → (U, H, K_c·d): W1 with each K_c block scaled by the user token."""
        return self.w1.unsqueeze(0) * user_tokens.repeat(1, self.item_tokens).unsqueeze(1)

    def all_pairs(self, user_tokens: torch.Tensor, item_tokens: torch.Tensor) -> torch.Tensor:
        """S for every (user token, item): (U, d) × (n, K_c, d) → (U, n)."""
        users = user_tokens.shape[0]
        mats = self._user_matrices(user_tokens).reshape(users * self.hidden, -1)  # (U·H, Kd)
        flat_items = item_tokens.reshape(item_tokens.shape[0], -1)  # (n, Kd)
        # One large GEMM is markedly faster on CPU than U small batched ones.
        hidden = (flat_items @ mats.T).view(-1, users, self.hidden)  # (n, U, H)
        if torch.is_grad_enabled():
            hidden = torch.relu(hidden + self.b1)
        else:
            # Export scores every (code, item) pair: the elementwise passes over this (n, U, H)
            # tensor cost as much as the GEMM, so do them in place when no graph needs them.
            hidden.add_(self.b1).relu_()
        return (torch.matmul(hidden, self.w2) + self.b2).T

    def paired(self, user_tokens: torch.Tensor, item_tokens: torch.Tensor) -> torch.Tensor:
        """S for aligned rows: (U, d) × (U, K_c, d) → (U,)."""
        mats = self._user_matrices(user_tokens)
        hidden = torch.bmm(mats, item_tokens.reshape(item_tokens.shape[0], -1, 1)).squeeze(-1)
        return torch.relu(hidden + self.b1) @ self.w2 + self.b2
