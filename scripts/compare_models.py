"""The model comparison behind the README tables: train every model on one dataset, evaluate the
test users the same way, and write results/<dataset>/{results.json,table.md}.

    .venv/bin/python scripts/compare_models.py --dataset ml-1m
    .venv/bin/python scripts/compare_models.py --dataset beauty --models ease,two-tower,sparcode,tiger

A finished run is reused (delete runs/compare-<dataset>/<model> to retrain, or pass
--runs-dir); each model's training wall time comes from its run.json.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SPARCODE = [sys.executable, "-m", "sparcode.cli"]
SPLIT = {"ml-1m": "multi-target", "beauty": "leave-one-out"}
KS = {"ml-1m": (20, 50), "beauty": (5, 10)}


def run(*args: str) -> str:
    done = subprocess.run([*SPARCODE, *args], cwd=ROOT, text=True, stdout=subprocess.PIPE)
    if done.returncode != 0:
        raise SystemExit(f"sparcode {' '.join(args)} failed with exit code {done.returncode}")
    return done.stdout


def evaluate(run_dir: Path, *extra: str) -> dict:
    return json.loads(run("evaluate", str(run_dir), "--json", *extra))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dataset", choices=sorted(SPLIT), default="ml-1m")
    parser.add_argument("--models", default="ease,two-tower,all-to-all,sparcode")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--config-dir", type=Path, default=None,
                        help="Optional directory of <model>.json config overrides.")
    parser.add_argument("--runs-dir", type=Path, default=None,
                        help="Where the runs live (default runs/compare-<dataset>).")
    args = parser.parse_args()

    dataset, split = args.dataset, SPLIT[args.dataset]
    runs_root = args.runs_dir or ROOT / "runs" / f"compare-{dataset}"
    out_dir = ROOT / "results" / dataset
    out_dir.mkdir(parents=True, exist_ok=True)
    rows = []
    for model in args.models.split(","):
        run_dir = runs_root / model
        if not (run_dir / "run.json").exists():
            extra = []
            override = args.config_dir / f"{model}.json" if args.config_dir else None
            if override is not None and override.exists():
                extra = ["--config", str(override)]
            if (run_dir / "config.json").exists():
                extra.append("--resume")  # an interrupted run continues rather than being refused
            run("train", "--model", model, "--dataset", dataset, "--split", split, "--out", str(run_dir),
                "--seed", str(args.seed), *extra)
        info = json.loads((run_dir / "run.json").read_text())
        row = {"model": model, "train_seconds": info.get("train_seconds"), "best_epoch": info.get("best_epoch"),
               "metrics": evaluate(run_dir)}
        if split == "leave-one-out":
            row["metrics_exclude_seen"] = evaluate(run_dir, "--exclude-seen")
        rows.append(row)
        print(json.dumps({"model": model, **{k: row["metrics"][k] for k in row["metrics"] if "@" in k}}), flush=True)
    (out_dir / "results.json").write_text(json.dumps(rows, indent=2, sort_keys=True) + "\n")
    (out_dir / "table.md").write_text(markdown(rows, KS[dataset]))
    print((out_dir / "table.md").read_text())


def markdown(rows: list[dict], ks) -> str:
    columns = [f"{m}@{k}" for k in ks for m in ("recall", "ndcg", "hr")]
    head = "| model | " + " | ".join(columns) + " | stored pairs | train min |"
    lines = [head, "|" + "---|" * (len(columns) + 3)]
    for row in rows:
        for label, metrics in (("", row["metrics"]), (" (seen excluded)", row.get("metrics_exclude_seen"))):
            if metrics is None:
                continue
            stored = metrics.get("stored_fraction")
            cells = [f"{metrics[c]:.4f}" for c in columns]
            minutes = f"{row['train_seconds'] / 60:.1f}" if row.get("train_seconds") else "–"
            lines.append(f"| {row['model']}{label} | " + " | ".join(cells)
                         + f" | {'–' if stored is None else f'{stored:.3f}'} | {minutes} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
