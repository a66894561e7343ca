"""Derive a posting-capped copy of a SparCode export: each code keeps its `--max-postings`
highest stored scores, the rule `sparcode export --max-postings` applies while scoring (same b̃,
same fingerprint). Used to measure the quality cost of a cap without re-scoring the model:

    python scripts/cap_export.py EXPORT_DIR OUT_DIR --max-postings 10 [--force]
    sparcode evaluate RUN --backend local --export OUT_DIR --json
"""
from __future__ import annotations

import argparse
import gzip
import json
import shutil
from pathlib import Path

import numpy as np
import orjson

from sparcode.pipeline.export import Export, ExportError
from sparcode.staging import OccupiedTarget, check_replaceable, is_export, staged_directory


def positive(text: str) -> int:
    value = int(text)
    if value < 1:  # 0 would empty every code and a negative cap would slice from the end
        raise argparse.ArgumentTypeError(f"{value}: the cap is a count of postings per code, at least 1")
    return value


def check_target(export: Path, out: Path, force: bool) -> None:
    """OUT is read back while EXPORT is still being read: never EXPORT itself (or a folder
    holding it), never a folder of other files, an earlier export only with --force."""
    try:
        check_replaceable(out, is_export, protect=[export], protected="the export being read")
    except OccupiedTarget as err:
        raise SystemExit(f"cap_export: {err}") from None
    if is_export(out) and not force:
        raise SystemExit(f"cap_export: {out} already holds an export; pass --force to replace it")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("export", type=Path)
    parser.add_argument("out", type=Path)
    parser.add_argument("--max-postings", type=positive, required=True)
    parser.add_argument("--force", action="store_true", help="replace the export OUT_DIR already holds")
    args = parser.parse_args()
    check_target(args.export, args.out, args.force)
    try:
        export = Export.open(args.export)
        items = list(export.items())
    except ExportError as err:
        raise SystemExit(f"cap_export: {err}") from None
    by_code: dict[str, list[tuple[float, int]]] = {}
    for pos, item in enumerate(items):
        for term, value in (item.get("codes") or {}).items():
            by_code.setdefault(term, []).append((-value, item["ord"], pos))
    keep: set[tuple[str, int]] = set()
    for term, postings in by_code.items():
        postings.sort()  # highest score first, ties by smaller ord
        keep.update((term, pos) for _, _, pos in postings[:args.max_postings])
    pairs, per_code = 0, {}
    # Staged: OUT shows the old export or the finished new one, never items without a manifest.
    with staged_directory(args.out, marker=is_export) as staging:
        with gzip.open(staging / "items.jsonl.gz", "wb", compresslevel=1) as fh:
            for pos, item in enumerate(items):
                item["codes"] = {t: v for t, v in (item.get("codes") or {}).items() if (t, pos) in keep}
                pairs += len(item["codes"])
                for t in item["codes"]:
                    per_code[t] = per_code.get(t, 0) + 1
                fh.write(orjson.dumps(item) + b"\n")
        shutil.copy2(args.export / export.manifest["files"].get("codes", "codes.npz"), staging / "codes.npz")
        counts = np.asarray(list(per_code.values()) or [0], dtype=np.float64)
        manifest = dict(export.manifest, max_postings=args.max_postings, pairs=pairs,
                        stored_fraction=pairs / max(int(export.manifest["codes"]) * len(items), 1),
                        postings_per_code={"mean": float(counts.mean()), "p50": float(np.percentile(counts, 50)),
                                           "p99": float(np.percentile(counts, 99)), "max": int(counts.max())},
                        files={"items": ["items.jsonl.gz"], "codes": "codes.npz"},
                        derived_from={"export": str(args.export), "by": "scripts/cap_export.py"})
        (staging / "manifest.json").write_text(json.dumps(manifest, indent=2))
    print(f"{args.out}: {pairs} pairs ({pairs / max(len(items), 1):.1f} per item), cap {args.max_postings}")


if __name__ == "__main__":
    main()
