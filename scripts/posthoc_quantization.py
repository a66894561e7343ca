"""Quantize a trained all-to-all after training, and see what serving it costs.

Issue 3 asks SparCode to keep ≥ 0.97 of the unindexed all-to-all's R@50. This measures the
other route to an index: train without a quantizer, then fit the product quantizer by k-means
on the trained user tokens (of a sample of training windows) and serve those codes. It writes a
SparCode run directory that `sparcode evaluate` / `export` accept, and prints, for the test
users, the dense scores of the continuous and of the quantized tokens, and the served scores
with each query-weighting scheme:

    uniform   every probed code counts 1 (what `serve.query_probes` does)
    nnls      the probed codewords' non-negative least-squares weights that rebuild the token

    python scripts/posthoc_quantization.py runs/a2a runs/a2a-pq --codebooks 2 --out pq.json
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch
from scipy.optimize import nnls
from vector_quantize_pytorch.vector_quantize_pytorch import kmeans

from script_checks import check_out_file, fail, open_run_of
from sparcode.encoder import checkpoint as ckpt
from sparcode.encoder.evaluation import Unquantized, load_for_serving
from sparcode.encoder.models import build_model
from sparcode.encoder.runs import open_run
from sparcode.encoder.serving import build_postings, code_table, user_queries
from sparcode.encoder.train import model_scores
from sparcode.eval.harness import evaluate_scores
from sparcode.staging import OccupiedTarget, check_replaceable, staged_directory

REPORTED = ("recall@20", "recall@50", "ndcg@50")


def fit_codebooks(tokens: torch.Tensor, codebooks: int, codes: int, iters: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(n, d) tokens → (M, N, d/M) k-means codewords per sub-vector and (M, N) cluster sizes."""
    subs = tokens.reshape(len(tokens), codebooks, -1).transpose(0, 1).contiguous()  # (M, n, d/M)
    means, sizes = kmeans(subs, codes, iters)
    return means, sizes.float()


def quantize_run(run, target: Path, codebooks: int, windows: int, iters: int) -> None:
    source, cfg = run.path, run.config
    cfg.model.kind, cfg.model.codebooks = "sparcode", codebooks
    cfg.validate()
    model = build_model(cfg.model, run.dataset, run.split.max_history)
    model.load_state_dict(ckpt.load_tensors(source / ckpt.WEIGHTS), strict=False)  # all but the codebook
    model.eval()
    train = run.split.train
    rows = np.sort(np.random.default_rng(cfg.seed).permutation(len(train))[:windows])
    with torch.no_grad():
        tokens = torch.cat([
            model.pre_quantization_tokens(torch.as_tensor(train.users[r]), torch.as_tensor(train.histories[r]))
            for r in np.array_split(rows, max(1, len(rows) // 4096))
        ]).reshape(-1, cfg.model.dim)
    torch.manual_seed(cfg.seed)
    means, sizes = fit_codebooks(tokens, codebooks, cfg.model.codes, iters)
    state = model.state_dict()
    book = "quantizer.vq._codebook."
    state.update({book + "embed": means, book + "cluster_size": sizes,
                  book + "embed_avg": means * sizes[..., None], book + "initted": torch.tensor(True)})
    model.load_state_dict(state)
    # Staged: a run folder appears whole, so an interrupted fit leaves nothing `evaluate` would open.
    with staged_directory(target) as staging:
        cfg.save(staging / ckpt.CONFIG)
        ckpt.atomic_torch_save(model.state_dict(), staging / ckpt.WEIGHTS)
        info = {**run.info, "model": "sparcode", "quantized_after_training_from": str(source),
                "quantizer_fit": {"windows": len(rows), "kmeans_iters": iters}}
        (staging / ckpt.RUN_INFO).write_text(json.dumps(info, indent=1) + "\n")


def measure(run, probes: int) -> dict:
    evalset, exclude = run.split.test, run.split.exclude_seen_default
    model, device, codes = load_for_serving(run)
    rows = {}

    def record(name: str, metrics: dict) -> None:
        rows[name] = {k: round(float(metrics[k]), 4) for k in REPORTED}
        print(name, rows[name], flush=True)

    record("continuous", evaluate_scores(model_scores(Unquantized(model), evalset, device), evalset,
                                         run.dataset.n_items, exclude_seen=exclude))
    record("quantized", evaluate_scores(model_scores(model, evalset, device), evalset,
                                        run.dataset.n_items, exclude_seen=exclude))
    serve = run.config.serve
    postings = build_postings(model, codes, device, serve.bias, serve.stored_fraction, serve.max_postings,
                              progress=False, allocation=serve.allocation)
    table = code_table(model, codes[postings.nonempty()])
    served = {"uniform": user_queries(model, evalset.users, evalset.histories, device, table, probes)}
    with torch.no_grad():
        tokens = model.pre_quantization_tokens(torch.as_tensor(evalset.users), torch.as_tensor(evalset.histories))
    per_user = tokens.shape[1]
    tokens = tokens.reshape(-1, tokens.shape[-1]).numpy()  # (users × K_u, d)
    nearest = table.nearest_to(tokens, probes)
    served["nnls"] = [{} for _ in range(len(evalset))]
    for row, (token, found) in enumerate(zip(tokens, nearest)):
        query = served["nnls"][row // per_user]  # a user's K_u tokens add up in one query
        weights, _ = nnls(table.vectors[found].T.astype(np.float64), token.astype(np.float64))
        for r, w in zip(found, weights):
            if w > 0:
                query[table.terms[r]] = query.get(table.terms[r], 0.0) + float(w)
    for name, queries in served.items():
        metrics = evaluate_scores(lambda rs: np.stack([postings.user_scores(table, queries[r]) for r in rs]),
                                  evalset, run.dataset.n_items, exclude_seen=exclude)
        record(f"served, {probes} probes, {name}", metrics)
    distance = ((table.vectors[nearest[:, 0]] - tokens) ** 2).sum(-1).mean()
    return {"rows": rows, **postings.stats(), "mean_squared_distance_to_nearest_code": round(float(distance), 3),
            "mean_squared_token_norm": round(float((tokens ** 2).sum(-1).mean()), 3)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("source", type=Path, help="A trained all-to-all run; or, with --measure-only, any SparCode run.")
    parser.add_argument("target", type=Path, nargs="?")
    parser.add_argument("--codebooks", type=int, default=2)
    parser.add_argument("--windows", type=int, default=300_000, help="Training windows whose tokens k-means sees.")
    parser.add_argument("--iters", type=int, default=25)
    parser.add_argument("--probes", type=int, default=8)
    parser.add_argument("--measure-only", action="store_true", help="Measure SOURCE as it is (a jointly trained SparCode).")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if args.out:
        check_out_file(args.out)
    if args.measure_only:
        run = open_run_of(args.source, ("sparcode",), "--measure-only measures a SparCode run")
    else:
        if args.target is None:
            parser.error("TARGET is required unless --measure-only")
        try:  # TARGET becomes a whole run folder: never mixed into another run's or the user's files
            check_replaceable(args.target)
        except OccupiedTarget as err:
            fail(f"TARGET {err}")
        source = open_run_of(args.source, ("all-to-all",), "post-hoc quantization starts from an all-to-all")
        quantize_run(source, args.target, args.codebooks, args.windows, args.iters)
        run = open_run(args.target)
    result = measure(run, args.probes)
    if args.out:
        args.out.write_text(json.dumps(result, indent=1) + "\n")


if __name__ == "__main__":
    main()
