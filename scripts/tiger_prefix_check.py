"""Cold-start retrieval through Elasticsearch on a real TIGER run: for seeded test users whose
target is a held-out (cold) item, the prefix lookup on the `sid` index must return exactly what
the in-process ColdIndex returns, and cold recall@10 must be the same either way.

    sparcode export runs/compare-beauty/tiger --out exports/tiger-beauty-sids
    sparcode index exports/tiger-beauty-sids --alias tiger-beauty-sids
    .venv/bin/python scripts/tiger_prefix_check.py runs/compare-beauty/tiger --alias tiger-beauty-sids \
        --users 500 --out results/beauty/tiger

Writes OUT/prefix_es_check.json; exits non-zero if any list differs.
"""
from __future__ import annotations

import json
import time
from pathlib import Path

import click
import numpy as np


@click.command()
@click.argument("run_dir", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--alias", required=True, help="Alias of the run's indexed semantic-ID export.")
@click.option("--users", type=click.IntRange(min=1), default=500, show_default=True,
              help="Seeded subset of the test users whose target is a cold item.")
@click.option("--candidates", type=click.IntRange(min=1, max=10_000), default=200, show_default=True,
              help="Length of the full candidate lists compared.")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--out", "out_dir", type=click.Path(file_okay=False, path_type=Path), default=None)
def main(run_dir, alias, users, candidates, seed, out_dir):
    import torch

    from sparcode.eval.metrics import pad_rankings, ranking_metrics
    from sparcode.generative.beam import ColdIndex
    from sparcode.generative.sid_export import sid_fingerprint
    from sparcode.generative.train_tiger import load_tiger
    from sparcode.pipeline.backends import BackendError
    from sparcode.pipeline.connect import connect
    from sparcode.pipeline.engine import ConnectionProblem
    from sparcode.pipeline.sid_search import SidPrefixBackend

    from script_checks import fail, open_run_of

    torch.set_num_threads(1)
    run = open_run_of(run_dir, ("tiger",), "the prefix check needs a TIGER run")
    try:  # before the model loads: a wrong alias or an unreachable node is found at once
        backend = SidPrefixBackend(connect(), alias, expected_fingerprint=sid_fingerprint(run.path))
    except (BackendError, ConnectionProblem) as err:
        fail(str(err))
    tiger = load_tiger(run.path, run.dataset, device="cpu")
    cold_index = ColdIndex(tiger.ids, tiger.cold, tiger.cfg.cold_prefix_depth)
    test = run.split.test
    exclude = run.split.exclude_seen_default
    is_cold = np.zeros(len(tiger.ids), dtype=bool)
    is_cold[tiger.cold] = True
    cold_rows = np.array([r for r in range(len(test)) if is_cold[test.targets[r]].any()])
    rows = np.sort(np.random.default_rng([seed, 11]).choice(cold_rows, size=min(users, len(cold_rows)), replace=False))
    seen = [test.seen[r] for r in rows]
    items, _ = tiger.rank(test.histories[rows], test.users[rows], tiger.cfg.beam_size,
                          exclude=seen if exclude else None)
    item_ids = run.dataset.item_ids
    seconds, same_lists, same_mixed, local_mixed, engine_mixed, nonempty = [], 0, 0, [], [], 0
    for i in range(len(rows)):
        ranked = items[i][items[i] >= 0]
        skip = set(ranked[:10].tolist()) | (set(seen[i].tolist()) if exclude else set())
        want = cold_index.candidates(ranked[:10], skip)[:candidates]
        started = time.perf_counter()
        hits = backend.search(tiger.ids[ranked[:10]].tolist(), cold_index.depths, candidates,
                              exclude_items=[item_ids[j] for j in sorted(skip)])
        seconds.append(time.perf_counter() - started)
        same_lists += [h.ord for h in hits] == want
        nonempty += bool(want)

        def lookup(generated, skip_, limit):
            return [h.ord for h in backend.search(tiger.ids[generated].tolist(), cold_index.depths, limit,
                                                  exclude_items=[item_ids[j] for j in sorted(skip_)])] if limit else []

        local = cold_index.mix(ranked, 10, tiger.cfg.cold_slots, seen[i] if exclude else None)
        served = cold_index.mix(ranked, 10, tiger.cfg.cold_slots, seen[i] if exclude else None, lookup=lookup)
        same_mixed += np.array_equal(local, served)
        local_mixed.append(local)
        engine_mixed.append(served)
    targets = [test.targets[r][is_cold[test.targets[r]]] for r in rows]
    recall = {name: ranking_metrics(pad_rankings(lists, 10), targets, (10,))["recall@10"]
              for name, lists in (("in_process", local_mixed), ("elasticsearch", engine_mixed))}
    ms = np.array(seconds) * 1000
    report = {
        "run": str(run_dir), "alias": alias, "users": int(len(rows)), "cold_target_users": int(len(cold_rows)),
        "seed": seed, "beam_size": tiger.cfg.beam_size, "cold_slots": tiger.cfg.cold_slots,
        "prefix_depths": cold_index.depths, "exclude_seen": bool(exclude), "candidates_compared": candidates,
        "identical_candidate_lists": int(same_lists), "users_with_candidates": int(nonempty),
        "identical_top10_after_mixing": int(same_mixed), "cold_recall@10": recall,
        "lookup_ms": {"p50": round(float(np.percentile(ms, 50)), 2), "p95": round(float(np.percentile(ms, 95)), 2),
                      "mean": round(float(ms.mean()), 2)},
        "engine": f"{backend.engine.label} {backend.engine.version}",
    }
    click.echo(json.dumps(report, indent=2))
    if out_dir is not None:
        out_dir.mkdir(parents=True, exist_ok=True)
        (out_dir / "prefix_es_check.json").write_text(json.dumps(report, indent=2) + "\n")
    if same_lists != len(rows) or same_mixed != len(rows):
        raise click.ClickException(f"{len(rows) - same_lists} candidate lists and {len(rows) - same_mixed} mixed "
                                   "top-10s differ between Elasticsearch and the in-process ColdIndex")


if __name__ == "__main__":
    main()
