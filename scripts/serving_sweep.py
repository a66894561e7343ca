"""Where a trained SparCode run loses quality between its scorer and the index.

Scores one run's test (or validation) users at each serving stage and setting, loading the
model once:

    unquantized   the user token before quantization, scored densely (the scorer's own bound)
    quantized     the quantized token, scored densely as in training (validation's number)
    served        postings as `sparcode export` writes them, for each allocation ×
                  stored fraction × query probes given

    python scripts/serving_sweep.py RUN --fractions 0.05,0.1 --probes 1,8,32 --out sweep.json

A row is the same computation as `sparcode evaluate RUN --json --stored-fraction F
--query-probes P`, and `sparcode export` takes the same two options, so a setting worth keeping
is served without retraining.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import time
from pathlib import Path

from script_checks import check_out_file, open_run_of
from sparcode.encoder.evaluation import Unquantized, evaluate_sparcode_served, load_for_serving
from sparcode.encoder.train import model_scores
from sparcode.eval.harness import evaluate_scores

REPORTED = ("recall@5", "ndcg@5", "recall@10", "ndcg@10", "recall@20", "recall@50", "ndcg@50")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run", type=Path)
    parser.add_argument("--users", choices=["test", "valid"], default="test")
    parser.add_argument("--exclude-seen", action="store_true", help="Default: the split's own default.")
    parser.add_argument("--allocations", default="per-code")
    parser.add_argument("--fractions", default="0.05")
    parser.add_argument("--probes", default="1,8")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()

    check_out_file(args.out)
    run = open_run_of(args.run, ("sparcode",), "the serving sweep needs a SparCode run")
    evalset = run.split.test if args.users == "test" else run.split.valid
    exclude = args.exclude_seen or run.split.exclude_seen_default
    loaded = load_for_serving(run)  # the training windows' codes are encoded once, not per setting
    model, device, _ = loaded
    rows = []

    def record(stage: str, metrics: dict, **settings) -> None:
        row = {"stage": stage, **settings, **{k: round(float(metrics[k]), 4) for k in REPORTED if k in metrics}}
        if "stored_fraction" in metrics:
            row.update(stored_fraction=round(metrics["stored_fraction"], 4), codes=metrics["codes"],
                       pairs=metrics["pairs"], codes_used=metrics["codes_used"])
        rows.append(row)
        print(json.dumps(row), flush=True)

    for stage, scored in (("unquantized", Unquantized(model)), ("quantized", model)):
        metrics = evaluate_scores(model_scores(scored, evalset, device), evalset, run.dataset.n_items,
                                  exclude_seen=exclude)
        record(stage, metrics)

    base = run.config.serve
    for allocation in args.allocations.split(","):
        for fraction in (float(f) for f in args.fractions.split(",")):
            for probes in (int(p) for p in args.probes.split(",")):
                run.config.serve = dataclasses.replace(base, allocation=allocation, stored_fraction=fraction,
                                                       query_probes=probes)
                started = time.perf_counter()
                metrics, _ = evaluate_sparcode_served(run, evalset, exclude, loaded=loaded)
                record("served", metrics, allocation=allocation, fraction=fraction, probes=probes,
                       seconds=round(time.perf_counter() - started, 1))
    args.out.write_text(json.dumps({"run": str(args.run), "users": args.users, "exclude_seen": exclude,
                                    "population": len(evalset), "rows": rows}, indent=1) + "\n")


if __name__ == "__main__":
    main()
