"""User tokenizers: (history, profile) → K_u token embeddings.

All three see the history left-padded (most recent item last) and a profile vector; they
differ in how they pool: `dnn` mean-pools, `gru` reads in order, `attention` lets K_u learned
query slots attend over the history with recency (position) embeddings, and `interests` is
`attention` built to keep its K_u tokens apart (one interest each, ComiRec-style).
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

    def encode_history(self, hist_emb, mask, profile):
        """The self-attended history with the profile as an extra first token, and its padding mask."""
        batch, length, _ = hist_emb.shape
        x = hist_emb + self.positions[-length:]
        # A history that is all padding still needs one key to attend to: the profile token.
        x = torch.cat([profile.unsqueeze(1), x], 1)
        key_padding = torch.cat([torch.zeros(batch, 1, dtype=torch.bool, device=mask.device), ~mask], 1)
        return self.encoder(x, src_key_padding_mask=key_padding), key_padding

    def forward(self, hist_emb, mask, profile):
        batch = hist_emb.shape[0]
        x, key_padding = self.encode_history(hist_emb, mask, profile)
        queries = self.queries.unsqueeze(0).expand(batch, -1, -1) + profile.unsqueeze(1)
        pooled, _ = self.pool(queries, x, x, key_padding_mask=key_padding, need_weights=False)
        return pooled + self.out(pooled)


class InterestTokenizer(AttentionTokenizer):
    """K_u slot queries with their own output heads, for K_u tokens that stay distinct.

    In `attention` the K_u tokens of a user collapsed onto one another (mean pairwise cosine
    0.99999 on ml-1m): the profile vector added to every slot query dwarfed the slots, and a
    shared output head maps equal inputs to equal tokens. With one code per user the index keeps
    16 bits of the user where four tokens could keep 64. Here the profile is only a key the
    slots can attend to, the slot queries start at unit scale, and each slot has its own head;
    the model adds an explicit penalty on the tokens' pairwise similarity (`token_diversity`).
    """

    def __init__(self, dim: int, tokens: int, dropout: float, max_history: int, heads: int = 4):
        super().__init__(dim, tokens, dropout, max_history, heads)
        self.queries = nn.Parameter(torch.randn(tokens, dim))
        del self.out
        self.head_norm = nn.LayerNorm(dim)
        self.head_in = nn.Parameter(torch.randn(tokens, dim, 2 * dim) / dim ** 0.5)
        self.head_in_bias = nn.Parameter(torch.zeros(tokens, 2 * dim))
        self.head_out = nn.Parameter(torch.randn(tokens, 2 * dim, dim) / (2 * dim) ** 0.5)

    def forward(self, hist_emb, mask, profile):
        batch = hist_emb.shape[0]
        x, key_padding = self.encode_history(hist_emb, mask, profile)
        pooled, _ = self.pool(self.queries.unsqueeze(0).expand(batch, -1, -1), x, x,
                              key_padding_mask=key_padding, need_weights=False)
        hidden = torch.nn.functional.gelu(torch.einsum("bkd,kdh->bkh", self.head_norm(pooled), self.head_in)
                                          + self.head_in_bias)
        return pooled + torch.einsum("bkh,khd->bkd", hidden, self.head_out)


def build_tokenizer(kind: str, dim: int, tokens: int, dropout: float, max_history: int) -> nn.Module:
    if kind == "dnn":
        return DnnTokenizer(dim, tokens, dropout)
    if kind == "gru":
        return GruTokenizer(dim, tokens, dropout)
    if kind == "attention":
        return AttentionTokenizer(dim, tokens, dropout, max_history)
    if kind == "interests":
        return InterestTokenizer(dim, tokens, dropout, max_history)
    raise ValueError(f"unknown tokenizer {kind!r}")
