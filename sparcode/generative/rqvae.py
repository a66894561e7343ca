"""RQ-VAE (TIGER, Rajput et al. 2023, §3.1): item content embedding → a short tuple of codes.

An MLP encodes the embedding into a latent r_0; level l picks the codeword e_l nearest to the
residual r_l and passes r_{l+1} = r_l − e_l on, so early levels carry coarse content and later
ones refine it. The decoder reconstructs the embedding from Σ_l e_l.

    loss = ‖x − x̂‖² + Σ_l ( ‖sg[r_l] − e_l‖² + β ‖r_l − sg[e_l]‖² )

Written here rather than taken from vector-quantize-pytorch because TIGER's codebooks are
learned by this gradient loss (that library defaults to EMA updates) and we want exactly the
k-means init and per-epoch dead-code re-seeding described below, visible in one file.
"""
from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field, fields

import numpy as np
import torch
from torch import nn


@dataclass
class RQVAEConfig:
    input_dim: int = 384
    hidden: list[int] = field(default_factory=lambda: [512, 256, 128])
    latent_dim: int = 32
    levels: int = 3
    codes: int = 256
    beta: float = 0.25
    epochs: int = 300  # 160 s on one CPU thread for Beauty; collisions 8.9 %, every code used
    batch_size: int = 1024
    lr: float = 1e-3
    kmeans_iters: int = 20
    seed: int = 0

    @classmethod
    def from_dict(cls, data: dict) -> "RQVAEConfig":
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"unknown RQ-VAE config key(s) {', '.join(unknown)}; known: {', '.join(sorted(known))}")
        return cls(**data)

    def to_dict(self) -> dict:
        return asdict(self)


def mlp(sizes: list[int]) -> nn.Sequential:
    layers: list[nn.Module] = []
    for i, (a, b) in enumerate(zip(sizes[:-1], sizes[1:])):
        layers.append(nn.Linear(a, b))
        if i < len(sizes) - 2:
            layers.append(nn.ReLU())
    return nn.Sequential(*layers)


def kmeans(points: torch.Tensor, k: int, iters: int, generator: torch.Generator) -> torch.Tensor:
    """Plain Lloyd's k-means; empty clusters take a random point so no code starts dead."""
    n = len(points)
    centers = points[torch.randperm(n, generator=generator)[:k]].clone()
    if len(centers) < k:  # fewer points than codes (tiny data): repeat with jitter
        extra = points[torch.randint(n, (k - len(centers),), generator=generator)]
        centers = torch.cat([centers, extra + 1e-3 * torch.randn(extra.shape, generator=generator)])
    for _ in range(iters):
        assign = torch.cdist(points, centers).argmin(dim=1)
        sums = torch.zeros_like(centers).index_add_(0, assign, points)
        counts = torch.bincount(assign, minlength=k).to(points.dtype)
        empty = counts == 0
        centers = torch.where(empty[:, None], centers, sums / counts.clamp(min=1)[:, None])
        if empty.any():
            centers[empty] = points[torch.randint(n, (int(empty.sum()),), generator=generator)]
    return centers


class RQVAE(nn.Module):
    def __init__(self, cfg: RQVAEConfig):
        super().__init__()
        self.cfg = cfg
        self.encoder = mlp([cfg.input_dim, *cfg.hidden, cfg.latent_dim])
        self.decoder = mlp([cfg.latent_dim, *reversed(cfg.hidden), cfg.input_dim])
        self.codebooks = nn.Parameter(torch.randn(cfg.levels, cfg.codes, cfg.latent_dim) * 0.1)
        # A buffer, so a restored model knows its codebooks were already initialised.
        self.register_buffer("initialized", torch.zeros((), dtype=torch.bool))

    def quantize(self, z: torch.Tensor):
        """Residual quantisation of latents z → (Σ e_l with straight-through grads, codes, loss, residuals)."""
        residual = z
        quantized = torch.zeros_like(z)
        codes, residuals = [], []
        loss = z.new_zeros(())
        for level in range(self.cfg.levels):
            book = self.codebooks[level]
            index = torch.cdist(residual.detach(), book.detach()).argmin(dim=1)
            chosen = book[index]
            loss = loss + ((residual.detach() - chosen) ** 2).sum(-1).mean() \
                + self.cfg.beta * ((residual - chosen.detach()) ** 2).sum(-1).mean()
            residuals.append(residual.detach())
            codes.append(index)
            quantized = quantized + chosen
            residual = residual - chosen.detach()
        # Straight-through: the decoder's gradient reaches the encoder as if quantisation were identity.
        quantized_st = z + (quantized - z).detach()
        return quantized_st, torch.stack(codes, dim=1), loss, residuals

    def forward(self, x: torch.Tensor):
        z = self.encoder(x)
        quantized, codes, q_loss, residuals = self.quantize(z)
        recon = self.decoder(quantized)
        recon_loss = ((recon - x) ** 2).sum(-1).mean()
        return {"recon": recon, "codes": codes, "loss": recon_loss + q_loss, "recon_loss": recon_loss,
                "quant_loss": q_loss, "residuals": residuals}

    @torch.no_grad()
    def init_codebooks(self, x: torch.Tensor, generator: torch.Generator) -> None:
        """k-means each level on the residuals the previous levels leave, so every code starts on data."""
        residual = self.encoder(x)
        for level in range(self.cfg.levels):
            self.codebooks[level] = kmeans(residual, self.cfg.codes, self.cfg.kmeans_iters, generator)
            index = torch.cdist(residual, self.codebooks[level]).argmin(dim=1)
            residual = residual - self.codebooks[level][index]
        self.initialized.fill_(True)

    @torch.no_grad()
    def encode(self, x: torch.Tensor, batch_size: int = 4096) -> torch.Tensor:
        out = [self.quantize(self.encoder(x[i:i + batch_size]))[1] for i in range(0, len(x), batch_size)]
        return torch.cat(out) if out else torch.zeros((0, self.cfg.levels), dtype=torch.long)


