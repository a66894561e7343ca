"""TIGER validation metrics against training time, from RUN_DIR/tiger/history.jsonl.

Runs trained before per-epoch R@5/N@10 and training seconds were recorded have only
`valid_recall@10` and wall-clock `elapsed`; the curve shows whatever each row holds and says
which clock it uses.
"""
from __future__ import annotations

import json
import textwrap
from pathlib import Path

METRICS = ("valid_recall@5", "valid_ndcg@10", "valid_recall@10")
STYLES = {"valid_recall@5": ("o-", "tab:green"), "valid_ndcg@10": ("s-", "tab:purple"),
          "valid_recall@10": ("^--", "tab:blue")}


def _label(metric: str) -> str:
    return metric.replace("valid_recall", "validation R").replace("valid_ndcg", "validation N")


def read_history(path: Path) -> list[dict]:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist: train with `sparcode train --model tiger` first")
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def curve_points(rows: list[dict]) -> dict:
    """{clock, minutes, metric → values (None where an epoch did not record it)}.

    Training seconds (optimizer steps only) when every row has them, else wall-clock elapsed,
    which includes validation and whatever else shared the machine."""
    clock = "train_seconds" if rows and all("train_seconds" in r for r in rows) else "elapsed"
    points = {"clock": clock, "epoch": [r["epoch"] for r in rows],
              "minutes": [round(r[clock] / 60.0, 2) for r in rows]}
    for metric in METRICS:
        points[metric] = [r.get(metric) for r in rows]
    return points


def plot_curve(points: dict, path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for metric, style in STYLES.items():
        pairs = [(m, v) for m, v in zip(points["minutes"], points[metric]) if v is not None]
        if pairs:
            ax.plot(*zip(*pairs), style[0], color=style[1], label=_label(metric))
    best = points.get("best_checkpoint")
    if best:
        for metric in ("valid_recall@5", "valid_ndcg@10"):
            ax.plot([best["minutes"]], [best[metric]], "*", color=STYLES[metric][1], markersize=14,
                    label=f"best checkpoint, {_label(metric)} {best[metric]:.4f}")
    clock = "training minutes (optimizer steps only)" if points["clock"] == "train_seconds" \
        else "wall-clock minutes since training started (incl. validation, shared CPU)"
    ax.set_xlabel(clock)
    ax.set_ylabel("metric on validation users")
    ax.set_ylim(bottom=0)
    ax.legend()
    ax.set_title("\n".join(textwrap.wrap(title, 80)), fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
