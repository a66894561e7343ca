"""TREC run and qrels files with external user and item ids, for trec_eval or later re-scoring.

    run:   user Q0 item rank score tag     (rank from 1)
    qrels: user 0 item 1

The score column is the model's (or backend's) score. trec_eval ignores the rank column: it
re-sorts each user's items by score, reads the score as a C float (32 bits), and breaks ties by
item id in *descending* string order ('b' before 'a', '9' before '10'). Our lists break ties
otherwise (by item index, or the backend's order), so a score that ties with or exceeds the one
before it is lowered to the next float32 below it: trec_eval's order is then exactly ours, and
each written score is the true one to a few float32 ulps. Scores are written with enough digits
to read back exactly. Users whose ranked list is empty have no lines in the run file: plain
trec_eval averages over the users it finds in the run, so `trec_eval -c` (every qrels user) is
what matches `sparcode evaluate`.

Both files are written all or nothing (`TrecOutputs`): an existing file is only replaced when it
is recognisably a TREC file of the same kind, never one of the run's dataset files.
"""
from __future__ import annotations

import contextlib
import os
import tempfile
from collections import defaultdict
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path

import numpy as np

from sparcode.data.dataset import Dataset, EvalSet
from sparcode.data.errors import DataError
from sparcode.staging import OccupiedTarget, staged_file, usual_permissions

RUN_FIELDS, QRELS_FIELDS = 6, 4
_LONGEST_LINE = 4096  # far beyond any TREC line sparcode writes


def check_writable(path: Path) -> None:
    """Refuse an output path before a long evaluation rather than after it."""
    parent = Path(path).absolute().parent
    if not parent.is_dir():
        raise DataError(f"cannot write {path}: folder {parent} does not exist")
    if not os.access(parent, os.W_OK):
        raise DataError(f"cannot write {path}: folder {parent} is not writable")


def check_trec_target(path: Path, width: int, protect: Iterable[Path] = ()) -> None:
    """Refuse (one line, nothing touched) a target that is one of `protect` (or inside one), or
    an existing file that is not a TREC file whose lines have `width` fields; an empty file is fine."""
    path = Path(path)
    kind = "run" if width == RUN_FIELDS else "qrels"
    for keep in protect:
        keep = Path(keep).resolve()
        if path.resolve() == keep or keep in path.resolve().parents:
            raise OccupiedTarget(f"{path} is {'' if path.resolve() == keep else 'inside '}the run's dataset {keep}; "
                                 f"write the TREC {kind} file elsewhere (nothing was written)")
    if path.is_symlink() and not path.exists():
        raise OccupiedTarget(f"{path} is a symbolic link to nothing ({os.readlink(path)}); pick another path "
                             f"for the TREC {kind} file")
    if not path.exists():
        return
    if not path.is_file():
        raise OccupiedTarget(f"{path} exists and is not a file; pick another path for the TREC {kind} file")
    problem = _not_trec(path, width)
    if problem:
        raise OccupiedTarget(f"{path} exists and is not a TREC {kind} file ({problem}); pick another path or "
                             "remove it (nothing was written)")


def _not_trec(path: Path, width: int) -> str | None:
    """Why `path` is not a TREC file of `width` fields per line, judged by its first non-empty
    line (read no further than a TREC line could go: the file may be large and binary)."""
    try:
        with open(path, encoding="utf-8") as fh:
            while line := fh.readline(_LONGEST_LINE):
                if len(line) == _LONGEST_LINE and not line.endswith("\n"):
                    return f"its first line is over {_LONGEST_LINE} characters"
                if fields := line.split():
                    return _not_trec_line(fields, width)
    except UnicodeDecodeError:
        return "it is not UTF-8 text"
    except OSError as err:
        return f"it cannot be read: {err.strerror}"
    return None


