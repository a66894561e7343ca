"""The model comparison behind the README tables: train every model on one dataset, evaluate the
test users the same way, and write results/<dataset>/{results.json,table.md}.

    .venv/bin/python scripts/compare_models.py --dataset ml-1m
    .venv/bin/python scripts/compare_models.py --dataset beauty --models ease,two-tower,sparcode,tiger
    .venv/bin/python scripts/compare_models.py --dataset PATH --split leave-one-out --runs-dir DIR --out DIR

A finished run is reused (delete runs/compare-<dataset>/<model> to retrain, or pass
--runs-dir), and refused when it was trained with another seed or config than asked for; each
model's training wall time comes from its run.json. The rows of the models run replace theirs in
an existing results.json; the other models' rows are kept.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

from script_checks import fail
from sparcode.staging import atomic_write_bytes

ROOT = Path(__file__).resolve().parent.parent
SPARCODE = [sys.executable, "-m", "sparcode.cli"]
SPLIT = {"ml-1m": "multi-target", "beauty": "leave-one-out"}
KS = {"multi-target": (20, 50), "leave-one-out": (5, 10)}


def run(*args: str) -> str:
    done = subprocess.run([*SPARCODE, *args], cwd=ROOT, text=True, stdout=subprocess.PIPE)
    if done.returncode != 0:
        fail(f"sparcode {' '.join(args)} failed with exit code {done.returncode}")
    return done.stdout


def evaluate(run_dir: Path, *extra: str) -> dict:
    return json.loads(run("evaluate", str(run_dir), "--json", *extra))


def flat(data: dict, prefix: str = "") -> dict:
    out = {}
    for key, value in data.items():
        if isinstance(value, dict):
            out.update(flat(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def check_reused(run_dir: Path, train_args: list[str]) -> None:
    """A finished run is reused only when it is the run this call would train (`train
    --show-config` says which): otherwise its numbers would be reported under a seed or config
    they never came from."""
    have = flat(json.loads((run_dir / "config.json").read_text()))
    want = flat(json.loads(run(*train_args, "--show-config")))
    differ = sorted(key for key in have.keys() | want.keys() if have.get(key) != want.get(key))
    if differ:
        shown = ", ".join(f"{key} {have.get(key)!r} (not {want.get(key)!r})" for key in differ[:3])
        more = f" and {len(differ) - 3} more" if len(differ) > 3 else ""
        fail(f"{run_dir} is a finished run with {shown}{more}; pass another --runs-dir, or delete it to retrain")


def config_overrides(config_dir: Path | None, models: list[str]) -> dict[str, Path | None]:
    if config_dir is None:
        return dict.fromkeys(models)
    if not config_dir.is_dir():
        fail(f"--config-dir {config_dir} is not a folder")
    found = {model: config_dir / f"{model}.json" for model in models if (config_dir / f"{model}.json").is_file()}
    if not found:
        fail(f"--config-dir {config_dir} holds no {' / '.join(f'{m}.json' for m in models)}")
    for model in models:
        if model not in found:
            print(f"note: no {config_dir / f'{model}.json'}: {model} trains with its preset", file=sys.stderr)
    return {model: found.get(model) for model in models}


def refuse_mixed(out_dir: Path, models: list[str], setting: dict) -> None:
    """Before any training: the rows results.json would keep beside `models` must have been
    measured on this dataset, split and seed, or one table would mix protocols."""
    path = out_dir / "results.json"
    if not path.exists():
        return
    for row in json.loads(path.read_text()):
        # Rows from before these were recorded name their dataset in their metrics only.
        recorded = {"dataset": row.get("dataset", row.get("metrics", {}).get("dataset")),
                    "split": row.get("split"), "seed": row.get("seed")}
        differ = [f"{key} {recorded[key]} (not {value})" for key, value in setting.items()
                  if recorded[key] is not None and recorded[key] != value]
        if row["model"] not in models and differ:
            fail(f"{path} holds a {row['model']} row of {', '.join(differ)}; write to another --out "
                 "rather than mix them in one table (nothing was trained)")


def merged(out_dir: Path, rows: list[dict]) -> list[dict]:
    """Earlier rows of results.json with the rows just measured in place of their models'."""
    path = out_dir / "results.json"
    if not path.exists():
        return rows
    new = {row["model"]: row for row in rows}
    old = json.loads(path.read_text())
    kept = [row for row in old if row["model"] not in new]
    if kept:
        print(f"kept the rows of {', '.join(row['model'] for row in kept)} from {path}", file=sys.stderr)
    return [new.pop(row["model"], row) for row in old] + list(new.values())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dataset", default="ml-1m", help="ml-1m, beauty, or a dataset PATH (then --split, "
                                                           "--runs-dir and --out are needed).")
    parser.add_argument("--split", choices=sorted(KS), default=None, help="Default: the named dataset's.")
    parser.add_argument("--models", default="ease,two-tower,all-to-all,sparcode")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--config-dir", type=Path, default=None,
                        help="Optional directory of <model>.json config overrides.")
    parser.add_argument("--runs-dir", type=Path, default=None,
                        help="Where the runs live (default runs/compare-<dataset>).")
    parser.add_argument("--out", type=Path, default=None,
                        help="Where results.json and table.md go (default results/<dataset>).")
    args = parser.parse_args()

    named = args.dataset in SPLIT
    if not named and None in (args.split, args.runs_dir, args.out):
        fail(f"--dataset {args.dataset} is not ml-1m or beauty: a dataset PATH needs --split, --runs-dir and --out")
    # Absolute: training and evaluation run from the repository root, not from the caller's folder.
    dataset = args.dataset if named else str(Path(args.dataset).resolve())
    split = args.split or SPLIT[dataset]
    runs_root = (args.runs_dir or ROOT / "runs" / f"compare-{dataset}").resolve()
    out_dir = (args.out or ROOT / "results" / dataset).resolve()
    models = args.models.split(",")
    overrides = config_overrides(args.config_dir.resolve() if args.config_dir else None, models)
    for model in models:  # every reused run is checked before any training starts
        if (runs_root / model / "run.json").exists():
            check_reused(runs_root / model, train_args(model, runs_root / model, dataset, split, args.seed,
                                                       overrides[model]))
    refuse_mixed(out_dir, models, {"dataset": dataset, "split": split, "seed": args.seed})
    out_dir.mkdir(parents=True, exist_ok=True)
    rows = []
    try:
        for model in models:
            rows.append(measure(model, runs_root / model, dataset, split, args.seed, overrides[model]))
    except KeyboardInterrupt:
        print(f"interrupted: the next call with the same --runs-dir ({runs_root}) resumes where training "
              f"stopped; {out_dir} is unchanged", file=sys.stderr)
        raise SystemExit(130) from None
    rows = merged(out_dir, rows)
    atomic_write_bytes(out_dir / "results.json", (json.dumps(rows, indent=2, sort_keys=True) + "\n").encode())
    table = markdown(rows, KS[split])
    atomic_write_bytes(out_dir / "table.md", table.encode())
    print(table)


