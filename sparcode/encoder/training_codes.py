"""The distinct codes a run's training windows quantize to, cached in the run directory.

Export and served-exact evaluation index these codes, and finding them means encoding every
training window: 60–95 s for ml-1m's 805k windows on two CPU cores, paid again by every
`export` and `evaluate` of the same run. They depend only on the model and its training
windows, so they are kept in RUN_DIR/training-codes.npz under a key of both and recomputed
whenever either differs (retraining, `--resume`, a changed dataset file).
"""
from __future__ import annotations

import hashlib
import zipfile
from pathlib import Path

import numpy as np

from sparcode.encoder.runs import Run
from sparcode.encoder.serving import distinct_codes, user_codes
from sparcode.staging import write_then_rename

CACHE_NAME = "training-codes.npz"


def training_codes(model, run: Run, device) -> np.ndarray:
    """Every distinct (M,) code of the training users' sliding windows, sorted."""
    path = Path(run.path) / CACHE_NAME
    key = cache_key(run)
    cached = _read(path, key)
    if cached is not None:
        return cached
    train = run.split.train
    codes = distinct_codes(user_codes(model, train.users, train.histories, device))
    _write(path, key, codes)
    return codes


def cache_key(run: Run) -> str:
    """The config and weights (the run's fingerprint) and the training windows themselves."""
    digest = hashlib.blake2b(run.fingerprint().encode(), digest_size=16)
    train = run.split.train
    for part in (train.users, train.histories):
        digest.update(np.ascontiguousarray(part, dtype=np.int64).tobytes())
    return digest.hexdigest()


def _read(path: Path, key: str) -> np.ndarray | None:
    try:
        with np.load(path, allow_pickle=False) as npz:
            if str(npz["key"]) != key:
                return None
            return npz["codes"]
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile):
        return None  # absent, stale format or damaged: encoding again is always correct


def _write(path: Path, key: str, codes: np.ndarray) -> None:
    # A cache must never fail the command: in a read-only run directory (a shared model store)
    # the codes are simply encoded again next time.
    def save(tmp: str) -> None:
        with open(tmp, "wb") as fh:  # a handle: given a name, np.savez would append ".npz"
            np.savez(fh, key=np.asarray(key), codes=codes)

    try:
        write_then_rename(path, save)
    except OSError:
        pass
