"""One process at a time on a run folder (`train`) and on a local node's home (`es start|stop`):
a second one is refused at once, in one line naming the process at work, and touches nothing.
The process at work is a child of the test holding the lock as sparcode does (flock on the lock
file, its pid written in it), so no second training or node has to run."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import run_cli
from test_cli_end_to_end import invoke, make_dataset

HOLDER = r'''
import fcntl, sys
lock = open(sys.argv[1], "a+")
fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
lock.seek(0)
lock.truncate()
lock.write(sys.argv[2].replace("PID", str(__import__("os").getpid())))
lock.flush()
print("held", flush=True)
sys.stdin.read()  # until the test closes our stdin
'''

PROBE = r'''
import fcntl, sys
try:
    fcntl.flock(open(sys.argv[1], "a+"), fcntl.LOCK_EX | fcntl.LOCK_NB)
except BlockingIOError:
    sys.exit(3)
'''


class Holder:
    """A child process holding the lock on `path`, its file saying `content` (PID: its pid)."""

    def __init__(self, path: Path, content: str = "PID", *extra: str):
        self.proc = subprocess.Popen([sys.executable, "-c", HOLDER, str(path), content, *extra],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        assert self.proc.stdout.readline().strip() == "held"
        self.pid = self.proc.pid

    def __enter__(self) -> "Holder":
        return self

    def __exit__(self, *exc) -> None:
        self.proc.stdin.close()
        self.proc.wait(timeout=10)


def locked_by_another_process(path: Path) -> bool:
    return subprocess.run([sys.executable, "-c", PROBE, str(path)]).returncode == 3


def snapshot(folder: Path) -> dict:
    return {p.relative_to(folder).as_posix(): p.read_bytes() if p.is_file() else None for p in folder.rglob("*")}


def one_line_error(result, *fragments) -> str:
    assert result.exit_code == 1, result.output
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1 and "Traceback" not in result.output, result.output
    for fragment in fragments:
        assert fragment in lines[0], lines[0]
    return lines[0]


@pytest.fixture(scope="module")
def ease_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("lock")
    data = make_dataset(root / "data")
    run = root / "run"
    result = invoke("train", "--model", "ease", "--dataset", data, "--out", run, "--quiet")
    assert result.exit_code == 0, result.output
    return data, run


# -- train --------------------------------------------------------------------------------------
@pytest.mark.parametrize("unfinished", [False, True])
@pytest.mark.parametrize("resume", [True, False])
def test_a_train_of_a_run_being_trained_is_refused_at_once_naming_its_process(ease_run, tmp_path, monkeypatch,
                                                                              unfinished, resume):
    import shutil

    from sparcode import training

    data, trained = ease_run
    run = tmp_path / "run"
    shutil.copytree(trained, run)
    if unfinished:
        (run / "run.json").unlink()
    (run / "history.jsonl").write_text('{"epoch": 1}\n')  # as a torch run's: a second train would append
    # Refused before the dataset is read: that can take minutes.
    monkeypatch.setattr(training, "load_dataset", lambda *a, **k: pytest.fail("the dataset was read"))
    with Holder(run / training.TRAIN_LOCK) as other:
        before = snapshot(run)
        result = invoke("train", "--model", "ease", "--dataset", data, "--out", run, "--quiet",
                        *(["--resume"] if resume else []))
        one_line_error(result, f"{run} is being trained by process {other.pid}", "choose another --out")
        assert snapshot(run) == before


def test_train_holds_the_run_lock_from_its_first_write_until_run_json(ease_run, tmp_path, monkeypatch):
    from sparcode import training
    from sparcode.encoder import checkpoint as ckpt

    data, _ = ease_run
    run = tmp_path / "run"
    seen = {}
    real_fit, real_write = training._fit, ckpt.write_json

    def fit(run_dir, *args, **kwargs):
        seen["fit"] = locked_by_another_process(run_dir / training.TRAIN_LOCK)
        return real_fit(run_dir, *args, **kwargs)

    def write_json(path, obj):
        if Path(path).name == ckpt.RUN_INFO:
            seen["run.json"] = locked_by_another_process(Path(path).parent / training.TRAIN_LOCK)
        real_write(path, obj)

    monkeypatch.setattr(training, "_fit", fit)
    monkeypatch.setattr(ckpt, "write_json", write_json)
    result = invoke("train", "--model", "ease", "--dataset", data, "--out", run, "--quiet")
    assert result.exit_code == 0, result.output
    assert seen == {"fit": True, "run.json": True}
    assert not (run / training.TRAIN_LOCK).exists()  # let go, and removed
    before = snapshot(run)
    one_line_error(invoke("train", "--model", "ease", "--dataset", data, "--out", run), "already holds a finished run")
    assert snapshot(run) == before  # a refusal under the lock leaves no lock file either
    again = invoke("train", "--model", "ease", "--dataset", data, "--out", run, "--quiet", "--resume")
    assert again.exit_code == 0, again.output
    assert not (run / training.TRAIN_LOCK).exists()


def test_a_second_fresh_train_of_one_folder_is_refused_and_each_spelling_of_it_shares_the_lock(ease_run, tmp_path,
                                                                                               monkeypatch):
    """The lock is in the folder, so every path that reaches it (another spelling, a symbolic
    link, a mount) reaches the one lock; the refused train creates and leaves nothing."""
    from sparcode import training

    data, _ = ease_run
    run = tmp_path / "runs" / "new"
    run.mkdir(parents=True)
    (tmp_path / "link").symlink_to(run)
    monkeypatch.setattr(training, "load_dataset", lambda *a, **k: pytest.fail("the dataset was read"))
    with Holder(run / training.TRAIN_LOCK) as other:
        for spelling in (run, tmp_path / "runs" / "." / "new", tmp_path / "link"):
            one_line_error(invoke("train", "--model", "ease", "--dataset", data, "--out", spelling, "--quiet"),
                           f"{spelling} is being trained by process {other.pid}")
        assert [p.name for p in run.iterdir()] == [training.TRAIN_LOCK]  # the holder's alone


def test_a_refused_or_failed_fresh_train_leaves_no_folder_it_made(ease_run, tmp_path):
    """The lock makes a fresh run's folder (and its missing parents) before the checks; a train
    that ends before anything is trained removes them again."""
    data, _ = ease_run
    run = tmp_path / "deep" / "er" / "run"
    one_line_error(invoke("train", "--model", "ease", "--dataset", tmp_path / "missing.txt", "--out", run))
    assert list(tmp_path.iterdir()) == []
    (tmp_path / "bad.json").write_text('{"model": {"no_such_key": 1}}')
    one_line_error(invoke("train", "--model", "ease", "--dataset", data, "--out", run, "--config", tmp_path / "bad.json"))
    assert [p.name for p in tmp_path.iterdir()] == ["bad.json"]


def test_a_resume_is_refused_naming_the_process_before_the_runs_config_is_read(ease_run, tmp_path):
    import shutil

    from sparcode import training

    data, trained = ease_run
    run = tmp_path / "run"
    shutil.copytree(trained, run)
    (tmp_path / "other.json").write_text('{"model": {"ease_lambda": 3.0}}')
    with Holder(run / training.TRAIN_LOCK) as other:
        one_line_error(invoke("train", "--out", run, "--resume", "--config", tmp_path / "other.json"),
                       f"{run} is being trained by process {other.pid}")


@pytest.mark.parametrize("folder", ["made by the train", "the user's, with a killed train's lock file"])
def test_a_failed_fresh_run_leaves_only_what_was_there_before(ease_run, tmp_path, monkeypatch, folder):
    from sparcode import training

    data, _ = ease_run
    run = tmp_path / "runs" / "run"
    if folder != "made by the train":
        run.mkdir(parents=True)
        (run / training.TRAIN_LOCK).write_text("12345")  # its holder was killed: no process holds it

    def diverge(run_dir, cfg, *args, **kwargs):
        cfg.save(run_dir / "config.json")
        raise RuntimeError("loss is NaN")

    monkeypatch.setattr(training, "_fit", diverge)
    with pytest.raises(RuntimeError, match="NaN"):
        training.train_run(run, training.RunConfig.from_dict({"dataset": str(data), "split": "leave-one-out",
                                                              "model": {"kind": "ease"}}), progress=False)
    if folder == "made by the train":
        assert list(tmp_path.iterdir()) == []
    else:
        assert list(run.iterdir()) == []  # the user's folder stays, emptied of the failed run


def test_the_lock_file_outlives_a_failed_runs_files_until_the_lock_is_let_go(tmp_path):
    """A failed fresh train clears its files but not the lock file it holds: deleting that would
    let a second train lock a new file in the same folder while the first still holds the old."""
    from sparcode import training
    from sparcode.encoder.runs import RunError

    run = tmp_path / "run"
    with training.RunLock(run) as first:
        first.hold()
        (run / "config.json").write_text("{}")
        training._clear(run)
        with pytest.raises(RunError, match="is being trained by process"):
            training.RunLock(run).hold()  # another open of the file is another holder to flock
    with training.RunLock(run) as second:
        second.hold()


def test_a_tiger_run_folder_holding_its_semantic_ids_may_be_trained(tmp_path):
    from sparcode.commands.train import _check_out
    from sparcode.training import TRAIN_LOCK, RunLock

    run = tmp_path / "run"
    (run / "tiger").mkdir(parents=True)
    with RunLock(run) as lock:
        lock.hold()
        assert (run / TRAIN_LOCK).exists()
        _check_out(run, False, "tiger")  # no refusal: the lock file is no content


def test_a_folder_of_another_program_gets_no_lock_file(ease_run, tmp_path):
    data, _ = ease_run
    notes = tmp_path / "notes"
    notes.mkdir()
    (notes / "notes.txt").write_text("mine")
    one_line_error(invoke("train", "--model", "ease", "--dataset", data, "--out", notes), "holds no sparcode run")
    assert sorted(p.name for p in notes.iterdir()) == ["notes.txt"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["notes"]


# -- es stop|start --------------------------------------------------------------------------------
@pytest.fixture
def es_home(tmp_path, monkeypatch):
    from sparcode.pipeline.local_node import ELASTICSEARCH, LocalNode

    home = tmp_path / "node"
    (home / "run").mkdir(parents=True)
    monkeypatch.setenv("SPARCODE_ES_HOME", str(home))
    monkeypatch.setattr(LocalNode, "_launch", lambda self: pytest.fail("a node was launched"))
    return home, LocalNode(ELASTICSEARCH, home)


def test_es_stop_during_a_start_is_refused_and_leaves_its_node_running(es_home):
    home, node = es_home
    # The start's process stands in for its node too: its command line names the distribution.
    with Holder(home / "start.lock", "PID start", f"-Des.path.home={node.dist_dir.resolve()}") as start:
        node.pid_file.write_text(str(start.pid))
        assert node.running_pid() == start.pid
        result = run_cli("es", "stop")
        one_line_error(result, f"a start of elasticsearch from {home} is in progress (pid {start.pid})",
                       "then run `sparcode es stop` again")
        assert start.proc.poll() is None and node.pid_file.read_text() == str(start.pid)
    assert run_cli("es", "stop").output.strip() == "not running"  # once the start is over


def test_es_start_during_a_stop_names_the_stop(es_home):
    home, _ = es_home
    with Holder(home / "start.lock", "PID stop") as stop:
        one_line_error(run_cli("es", "start", "--port", "9399"),
                       f"a stop of elasticsearch from {home} is in progress (pid {stop.pid})",
                       "then run `sparcode es start` again")


def test_a_start_lock_file_from_before_actions_still_names_a_start(es_home):
    home, _ = es_home
    with Holder(home / "start.lock") as start:
        one_line_error(run_cli("es", "start", "--port", "9399"),
                       f"a start of elasticsearch from {home} is in progress (pid {start.pid}); "
                       "wait for it to finish, then check with `sparcode es status`")


def test_es_stop_of_a_home_never_started_makes_no_folder(tmp_path, monkeypatch):
    monkeypatch.setenv("SPARCODE_ES_HOME", str(tmp_path / "node"))
    assert run_cli("es", "stop").output.strip() == "not running"
    assert not (tmp_path / "node").exists()


# -- --heap ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("heap", ["512k", "1m", "255m"])
def test_a_heap_too_small_for_a_node_is_refused_naming_the_minimum(tmp_path, monkeypatch, heap):
    from sparcode.pipeline.local_node import ELASTICSEARCH, LocalNode, LocalNodeError

    monkeypatch.setattr(LocalNode, "_launch", lambda self: pytest.fail("a node was launched"))
    monkeypatch.setenv("SPARCODE_ES_HOME", str(tmp_path / "node"))
    result = run_cli("es", "start", "--port", "9399", "--heap", heap)
    assert result.exit_code == 2, result.output
    errors = [line for line in result.output.splitlines() if line.startswith("Error:")]
    assert errors == [f"Error: Invalid value for '--heap': {heap!r} is below 256m, the least heap sparcode starts a "
                      "node with"], result.output
    with pytest.raises(LocalNodeError, match="below 256m"):
        LocalNode(ELASTICSEARCH, tmp_path / "node", port=9399, heap=heap).start()
    assert not (tmp_path / "node").exists()


def test_the_least_heap_passes_the_check():
    from sparcode.pipeline.local_node import MIN_HEAP, check_heap

    for heap in (MIN_HEAP, "1g", "262144k"):
        check_heap(heap)


# -- sparcode.locks --------------------------------------------------------------------------------
def test_a_lock_file_removed_by_its_holder_while_a_second_process_opened_it_is_locked_anew(tmp_path, monkeypatch):
    """The second process opened the file, then its holder removed it on letting go: the second
    one's flock succeeds on a file no longer there, which would exclude no one who comes next."""
    from sparcode import locks

    path = tmp_path / "work.lock"
    real_flock = locks.fcntl.flock
    calls = []

    def flock_after_removal(fh, how):
        calls.append(how)
        if len(calls) == 1:
            path.unlink()  # the holder's removal, between our open and our flock
        return real_flock(fh, how)

    monkeypatch.setattr(locks.fcntl, "flock", flock_after_removal)
    with locks.exclusive(path, "train", remove=True):
        assert locked_by_another_process(path)
        assert path.read_text() == f"{os.getpid()} train"
    assert len(calls) == 2 and not path.exists()
    with Holder(path, "PID train") as other, pytest.raises(locks.LockHeld) as held:
        with locks.exclusive(path):
            pass
    assert (held.value.pid, held.value.action) == (other.pid, "train")


@pytest.mark.parametrize("out", [None, "a finished run"])
def test_ctrl_c_before_training_starts_is_click_abort_not_a_claim_about_epochs(ease_run, tmp_path, monkeypatch, out):
    from sparcode import presets

    data, trained = ease_run

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(presets, "run_config", interrupted)
    args = ["--show-config"] if out is None else ["--out", trained]
    result = invoke("train", "--model", "ease", "--dataset", data, *args)
    assert result.exit_code == 1 and result.output.strip() == "Aborted!", result.output
    assert not isinstance(result.exception, AttributeError)
