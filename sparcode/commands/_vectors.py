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


def check_knobs(backend: str | None, ef: int | None, num_candidates: int | None) -> None:
    """--ef tunes hnsw and --num-candidates es-knn; given to another backend they would be ignored."""
    if ef is not None and backend != "hnsw" or num_candidates is not None and backend != "es-knn":
        raise click.UsageError("--ef applies to --backend hnsw and --num-candidates to --backend es-knn")


def open_vector_backend(backend: str, run_dir: Path, export_dir: Path | None, alias: str | None,
                        fingerprint: str, *, k: int = 0, ef: int | None = None, num_candidates: int | None = None,
                        url: str | None = None):
    """The backend serving `run_dir`'s vector export; refuses an export or index of another model.
    Unset, the candidate pools (hnsw ef, es-knn num_candidates) are the default or `k`, the larger."""
    from sparcode.pipeline.hnsw import DEFAULT_EF, HnswBackend
    from sparcode.pipeline.knn import DEFAULT_NUM_CANDIDATES, KnnBackend
    from sparcode.pipeline.vectors import ExactBackend, open_vector_export
    from sparcode.recommender import check_same_model, resolve_export

    export = resolve_export(run_dir, export_dir)
    check_same_model(export, open_vector_export(export).fingerprint, run_dir, fingerprint)
    if backend == "exact":
        return ExactBackend.open(export)
    if backend == "hnsw":
        return HnswBackend.open(export, ef=ef or max(DEFAULT_EF, k))
    if not alias:
        raise click.ClickException("--backend es-knn needs --alias NAME (the alias `sparcode index` created "
                                   "from the vector export)")
    return KnnBackend.open(alias, export, url=url, num_candidates=num_candidates or max(DEFAULT_NUM_CANDIDATES, k))


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
