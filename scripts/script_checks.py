"""Input checks the scripts under scripts/ share: bad input ends in one line and a non-zero exit,
before any long work, rather than in a traceback (or in results lost after an hour of it)."""
from __future__ import annotations

import sys
from pathlib import Path
from typing import NoReturn


def fail(message: str) -> NoReturn:
    raise SystemExit(f"{Path(sys.argv[0]).name}: {message}")


def open_run_of(run_dir: Path, kinds: tuple[str, ...], needs: str):
    """The run at `run_dir` when it opens and its model is one of `kinds`; `needs` says why."""
    from sparcode.encoder.runs import RunError, open_run

    try:
        run = open_run(run_dir)
    except RunError as err:
        fail(str(err))
    if run.kind not in kinds:
        fail(f"{run_dir} is a {run.kind} run; {needs}")
    return run


def check_out_file(path: Path) -> None:
    """An --out file must be writable where it is named; its folder is not created."""
    if path.is_dir():
        fail(f"--out {path} is a folder; name a file")
    if not path.absolute().parent.is_dir():
        fail(f"--out {path}: the folder {path.absolute().parent} does not exist")
