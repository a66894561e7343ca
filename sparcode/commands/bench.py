"""`sparcode bench`: SparCode (ES, embedded) vs two-tower (hnswlib, ES kNN, exact) on synthetic
catalogs; writes bench.json, bench.md and PNG plots."""
from __future__ import annotations

from pathlib import Path

import click

from sparcode.bench import PATHS, report
from sparcode.commands._common import user_errors
from sparcode.staging import staged_directory

QUICK = {"sizes": [2000], "queries": 200, "warmup": 20}


def _sizes(ctx, param, value):
    if value is None:
        return None
    try:
        sizes = [int(part) for part in value.split(",") if part.strip()]
    except ValueError:
        raise click.BadParameter("expected comma-separated item counts, e.g. 10000,100000") from None
    if not sizes or min(sizes) < 100:
        raise click.BadParameter("each size must be at least 100 items")
    return sizes


def _check_vectors_fit(config, from_vectors: Path | None) -> None:
    """Refuse vectors the ES kNN index cannot hold before any path is measured, not after the
    others have run for hours: the same check the kNN build makes (pipeline/knn.index_body)."""
    if from_vectors is None or "es-knn" not in config.paths:
        return
    from sparcode.pipeline import knn
    from sparcode.pipeline.vectors import open_vector_export

    knn.index_body(open_vector_export(from_vectors), m=config.hnsw.m, ef_construction=config.hnsw.ef_construction,
                   transform=config.hnsw.transform)


# What one bench writes into --out; --force replaces a folder holding nothing else.
OUTPUTS = frozenset(report.OUTPUTS)


def _only_bench_output(folder: Path) -> bool:
    """The folder --force may replace: an earlier bench output and nothing else (checked again
    just before the swap, so files added while a long bench ran are not deleted either)."""
    return (folder / "bench.json").is_file() and all(p.name in OUTPUTS for p in folder.iterdir())


@click.command("bench")
@click.option("--out", "out_dir", type=click.Path(file_okay=False, path_type=Path), required=True,
              help="Folder for bench.json, the table and the plot.")
@click.option("--sizes", callback=_sizes, default=None, metavar="N,N,...", help="Catalog sizes (default 10000,100000,1000000; --quick: 2000).")
@click.option("--quick", is_flag=True, help="A small smoke run (one 2,000-item catalog, 200 queries).")
@click.option("--queries", type=click.IntRange(min=10), default=None, help="Timed queries per path (default 1000).")
@click.option("--url", default=None, metavar="URL",
              help="The search node's URL (default: ELASTICSEARCH_URL, else the local node; OPENSEARCH_URL for "
                   "sparcode-os). With paths on both engines, set the two variables instead.")
@click.option("--from-export", "from_export", type=click.Path(exists=True, file_okay=False, path_type=Path),
              default=None, help="Take the SparCode shape (codes, postings per code, scores) from a real export.")
@click.option("--from-vectors", "from_vectors", type=click.Path(exists=True, file_okay=False, path_type=Path),
              default=None, help="Take dim and norms from a real two-tower vector export.")
@click.option("--paths", "path_names", default=None, metavar="PATH,PATH,...",
              help="Comma-separated paths to measure (default all: " + ",".join(PATHS) + ", with sparcode-os "
                   "only when OPENSEARCH_URL is set); sparcode-local and exact always run, they are the recall "
                   "references.")
@click.option("--posting-cap", type=click.IntRange(min=1), default=None,
              help="Shape SparCode catalogs like an index built with `export --max-postings N`: every code "
                   "keeps ≈ N items at any size, so codes grow with the catalog.")
@click.option("--codes-per-item", type=click.IntRange(min=1), default=None,
              help="Codes each synthetic item carries (default: measured from --from-export, else 32).")
@click.option("--query-probes", type=click.IntRange(min=1), default=None,
              help="Codes each query token sends (default: the export's serve.query_probes, else 1).")
@click.option("--force", is_flag=True, help="Replace an earlier bench output in --out (a folder holding other "
                                             "files too is refused).")
def command(out_dir, sizes, quick, queries, url, from_export, from_vectors, path_names, posting_cap,
            codes_per_item, query_probes, force):
    """Measure every retrieval path side by side on synthetic catalogs of each size."""
    import os
    import shutil

    with user_errors():
        from sparcode.bench import synthetic
        from sparcode.bench.run import BenchConfig, UrlAmbiguous, describe, engines, run_bench

        if out_dir.exists() and any(out_dir.iterdir()):
            if not (out_dir / "bench.json").exists():
                raise click.ClickException(f"{out_dir} exists and is not a bench output; pick an empty --out")
            if not force:
                raise click.ClickException(f"{out_dir} already holds bench.json; pass --force to replace it")
            others = sorted(p.name + ("/" if p.is_dir() else "") for p in out_dir.iterdir() if p.name not in OUTPUTS)
            if others:  # --force replaces the folder whole: it must not take the user's own files with it
                raise click.ClickException(f"{out_dir} also holds {', '.join(others[:5])}"
                                           f"{' …' if len(others) > 5 else ''}, which are not bench output; "
                                           "--force would delete them with the old result: pick another --out")
        preset = QUICK if quick else {"sizes": [10_000, 100_000, 1_000_000], "queries": 1000, "warmup": 100}
        config = BenchConfig(sizes=sizes or preset["sizes"], queries=queries or preset["queries"],
                             warmup=preset["warmup"])
        if path_names is not None:
            chosen = tuple(p.strip() for p in path_names.split(",") if p.strip())
            unknown = sorted(set(chosen) - set(PATHS))
            if unknown or not chosen:
                raise click.BadParameter(f"unknown path(s) {', '.join(unknown) or '(none)'}; "
                                         f"choose from {', '.join(PATHS)}", param_hint="--paths")
            config.paths = tuple(dict.fromkeys(chosen + ("sparcode-local", "exact")))
        if from_export is not None:
            config.sparcode_shape = synthetic.SparcodeShape.from_export(from_export)
        shape = config.sparcode_shape
        shape.posting_cap = posting_cap
        shape.codes_per_item = codes_per_item or shape.codes_per_item
        shape.query_probes = query_probes or shape.query_probes
        if from_vectors is not None:
            config.vector_shape = synthetic.VectorShape.from_export(from_vectors)
        if path_names is None and not os.environ.get("OPENSEARCH_URL"):
            # By default OpenSearch is measured when there is one; asked for by name, it must be.
            config.paths = tuple(p for p in config.paths if p != "sparcode-os")
        _check_vectors_fit(config, from_vectors)
        try:
            conns = engines(url, config.paths)
        except UrlAmbiguous as exc:
            raise click.BadParameter(str(exc), param_hint="--url") from None
        # Everything lands in a temporary sibling first: an interrupted bench leaves no partial result.
        with staged_directory(out_dir, marker=_only_bench_output) as tmp:
            rows = run_bench(config, tmp / "work", conns, log=click.echo)
            shutil.rmtree(tmp / "work", ignore_errors=True)
            meta = describe(config, conns, rows)
            report.write_outputs(tmp, rows, meta)
    click.echo(f"{len(rows)} rows → {out_dir}/bench.json, bench.md, latency_vs_recall.png, latency_vs_items.png")
