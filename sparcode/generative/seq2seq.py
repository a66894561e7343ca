"""The TIGER encoder-decoder: a user's history of semantic IDs in, the next item's ID out.

Encoder input is one vector per history item (the sum of its per-level code embeddings), not
one token per code as in the paper: 4× shorter sequences make attention and the whole step
several times cheaper on CPU, and the decoder still sees every code through cross-attention
on their sum. A hashed user token comes first, as in the paper.

Decoder vocabulary: token 0 is BOS; level l's code c is token ``offsets[l] + c``, so one output
layer serves every level and a level's logits are a slice of it.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn
from torch.nn import functional as F

BOS = 0


def pick_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


@dataclass
class Batch:
    history: torch.Tensor  # int64 (B, H, L) codes; padding rows hold vocab[l] at level l
    history_mask: torch.Tensor  # bool (B, H), True = padding
    users: torch.Tensor  # int64 (B,) user bucket
    targets: torch.Tensor | None = None  # int64 (B, L) codes of the next item


class TigerSeq2Seq(nn.Module):
    def __init__(self, vocab: list[int], d_model: int = 128, heads: int = 4, encoder_layers: int = 2,
                 decoder_layers: int = 2, ff_dim: int = 512, dropout: float = 0.1, max_history: int = 20,
                 user_buckets: int = 2000):
        super().__init__()
        self.vocab = list(vocab)
        self.levels = len(vocab)
        offsets = [1]
        for size in vocab[:-1]:
            offsets.append(offsets[-1] + size)
        self.offsets = offsets
        self.n_tokens = 1 + sum(vocab)
        # Row vocab[l] of each table is the padding code of empty history slots.
        self.code_embeddings = nn.ModuleList(nn.Embedding(v + 1, d_model, padding_idx=v) for v in vocab)
        self.user_embedding = nn.Embedding(user_buckets, d_model)
        self.encoder_positions = nn.Embedding(max_history + 1, d_model)
        self.decoder_tokens = nn.Embedding(self.n_tokens, d_model)
        self.decoder_positions = nn.Embedding(self.levels, d_model)
        # Pre-norm layers train stably without a long warm-up; nested tensors off because the
        # fast path does not apply to norm_first and only warns.
        enc_layer = nn.TransformerEncoderLayer(d_model, heads, ff_dim, dropout, batch_first=True, norm_first=True)
        dec_layer = nn.TransformerDecoderLayer(d_model, heads, ff_dim, dropout, batch_first=True, norm_first=True)
        self.encoder = nn.TransformerEncoder(enc_layer, encoder_layers, norm=nn.LayerNorm(d_model),
                                             enable_nested_tensor=False)
        self.decoder = nn.TransformerDecoder(dec_layer, decoder_layers, norm=nn.LayerNorm(d_model))
        self.output = nn.Linear(d_model, self.n_tokens)
        causal = torch.triu(torch.full((self.levels, self.levels), float("-inf")), diagonal=1)
        self.register_buffer("causal_mask", causal, persistent=False)

    def encode(self, history: torch.Tensor, history_mask: torch.Tensor, users: torch.Tensor):
        """→ memory (B, 1 + H, d) and its padding mask."""
        batch, width, _ = history.shape
        items = sum(table(history[:, :, level]) for level, table in enumerate(self.code_embeddings))
        # Position 0 is the most recent item: histories are left-padded, so count from the right.
        positions = torch.arange(width - 1, -1, -1, device=history.device)
        items = items + self.encoder_positions(positions)[None]
        user = (self.user_embedding(users) + self.encoder_positions.weight[width])[:, None]
        tokens = torch.cat([user, items], dim=1)
        mask = torch.cat([torch.zeros(batch, 1, dtype=torch.bool, device=history.device), history_mask], dim=1)
        return self.encoder(tokens, src_key_padding_mask=mask), mask

    def decode(self, memory: torch.Tensor, memory_mask: torch.Tensor, prefix: torch.Tensor) -> torch.Tensor:
        """prefix: (B, t) decoder tokens starting with BOS → hidden states (B, t, d)."""
        t = prefix.shape[1]
        x = self.decoder_tokens(prefix) + self.decoder_positions.weight[:t][None]
        return self.decoder(x, memory, tgt_mask=self.causal_mask[:t, :t], tgt_is_causal=True,
                            memory_key_padding_mask=memory_mask)

    def level_logits(self, hidden: torch.Tensor, level: int) -> torch.Tensor:
        """Logits over level `level`'s codes only, (…, vocab[level])."""
        start = self.offsets[level]
        weight = self.output.weight[start:start + self.vocab[level]]
        bias = self.output.bias[start:start + self.vocab[level]]
        return F.linear(hidden, weight, bias)

    def tokens(self, codes: torch.Tensor) -> torch.Tensor:
        """(…, t) per-level codes → global decoder tokens."""
        offsets = torch.as_tensor(self.offsets[:codes.shape[-1]], dtype=torch.long, device=codes.device)
        return codes + offsets

    def forward(self, batch: Batch) -> torch.Tensor:
        """Teacher-forced cross-entropy, averaged over the levels of the target ID."""
        memory, mask = self.encode(batch.history, batch.history_mask, batch.users)
        targets = batch.targets
        bos = torch.full((len(targets), 1), BOS, dtype=torch.long, device=targets.device)
        prefix = torch.cat([bos, self.tokens(targets[:, :-1])], dim=1)
        hidden = self.decode(memory, mask, prefix)
        loss = hidden.new_zeros(())
        for level in range(self.levels):
            loss = loss + F.cross_entropy(self.level_logits(hidden[:, level], level), targets[:, level])
        return loss / self.levels

    def config(self) -> dict:
        return {"vocab": self.vocab}
