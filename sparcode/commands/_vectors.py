"""What `search` and `evaluate` share for two-tower runs: the vector backends and user vectors."""
from __future__ import annotations

from pathlib import Path

import click

VECTOR_BACKENDS = ("hnsw", "es-knn", "exact")


def check_backend(kind: str, backend: str) -> None:
    if kind == "two-tower" and backend not in VECTOR_BACKENDS:
        raise click.ClickException(f"a two-tower run is served by --backend {'|'.join(VECTOR_BACKENDS)}, not {backend}")
    if kind != "two-tower" and backend in VECTOR_BACKENDS:
        raise click.ClickException(f"--backend {backend} serves two-tower vector exports; "
                                   f"this run was trained with --model {kind}")


def open_vector_backend(backend: str, run_dir: Path, export_dir: Path | None, alias: str | None,
                        fingerprint: str, *, ef: int | None = None, num_candidates: int | None = None):
    """The backend serving `run_dir`'s vector export; refuses an export or index of another model."""
    from sparcode.commands.search import resolve_export
    from sparcode.pipeline.hnsw import DEFAULT_EF, HnswBackend
    from sparcode.pipeline.knn import KnnBackend
    from sparcode.pipeline.vectors import ExactBackend, open_vector_export

    export = resolve_export(run_dir, export_dir)
    exported = open_vector_export(export).fingerprint
    if exported != fingerprint:
        raise click.ClickException(
            f"{export} was exported from another model (fingerprint {exported[:12]}, run {run_dir} is "
            f"{fingerprint[:12]}); re-export with `sparcode export {run_dir} --out DIR`")
    if backend == "exact":
        return ExactBackend.open(export)
    if backend == "hnsw":
        return HnswBackend.open(export, ef=ef or DEFAULT_EF)
    if not alias:
        raise click.ClickException("--backend es-knn needs --alias NAME (the alias `sparcode index` created "
                                   "from the vector export)")
    return KnnBackend.open(alias, export, num_candidates=num_candidates or 100)


def user_vectors(model, users, histories, device, batch_size: int = 1024):
    """(B,) users with (B, L) histories → (B, dim) float32 user-tower vectors."""
    import numpy as np
    import torch

    model.eval()
    out = []
    with torch.no_grad():
        for start in range(0, len(users), batch_size):
            u = torch.as_tensor(users[start:start + batch_size], device=device)
            h = torch.as_tensor(histories[start:start + batch_size], device=device)
            out.append(model.encode_users(u, h).float().cpu().numpy())
    return np.concatenate(out) if out else np.zeros((0, model.cfg.dim), np.float32)
