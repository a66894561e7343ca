"""SparCode, its unindexed upper bound, and the two-tower baseline, on one tokenizer family.

Every model answers `encode_users(users, histories)` (which also sets `aux_loss`, the
quantizer's commitment loss for SparCode, else 0), `item_tokens(items)`, and scoring of the
encoded users against a candidate set (`score_all`) or against one item each (`score_paired`):
that is all the shared training loop and the evaluation need.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from sparcode.config import ModelConfig
from sparcode.data.dataset import Dataset
from sparcode.encoder.features import ItemEmbedding, UserProfile
from sparcode.encoder.quantizer import ProductQuantizer
from sparcode.encoder.scorer import AllToAllScorer
from sparcode.encoder.tokenizers import build_tokenizer


class _UserItemBase(nn.Module):
    def __init__(self, cfg: ModelConfig, dataset: Dataset, max_history: int, user_tokens: int):
        super().__init__()
        self.cfg = cfg
        self.n_items = dataset.n_items
        self.items = ItemEmbedding(dataset.n_items, dataset.item_features, cfg.dim)
        self.profile = UserProfile(dataset.user_features, cfg.dim)
        self.tokenizer = build_tokenizer(cfg.tokenizer, cfg.dim, user_tokens, cfg.dropout, max_history)
        self.aux_loss = torch.zeros(())

    def continuous_user_tokens(self, users: torch.Tensor, histories: torch.Tensor) -> torch.Tensor:
        mask = histories != self.n_items
        return self.tokenizer(self.items(histories), mask, self.profile(users))


class SparCode(_UserItemBase):
    """f(u, c) = Σ_i act(S(t̃_i, c) + b) with t̃_i the (quantized) user tokens."""

    def __init__(self, cfg: ModelConfig, dataset: Dataset, max_history: int, quantize: bool = True):
        super().__init__(cfg, dataset, max_history, cfg.user_tokens)
        self.item_head = nn.Sequential(nn.Linear(cfg.dim, 2 * cfg.dim), nn.GELU(), nn.Linear(2 * cfg.dim, cfg.item_tokens * cfg.dim))
        self.scorer = AllToAllScorer(cfg.dim, cfg.item_tokens, cfg.scorer_hidden, cfg.scorer_linear_skip)
        # Both sides are normalised to unit per-dimension scale so S starts near N(0, 1).
        # Without it, S began with a spread of ~10 and the first steps of sampled softmax
        # pushed every S far below zero, where ReLU and softplus alike have no gradient.
        self.user_norm = nn.LayerNorm(cfg.dim, elementwise_affine=False)
        self.item_norm = nn.LayerNorm(cfg.dim, elementwise_affine=False)
        self.bf16 = False
        if quantize and cfg.dead_code_threshold is None:
            raise ValueError("model.dead_code_threshold is unresolved: RunConfig.validate() sets it from the batch shape")
        self.quantizer = (
            ProductQuantizer(cfg.dim, cfg.codebooks, cfg.codes, cfg.ema_decay, cfg.commit_weight,
                             cfg.kmeans_iters, cfg.dead_code_threshold, cfg.quantizer_gradient)
            if quantize else None
        )

    def item_tokens(self, items: torch.Tensor | None = None) -> torch.Tensor:
        """(n, K_c, d) item tokens; every item when `items` is None."""
        if items is None:
            items = torch.arange(self.n_items, device=self.items.ids.weight.device)
        base = self.items(items)
        return self.item_norm(base.unsqueeze(1) + self.item_head(base).view(-1, self.cfg.item_tokens, self.cfg.dim))

    def pre_quantization_tokens(self, users, histories) -> torch.Tensor:
        """(B, K_u, d) normalised user tokens: what the quantizer maps to codes, in training and serving."""
        return self.user_norm(self.continuous_user_tokens(users, histories))

    def user_tokens(self, users, histories) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Tokens the scorer sees (quantized when indexed) and their codes (B, K, M) or None."""
        tokens = self.pre_quantization_tokens(users, histories)
        diversity = self._token_similarity(tokens) * self.cfg.token_diversity if self.training else 0.0
        if self.quantizer is None:
            self.aux_loss = torch.zeros((), device=tokens.device) + diversity
            return tokens, None
        quantized, codes, commit = self.quantizer(tokens)
        self.aux_loss = commit + diversity
        return quantized, codes

    @staticmethod
    def _token_similarity(tokens: torch.Tensor) -> torch.Tensor:
        """Mean squared cosine between a user's distinct tokens: 0 when they are orthogonal."""
        k = tokens.shape[1]
        if k < 2:
            return torch.zeros((), device=tokens.device)
        unit = F.normalize(tokens, dim=-1)
        gram = unit @ unit.transpose(1, 2)
        off_diagonal = gram.pow(2).sum((1, 2)) - gram.diagonal(dim1=1, dim2=2).pow(2).sum(-1)
        return (off_diagonal / (k * (k - 1))).mean()

    def activation(self, s: torch.Tensor) -> torch.Tensor:
        s = s + self.cfg.train_bias
        if self.training and self.cfg.train_activation == "softplus":
            return F.softplus(s)
        return torch.relu(s)

    def encode_users(self, users, histories) -> torch.Tensor:
        return self.user_tokens(users, histories)[0]

    def score_all(self, tokens: torch.Tensor, item_tokens: torch.Tensor) -> torch.Tensor:
        batch, k, d = tokens.shape
        # bf16 only while training (about 3x faster where the CPU or GPU has bf16 matmul);
        # evaluation and export score in float32 so served scores are exact.
        with torch.autocast(tokens.device.type, dtype=torch.bfloat16, enabled=self.training and self.bf16):
            s = self.scorer.all_pairs(tokens.reshape(batch * k, d), item_tokens)
        return self.activation(s.float()).view(batch, k, -1).sum(1)

    def score_paired(self, tokens: torch.Tensor, item_tokens: torch.Tensor) -> torch.Tensor:
        batch, k, d = tokens.shape
        s = self.scorer.paired(tokens.reshape(batch * k, d), item_tokens.repeat_interleave(k, 0))
        return self.activation(s).view(batch, k).sum(1)


