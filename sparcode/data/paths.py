"""Where the datasets live: `$SPARCODE_DATA`, else `../shared/data` next to the repository checkout."""
from __future__ import annotations

import os
from pathlib import Path

from sparcode.checkout import repository_root
from sparcode.data.errors import DataError

ENV_VAR = "SPARCODE_DATA"
_HOLDS = "the folder holding ml-1m/, amazon-beauty/ and amazon-sports/"


def default_root() -> Path | None:
    """`../shared/data` beside the checkout; an installed package has no such neighbour."""
    repo = repository_root()
    return repo.parent / "shared" / "data" if repo else None


def data_root() -> Path:
    configured = os.environ.get(ENV_VAR)
    if configured:
        root = Path(configured).expanduser()
        how = f"${ENV_VAR}={configured}"
    else:
        root = default_root()
        if root is None:
            raise DataError(f"no data directory: ${ENV_VAR} is unset and sparcode is installed, not run from its "
                            f"repository checkout (whose default is ../shared/data); set ${ENV_VAR} to {_HOLDS}")
        how = f"${ENV_VAR} is unset, default"
    if not root.is_dir():
        raise DataError(f"data directory not found: {root} ({how}); set {ENV_VAR} to {_HOLDS}")
    return root


def dataset_file(*parts: str) -> Path:
    """A file under the data root; missing → DataError naming it."""
    root = data_root()
    path = root.joinpath(*parts)
    if not path.is_file():
        raise DataError(f"missing data file (data root {root})", path)
    return path
