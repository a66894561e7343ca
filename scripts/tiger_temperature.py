"""Recall@10 and Entropy@10 of a trained TIGER run as the decoding temperature rises.

    .venv/bin/python scripts/tiger_temperature.py runs/compare-beauty/tiger \
        --out results/beauty/tiger --users 2000 --temperatures 0,0.5,1,1.5,2

Writes OUT/temperature.json, OUT/temperature.md and OUT/temperature.png (with
--fine-temperature F: OUT/temperature-fineF.*, T on c0/c1 and F on c2/c3). Every temperature
decodes the same seeded subset of test users with the same sampling seed (docs/tiger.md).
"""
from __future__ import annotations

import json
import sys
from datetime import datetime, timezone
from pathlib import Path

import click


def _temperatures(ctx, param, value):
    try:
        temps = [float(t) for t in value.split(",") if t.strip()]
    except ValueError:
        raise click.BadParameter("expected comma-separated numbers, e.g. 0,0.5,1,2") from None
    if not temps or min(temps) < 0:
        raise click.BadParameter("need at least one temperature, none negative")
    return temps


@click.command()
@click.argument("run_dir", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--out", "out_dir", type=click.Path(file_okay=False, path_type=Path), required=True)
@click.option("--temperatures", callback=_temperatures, default="0,0.5,1,1.5,2", show_default=True)
@click.option("--users", type=click.IntRange(min=1), default=2000, show_default=True,
              help="Seeded subset of test users (0 < N); all of them when N exceeds the test set.")
@click.option("--seed", type=int, default=0, show_default=True, help="User subset and sampling seed.")
@click.option("--exclude-seen/--keep-seen", default=None, help="Default: the split's (leave-one-out keeps them).")
@click.option("--fine-temperature", "fine", type=click.FloatRange(min=0), default=None,
              help="Temperature of c2/c3 while T applies to c0/c1 (default: T on every level). "
                   "Outputs are then named temperature-fine<F>.*")
@click.option("--threads", type=click.IntRange(min=1), default=1, show_default=True)
def main(run_dir, out_dir, temperatures, users, seed, exclude_seen, fine, threads):
    import torch

    from sparcode.encoder.runs import RunError, open_run
    from sparcode.generative.diversity import markdown_table, plot, temperature_sweep

    torch.set_num_threads(threads)
    try:
        run = open_run(run_dir)
    except RunError as err:
        raise click.ClickException(str(err)) from None
    if run.kind != "tiger":
        raise click.ClickException(f"{run_dir} is a {run.kind} run; the temperature sweep needs a TIGER run")
    rows = temperature_sweep(run.path, run.dataset, run.split, temperatures, users=users, seed=seed,
                             exclude_seen=exclude_seen, fine=fine, device="cpu", log=lambda m: click.echo(m, err=True))
    out_dir.mkdir(parents=True, exist_ok=True)
    seen = "seen items excluded" if rows[0]["exclude_seen"] else "history items kept"
    schedule = "T on every ID level" if fine is None else f"T on c0/c1, {fine:g} on c2/c3"
    conditions = (f"{run.config.dataset}, {run.config.split}, {rows[0]['users']} test users (seed {seed}), "
                  f"beam/sample width {rows[0]['beam_size']}, {seen}, {schedule}")
    name = "temperature" if fine is None else f"temperature-fine{fine:g}"
    record = {"run": str(run_dir), "conditions": conditions, "seed": seed, "command": " ".join(sys.argv),
              "created": datetime.now(timezone.utc).isoformat(timespec="seconds"), "rows": rows}
    (out_dir / f"{name}.json").write_text(json.dumps(record, indent=2) + "\n")
    (out_dir / f"{name}.md").write_text(markdown_table(rows, f"TIGER temperature sweep: {conditions}."))
    plot(rows, out_dir / f"{name}.png", f"TIGER on {conditions}")
    click.echo(f"wrote {out_dir}/{name}.{{json,md,png}}")


if __name__ == "__main__":
    main()
