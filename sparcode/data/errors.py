"""The one exception the data layer raises for anything wrong with the user's files."""
from __future__ import annotations

from pathlib import Path

from sparcode.errors import SparcodeError


class DataError(SparcodeError):
    """A missing, unreadable or malformed data file. The message names the file (and line)."""

    def __init__(self, message: str, path: str | Path | None = None, line: int | None = None):
        where = ""
        if path is not None:
            where = f"{path}, line {line}: " if line is not None else f"{path}: "
        super().__init__(where + message)
        self.path = None if path is None else Path(path)
        self.line = line
