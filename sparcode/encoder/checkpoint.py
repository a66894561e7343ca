"""Run directories: `config.json` + tensor-only weights, loadable with `weights_only=True`.

    RUN_DIR/config.json   the RunConfig (JSON; unknown keys refused on load)
    RUN_DIR/run.json      dataset, split summary, seed, device, timings, best metrics
    RUN_DIR/weights.pt    best model state_dict (tensors only)
    RUN_DIR/state.pt      last epoch's model + optimizer state and counters, for --resume
    RUN_DIR/history.jsonl one line of metrics per epoch
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import os
import pickle
import tempfile
from pathlib import Path

import torch

WEIGHTS = "weights.pt"
STATE = "state.pt"
CONFIG = "config.json"
RUN_INFO = "run.json"
HISTORY = "history.jsonl"


class UnreadableFile(Exception):
    """A run file that exists but cannot be loaded: truncated, overwritten or hand-edited."""


def atomic_write_bytes(path: Path, data: bytes) -> None:
    def write(tmp: str) -> None:
        with open(tmp, "wb") as fh:
            fh.write(data)

    _write_then_rename(path, write)


def atomic_torch_save(obj, path: Path) -> None:
    _write_then_rename(path, lambda tmp: torch.save(obj, tmp))


def _write_then_rename(path: Path, write) -> None:
    """The file appears whole or not at all; a failed write (disk full) leaves no temp file."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    os.close(fd)
    try:
        write(tmp)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def load_tensors(path: Path):
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise
    except (RuntimeError, EOFError, pickle.UnpicklingError, ValueError) as err:
        reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise UnreadableFile(f"{path}: not a complete weights file, probably truncated or overwritten "
                             f"({reason[:160]})") from None


def write_json(path: Path, obj) -> None:
    atomic_write_bytes(path, (json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n").encode())


def read_json(path: Path, expect: type = dict):
    """A JSON file sparcode wrote, as `expect`; anything else names the file."""
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise UnreadableFile(f"{path}: not valid JSON ({err}); was it truncated or edited by hand?") from None
    if not isinstance(data, expect):
        raise UnreadableFile(f"{path}: expected a JSON {expect.__name__}, got {type(data).__name__}")
    return data


def fingerprint(run_dir: Path) -> str:
    """sha256 over the config and best weights: identifies exactly the model an index serves."""
    digest = hashlib.sha256()
    for name in (CONFIG, WEIGHTS):
        with open(Path(run_dir) / name, "rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                digest.update(block)
    return digest.hexdigest()