def train_args(model: str, run_dir: Path, dataset: str, split: str, seed: int, override: Path | None) -> list[str]:
    return ["train", "--model", model, "--dataset", dataset, "--split", split, "--out", str(run_dir),
            "--seed", str(seed), *(["--config", str(override)] if override is not None else [])]


def measure(model: str, run_dir: Path, dataset: str, split: str, seed: int, override: Path | None) -> dict:
    if not (run_dir / "run.json").exists():
        args = train_args(model, run_dir, dataset, split, seed, override)
        # An interrupted run continues rather than being refused.
        run(*args, *(["--resume"] if (run_dir / "config.json").exists() else []))
    info = json.loads((run_dir / "run.json").read_text())
    row = {"model": model, "dataset": dataset, "split": split, "seed": seed,
           "config": None if override is None else str(override),
           "train_seconds": info.get("train_seconds"), "best_epoch": info.get("best_epoch"),
           "metrics": evaluate(run_dir)}
    if split == "leave-one-out":
        row["metrics_exclude_seen"] = evaluate(run_dir, "--exclude-seen")
    print(json.dumps({"model": model, **{k: row["metrics"][k] for k in row["metrics"] if "@" in k}}), flush=True)
    return row


def markdown(rows: list[dict], ks) -> str:
    columns = [f"{m}@{k}" for k in ks for m in ("recall", "ndcg", "hr")]
    head = "| model | " + " | ".join(columns) + " | stored fraction | train min |"
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
