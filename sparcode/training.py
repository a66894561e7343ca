"""`sparcode train` behind the CLI: read data, split, fit the requested model, record the run."""
from __future__ import annotations

import contextlib
import os
import platform
import shutil
import time
from pathlib import Path

from sparcode import locks
from sparcode.config import ConfigError, RunConfig, check_allocation, same_dataset
from sparcode.data.readers import NAMED, load_dataset
from sparcode.data.splits import check_usable, make_split, split_summary


# Inside the run folder while a train of it holds this file's lock: whatever path reaches the folder
# (a symbolic link, a bind mount, another container's mount point) reaches the one lock. Removed when
# the train ends; left only by a killed train, so `run_files` leaves it out.
TRAIN_LOCK = ".train.lock"


class RunLock:
    """One train of a run folder at a time, from the first check of the folder until run.json is
    written: two would both append to its history and overwrite each other's weights, and checks
    made before another train of it finished would no longer hold. `hold` makes the folder if it
    is missing (a fresh run's lock goes into it); leaving the `with` block lets go of the lock and
    removes the folders `hold` made if nothing was put in them (a refused or failed fresh train
    leaves nothing behind)."""

    def __init__(self, run_dir: Path):
        self.run_dir = Path(run_dir)
        self._held = contextlib.ExitStack()
        self._made: list[Path] = []  # deepest first
        self.holding = False

    def hold(self) -> None:
        """Take the lock unless held already; RunError naming the process that trains the run."""
        from sparcode.encoder.runs import RunError

        if self.holding:
            return
        for _ in range(3):
            try:
                self._make_folder()
                self._held.enter_context(locks.exclusive(self.run_dir / TRAIN_LOCK, remove=True))
            except FileNotFoundError:
                continue  # a failed fresh train of it removed the folder meanwhile: make it again
            except locks.LockHeld as other:
                raise RunError(f"{self.run_dir} is being trained by process {other.pid or '?'}; wait for it to "
                               "finish or choose another --out") from None
            except OSError as err:
                raise RunError(f"cannot lock {self.run_dir} for training: {err.filename or self.run_dir}: "
                               f"{err.strerror or err}") from None
            self.holding = True
            return
        raise RunError(f"{self.run_dir} was removed each time it was made (another train failing on it?); "
                       "run again")

    def _make_folder(self) -> None:
        folder = Path(os.path.abspath(self.run_dir))  # `a/b/../c`: the folders made are a and a/c
        missing = [made for made in (folder, *folder.parents) if not made.exists()]
        folder.mkdir(parents=True, exist_ok=True)
        self._made = missing + [folder for folder in self._made if folder not in missing]

    def __enter__(self) -> "RunLock":
        return self

    def __exit__(self, *exc) -> None:
        self._held.close()
        self.holding = False
        for folder in self._made:
            try:
                folder.rmdir()  # only ever an empty one: a run's files, or another train's lock, keep it
            except FileNotFoundError:
                continue
            except OSError:
                break


def run_files(run_dir: Path) -> list[Path]:
    """What a run folder holds, but for its lock file: a folder holding only that is empty."""
    return [path for path in Path(run_dir).iterdir() if path.name != TRAIN_LOCK]


def train_run(run_dir: Path, cfg: RunConfig, resume: bool = False, progress: bool = True,
              config_file: Path | None = None, lock: RunLock | None = None) -> dict:
    """Train into `run_dir` under its RunLock: the caller's `lock` (held already or not), else one
    of its own."""
    with contextlib.ExitStack() as stack:
        lock = lock or stack.enter_context(RunLock(run_dir))
        lock.hold()  # before the data is read: another train of the run is refused at once
        return _train_run(Path(run_dir), cfg, resume, progress, config_file)


def _train_run(run_dir: Path, cfg: RunConfig, resume: bool, progress: bool, config_file: Path | None) -> dict:
    from sparcode.encoder import checkpoint as ckpt

    started = time.perf_counter()
    if cfg.model.kind == "sparcode":
        # Refused where postings are built too; here before a training run is spent on it. Not in
        # RunConfig.validate: export's --allocation/--bias override the run's serve settings later.
        check_allocation(cfg.serve.allocation, cfg.serve.stored_fraction, cfg.serve.bias)
    if cfg.dataset not in NAMED:
        # Absolute from the start: an unfinished run (config.json only) must open, and --resume
        # must compare datasets, from any working directory.
        cfg.dataset = str(Path(cfg.dataset).resolve())
    if resume:
        check_resumable(run_dir, cfg)
    dataset = load_dataset(cfg.dataset)
    split = make_split(dataset, cfg.split, seed=cfg.seed, max_history=cfg.train.max_history)
    check_usable(split, dataset.n_users, cfg.dataset)
    kind = cfg.model.kind
    if kind == "tiger":  # its `tiger` keys and item texts are checked here, before RUN_DIR is made
        from sparcode.generative.config import TigerConfig
        from sparcode.generative.text import dataset_texts
        from sparcode.generative.train_tiger import adopt_built_ids

        TigerConfig.from_run_config(cfg)
        dataset_texts(dataset, cfg.dataset)
        adopt_built_ids(run_dir, cfg, dataset, config_file)
    fresh = not run_dir.exists() or (run_dir.is_dir() and not run_files(run_dir))
    run_dir.mkdir(parents=True, exist_ok=True)
    try:
        summary = _fit(run_dir, cfg, dataset, split, resume, progress)
    except BaseException:
        if fresh and _nothing_trained(run_dir):
            # A failure before the first checkpoint (a diverging loss, an allocation, Ctrl-C in
            # epoch 1) would leave files that block a retry and that --resume starts over anyway.
            # The folder itself, and the lock file in it, are the lock's to remove (only a folder
            # it made): deleting the held lock file would let a second train lock a new one.
            _clear(run_dir)
        raise
    cfg.save(run_dir / ckpt.CONFIG)
    summary = {**summary, "wall_seconds": round(time.perf_counter() - started, 1)}
    summary.setdefault("train_seconds", summary["wall_seconds"])
    ckpt.write_json(run_dir / ckpt.RUN_INFO, {
        "model": kind, "dataset": cfg.dataset, **_dataset_path(cfg.dataset), "split": split_summary(split),
        "dataset_digest": dataset.digest(),
        "seed": cfg.seed,
        "python": platform.python_version(), **summary,
    })
    return summary


