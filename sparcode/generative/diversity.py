"""Diversity vs accuracy as the decoding temperature rises (TIGER §4.4).

T = 0 means plain constrained beam search; T > 0 samples continuations without replacement
(Gumbel-top-k, `beam.py`) at the same temperature on every ID level, or at T on c0/c1 and a
fixed `fine` temperature on c2/c3. Every temperature sees the
same seeded subset of users and the same sampling seed, so two runs of the sweep agree exactly.
"""
from __future__ import annotations

import textwrap
from pathlib import Path

KEYS = ("recall@5", "ndcg@5", "recall@10", "ndcg@10", "entropy@10")


COARSE_LEVELS = 2  # c0, c1: the levels the coarse/fine schedule samples hot


def level_temperatures(temperature: float, levels: int, fine: float | None = None) -> tuple[float, ...] | None:
    """One temperature per ID level; None (beam search) for T = 0.

    ``fine``: the temperature of the levels after c0/c1 (TIGER's "high for the coarse levels,
    low for the fine ones"); None samples every level at ``temperature``."""
    if temperature < 0 or (fine is not None and fine < 0):
        raise ValueError(f"temperatures must be ≥ 0, got {temperature} / {fine}")
    if temperature == 0:
        return None
    if fine is None:
        return (float(temperature),) * levels
    return (float(temperature),) * min(COARSE_LEVELS, levels) + (float(fine),) * max(levels - COARSE_LEVELS, 0)


def temperature_sweep(run_dir: Path, dataset, split, temperatures=(0.0, 0.5, 1.0, 1.5, 2.0), users: int = 2000,
                      seed: int = 0, exclude_seen: bool | None = None, beam_size: int | None = None,
                      fine: float | None = None, device=None, log=print) -> list[dict]:
    """→ one row per temperature: R@5/N@5/R@10/N@10, Entropy@10 over leaf categories, seconds."""
    from sparcode.generative.semantic_ids import load_ids
    from sparcode.generative.train_tiger import evaluate_tiger, tiger_dir

    levels = load_ids(tiger_dir(run_dir))[0].shape[1]
    rows = []
    for temperature in temperatures:
        metrics, _ = evaluate_tiger(run_dir, dataset, split, exclude_seen=exclude_seen, ks=(5, 10),
                                    temperatures=level_temperatures(temperature, levels, fine), beam_size=beam_size,
                                    max_users=users, device=device, seed=seed)
        row = {"temperature": float(temperature), "fine_temperature": fine, **{k: metrics[k] for k in KEYS}, "users": metrics["users"],
               "beam_size": metrics["beam_size"], "exclude_seen": metrics["exclude_seen"],
               "seconds": metrics["seconds"]}
        log(f"T={temperature:g}: R@10 {row['recall@10']:.4f}, N@10 {row['ndcg@10']:.4f}, "
            f"Entropy@10 {row['entropy@10']:.3f} ({row['seconds']}s)")
        rows.append(row)
    return rows


def markdown_table(rows: list[dict], caption: str) -> str:
    lines = [caption, "", "| T | R@5 | N@5 | R@10 | N@10 | Entropy@10 (nats) |", "|---|---|---|---|---|---|"]
    for r in rows:
        label = "0 (beam)" if r["temperature"] == 0 else f"{r['temperature']:g}"
        lines.append(f"| {label} | {r['recall@5']:.4f} | {r['ndcg@5']:.4f} | {r['recall@10']:.4f} | "
                     f"{r['ndcg@10']:.4f} | {r['entropy@10']:.3f} |")
    return "\n".join(lines) + "\n"


def plot(rows: list[dict], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")  # no display on the training machines
    import matplotlib.pyplot as plt

    temps = [r["temperature"] for r in rows]
    fig, left = plt.subplots(figsize=(6, 4))
    left.plot(temps, [r["recall@10"] for r in rows], "o-", color="tab:blue", label="Recall@10")
    fine = rows[0].get("fine_temperature") if rows else None
    left.set_xlabel("temperature (every ID level; 0 = beam search)" if fine is None
                    else f"temperature of c0, c1 (c2, c3 at {fine:g}; 0 = beam search)")
    left.set_ylabel("Recall@10", color="tab:blue")
    right = left.twinx()
    right.plot(temps, [r["entropy@10"] for r in rows], "s--", color="tab:red", label="Entropy@10")
    right.set_ylabel("Entropy@10 over leaf categories (nats)", color="tab:red")
    left.set_title("\n".join(textwrap.wrap(title, 80)), fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
