"""Write a directory all at once: readers see the old one or the finished new one, never half.

Exports, vector exports, hnsw indexes and bench results are directories of several files that
only make sense together; each is built in a temporary sibling and moved into place at the end.

An existing target is only ever replaced when it is recognisably one of these outputs (or an
empty directory): anything else — a run directory, a directory of the user's own files, a
plain file, a symbolic link — is refused and left exactly as it was.
"""
from __future__ import annotations

import contextlib
import shutil
import tempfile
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path

import orjson

from sparcode.pipeline.export import FORMAT as EXPORT_FORMAT
from sparcode.pipeline.export import ExportError


class TargetInUse(ExportError):
    """The output path exists and is not ours to replace (a one-line user error)."""


def is_export(path: Path) -> bool:
    """True when `path` is a directory whose manifest.json is an export's (any kind)."""
    manifest = Path(path) / "manifest.json"
    try:
        data = orjson.loads(manifest.read_bytes())
    except (OSError, orjson.JSONDecodeError):
        return False
    return isinstance(data, dict) and data.get("format") == EXPORT_FORMAT


def is_export_shards(path: Path) -> bool:
    """True when `path` holds the parts of a sharded export still being written (or finished)."""
    return is_export(path) or any(Path(path).glob("items.part-*.jsonl.gz.manifest.json"))


def is_hnsw_index(path: Path) -> bool:
    return (Path(path) / "index.bin").is_file() and (Path(path) / "meta.json").is_file()


def is_bench_output(path: Path) -> bool:
    return (Path(path) / "bench.json").is_file()


def is_known_output(path: Path) -> bool:
    """Every kind of directory sparcode writes with `staged_directory`."""
    return is_export(path) or is_hnsw_index(path) or is_bench_output(path)


def _is_empty_dir(path: Path) -> bool:
    return path.is_dir() and not path.is_symlink() and not any(path.iterdir())


def _contains(outer: Path, inner: Path) -> bool:
    outer, inner = outer.resolve(), inner.resolve()
    return inner == outer or outer in inner.parents


def _listing(path: Path, limit: int = 3) -> str:
    names = sorted(p.name for p in path.iterdir())
    shown = ", ".join(names[:limit])
    return shown + (f", … ({len(names)} entries)" if len(names) > limit else "")


def check_target(target: Path, *, force: bool = False, owned: Callable[[Path], bool] = is_known_output,
                 what: str = "an export", protect: Iterable[Path] = (), option: str = "--out") -> None:
    """Refuse, in one line, an output path that may not be written: nothing is changed.

    Allowed: a path that does not exist, an empty directory, or a directory `owned` recognises
    when `force` is given. Refused: a symbolic link, a file, a non-empty directory `owned` does
    not recognise, a recognised one without `force`, and any path that is or contains one of
    `protect` (e.g. the run being exported)."""
    target = Path(target)
    for keep in protect:
        if _contains(target, Path(keep)):
            same = target.resolve() == Path(keep).resolve()
            raise TargetInUse(f"{option} {target} {'is' if same else 'contains'} {keep}; "
                              f"pick another {option} (nothing was changed)")
    if target.is_symlink():
        raise TargetInUse(f"{option} {target} is a symbolic link; pick a real path (nothing was changed)")
    if not target.exists():
        return
    if not target.is_dir():
        raise TargetInUse(f"{option} {target} is a file, not a directory; pick another {option} "
                          "(nothing was changed)")
    if _is_empty_dir(target):
        return
    if not owned(target):
        raise TargetInUse(f"{option} {target} exists and is not {what} (it holds {_listing(target)}); "
                          f"pick a new or empty {option} (nothing was changed)")
    if not force:
        raise TargetInUse(f"{target} already holds {what}; pass --force to replace it")


@contextlib.contextmanager
def staged_directory(target: Path, replace: bool = True,
                     owned: Callable[[Path], bool] = is_known_output) -> Iterator[Path]:
    """Yield an empty sibling of `target` to write into. On a clean exit it replaces `target`
    (when `replace`; otherwise the caller has moved out what it wanted); on an exception, or
    afterwards, whatever is left of it is removed.

    `target` is replaced only when it does not exist, is an empty directory, or is a directory
    `owned` recognises (by default any output sparcode writes this way); otherwise
    `TargetInUse` is raised — before anything is written, and again at the end should the
    target have changed meanwhile — and `target` is left untouched. Whether to replace an
    owned output at all (--force) is the caller's decision, made before it gets here."""
    target = Path(target)
    if replace:
        _check_replaceable(target, owned)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{target.name}."))
    try:
        yield tmp
        if replace:
            _check_replaceable(target, owned)
            _swap_in(tmp, target)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def _check_replaceable(target: Path, owned: Callable[[Path], bool]) -> None:
    if target.is_symlink():
        raise TargetInUse(f"{target} is a symbolic link; not replacing it (nothing was changed)")
    if not target.exists() or _is_empty_dir(target):
        return
    if not target.is_dir():
        raise TargetInUse(f"{target} is a file, not a directory; not replacing it (nothing was changed)")
    if not owned(target):
        raise TargetInUse(f"{target} exists and is not an output sparcode wrote (it holds "
                          f"{_listing(target)}); not replacing it (nothing was changed)")


def _swap_in(tmp: Path, target: Path) -> None:
    """Move `tmp` to `target`; the old target is moved aside first and only removed once the
    new one is in place, so a failure in between puts the old one back."""
    if not target.exists():
        tmp.rename(target)
        return
    if _is_empty_dir(target):
        target.rmdir()
        tmp.rename(target)
        return
    old = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{target.name}.old."))
    old.rmdir()
    target.rename(old)
    try:
        tmp.rename(target)
    except BaseException:
        old.rename(target)
        raise
    shutil.rmtree(old, ignore_errors=True)
