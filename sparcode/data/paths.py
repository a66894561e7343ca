"""Where the datasets live: `$SPARCODE_DATA`, else `../shared/data` next to the repository."""
from __future__ import annotations

import os
from pathlib import Path

from sparcode.data.errors import DataError

ENV_VAR = "SPARCODE_DATA"
# The repository root is the parent of the `sparcode` package directory.
REPO_ROOT = Path(__file__).resolve().parents[2]
DEFAULT_ROOT = REPO_ROOT.parent / "shared" / "data"


def data_root() -> Path:
    configured = os.environ.get(ENV_VAR)
    root = Path(configured).expanduser() if configured else DEFAULT_ROOT
    if not root.is_dir():
        how = f"${ENV_VAR}={configured}" if configured else f"${ENV_VAR} is unset, default"
        raise DataError(f"data directory not found: {root} ({how}); "
                        f"set {ENV_VAR} to the folder holding ml-1m/ and amazon-beauty/")
    return root


def dataset_file(*parts: str) -> Path:
    """A file under the data root; missing → DataError naming it."""
    path = data_root().joinpath(*parts)
    if not path.is_file():
        raise DataError(f"missing data file (data root from ${ENV_VAR} or {DEFAULT_ROOT})", path)
    return path
