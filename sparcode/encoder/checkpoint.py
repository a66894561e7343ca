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
import os
import tempfile
from pathlib import Path

import torch

WEIGHTS = "weights.pt"
STATE = "state.pt"
CONFIG = "config.json"
RUN_INFO = "run.json"
HISTORY = "history.jsonl"


def atomic_write_bytes(path: Path, data: bytes) -> None:
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    with os.fdopen(fd, "wb") as fh:
        fh.write(data)
    os.replace(tmp, path)


def atomic_torch_save(obj, path: Path) -> None:
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    os.close(fd)
    torch.save(obj, tmp)
    os.replace(tmp, path)


def load_tensors(path: Path):
    return torch.load(path, map_location="cpu", weights_only=True)


def write_json(path: Path, obj) -> None:
    atomic_write_bytes(path, (json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n").encode())


def read_json(path: Path):
    return json.loads(Path(path).read_text())


def fingerprint(run_dir: Path) -> str:
    """sha256 over the config and best weights: identifies exactly the model an index serves."""
    digest = hashlib.sha256()
    for name in (CONFIG, WEIGHTS):
        with open(Path(run_dir) / name, "rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                digest.update(block)
    return digest.hexdigest()
