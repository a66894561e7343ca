"""`sparcode export` on a TIGER run: every item's semantic-ID prefixes as keyword pseudo-terms.

The export directory (docs/export-format.md, kind ``tiger-semantic-ids``) is loaded by the same
indexer as a SparCode export; the prefixes go into the keyword field ``sid`` so "all items
sharing (c0, c1, *)" is one term lookup. Reads only numpy files: no torch, no model.
"""
from __future__ import annotations

import gzip
import hashlib
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import orjson

from sparcode.errors import SparcodeError
from sparcode.generative.semantic_ids import IDS, load_ids
from sparcode.sid_terms import COLD_FIELD, FIELD, prefix_terms
from sparcode.staging import check_export_target, is_export, staged_directory

FORMAT = "sparcode-export/1"
KIND = "tiger-semantic-ids"
TIGER_DIR, COLD = "tiger", "cold_items.npy"  # as in train_tiger, which imports torch


class SidExportError(SparcodeError, ValueError):
    """The run cannot be exported as it is; one line saying why."""


def sid_fingerprint(run_dir: Path) -> str:
    """sha256 over the semantic IDs and the cold-item list: the two things the index serves."""
    folder = Path(run_dir) / TIGER_DIR
    digest = hashlib.sha256()
    for name in (IDS, COLD):
        path = folder / name
        digest.update(name.encode() + b"\0")
        digest.update(path.read_bytes() if path.is_file() else b"absent")
    return digest.hexdigest()


def item_lines(ids: np.ndarray, cold: np.ndarray, dataset, depths: list[int]):
    is_cold = np.zeros(len(ids), dtype=bool)
    is_cold[cold] = True
    for item, row in enumerate(ids.tolist()):
        attrs = dataset.item_attributes[item] if dataset.item_attributes else {}
        yield orjson.dumps({"item_id": dataset.item_ids[item], "ord": item, FIELD: prefix_terms(row, depths),
                            COLD_FIELD: int(is_cold[item]), **attrs})


def export_semantic_ids(run_dir: Path, dataset, out_dir: Path, run_info: dict, force: bool = False) -> dict:
    """Write OUT_DIR from RUN_DIR/tiger/semantic_ids.npy (+ cold_items.npy when trained)."""
    run_dir, out_dir = Path(run_dir), Path(out_dir)
    check_export_target(out_dir, run_dir, force=force)
    started = time.perf_counter()
    folder = run_dir / TIGER_DIR
    ids, meta = load_ids(folder)
    if meta.get("item_ids") != list(dataset.item_ids):
        raise SidExportError(f"{folder} holds semantic IDs for other items than dataset {dataset.name!r}")
    clash = {FIELD, COLD_FIELD} & set(dataset.item_attribute_types)
    if clash:
        raise SidExportError(f"item attribute(s) {sorted(clash)} clash with the semantic-ID fields")
    # Without a trained model there is no held-out set yet: every item is warm.
    cold = np.load(folder / COLD, allow_pickle=False) if (folder / COLD).is_file() else np.zeros(0, dtype=np.int64)
    depths = list(range(1, ids.shape[1] + 1))

    with staged_directory(out_dir, marker=is_export,
                          check=lambda: check_export_target(out_dir, run_dir, force=force, again=True)) as tmp:
        with gzip.open(tmp / "items.jsonl.gz", "wb", compresslevel=1) as fh:
            for line in item_lines(ids, cold, dataset, depths):
                fh.write(line + b"\n")
        manifest = {
            "format": FORMAT,
            "kind": KIND,
            "fingerprint": sid_fingerprint(run_dir),
            "run": run_info,
            "levels": int(ids.shape[1]),
            "vocab": meta.get("vocab"),
            "term_field": FIELD,
            "prefix_depths": depths,
            "terms": int(sum(len({tuple(r[:d]) for r in ids.tolist()}) for d in depths)),
            "cold_field": COLD_FIELD,
            "cold_items": int(len(cold)) if (folder / COLD).is_file() else None,
            "items": int(len(ids)),
            "item_fields": {**dataset.item_attribute_types, FIELD: ["keyword"], COLD_FIELD: "integer"},
            "files": {"items": ["items.jsonl.gz"]},
            "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "export_seconds": round(time.perf_counter() - started, 2),
        }
        (tmp / "manifest.json").write_bytes(orjson.dumps(manifest, option=orjson.OPT_INDENT_2) + b"\n")
    return manifest
