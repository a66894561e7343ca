"""Write a directory all at once: readers see the old one or the finished new one, never half.

Exports, vector exports, hnsw indexes and bench results are directories of several files that
only make sense together; each is built in a temporary sibling and moved into place at the end.
"""
from __future__ import annotations

import contextlib
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path


@contextlib.contextmanager
def staged_directory(target: Path, replace: bool = True) -> Iterator[Path]:
    """Yield an empty sibling of `target` to write into. On a clean exit it replaces `target`
    (when `replace`; otherwise the caller has moved out what it wanted); on an exception, or
    afterwards, whatever is left of it is removed."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{target.name}."))
    try:
        yield tmp
        if replace:
            if target.exists():
                shutil.rmtree(target)
            tmp.rename(target)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
