"""Validation R@5 / N@10 (and R@10) of a TIGER run against training time, per epoch.

    .venv/bin/python scripts/tiger_training_curve.py runs/compare-beauty/tiger --out results/beauty/tiger

Writes OUT/training_curve.png and OUT/training_curve.json from RUN_DIR/tiger/history.jsonl.
The points are validation metrics (the seeded `tiger.eval_users` subset of validation users
that picks the checkpoint), not test metrics.
"""
from __future__ import annotations

import json
from pathlib import Path

import click


def best_row(rows: list[dict], info: dict, config: dict) -> dict:
    """The epoch whose weights were saved: run.json's best_epoch, picked on `tiger.select_on`,
    which need not be the epoch of the highest R@10."""
    epoch = info.get("best_epoch")
    if epoch is None:  # a run.json from before best_epoch was recorded: training's own rule, first of ties
        metric = f"valid_{config.get('select_on', 'recall@10')}"
        return max(rows, key=lambda r: r[metric])
    for row in rows:
        if row["epoch"] == epoch:
            return row
    raise click.ClickException(f"run.json's best_epoch {epoch} is not in tiger/history.jsonl")


@click.command()
@click.argument("run_dir", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--out", "out_dir", type=click.Path(file_okay=False, path_type=Path), required=True)
@click.option("--evaluate-best", is_flag=True,
              help="Also evaluate the saved best checkpoint on the same validation users (R@5/N@10 for runs "
                   "whose history lacks them), plotted at its epoch.")
def main(run_dir, out_dir, evaluate_best):
    from sparcode.generative.curves import curve_points, plot_curve, read_history

    try:
        rows = read_history(run_dir / "tiger" / "history.jsonl")
    except FileNotFoundError as err:
        raise click.ClickException(str(err)) from None
    if not rows:
        raise click.ClickException(f"{run_dir}/tiger/history.jsonl holds no epoch yet")
    config = json.loads((run_dir / "tiger" / "config.json").read_text())
    users = config.get("eval_users") or "all"
    points = curve_points(rows)
    if evaluate_best:
        import torch

        from sparcode.encoder.runs import RunError, open_run
        from sparcode.generative.train_tiger import validation_metrics

        torch.set_num_threads(1)
        try:
            run = open_run(run_dir)
        except RunError as err:
            raise click.ClickException(str(err)) from None
        best = best_row(rows, run.info, config)
        metrics = validation_metrics(run.path, run.dataset, run.split, device="cpu")
        points["best_checkpoint"] = {"epoch": best["epoch"], "minutes": points["minutes"][rows.index(best)],
                                     **{f"valid_{k}": v for k, v in metrics.items()}}
    missing = [m for m in ("valid_recall@5", "valid_ndcg@10") if all(v is None for v in points[m])]
    note = f"; not recorded by this run: {', '.join(missing)}" if missing else ""
    if "best_checkpoint" in points:
        note += " (★: best checkpoint re-evaluated after training)"
    title = f"TIGER {config.get('dataset')}: validation metrics ({users} seeded valid users) per epoch{note}"
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "training_curve.json").write_text(json.dumps({"run": str(run_dir), "eval_users": users, **points},
                                                            indent=2) + "\n")
    plot_curve(points, out_dir / "training_curve.png", title)
    click.echo(f"wrote {out_dir}/training_curve.{{json,png}} ({len(rows)} epochs, clock {points['clock']}{note})")


if __name__ == "__main__":
    main()
