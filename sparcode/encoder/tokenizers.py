"""User tokenizers: (history, profile) → K_u token embeddings.

All three see the history left-padded (most recent item last) and a profile vector; they
differ in how they pool: `dnn` mean-pools, `gru` reads in order, `attention` lets K_u learned
query slots attend over the history with recency (position) embeddings.
"""
from __future__ import annotations

import torch
from torch import nn


class DnnTokenizer(nn.Module):
    def __init__(self, dim: int, tokens: int, dropout: float):
        super().__init__()
        self.tokens, self.dim = tokens, dim
        self.mlp = nn.Sequential(
            nn.Linear(3 * dim, 4 * dim), nn.GELU(), nn.Dropout(dropout), nn.Linear(4 * dim, tokens * dim)
        )

    def forward(self, hist_emb, mask, profile):
        weights = mask.float().unsqueeze(-1)
        mean = (hist_emb * weights).sum(1) / weights.sum(1).clamp(min=1.0)
        # Recency matters on these protocols: the last item gets its own slot.
        last = hist_emb[:, -1]
        out = self.mlp(torch.cat([mean, last, profile], -1))
        return out.view(-1, self.tokens, self.dim)


class GruTokenizer(nn.Module):
    def __init__(self, dim: int, tokens: int, dropout: float):
        super().__init__()
        self.tokens, self.dim = tokens, dim
        self.gru = nn.GRU(dim, dim, batch_first=True)
        self.head = nn.Sequential(nn.Linear(2 * dim, 4 * dim), nn.GELU(), nn.Dropout(dropout), nn.Linear(4 * dim, tokens * dim))

    def forward(self, hist_emb, mask, profile):
        # Left padding means the last step is always a real item; padded steps are zero vectors.
        out, _ = self.gru(hist_emb * mask.unsqueeze(-1))
        return self.head(torch.cat([out[:, -1], profile], -1)).view(-1, self.tokens, self.dim)


class AttentionTokenizer(nn.Module):
    def __init__(self, dim: int, tokens: int, dropout: float, max_history: int, heads: int = 4):
        super().__init__()
        self.tokens, self.dim = tokens, dim
        self.positions = nn.Parameter(torch.randn(max_history, dim) * 0.02)
        self.queries = nn.Parameter(torch.randn(tokens, dim) * 0.02)
        self.encoder = nn.TransformerEncoderLayer(dim, heads, 2 * dim, dropout, batch_first=True, norm_first=True)
        self.pool = nn.MultiheadAttention(dim, heads, dropout=dropout, batch_first=True)
        self.out = nn.Sequential(nn.LayerNorm(dim), nn.Linear(dim, 2 * dim), nn.GELU(), nn.Linear(2 * dim, dim))

    def forward(self, hist_emb, mask, profile):
        batch, length, _ = hist_emb.shape
        x = hist_emb + self.positions[-length:]
        # A history that is all padding still needs one key to attend to: the profile token.
        x = torch.cat([profile.unsqueeze(1), x], 1)
        key_padding = torch.cat([torch.zeros(batch, 1, dtype=torch.bool, device=mask.device), ~mask], 1)
        x = self.encoder(x, src_key_padding_mask=key_padding)
        queries = self.queries.unsqueeze(0).expand(batch, -1, -1) + profile.unsqueeze(1)
        pooled, _ = self.pool(queries, x, x, key_padding_mask=key_padding, need_weights=False)
        return pooled + self.out(pooled)


def build_tokenizer(kind: str, dim: int, tokens: int, dropout: float, max_history: int) -> nn.Module:
    if kind == "dnn":
        return DnnTokenizer(dim, tokens, dropout)
    if kind == "gru":
        return GruTokenizer(dim, tokens, dropout)
    if kind == "attention":
        return AttentionTokenizer(dim, tokens, dropout, max_history)
    raise ValueError(f"unknown tokenizer {kind!r}")
