"""`sparcode evaluate`: metrics on the test users, for the model as it is served."""
from __future__ import annotations

from pathlib import Path

import click

from sparcode.commands._common import check_alias, check_url, serve_options, serve_overrides, strict_json, url_option, user_errors

# The cut-offs reported: eval.metrics.KS, spelled out so that --help need not import numpy (a test
# keeps them equal). --ef and --num-candidates must reach the longest list.
KS = (5, 10, 20, 50)
LONGEST_LIST = max(KS)


@click.command("evaluate")
@click.argument("run_dir", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--backend", type=click.Choice(["model", "local", "es", "opensearch", "hnsw", "es-knn", "exact"]),
              default="model", show_default=True,
              help="model: served-exact offline scoring; local/es/opensearch: ranked lists from that backend; "
                   "hnsw/es-knn/exact: a two-tower run's vector export (ANN paths also report recall vs exact).")
@click.option("--ef", type=click.IntRange(min=LONGEST_LIST), default=None,
              help=f"hnsw: query ef (at least {LONGEST_LIST}, the longest list evaluated; default 100).")
@click.option("--num-candidates", type=click.IntRange(min=LONGEST_LIST), default=None,
              help=f"es-knn: num_candidates (at least {LONGEST_LIST}; default 100).")
@click.option("--alias", default=None, help="Index alias (es/opensearch).")
@click.option("--export", "export_dir", type=click.Path(exists=True, file_okay=False, path_type=Path), default=None,
              help="Export directory the local backend serves (default: the run's last export).")
@click.option("--exclude-seen/--keep-seen", default=None,
              help="Default: exclude for multi-target, keep for leave-one-out (the TIGER protocol).")
@click.option("--users", "part", type=click.Choice(["test", "valid"]), default="test", show_default=True,
              help="Which held-out users to score.")
@click.option("--sample-users", type=click.IntRange(min=1), default=None,
              help="Score a seeded random sample of this many users instead of all (a quick check of a slow model; "
                   "the metrics record the population and seed).")
@click.option("--sample-seed", type=int, default=0, show_default=True, help="Seed of --sample-users.")
@serve_options
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
@click.option("--run-file", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Write a TREC run file with the model's scores. Users with no ranked items have no lines: "
                   "`trec_eval -c` (average over every qrels user) matches these metrics.")
@click.option("--qrels", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Write TREC qrels. An existing file is replaced only when it is a TREC file of the same kind.")
@url_option
def command(run_dir, backend, alias, export_dir, exclude_seen, part, sample_users, sample_seed, stored_fraction,
            query_probes, max_codes, as_json, run_file, qrels, ef, num_candidates, url):
    """Recall, NDCG and HitRate at 5/10/20/50 over full-catalog rankings."""
    if backend == "model" and (export_dir is not None or alias is not None):
        # Silently scoring the run while the user believes an export or index was checked is worse.
        raise click.UsageError("--export/--alias choose what a serving backend reads; --backend model scores the "
                               "run itself (add --backend local, es or opensearch)")
    serve = serve_overrides(stored_fraction, query_probes, max_codes)
    if backend != "model" and serve:
        raise click.UsageError("--stored-fraction/--query-probes/--max-codes choose how --backend model serves the run; a serving "
                               "backend uses what its export was made with (pass them to `sparcode export`)")
    from sparcode.commands._vectors import check_knobs

    check_knobs(backend, ef, num_candidates)
    check_url(backend, url)
    if backend != "model":  # model's own refusal above says more
        check_alias(backend, alias)
    if run_file is not None and qrels is not None and run_file.resolve() == qrels.resolve():
        raise click.UsageError("--run-file and --qrels name the same file; the qrels would overwrite the run")
    with user_errors():
        from sparcode.eval.trec import TrecOutputs
        from sparcode.evaluation import evaluate_run

        for path in (run_file, qrels):
            if path is not None and run_dir.resolve() in path.resolve().parents:
                raise click.UsageError(f"{path} is inside the run {run_dir}; write the run file and qrels "
                                       "elsewhere (they could replace the run's own files)")

        with TrecOutputs(run_file, qrels) as outputs:
            metrics, rankings, scores, run, evalset = evaluate_run(
                run_dir, backend=backend, alias=alias, export_dir=export_dir, exclude_seen=exclude_seen, part=part,
                ks=KS, ef=ef, num_candidates=num_candidates, sample_users=sample_users or 0, sample_seed=sample_seed,
                serve=serve, url=url, before_scoring=lambda run: outputs.stage(_dataset_paths(run)))
            outputs.write(rankings, scores, evalset, run.dataset, tag=f"sparcode-{run.kind}-{backend}")
    unranked = sum(1 for ranked in rankings if not len(ranked))
    if run_file is not None and unranked:
        click.echo(f"note: {unranked} users have no ranked items and are absent from {run_file}; "
                   "use trec_eval -c to average over every user, as these metrics do", err=True)
    if metrics.get("unfinished"):
        click.echo(f"warning: {run_dir} has not finished training; these are its best epoch so far", err=True)
    if as_json:
        click.echo(strict_json(metrics, sort_keys=True))
        return
    sampled = f" (a sample of {metrics['sampled_from']}, seed {sample_seed})" if "sampled_from" in metrics else ""
    click.echo(f"{run.kind} on {run.config.dataset} ({run.config.split}), {metrics['users']} {part} users{sampled}, "
               f"backend {backend}, seen items {'excluded' if metrics['exclude_seen'] else 'kept'}")
    click.echo("   K   recall    ndcg      hr")
    for k in KS:
        if f"recall@{k}" in metrics:
            click.echo(f"{k:>4}  {metrics[f'recall@{k}']:.4f}  {metrics[f'ndcg@{k}']:.4f}  {metrics[f'hr@{k}']:.4f}")
    for key in ("lambda", "refitted", "stored_fraction", "codes", "pairs", "codes_used", "bias",
                "query_terms_without_postings", "ann_recall@50", "ann_recall@10"):
        if key in metrics:
            click.echo(f"{key}: {metrics[key]}")


def _dataset_paths(run) -> list[Path]:
    """The dataset files the run was trained on: its folder, or its sequences file and the
    feature files read beside it (a named dataset lives elsewhere, in compressed files no TREC
    output would be mistaken for)."""
    from sparcode.data.readers import NAMED

    source = run.info.get("dataset_path", run.config.dataset)
    if source in NAMED:
        return []
    source = Path(source)
    if source.is_dir():
        return [source]
    return [source] + [source.parent / f"{stem}.tsv{gz}" for stem in ("items", "users") for gz in ("", ".gz")]