def usage(codes: np.ndarray, n_codes: int) -> list[float]:
    """Fraction of each level's codes used by at least one item."""
    return [float(len(np.unique(codes[:, level])) / n_codes) for level in range(codes.shape[1])]


def fit_rqvae(embeddings: np.ndarray, cfg: RQVAEConfig, device: str = "cpu", log=print) -> tuple[RQVAE, dict]:
    """Train on every item embedding; returns the model and a summary with per-epoch loss."""
    torch.manual_seed(cfg.seed)
    generator = torch.Generator().manual_seed(cfg.seed)
    x_all = torch.as_tensor(embeddings, dtype=torch.float32, device=device)
    n = len(x_all)
    model = RQVAE(cfg).to(device)
    # Adam rather than the paper's Adagrad(0.4): converges in far fewer epochs, which is what a
    # CPU budget allows; k-means init removes most of the sensitivity to the optimiser.
    optimizer = torch.optim.Adam(model.parameters(), lr=cfg.lr)
    # The first "large batch" is the whole catalogue when it fits (12k items do).
    model.init_codebooks(x_all[torch.randperm(n, generator=generator)[:max(cfg.batch_size, 16384)].to(device)],
                         generator)
    history, reseeded_total = [], 0
    started = time.perf_counter()
    for epoch in range(cfg.epochs):
        model.train()
        order = torch.randperm(n, generator=generator).to(device)
        used = torch.zeros(cfg.levels, cfg.codes, dtype=torch.bool, device=device)
        pools: list[list[torch.Tensor]] = [[] for _ in range(cfg.levels)]
        totals = np.zeros(3)
        for start in range(0, n, cfg.batch_size):
            batch = x_all[order[start:start + cfg.batch_size]]
            out = model(batch)
            optimizer.zero_grad(set_to_none=True)
            out["loss"].backward()
            optimizer.step()
            for level in range(cfg.levels):
                used[level, out["codes"][:, level]] = True
                pools[level].append(out["residuals"][level])
            totals += [out["loss"].item() * len(batch), out["recon_loss"].item() * len(batch),
                       out["quant_loss"].item() * len(batch)]
        reseeded = _reseed_dead_codes(model, used, pools, generator) if epoch < cfg.epochs - 1 else 0
        reseeded_total += reseeded
        row = {"epoch": epoch + 1, "loss": totals[0] / n, "recon": totals[1] / n, "quant": totals[2] / n,
               "dead_reseeded": reseeded}
        history.append(row)
        if (epoch + 1) % max(1, cfg.epochs // 10) == 0 or epoch == 0:
            log(f"rqvae epoch {epoch + 1}/{cfg.epochs} loss {row['loss']:.4f} recon {row['recon']:.4f} "
                f"quant {row['quant']:.4f} reseeded {reseeded}")
    model.eval()
    return model, {"history": history, "seconds": time.perf_counter() - started, "reseeded_total": reseeded_total}


@torch.no_grad()
def _reseed_dead_codes(model: RQVAE, used: torch.Tensor, pools, generator: torch.Generator) -> int:
    """Codes no item chose during the epoch restart on random residuals of that level.

    Without this a large share of codes never wins an argmin after the first epochs and the
    IDs collide far more (vector-quantize-pytorch issue 205)."""
    count = 0
    for level in range(model.cfg.levels):
        dead = (~used[level]).nonzero().flatten()
        if len(dead) == 0:
            continue
        pool = torch.cat(pools[level])
        pick = torch.randint(len(pool), (len(dead),), generator=generator).to(pool.device)
        model.codebooks[level, dead] = pool[pick]
        count += len(dead)
    return count
