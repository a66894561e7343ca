"""Write a file or a directory all at once: readers see the old one or the finished new one,
never half.

Exports, vector exports, hnsw indexes and bench results are directories of several files that
only make sense together; each is built in a temporary sibling and moved into place at the end.

An existing target is only ever replaced when it is recognisably an earlier output of the same
kind (its `marker` file: manifest.json, bench.json, meta.json) or an empty directory. Anything
else — a run directory, a folder of the user's own files, a plain file, a symbolic link — is
refused with `OccupiedTarget` and left exactly as it was. Whether to replace an earlier output
at all (--force) is the caller's decision, made before it gets here and, through
`staged_directory(check=...)`, again just before the swap.
"""
from __future__ import annotations

import contextlib
import errno
import glob
import json
import os
import shutil
import socket
import sys
import tempfile
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path

import orjson

from sparcode.errors import SparcodeError

EXPORT_FORMAT = "sparcode-export/1"  # the `format` every export's manifest.json carries


class UnreadableFile(SparcodeError):
    """A file sparcode wrote that exists but cannot be loaded: truncated, overwritten or hand-edited."""


def atomic_write_bytes(path: Path, data: bytes) -> None:
    def write(tmp: str) -> None:
        with open(tmp, "wb") as fh:
            fh.write(data)

    write_then_rename(path, write)


def atomic_save_npy(path: Path, array) -> None:
    """`np.save` all at once (and never to a name with `.npy` appended)."""
    import numpy as np

    def write(tmp: str) -> None:
        with open(tmp, "wb") as fh:
            np.save(fh, array, allow_pickle=False)

    write_then_rename(path, write)


def write_then_rename(path: Path, write: Callable[[str], None]) -> None:
    """`write(tmp)` a temporary sibling, then rename it over `path`: the file appears whole or
    not at all, and a failed write (disk full) leaves no temporary file behind."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    os.close(fd)
    try:
        usual_permissions(tmp)
        write(tmp)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def read_json(path: Path, expect: type = dict):
    """A JSON file sparcode wrote, as `expect`; anything else names the file."""
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise UnreadableFile(f"{path}: not valid JSON ({err}); was it truncated or edited by hand?") from None
    if not isinstance(data, expect):
        raise UnreadableFile(f"{path}: expected a JSON {expect.__name__}, got {type(data).__name__}")
    return data


class OccupiedTarget(SparcodeError, ValueError):
    """The output path exists and is not an earlier output to replace (a one-line user error)."""


def is_export(path: Path) -> bool:
    """True when `path` is a directory whose manifest.json is an export's (any kind)."""
    try:
        data = orjson.loads((Path(path) / "manifest.json").read_bytes())
    except (OSError, orjson.JSONDecodeError):
        return False
    return isinstance(data, dict) and data.get("format") == EXPORT_FORMAT


def is_export_shards(path: Path) -> bool:
    """True when `path` holds an export or parts of a sharded one (`export --shard i/n`)."""
    return is_export(path) or any(Path(path).glob("items.part-*.jsonl.gz.manifest.json"))


def _owned(marker) -> Callable[[Path], bool]:
    if marker is None:
        return lambda path: False
    if callable(marker):
        return marker
    return lambda path: (Path(path) / marker).is_file()


def _describe(marker) -> str:
    if marker is None:
        return "an empty folder"
    if callable(marker):
        return {"is_export": "an export", "is_export_shards": "a (sharded) export"}.get(
            getattr(marker, "__name__", ""), "an earlier output")
    return f"an earlier output (no {marker})"


def _is_empty_dir(path: Path) -> bool:
    return path.is_dir() and not path.is_symlink() and not any(path.iterdir())


def _contains(outer: Path, inner: Path) -> bool:
    outer, inner = Path(outer).resolve(), Path(inner).resolve()
    return inner == outer or outer in inner.parents


