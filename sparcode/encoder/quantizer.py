"""Product quantizer over user tokens: M codebooks of N codes, one per sub-vector.

Built on vector-quantize-pytorch (maintained; EMA updates, k-means init and dead-code expiry
are options there) configured as a true product quantizer: `heads=M` with a separate codebook
per head and `codebook_dim = dim / M`, so there is no learned projection and a code is
exactly the concatenation of M sub-codewords, which is what the export writes out.
The codebook gets no gradient (the paper's sg[·]): it moves only by EMA. The tokenizer gets
the task gradient through the straight-through estimator (or the rotation trick) and the
commitment loss.
"""
from __future__ import annotations

import torch
from loguru import logger
from torch import nn
from vector_quantize_pytorch import VectorQuantize

# Its one message, "k-means init received N vectors for a codebook of M - duplicates will be
# sampled", is what every first-batch init with fewer windows than codes does by design (see
# model.kmeans_init_windows); printed through loguru, it broke the progress bar, even with --quiet.
logger.disable("vector_quantize_pytorch")


class ProductQuantizer(nn.Module):
    def __init__(self, dim: int, codebooks: int, codes: int, decay: float, commit_weight: float,
                 kmeans_iters: int, dead_code_threshold: float, gradient: str = "straight-through"):
        super().__init__()
        self.codebooks, self.codes, self.dim = codebooks, codes, dim
        self.vq = VectorQuantize(
            dim=dim,
            codebook_size=codes,
            codebook_dim=dim // codebooks,
            heads=codebooks,
            separate_codebook_per_head=True,
            decay=decay,
            commitment_weight=commit_weight,
            kmeans_init=True,
            kmeans_iters=kmeans_iters,
            threshold_ema_dead_code=dead_code_threshold,
            rotation_trick=gradient == "rotation",
        )
        self.register_buffer("usage", torch.zeros(codebooks, codes), persistent=False)

    def forward(self, tokens: torch.Tensor):
        """tokens (B, K, dim) → (quantized (B, K, dim), codes (B, K, M), commit loss)."""
        quantized, codes, commit = self.vq(tokens)
        if self.training:
            with torch.no_grad():
                for m in range(self.codebooks):
                    self.usage[m] += torch.bincount(codes[..., m].reshape(-1), minlength=self.codes)
        return quantized, codes, commit

    @torch.no_grad()
    def encode(self, tokens: torch.Tensor) -> torch.Tensor:
        """Nearest codes without touching the codebook: (B, K, dim) → (B, K, M)."""
        lead = tokens.shape[:-1]
        subs = tokens.reshape(-1, self.codebooks, self.dim // self.codebooks).transpose(0, 1)  # (M, B·K, d/M)
        book = self.codebook  # (M, N, d/M)
        # ‖x − c‖² = ‖x‖² − 2 x·c + ‖c‖²; ‖x‖² does not change the argmin. A batched matmul instead
        # of materialising every difference vector: export encodes every training window.
        dists = book.pow(2).sum(-1).unsqueeze(1) - 2.0 * torch.bmm(subs, book.transpose(1, 2))  # (M, B·K, N)
        return dists.argmin(-1).transpose(0, 1).reshape(*lead, self.codebooks)

    @property
    def codebook(self) -> torch.Tensor:
        return self.vq.codebook.detach()

    def decode(self, codes: torch.Tensor) -> torch.Tensor:
        """(..., M) code indices → (..., dim) concatenated codewords."""
        book = self.codebook
        parts = [book[m][codes[..., m]] for m in range(self.codebooks)]
        return torch.cat(parts, -1)

    def usage_stats(self, reset: bool = True) -> dict:
        """Codes used and perplexity per codebook since the last reset (one epoch)."""
        stats = {}
        for m in range(self.codebooks):
            counts = self.usage[m]
            total = counts.sum().clamp(min=1)
            p = counts / total
            entropy = -(p[p > 0] * p[p > 0].log()).sum()
            stats[f"codes_used_{m}"] = int((counts > 0).sum())
            stats[f"perplexity_{m}"] = float(entropy.exp())
        if reset:
            self.usage.zero_()
        return stats
