"""Embedding of item ids, item features and user profiles into one vector each."""
from __future__ import annotations

import torch
from torch import nn

from sparcode.data.dataset import CategoricalFeature


class FeatureBag(nn.Module):
    """Sum of mean-pooled embeddings of categorical (possibly multi-valued) features.

    Feature value matrices are registered as buffers so a row index is all a caller passes.
    """

    def __init__(self, features: list[CategoricalFeature], dim: int, pad_rows: int = 0):
        super().__init__()
        self.tables = nn.ModuleList()
        self.names = [f.name for f in features]
        for i, feature in enumerate(features):
            values = torch.as_tensor(feature.values, dtype=torch.long)
            if pad_rows:
                values = torch.cat([values, torch.zeros(pad_rows, values.shape[1], dtype=torch.long)])
            self.register_buffer(f"values_{i}", values, persistent=False)
            self.tables.append(nn.Embedding(feature.vocab_size, dim, padding_idx=0))

    @torch.no_grad()
    def silence_values_absent_from(self, rows) -> int:
        """Zero the embedding of every value no row in `rows` has, and return how many. Such a
        value (a profile value only held-out users have) never gets a gradient, so it would keep
        its random initial vector, about as large as a trained one, and shift every user holding
        it; zeroed, it counts as absent, like padding (`forward` leaves it out of the mean too)."""
        rows = torch.as_tensor(rows, dtype=torch.long)
        silenced = 0
        for i, table in enumerate(self.tables):
            unused = torch.ones(table.num_embeddings, dtype=torch.bool)
            unused[getattr(self, f"values_{i}")[rows.to(table.weight.device)].flatten().cpu()] = False
            table.weight[unused.to(table.weight.device)] = 0.0
            silenced += int(unused[1:].sum())  # row 0 is padding, zero anyway
        return silenced

    def forward(self, rows: torch.Tensor) -> torch.Tensor | None:
        total = None
        for i, table in enumerate(self.tables):
            ids = getattr(self, f"values_{i}")[rows]
            # An all-zero row is padding or a value silenced as never trained: neither is counted,
            # so a user's other values keep their full weight in the mean.
            present = table.weight.detach().ne(0).any(-1)
            counts = present[ids].sum(-1, keepdim=True).clamp(min=1)
            pooled = table(ids).sum(-2) / counts
            total = pooled if total is None else total + pooled
        return total


class ItemEmbedding(nn.Module):
    """Item index → vector from its id and its features. Index n_items is the padding item."""

    def __init__(self, n_items: int, item_features: list[CategoricalFeature], dim: int):
        super().__init__()
        self.ids = nn.Embedding(n_items + 1, dim, padding_idx=n_items)
        nn.init.normal_(self.ids.weight, std=0.05)
        with torch.no_grad():
            self.ids.weight[n_items].zero_()
        self.features = FeatureBag(item_features, dim, pad_rows=1) if item_features else None

    def forward(self, items: torch.Tensor) -> torch.Tensor:
        out = self.ids(items)
        if self.features is not None:
            out = out + self.features(items)
        return out


class UserProfile(nn.Module):
    """User index → profile vector (zeros when the dataset has no user features).

    Index n_users is a user without a profile (a history given by item ids at serving time):
    its feature values are all padding, so its profile is zero."""

    def __init__(self, user_features: list[CategoricalFeature], dim: int):
        super().__init__()
        self.dim = dim
        self.features = FeatureBag(user_features, dim, pad_rows=1) if user_features else None

    def silence_values_absent_from(self, training_users) -> int:
        return 0 if self.features is None else self.features.silence_values_absent_from(training_users)

    def forward(self, users: torch.Tensor) -> torch.Tensor:
        if self.features is None:
            return torch.zeros(users.shape[0], self.dim, device=users.device)
        return self.features(users)
