"""Whether sparcode runs from its repository checkout.

Two defaults only make sense next to the repository: the datasets in `../shared/data` and the
local node's download cache in the git-ignored `.cache/`. An installed wheel lives in
site-packages, where the same relative paths would point inside the virtualenv.
"""
from __future__ import annotations

import tomllib
from pathlib import Path

_PACKAGE_PARENT = Path(__file__).resolve().parents[1]


def repository_root(parent: Path = _PACKAGE_PARENT) -> Path | None:
    """The checkout holding this package, or None when it is installed from a wheel. Only
    sparcode's own pyproject.toml counts: a copy vendored into another project (or installed with
    `pip install --target .`) sits beside that project's, and would put the node's 500 MB cache and
    the data default inside it."""
    try:
        project = tomllib.loads((parent / "pyproject.toml").read_text(encoding="utf-8")).get("project", {})
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError):
        return None
    return parent if project.get("name") == "sparcode" else None