def _fit(run_dir: Path, cfg: RunConfig, dataset, split, resume: bool, progress: bool) -> dict:
    from sparcode.encoder import checkpoint as ckpt

    if not (run_dir / ckpt.CONFIG).exists():
        cfg.save(run_dir / ckpt.CONFIG)  # first, so an interrupted run of any kind is recognised and resumable
    kind = cfg.model.kind
    if kind in ("ease", "tiger"):  # the torch trainer does this itself, once its checkpoint is checked
        mark_unfinished(run_dir)
    if kind == "ease":
        from sparcode.encoder.ease_run import train_ease

        return train_ease(run_dir, cfg, dataset, split, progress=progress)
    if kind == "tiger":
        from sparcode.generative.train_tiger import train_tiger

        return train_tiger(run_dir, dataset, split, cfg, resume=True if resume else None, progress=progress)
    from sparcode.encoder.train import train

    return train(run_dir, cfg, dataset, split, resume=resume, progress=progress)


def _clear(run_dir: Path) -> None:
    for path in run_files(run_dir):
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink(missing_ok=True)


def _nothing_trained(run_dir: Path) -> bool:
    """Only what a run writes before its first checkpoint."""
    return not run_dir.is_dir() or {path.name for path in run_files(run_dir)} <= {"config.json", "history.jsonl"}


def mark_unfinished(run_dir: Path) -> None:
    """A resumed run is unfinished until it finishes again: export and search must not take
    weights that are changing for the finished model the old run.json describes."""
    from sparcode.encoder import checkpoint as ckpt

    (Path(run_dir) / ckpt.RUN_INFO).unlink(missing_ok=True)


def _dataset_path(dataset: str) -> dict:
    """Where a file dataset is, absolutely: a run trained with `--dataset data.txt` must still
    open (for evaluate, export, search) from another working directory."""
    if dataset in NAMED:
        return {}
    return {"dataset_path": str(Path(dataset).resolve())}


def recorded_config(run_dir: Path) -> RunConfig | None:
    """The config a run was started with (None before it has one), its dataset made absolute from
    run.json for runs trained before config.json held it absolute."""
    from sparcode.encoder import checkpoint as ckpt
    from sparcode.encoder.runs import RunError

    path = Path(run_dir) / ckpt.CONFIG
    if not path.is_file():
        return None
    try:
        recorded = RunConfig.load(path)
    except ConfigError as err:
        raise RunError(f"cannot resume {run_dir}: its {ckpt.CONFIG} is unreadable ({err})") from None
    info_path = Path(run_dir) / ckpt.RUN_INFO
    dataset_path = ckpt.read_json(info_path).get("dataset_path") if info_path.is_file() else None
    if isinstance(dataset_path, str):
        recorded.dataset = dataset_path
    return recorded


def epochs_done(run_dir: Path) -> int:
    """Epochs a run has trained: one line each in its (or its TIGER model's) history."""
    for path in (Path(run_dir) / "history.jsonl", Path(run_dir) / "tiger" / "history.jsonl"):
        if path.is_file():
            with open(path, encoding="utf-8", errors="replace") as fh:
                return sum(1 for line in fh if line.strip())
    return 0


def planned_epochs(cfg: RunConfig) -> int | None:
    """The epochs `cfg` trains for; None when a TIGER step budget decides instead."""
    if cfg.model.kind == "ease":
        return None
    if cfg.model.kind == "tiger":
        from sparcode.generative.config import TigerConfig

        tiger = TigerConfig.from_run_config(cfg)
        return None if tiger.total_steps else tiger.epochs
    return cfg.train.epochs


def check_resumable(run_dir: Path, cfg: RunConfig) -> None:
    """--resume continues the run's own training. Another dataset, split, seed or model kind
    would either fail to load its weights (a size-mismatch traceback) or quietly mix two runs;
    fewer epochs than it has trained would rewrite its record without training."""
    from sparcode.encoder.runs import RunError

    recorded = recorded_config(run_dir)
    if recorded is None:
        return  # nothing recorded yet: --resume starts afresh
    for what, flag, then, now in (("dataset", "--dataset", recorded.dataset, cfg.dataset),
                                  ("split", "--split", recorded.split, cfg.split),
                                  ("seed", "--seed", recorded.seed, cfg.seed),
                                  ("model", "--model", recorded.model.kind, cfg.model.kind)):
        if what == "dataset" and then not in NAMED and not Path(then).is_absolute():
            continue  # an old run's path relative to a folder unknown now: the --dataset given stands
        if then != now and not (what == "dataset" and same_dataset(then, now)):
            raise RunError(f"cannot resume {run_dir}: it was trained with {what} {then!r}, not {now!r}; "
                           f"pass {flag} {then} or choose another --out")
    done, planned = epochs_done(run_dir), planned_epochs(cfg)
    if planned is not None and planned < done:
        raise RunError(f"cannot resume {run_dir} for {planned} epochs: it has trained {done} already; "
                       f"pass --epochs {done + 1} or more")
