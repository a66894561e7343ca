"""`sparcode export` for a two-tower run: its item vectors as an export directory
(docs/export-format.md, kind "two-tower-vectors"), read by the HNSW and ES kNN backends.

A user's vector is never exported: it comes from the model at query time, like a SparCode
user's codes.
"""
from __future__ import annotations

import gzip
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import orjson
import torch

from sparcode.encoder import checkpoint as ckpt
from sparcode.encoder.runs import Run, RunError
from sparcode.staging import check_export_target, is_export, staged_directory

FORMAT = "sparcode-export/1"
KIND = "two-tower-vectors"
VECTORS = "vectors.npy"
ITEMS = "items.jsonl.gz"


@torch.no_grad()
def item_vectors(model, device, batch: int = 65536) -> np.ndarray:
    model.eval()
    out = []
    for start in range(0, model.n_items, batch):
        items = torch.arange(start, min(start + batch, model.n_items), device=device)
        out.append(model.item_vectors(items).float().cpu().numpy())
    return np.ascontiguousarray(np.concatenate(out), dtype=np.float32)


def export_vectors(run: Run, out_dir: Path, force: bool = False) -> dict:
    if run.kind != "two-tower":
        raise RunError(f"vector export needs a two-tower run; {run.path} was trained with --model {run.kind}")
    out_dir = Path(out_dir)
    check_export_target(out_dir, run.path, force=force)
    started = time.perf_counter()
    model, device = run.load_model()
    vectors = item_vectors(model, device)
    if not np.isfinite(vectors).all():
        raise RunError(f"{run.path}: the model produced non-finite item vectors; retrain it")
    norms = np.linalg.norm(vectors, axis=1)
    dataset = run.dataset

    with staged_directory(out_dir, marker=is_export,
                          check=lambda: check_export_target(out_dir, run.path, force=force, again=True)) as tmp:
        np.save(tmp / VECTORS, vectors, allow_pickle=False)
        with gzip.open(tmp / ITEMS, "wb", compresslevel=1) as fh:
            for item in range(dataset.n_items):
                attrs = dataset.item_attributes[item] if dataset.item_attributes else {}
                fh.write(orjson.dumps({"item_id": dataset.item_ids[item], "ord": item, **attrs}) + b"\n")
        manifest = {
            "format": FORMAT,
            "kind": KIND,
            "fingerprint": run.fingerprint(),
            "run": {"model": run.kind, "dataset": run.config.dataset, "split": run.config.split,
                    "seed": run.config.seed},
            "dim": int(vectors.shape[1]),
            # Scores are raw dot products: the tower is trained that way, so ANN must search
            # maximum inner product, not cosine.
            "similarity": "dot_product",
            "items": int(vectors.shape[0]),
            "norms": {"mean": float(norms.mean()), "std": float(norms.std()), "min": float(norms.min()),
                      "max": float(norms.max())},
            "item_fields": dataset.item_attribute_types,
            "files": {"items": [ITEMS], "vectors": VECTORS},
            "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "export_seconds": round(time.perf_counter() - started, 2),
        }
        ckpt.write_json(tmp / "manifest.json", manifest)
    ckpt.write_json(run.path / "last_export.json", {"path": str(out_dir.resolve())})
    return manifest
