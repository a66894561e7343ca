"""Whether sparcode runs from its repository checkout.

Two defaults only make sense next to the repository: the datasets in `../shared/data` and the
local node's download cache in the git-ignored `.cache/`. An installed wheel lives in
site-packages, where the same relative paths would point inside the virtualenv.
"""
from __future__ import annotations

from pathlib import Path

_PACKAGE_PARENT = Path(__file__).resolve().parents[1]


def repository_root() -> Path | None:
    """The checkout holding this package, or None when it is installed from a wheel."""
    return _PACKAGE_PARENT if (_PACKAGE_PARENT / "pyproject.toml").is_file() else None
