"""An exclusive lock on a file, for work that two processes must not do on the same folder at once
(start a search node, train a run). The kernel's flock goes with the process: a killed holder
leaves no stale lock behind, only a file that the next holder locks again."""
from __future__ import annotations

import contextlib
import fcntl
import os
from pathlib import Path


class LockHeld(Exception):
    """Another process holds the lock. `pid` and `action` are what it wrote into the lock file
    (None and "" before it has written them, or when a file from before actions says no action)."""

    def __init__(self, path: Path, pid: int | None, action: str):
        super().__init__(f"{path} is held by process {pid if pid is not None else '?'}")
        self.path, self.pid, self.action = path, pid, action


@contextlib.contextmanager
def exclusive(path: Path, action: str = "", *, remove: bool = False):
    """Hold an exclusive lock on `path` (created if missing) for the `with` block, its file saying
    this process's pid and `action`; LockHeld at once, without waiting, when another process holds
    it. OSError when the file cannot be opened (such as when its folder is gone). With `remove`,
    the file goes when the block ends, so the folder is left as it was found."""
    path = Path(path)
    with _locked(path) as fh:
        fh.seek(0)
        fh.truncate()
        fh.write(f"{os.getpid()} {action}".rstrip())
        fh.flush()
        try:
            yield
        finally:
            if remove and _is_file_at(fh, path):  # never a file another process has locked since
                # Still locked: whoever opened the file meanwhile finds it gone once it has the
                # lock, and locks the path anew (`_locked`).
                path.unlink(missing_ok=True)


def _locked(path: Path):
    while True:
        fh = open(path, "a+")
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            fh.seek(0)
            pid, _, action = fh.read().strip().partition(" ")
            fh.close()
            raise LockHeld(path, int(pid) if pid.isdigit() else None, action) from None
        except BaseException:
            fh.close()
            raise
        if _is_file_at(fh, path):
            return fh
        # Its last holder deleted the file (with a failed run's folder) before letting go: a lock on
        # it would exclude no one who opens the path now.
        fh.close()


def _is_file_at(fh, path: Path) -> bool:
    try:
        there = os.stat(path)
    except FileNotFoundError:
        return False
    held = os.fstat(fh.fileno())
    return (held.st_dev, held.st_ino) == (there.st_dev, there.st_ino)