def listing(path: Path, limit: int = 3, skip: Iterable[str] = ()) -> str:
    names = sorted(p.name for p in path.iterdir() if p.name not in skip)
    shown = ", ".join(names[:limit])
    return shown + (f", … {len(names)} entries" if len(names) > limit else "")


def check_replaceable(target: Path, marker=None, *, protect: Iterable[Path] = (),
                      protected: str = "the folder being read") -> None:
    """Raise `OccupiedTarget` (one line; nothing is touched) unless `target` may be written:
    it does not exist, is an empty directory, or is an earlier output `marker` recognises.
    A symbolic link, a file, any other non-empty directory, and a path that is or contains
    one of `protect` (`protected` names it, e.g. the run being exported) are refused."""
    target = Path(target)
    for keep in protect:
        if _contains(target, keep):
            relation = "is" if Path(target).resolve() == Path(keep).resolve() else f"contains {keep},"
            raise OccupiedTarget(f"{target} {relation} {protected}, not an output to replace; "
                                 "pick another --out (nothing was deleted)")
    if target.is_symlink():
        raise OccupiedTarget(f"{target} is a symbolic link; pick a real folder (nothing was deleted)")
    if not target.exists() or _is_empty_dir(target):
        return
    if not target.is_dir():
        raise OccupiedTarget(f"{target} is a file, not a folder; pick another --out (nothing was deleted)")
    if not _owned(marker)(target):
        raise OccupiedTarget(f"{target} exists and is not {_describe(marker)}: it holds {listing(target)}; "
                             "pick a new or empty folder (nothing was deleted)")


def check_export_target(out_dir: Path, run_dir: Path, *, force: bool, sharded: bool = False,
                        again: bool = False) -> None:
    """Where any export (SparCode codes, two-tower vectors, semantic IDs) may go, checked before
    the export's long work: never the run folder (or one containing it), never a folder that is
    not an export, an existing export only with --force. A shard may add its parts to an empty
    folder or one already holding parts of a sharded export. `again`: the same check just before
    the swap (`staged_directory(check=...)`), where an export found arrived while this one ran."""
    check_replaceable(out_dir, is_export_shards if sharded else is_export, protect=[run_dir],
                      protected="the run being exported")
    if not sharded and not force and is_export(out_dir):
        if again:
            raise OccupiedTarget(f"{out_dir} received an export while this one ran (another export?); "
                                 "nothing was replaced: pass --force to replace it")
        raise OccupiedTarget(f"{out_dir} already holds an export; pass --force to replace it")


def usual_permissions(path: str | Path) -> None:
    """Give a temporary file or folder the mode a plain open() or mkdir() would have: tempfile
    makes them private (0600/0700), and renamed into place they would lock out the other
    accounts (a search node's user, a teammate) that the user's umask lets read outputs."""
    mask = os.umask(0)
    os.umask(mask)
    os.chmod(path, (0o777 if Path(path).is_dir() else 0o666) & ~mask)