def _not_trec_line(fields: list[str], width: int) -> str | None:
    """Why a line is not one sparcode writes: the field count alone would take a sequences
    line of 3 or 5 items (or a feature line) for qrels or a run."""
    if len(fields) != width:
        return f"its first line has {len(fields)} fields, not {width}"
    marker, numbers = ("Q0", (fields[3], fields[4])) if width == RUN_FIELDS else ("0", (fields[3],))
    if fields[1] != marker:
        return f"its first line's second field is {fields[1]!r}, not {marker}"
    try:
        int(fields[3])
        [float(number) for number in numbers]
    except ValueError:
        return f"its first line's {'rank and score' if width == RUN_FIELDS else 'relevance'} are not numbers"
    return None


def decreasing_scores(scores) -> np.ndarray:
    """`scores` (best first) as float32, each one strictly below the one before: a value that ties
    with or exceeds its predecessor becomes the next float32 below it, so a sort by score alone
    (trec_eval's) keeps the given order whatever the item ids."""
    out = np.asarray(scores, dtype=np.float32).copy()
    for i in range(1, len(out)):
        if not out[i] < out[i - 1]:
            out[i] = np.nextafter(out[i - 1], np.float32(-np.inf))
    return out


def write_run(path: Path, rankings: list[np.ndarray], evalset: EvalSet, dataset: Dataset, tag: str = "sparcode",
              scores: list[np.ndarray] | None = None) -> None:
    with staged_file(path) as fh:
        _write_run_lines(fh, rankings, evalset, dataset, tag, scores)


def _write_run_lines(fh, rankings, evalset: EvalSet, dataset: Dataset, tag: str, scores) -> None:
    if len(rankings) != len(evalset):
        raise ValueError(f"{len(rankings)} ranked lists for {len(evalset)} users")
    if scores is not None and len(scores) != len(rankings):
        raise ValueError(f"{len(scores)} score lists for {len(rankings)} ranked lists")
    for row, ranked in enumerate(rankings):
        user = dataset.user_ids[evalset.users[row]]
        for rank, (item, score) in enumerate(zip(ranked, _score_texts(ranked, scores, row)), 1):
            fh.write(f"{user} Q0 {dataset.item_ids[item]} {rank} {score} {tag}\n")


def _score_texts(ranked: np.ndarray, scores, row: int) -> list[str]:
    if scores is None:  # no scores at hand: falling integers keep the order
        return [str(n) for n in range(len(ranked), 0, -1)]
    if len(scores[row]) != len(ranked):
        raise ValueError(f"{len(scores[row])} scores for {len(ranked)} ranked items (row {row})")
    # repr of the float32 value as a double reads back exactly, in trec_eval's C float too.
    return [repr(float(score)) for score in decreasing_scores(scores[row])]


def write_qrels(path: Path, evalset: EvalSet, dataset: Dataset) -> None:
    with staged_file(path) as fh:
        _write_qrels_lines(fh, evalset, dataset)


def _write_qrels_lines(fh, evalset: EvalSet, dataset: Dataset) -> None:
    for row, targets in enumerate(evalset.targets):
        user = dataset.user_ids[evalset.users[row]]
        for item in targets:
            fh.write(f"{user} 0 {dataset.item_ids[item]} 1\n")