class TwoTower(_UserItemBase):
    """Dot product of one pooled user vector and an item vector."""

    def __init__(self, cfg: ModelConfig, dataset: Dataset, max_history: int):
        super().__init__(cfg, dataset, max_history, user_tokens=1)
        self.item_head = nn.Sequential(nn.Linear(cfg.dim, 2 * cfg.dim), nn.GELU(), nn.Linear(2 * cfg.dim, cfg.dim))

    def item_vectors(self, items: torch.Tensor | None = None) -> torch.Tensor:
        if items is None:
            items = torch.arange(self.n_items, device=self.items.ids.weight.device)
        base = self.items(items)
        return base + self.item_head(base)

    def encode_users(self, users, histories) -> torch.Tensor:
        self.aux_loss = torch.zeros((), device=histories.device)
        return self.continuous_user_tokens(users, histories).squeeze(1)

    def item_tokens(self, items=None):
        return self.item_vectors(items)

    def score_all(self, user_vectors: torch.Tensor, item_vectors: torch.Tensor) -> torch.Tensor:
        return user_vectors @ item_vectors.T

    def score_paired(self, user_vectors: torch.Tensor, item_vectors: torch.Tensor) -> torch.Tensor:
        return (user_vectors * item_vectors).sum(-1)


def build_model(cfg: ModelConfig, dataset: Dataset, max_history: int) -> nn.Module:
    if cfg.kind == "sparcode":
        return SparCode(cfg, dataset, max_history, quantize=True)
    if cfg.kind == "all-to-all":
        return SparCode(cfg, dataset, max_history, quantize=False)
    if cfg.kind == "two-tower":
        return TwoTower(cfg, dataset, max_history)
    raise ValueError(f"model kind {cfg.kind!r} is not a neural model")
