"""Derive a posting-capped copy of a SparCode export: each code keeps its `--max-postings`
highest stored scores, the rule `sparcode export --max-postings` applies while scoring (same b̃,
same fingerprint). Used to measure the quality cost of a cap without re-scoring the model:

    python scripts/cap_export.py EXPORT_DIR OUT_DIR --max-postings 10
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

from sparcode.pipeline.export import Export


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("export", type=Path)
    parser.add_argument("out", type=Path)
    parser.add_argument("--max-postings", type=int, required=True)
    args = parser.parse_args()
    export = Export.open(args.export)
    items = list(export.items())
    by_code: dict[str, list[tuple[float, int]]] = {}
    for pos, item in enumerate(items):
        for term, value in (item.get("codes") or {}).items():
            by_code.setdefault(term, []).append((-value, item["ord"], pos))
    keep: set[tuple[str, int]] = set()
    for term, postings in by_code.items():
        postings.sort()  # highest score first, ties by smaller ord
        keep.update((term, pos) for _, _, pos in postings[:args.max_postings])
    args.out.mkdir(parents=True, exist_ok=True)
    pairs, per_code = 0, {}
    with gzip.open(args.out / "items.jsonl.gz", "wb", compresslevel=1) as fh:
        for pos, item in enumerate(items):
            item["codes"] = {t: v for t, v in (item.get("codes") or {}).items() if (t, pos) in keep}
            pairs += len(item["codes"])
            for t in item["codes"]:
                per_code[t] = per_code.get(t, 0) + 1
            fh.write(orjson.dumps(item) + b"\n")
    shutil.copy2(args.export / export.manifest["files"].get("codes", "codes.npz"), args.out / "codes.npz")
    counts = np.asarray(list(per_code.values()), dtype=np.float64)
    manifest = dict(export.manifest, max_postings=args.max_postings, pairs=pairs,
                    stored_fraction=pairs / max(int(export.manifest["codes"]) * len(items), 1),
                    postings_per_code={"mean": float(counts.mean()), "p50": float(np.percentile(counts, 50)),
                                       "p99": float(np.percentile(counts, 99)), "max": int(counts.max())},
                    files={"items": ["items.jsonl.gz"], "codes": "codes.npz"},
                    derived_from={"export": str(args.export), "by": "scripts/cap_export.py"})
    (args.out / "manifest.json").write_text(json.dumps(manifest, indent=2))
    print(f"{args.out}: {pairs} pairs ({pairs / len(items):.1f} per item), cap {args.max_postings}")


if __name__ == "__main__":
    main()