class TrecOutputs:
    """`evaluate --run-file/--qrels`: both files appear together, complete, or not at all.

    Construction checks the targets (nothing is created); `stage(dataset_paths)`, once the run is
    open and before the long scoring, refuses the run's dataset files and creates hidden siblings,
    so an unwritable folder fails at once; `write(...)` fills them and moves them all into place,
    putting back what it moved when a later move fails. Leaving the `with` block removes whatever
    is still staged. Errors are one line naming the user's path."""

    def __init__(self, run_file: Path | None, qrels: Path | None):
        given = {Path(p): width for p, width in ((run_file, RUN_FIELDS), (qrels, QRELS_FIELDS)) if p is not None}
        for path, width in given.items():
            check_writable(path)
            check_trec_target(path, width)
        # A symbolic link is written through, as a shell's `>` would: the file it names is replaced.
        self.targets = {(path.resolve() if path.is_symlink() else path): width for path, width in given.items()}
        self.staged: dict[Path, str] = {}

    def __enter__(self) -> "TrecOutputs":
        return self

    def __exit__(self, *exc) -> None:
        for tmp in self.staged.values():
            Path(tmp).unlink(missing_ok=True)
        self.staged = {}

    def stage(self, protect: Iterable[Path] = ()) -> None:
        protect = list(protect)
        for path, width in self.targets.items():
            check_trec_target(path, width, protect)
        for path in self.targets:
            with _naming(path):
                self.staged[path] = _temporary_sibling(path)

    def write(self, rankings: list[np.ndarray], scores: list[np.ndarray] | None, evalset: EvalSet,
              dataset: Dataset, tag: str) -> None:
        if not self.staged:
            self.stage()
        writers: dict[int, Callable] = {
            RUN_FIELDS: lambda fh: _write_run_lines(fh, rankings, evalset, dataset, tag, scores),
            QRELS_FIELDS: lambda fh: _write_qrels_lines(fh, evalset, dataset)}
        for path, tmp in self.staged.items():
            with _naming(path), open(tmp, "w", encoding="utf-8") as fh:
                writers[self.targets[path]](fh)
        _move_all_into_place(self.staged)
        self.staged = {}


@contextlib.contextmanager
def _naming(path: Path) -> Iterator[None]:
    """An OSError as one line naming the user's path, not the hidden sibling that failed."""
    try:
        yield
    except OSError as err:
        raise DataError(f"cannot write {path}: {err.strerror or err}") from None


def _temporary_sibling(path: Path) -> str:
    fd, tmp = tempfile.mkstemp(dir=path.absolute().parent, prefix=f".{path.name}.")
    os.close(fd)
    usual_permissions(tmp)
    return tmp


def _move_all_into_place(staged: dict[Path, str]) -> None:
    """Rename each staged file over its target; old targets stay aside until every new one is in
    place, and go back if a later rename fails."""
    done: list[tuple[Path, str | None]] = []
    try:
        for path, tmp in staged.items():
            with _naming(path):
                done.append((path, _set_aside(path)))
                os.replace(tmp, path)
    except BaseException:
        for path, aside in reversed(done):
            if aside is not None:
                os.replace(aside, path)
            else:
                path.unlink(missing_ok=True)
        raise
    for _, aside in done:
        if aside is not None:
            Path(aside).unlink(missing_ok=True)


def _set_aside(path: Path) -> str | None:
    """Move an existing `path` to a hidden sibling (→ its name), or None when there is none."""
    if not path.exists() and not path.is_symlink():
        return None
    aside = _temporary_sibling(path)
    try:
        os.replace(path, aside)
    except BaseException:
        Path(aside).unlink(missing_ok=True)
        raise
    return aside


def read_run(path: Path) -> dict[str, list[str]]:
    """user → items in rank order (by the rank column)."""
    ranked: dict[str, list[tuple[int, str]]] = defaultdict(list)
    for lineno, fields in _rows(path, 6):
        try:
            ranked[fields[0]].append((int(fields[3]), fields[2]))
        except ValueError:
            raise DataError(f"rank {fields[3]!r} is not an integer", path, lineno) from None
    return {user: [item for _, item in sorted(pairs)] for user, pairs in ranked.items()}


def read_qrels(path: Path) -> dict[str, set[str]]:
    """user → relevant items (relevance > 0)."""
    relevant: dict[str, set[str]] = defaultdict(set)
    for lineno, fields in _rows(path, 4):
        if fields[3] not in ("0", "-1"):
            relevant[fields[0]].add(fields[2])
    return dict(relevant)


def _rows(path: Path, width: int):
    try:
        with open(path, encoding="utf-8") as fh:
            for lineno, line in enumerate(fh, 1):
                fields = line.split()
                if not fields:
                    continue
                if len(fields) != width:
                    raise DataError(f"expected {width} fields, got {len(fields)}", path, lineno)
                yield lineno, fields
    except (OSError, UnicodeDecodeError) as err:
        raise DataError(f"cannot read: {err}", path) from None
