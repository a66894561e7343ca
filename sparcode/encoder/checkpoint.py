"""Run directories: `config.json` + tensor-only weights, loadable with `weights_only=True`.

    RUN_DIR/config.json   the RunConfig (JSON; unknown keys refused on load)
    RUN_DIR/run.json      dataset, split summary, seed, device, timings, best metrics
    RUN_DIR/weights.pt    best model state_dict (tensors only)
    RUN_DIR/state.pt      last epoch's model + optimizer state and counters, for --resume
    RUN_DIR/history.jsonl one line of metrics per epoch
"""
from __future__ import annotations

import hashlib
import json
import pickle
from pathlib import Path

import torch

from sparcode.staging import UnreadableFile, atomic_write_bytes, read_json, write_then_rename  # noqa: F401

WEIGHTS = "weights.pt"
STATE = "state.pt"
CONFIG = "config.json"
RUN_INFO = "run.json"
HISTORY = "history.jsonl"


def atomic_torch_save(obj, path: Path) -> None:
    write_then_rename(path, lambda tmp: torch.save(obj, tmp))


def load_tensors(path: Path):
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise
    except (RuntimeError, EOFError, pickle.UnpicklingError, ValueError) as err:
        reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise UnreadableFile(f"{path}: not a complete weights file, probably truncated or overwritten "
                             f"({reason[:160]})") from None


def trim_history(history: Path, epochs: int) -> None:
    """Keep one line per epoch up to `epochs` (the saved state's count) in a history.jsonl: a
    stop after an epoch's line but before its state leaves a line the resumed run writes again,
    and a stop inside the append leaves half a line."""
    if not history.is_file():
        return
    lines = history.read_text(encoding="utf-8", errors="replace").splitlines()
    by_epoch = {}
    for line in lines:
        try:
            epoch = int(json.loads(line)["epoch"])
        except (ValueError, KeyError, TypeError):
            continue
        if epoch <= epochs:
            by_epoch[epoch] = line
    kept = [by_epoch[epoch] for epoch in sorted(by_epoch)]
    if kept != lines:
        atomic_write_bytes(history, "".join(line + "\n" for line in kept).encode())


def follow_state(history: Path, weights: Path, epochs: int, best_epoch: int, model_state: dict) -> None:
    """Make history and best weights say what a resumed run's saved state says, after a stop
    between writing them: history lines past its `epochs` go (that epoch is trained again), and
    when its last epoch was the best one, its model is the best weights (perhaps never written)."""
    trim_history(history, epochs)
    if best_epoch == epochs:
        atomic_torch_save(model_state, weights)


def write_json(path: Path, obj) -> None:
    atomic_write_bytes(path, (json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n").encode())


def fingerprint(run_dir: Path) -> str:
    """sha256 over the config and best weights: identifies exactly the model an index serves."""
    digest = hashlib.sha256()
    for name in (CONFIG, WEIGHTS):
        with open(Path(run_dir) / name, "rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                digest.update(block)
    return digest.hexdigest()
