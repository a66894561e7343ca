"""A staged directory replaces its target only when the writer finishes."""
import pytest

from sparcode.staging import staged_directory


def test_success_replaces_the_old_directory_and_leaves_no_temporary(tmp_path):
    target = tmp_path / "export"
    target.mkdir()
    (target / "old.txt").write_text("old")
    with staged_directory(target) as tmp:
        (tmp / "new.txt").write_text("new")
        assert not (target / "new.txt").exists()  # nothing visible until the end
    assert sorted(p.name for p in target.iterdir()) == ["new.txt"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["export"]


def test_failure_keeps_the_old_directory_and_removes_the_partial_one(tmp_path):
    target = tmp_path / "export"
    target.mkdir()
    (target / "old.txt").write_text("old")
    with pytest.raises(RuntimeError):
        with staged_directory(target) as tmp:
            (tmp / "half.txt").write_text("half")
            raise RuntimeError("interrupted")
    assert sorted(p.name for p in target.iterdir()) == ["old.txt"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["export"]


def test_without_replace_the_caller_moves_what_it_keeps(tmp_path):
    target = tmp_path / "shards"
    with staged_directory(target, replace=False) as tmp:
        (tmp / "part-0").write_text("p")
        target.mkdir()
        (tmp / "part-0").replace(target / "part-0")
        (tmp / "scratch").write_text("s")
    assert sorted(p.name for p in target.iterdir()) == ["part-0"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["shards"]
