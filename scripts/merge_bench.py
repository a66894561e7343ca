"""Merge `sparcode bench` outputs measured in separate runs (e.g. 10k/100k with every path, 1M
without ES kNN) into one bench.json / bench.md / plots; each row keeps the run it came from.

    python scripts/merge_bench.py OUT_DIR RUN_DIR[:path,path][@items,items] [RUN_DIR... ...]

`:path,path` / `@items,items` keep only those paths / catalog sizes of a run (when two runs
measured the same path and size).
"""
from __future__ import annotations

import argparse
from pathlib import Path

import orjson

from sparcode.bench import report


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path)
    parser.add_argument("runs", nargs="+")
    args = parser.parse_args()
    rows, metas = [], []
    for spec in args.runs:
        spec, _, sizes = spec.partition("@")
        run, _, keep = spec.partition(":")
        run, keep = Path(run), set(filter(None, keep.split(",")))
        sizes = {int(n) for n in sizes.split(",") if n}
        meta = orjson.loads((run / "bench.meta.json").read_bytes())
        metas.append(meta)
        for row in orjson.loads((run / "bench.json").read_bytes()):
            if (not keep or row["path"] in keep) and (not sizes or row["items"] in sizes):
                rows.append(row | {"run": meta["created"]})
    rows.sort(key=lambda r: (r["items"], r["run"]))
    # Settings and load average of the last run given are printed; every run's are kept in the meta.
    meta = dict(metas[-1], runs=[{k: m.get(k) for k in ("created", "loadavg", "paths")} for m in metas])
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "bench.json").write_bytes(orjson.dumps(rows, option=orjson.OPT_INDENT_2))
    (args.out / "bench.meta.json").write_bytes(orjson.dumps(meta, option=orjson.OPT_INDENT_2))
    report.write_markdown(args.out / "bench.md", rows, meta)
    report.write_plots(args.out, rows)
    print(f"{len(rows)} rows from {len(metas)} runs → {args.out}")


if __name__ == "__main__":
    main()
