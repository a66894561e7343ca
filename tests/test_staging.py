"""A staged directory replaces its target only when the writer finishes."""
import os
import stat

import pytest

from sparcode.staging import (OccupiedTarget, atomic_write_bytes, check_replaceable, is_export, staged_directory,
                              staged_file, write_then_rename)


def test_success_replaces_the_old_directory_and_leaves_no_temporary(tmp_path):
    target = tmp_path / "export"
    target.mkdir()
    (target / "manifest.json").write_text("{}")
    with staged_directory(target, marker="manifest.json") as tmp:
        (tmp / "new.txt").write_text("new")
        assert not (target / "new.txt").exists()  # nothing visible until the end
    assert sorted(p.name for p in target.iterdir()) == ["new.txt"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["export"]


def test_failure_keeps_the_old_directory_and_removes_the_partial_one(tmp_path):
    target = tmp_path / "export"
    target.mkdir()
    (target / "manifest.json").write_text("{}")
    with pytest.raises(RuntimeError):
        with staged_directory(target, marker="manifest.json") as tmp:
            (tmp / "half.txt").write_text("half")
            raise RuntimeError("interrupted")
    assert sorted(p.name for p in target.iterdir()) == ["manifest.json"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["export"]


def test_without_replace_the_caller_moves_what_it_keeps(tmp_path):
    target = tmp_path / "shards"
    with staged_directory(target, marker="manifest.json", replace=False) as tmp:
        (tmp / "part-0").write_text("p")
        target.mkdir()
        (tmp / "part-0").replace(target / "part-0")
        (tmp / "scratch").write_text("s")
    assert sorted(p.name for p in target.iterdir()) == ["part-0"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["shards"]


@pytest.mark.parametrize("occupant", ["notes.txt", "weights.pt"])
def test_a_folder_that_is_not_an_earlier_output_is_never_replaced(tmp_path, occupant):
    target = tmp_path / "out"
    target.mkdir()
    (target / occupant).write_text("the user's")
    with pytest.raises(OccupiedTarget, match="nothing was deleted"):
        with staged_directory(target, marker="manifest.json") as tmp:
            (tmp / "new.txt").write_text("new")
    assert (target / occupant).read_text() == "the user's"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


def test_a_file_or_an_empty_folder(tmp_path):
    (tmp_path / "file").write_text("x")
    with pytest.raises(OccupiedTarget, match="is a file"):
        with staged_directory(tmp_path / "file", marker="manifest.json"):
            pass
    (tmp_path / "empty").mkdir()
    with staged_directory(tmp_path / "empty", marker="manifest.json") as tmp:
        (tmp / "manifest.json").write_text("{}")
    assert (tmp_path / "empty" / "manifest.json").exists()


def test_a_symbolic_link_is_never_replaced(tmp_path):
    real = tmp_path / "real"
    real.mkdir()
    (real / "manifest.json").write_text("{}")
    (tmp_path / "link").symlink_to(real)
    with pytest.raises(OccupiedTarget, match="symbolic link"):
        with staged_directory(tmp_path / "link", marker="manifest.json"):
            pass
    assert (tmp_path / "link").is_symlink() and (real / "manifest.json").exists()


def test_the_target_is_checked_again_before_the_swap(tmp_path):
    """Someone's files appearing in the target while the output is written are not deleted."""
    target = tmp_path / "out"
    with pytest.raises(OccupiedTarget, match="nothing was deleted"):
        with staged_directory(target, marker="manifest.json") as tmp:
            (tmp / "manifest.json").write_text("{}")
            target.mkdir()
            (target / "notes.txt").write_text("the user's")
    assert sorted(p.name for p in target.iterdir()) == ["notes.txt"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


def test_a_failed_swap_puts_the_old_output_back(tmp_path, monkeypatch):
    from pathlib import Path

    target = tmp_path / "export"
    target.mkdir()
    (target / "manifest.json").write_text("old")
    real_rename = Path.rename

    def rename(self, dest):
        if self.name.startswith(".export.") and not self.name.startswith(".export.old.") and Path(dest) == target:
            raise OSError("disk trouble")
        return real_rename(self, dest)

    monkeypatch.setattr(Path, "rename", rename)
    with pytest.raises(OSError, match="disk trouble"):
        with staged_directory(target, marker="manifest.json") as tmp:
            (tmp / "manifest.json").write_text("new")
    assert (target / "manifest.json").read_text() == "old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["export"]


def test_check_replaceable_protects_the_folders_it_is_given(tmp_path):
    run = tmp_path / "runs" / "r1"
    run.mkdir(parents=True)
    (run / "weights.pt").write_text("w")
    for target in (run, tmp_path / "runs", tmp_path):
        with pytest.raises(OccupiedTarget, match="the run being exported.*nothing was deleted"):
            check_replaceable(target, "manifest.json", protect=[run], protected="the run being exported")
    check_replaceable(run / "export", "manifest.json", protect=[run])  # inside the run is fine
    check_replaceable(tmp_path / "elsewhere", "manifest.json", protect=[run])


def test_an_export_is_recognised_by_its_manifest_format(tmp_path):
    (tmp_path / "export").mkdir()
    (tmp_path / "export" / "manifest.json").write_text('{"format": "sparcode-export/1"}')
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "manifest.json").write_text('{"name": "a web app"}')
    (tmp_path / "broken").mkdir()
    (tmp_path / "broken" / "manifest.json").write_text("{")
    assert is_export(tmp_path / "export")
    assert not is_export(tmp_path / "other") and not is_export(tmp_path / "broken")
    with pytest.raises(OccupiedTarget, match="is not an export"):
        check_replaceable(tmp_path / "other", is_export)
    check_replaceable(tmp_path / "export", is_export)


@pytest.mark.parametrize("umask", [0o022, 0o077, 0o002])
def test_staged_outputs_get_the_modes_plain_writes_would(tmp_path, umask):
    """tempfile makes private files and folders; renamed into place, they locked other accounts
    out of exports that a plain mkdir/open would have let them read."""
    old = os.umask(umask)
    try:
        with staged_directory(tmp_path / "export") as tmp:
            (tmp / "manifest.json").write_text("{}")
        with staged_file(tmp_path / "file.txt") as fh:
            fh.write("x")
        atomic_write_bytes(tmp_path / "run.json", b"{}")
    finally:
        os.umask(old)
    mode = lambda path: stat.S_IMODE(path.stat().st_mode)  # noqa: E731
    assert mode(tmp_path / "export") == 0o777 & ~umask
    for path in (tmp_path / "export" / "manifest.json", tmp_path / "file.txt", tmp_path / "run.json"):
        assert mode(path) == 0o666 & ~umask, path


def test_a_failed_write_leaves_neither_the_file_nor_a_temporary(tmp_path):
    def disk_full(tmp):
        with open(tmp, "wb") as fh:
            fh.write(b"half")
        raise OSError(28, "No space left on device")

    with pytest.raises(OSError, match="No space"):
        write_then_rename(tmp_path / "weights.pt", disk_full)
    assert list(tmp_path.iterdir()) == []


def test_a_staging_folder_left_by_a_killed_build_is_removed_by_the_next(tmp_path, capsys):
    import signal
    import subprocess
    import sys

    target = tmp_path / "export"
    # A real build killed outright mid-write: its staging folder survives it.
    script = ("import os, sys, time; from pathlib import Path; from sparcode.staging import staged_directory\n"
              "with staged_directory(Path(sys.argv[1])) as tmp:\n"
              "    (tmp / 'codes.bin').write_bytes(b'x' * 1000); print(tmp, flush=True); time.sleep(60)\n")
    build = subprocess.Popen([sys.executable, "-c", script, str(target)], stdout=subprocess.PIPE, text=True)
    abandoned = build.stdout.readline().strip()
    # A build still running keeps its folder, whoever stages next.
    with staged_directory(tmp_path / "export", replace=False):
        pass
    assert os.path.isdir(abandoned)
    build.send_signal(signal.SIGKILL)
    build.wait()
    assert os.path.isdir(abandoned)

    with staged_directory(target) as tmp:
        (tmp / "manifest.json").write_text("{}")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["export"]
    assert f"removed {abandoned}, left by an interrupted build (process {build.pid} is gone)" in capsys.readouterr().err


def test_a_staging_folder_of_another_machine_is_never_removed(tmp_path):
    """Shards of one export may run on several machines sharing the folder: a pid from another
    host says nothing about whether its build is alive here."""
    import socket

    target = tmp_path / "export"
    # 2**22 + 1 is above Linux's largest pid, so no process here has it.
    elsewhere = tmp_path / f".export.staging+{socket.gethostname()}x+{2 ** 22 + 1}+abc"
    here = tmp_path / f".export.staging+{socket.gethostname()}+{2 ** 22 + 1}+abc"
    elsewhere.mkdir()
    here.mkdir()
    with staged_directory(target) as tmp:
        (tmp / "manifest.json").write_text("{}")
    assert elsewhere.is_dir() and not here.exists()


def test_sigterm_during_a_staged_build_cleans_up_as_ctrl_c_does(tmp_path):
    """Schedulers and systemd stop a command with SIGTERM; unhandled it skips every cleanup
    and leaves the hidden staging folder (export and index run under this guard)."""
    import signal

    from sparcode.commands._common import terminate_as_interrupt

    target = tmp_path / "export"
    with pytest.raises(KeyboardInterrupt):
        with terminate_as_interrupt(), staged_directory(target) as tmp:
            (tmp / "codes.bin").write_bytes(b"x")
            os.kill(os.getpid(), signal.SIGTERM)
    assert list(tmp_path.iterdir()) == []
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL  # restored for whatever runs next