@contextlib.contextmanager
def staged_file(path: Path) -> Iterator:
    """A text file handle whose contents replace `path` only when the block finishes: readers
    see the old file or the complete new one, never a half-written one."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.absolute().parent, prefix=f".{path.name}.")
    try:
        usual_permissions(tmp)
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            yield fh
        os.replace(tmp, path)
    finally:
        Path(tmp).unlink(missing_ok=True)


@contextlib.contextmanager
def staged_directory(target: Path, replace: bool = True, marker=None,
                     check: Callable[[], None] | None = None) -> Iterator[Path]:
    """Yield an empty sibling of `target` to write into. On a clean exit it replaces `target`
    (when `replace`; otherwise the caller has moved out what it wanted); on an exception, or
    afterwards, whatever is left of it is removed.

    With `replace`, `target` is checked (`check_replaceable` with `marker`) before anything is
    written and again just before the swap, in case it changed meanwhile; the old target is
    moved aside and removed only once the new one is in place. `check`, the caller's own check
    of `target` (made before the work), runs again there too: `marker` says what may be replaced
    at all, `check` whether what arrived meanwhile may be (another export, without --force)."""
    target = Path(target)
    if replace:
        check_replaceable(target, marker)
    target.parent.mkdir(parents=True, exist_ok=True)
    _remove_abandoned_staging(target)
    tmp = Path(tempfile.mkdtemp(dir=target.parent, prefix=_staging_prefix(target, os.getpid())))
    try:
        usual_permissions(tmp)
        yield tmp
        if replace:
            _checked_swap(tmp, target, marker, check)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def _staging_prefix(target: Path, pid: int) -> str:
    # '+' appears in no host name, so the name splits back into host and pid.
    return f".{target.name}.staging+{socket.gethostname()}+{pid}+"


def _remove_abandoned_staging(target: Path) -> None:
    """Delete staging folders of `target` that a build on this machine left when it was killed
    outright (kill -9, OOM): it cannot clean up after itself, and an export's staging folder can
    hold hundreds of MB hidden beside the output. The host and pid in the name tell a live build
    (left alone) from an abandoned one; a folder from another machine sharing the output's folder
    (the shards of one export) is never touched, since its pid means nothing here, and a reused
    pid only delays the cleanup."""
    prefix = f".{target.name}.staging+"
    host = socket.gethostname()
    for leftover in target.parent.glob(f"{glob.escape(prefix)}*"):
        owner = leftover.name[len(prefix):].split("+")
        if (len(owner) != 3 or owner[0] != host or not owner[1].isdigit() or leftover.is_symlink()
                or not leftover.is_dir() or _alive(int(owner[1]))):
            continue
        shutil.rmtree(leftover, ignore_errors=True)
        if not leftover.exists():
            print(f"removed {leftover}, left by an interrupted build (process {owner[1]} is gone)", file=sys.stderr)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another account's live process
        return True
    return True


class _FilledMeanwhile(OccupiedTarget):
    """`target` was absent or empty just before the swap and is not any more."""


def _checked_swap(tmp: Path, target: Path, marker, check: Callable[[], None] | None) -> None:
    def checks() -> None:
        if check is not None:
            check()
        check_replaceable(target, marker)

    try:
        _swap_after(checks, tmp, target)
    except _FilledMeanwhile:
        # Another writer finished into `target` between the checks and the rename: judge what it
        # left as any earlier output (refused without --force, replaced with it).
        _swap_after(checks, tmp, target)


def _swap_after(checks: Callable[[], None], tmp: Path, target: Path) -> None:
    # Looked at before the checks: a target absent or empty then is only ever renamed onto, which
    # fails if it has been filled since, so nothing the checks did not see is ever moved aside.
    fresh = not target.exists() or _is_empty_dir(target)
    checks()
    _swap_in(tmp, target, fresh)


def _rename_onto_nothing(tmp: Path, target: Path) -> None:
    """Rename `tmp` to `target`, which was absent or an empty directory when last looked at."""
    try:
        with contextlib.suppress(FileNotFoundError):
            target.rmdir()  # portably makes room; only ever removes an empty directory
        tmp.rename(target)
    except OSError as err:
        if err.errno not in (errno.ENOTEMPTY, errno.EEXIST, errno.ENOTDIR):
            raise
        raise _FilledMeanwhile(f"{target} was filled by something else as this output was moved into place; "
                               "nothing was replaced: run again") from None


def _swap_in(tmp: Path, target: Path, fresh: bool) -> None:
    """Move `tmp` to `target` (`fresh`: absent or empty when checked); an old target is moved
    aside first and deleted only after the new one is in place, so a failure in between puts the
    old one back."""
    if fresh:
        _rename_onto_nothing(tmp, target)
        return
    aside = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{target.name}.old."))
    aside.rmdir()
    target.rename(aside)
    try:
        tmp.rename(target)
    except BaseException:
        aside.rename(target)
        raise
    shutil.rmtree(aside, ignore_errors=True)
