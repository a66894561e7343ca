"""A staged directory replaces its target only when the writer finishes."""
import pytest

from sparcode.staging import OccupiedTarget, staged_directory


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
