"""Merge `sparcode bench` outputs measured in separate runs into one bench.json / bench.md / plots.

E.g. 10k/100k with every path and 1M without ES kNN; each row keeps the run it came from.

    python scripts/merge_bench.py OUT_DIR RUN_DIR[:path,path][@items,items] [RUN_DIR... ...]

`:path,path` / `@items,items` keep only those paths / catalog sizes of a run (when two runs
measured the same path and size). Two rows of one path and size, or a run contributing no row,
are refused: pick which run measures what with those filters. Files of OUT_DIR other than the
bench's own are kept; the bench's are replaced only once every new one is written, and only with
--force when OUT_DIR already holds bench outputs (a forgotten OUT_DIR would otherwise overwrite the
first run named).
"""
from __future__ import annotations

import argparse
import os
import shutil
import tempfile
from pathlib import Path

import orjson

from sparcode.bench import report



class BadInput(ValueError):
    """Input the user can fix; printed as one line."""


def parse_spec(spec: str) -> tuple[Path, set[str], set[int]]:
    spec, _, sizes = spec.partition("@")
    run, _, keep = spec.partition(":")
    try:
        items = {int(n) for n in sizes.split(",") if n.strip()}
    except ValueError:
        raise BadInput(f"{spec}@{sizes}: sizes after @ are item counts, e.g. @10000,100000") from None
    return Path(run), {p.strip() for p in keep.split(",") if p.strip()}, items


def read_json(path: Path):
    try:
        return orjson.loads(path.read_bytes())
    except FileNotFoundError:
        raise BadInput(f"{path} not found: each RUN_DIR must be a `sparcode bench --out` folder") from None
    except orjson.JSONDecodeError as exc:
        raise BadInput(f"{path} is not valid JSON: {exc}") from None


def read_run(spec: str) -> tuple[dict, list[dict]]:
    run, keep, sizes = parse_spec(spec)
    meta = read_json(run / "bench.meta.json")
    try:
        rows = [row | {"run": meta["created"]} for row in read_json(run / "bench.json")
                if (not keep or row["path"] in keep) and (not sizes or row["items"] in sizes)]
    except (KeyError, TypeError) as exc:
        raise BadInput(f"{run} does not hold a `sparcode bench` output ({type(exc).__name__}: {exc})") from None
    if not rows:
        raise BadInput(f"{spec} selects no rows (check the paths after : and the sizes after @)")
    return meta, rows


def check_unique(rows: list[dict]) -> None:
    seen: dict[tuple[str, int], str] = {}
    for row in rows:
        key = (row["path"], row["items"])
        if key in seen:
            raise BadInput(f"{row['path']} at {row['items']:,} items comes from two runs ({seen[key]} and "
                           f"{row['run']}): keep one with RUN:paths or RUN@items")
        seen[key] = row["run"]


def write(out: Path, rows: list[dict], meta: dict) -> None:
    """Everything is written beside OUT first, then moved in file by file."""
    out.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=out, prefix=".merge."))
    try:
        report.write_outputs(tmp, rows, meta)
        for name in report.OUTPUTS:
            os.replace(tmp / name, out / name)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def merge(out: Path, specs: list[str], force: bool = False) -> tuple[int, int]:
    if not force and (out / "bench.json").exists():
        raise BadInput(f"{out} already holds bench outputs; pass --force to replace them (is OUT_DIR missing?)")
    metas, rows = [], []
    for spec in specs:
        meta, picked = read_run(spec)
        metas.append(meta)
        rows += picked
    check_unique(rows)
    rows.sort(key=lambda r: (r["items"], r["run"]))
    # Settings and load average of the last run given are printed; every run's are kept in the meta.
    meta = dict(metas[-1], runs=[{k: m.get(k) for k in ("created", "loadavg", "paths", "urls", "catalogs")}
                                 for m in metas])
    # Each SparCode catalog as stored, whichever run measured it (older runs did not record it).
    meta["catalogs"] = {str(r["items"]): {"pairs": r["pairs"], "postings_per_item": r["postings_per_item"]}
                        for r in rows if "pairs" in r}
    write(out, rows, meta)
    return len(rows), len(metas)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path)
    parser.add_argument("runs", nargs="+")
    parser.add_argument("--force", action="store_true", help="replace the bench outputs OUT_DIR already holds")
    args = parser.parse_args()
    try:
        rows, runs = merge(args.out, args.runs, args.force)
    except (BadInput, OSError) as exc:
        raise SystemExit(f"merge_bench: {exc}") from None
    print(f"{rows} rows from {runs} runs → {args.out}")


if __name__ == "__main__":
    main()
