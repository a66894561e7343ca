"""An export without --force never replaces an export that reached --out while it ran.

Its start check found no export there; another `sparcode export` into the same folder may finish
during the minutes of scoring, or in the instant between the last check and the rename. Either
way the later export is refused in one line, the other stays byte for byte, and no staging
folder is left. With --force the arrival is replaced, as an export found at the start would be.
"""
import contextlib
import shutil

import pytest

import sparcode.encoder.export as export_module
import sparcode.encoder.vector_export as vector_module
import sparcode.generative.sid_export as sid_module
import sparcode.staging as staging
from sparcode.staging import OccupiedTarget, is_export, staged_directory
from test_export_input_errors import invoke, listing, one_line_error, trained  # noqa: F401  (module fixture)
from test_tiger_sid_es import toy_run

RECEIVED = "received an export while this one ran"


def leftovers(out):
    return sorted(p.name for p in out.parent.glob(f".{out.name}.*"))


def arriving_during(module, name, other, out, monkeypatch):
    """Make `module.name`, a step between the start check and the swap, first copy `other` to `out`."""
    step = getattr(module, name)

    def another_export_finishes(*args, **kwargs):
        if not out.exists():
            shutil.copytree(other, out)
        return step(*args, **kwargs)

    monkeypatch.setattr(module, name, another_export_finishes)


def arriving_at_the_rename(other, out, monkeypatch):
    """Copy `other` to `out` (None: make it an empty folder) right after the last check before the
    swap (the one without `protect`, made once the staged export is complete), so only the rename
    itself can notice it."""
    check = staging.check_replaceable

    def another_export_finishes(target, marker=None, **kwargs):
        check(target, marker, **kwargs)
        staged = any((p / "manifest.json").is_file() for p in out.parent.glob(f".{out.name}.staging+*"))
        if kwargs or not staged or out.exists():
            return
        if other is None:
            out.mkdir()
        else:
            shutil.copytree(other, out)

    monkeypatch.setattr(staging, "check_replaceable", another_export_finishes)


def arriving(when: str, other, out, monkeypatch):
    if when == "while scoring":
        arriving_during(export_module, "item_lines", other, out, monkeypatch)
    else:
        arriving_at_the_rename(other, out, monkeypatch)


@pytest.mark.parametrize("arrive", ["while scoring", "at the rename"])
def test_an_export_arriving_meanwhile_is_kept_and_this_one_refused(trained, tmp_path, monkeypatch, arrive):
    _, run, other = trained
    out = tmp_path / "E"
    arriving(arrive, other, out, monkeypatch)
    line = one_line_error(invoke("export", run, "--out", out, "--quiet"), RECEIVED, "nothing was replaced", "--force")
    assert str(out) in line
    assert listing(out) == listing(other)
    assert leftovers(out) == []


def test_an_export_filling_the_folder_just_before_the_rename_is_a_one_line_refusal(trained, tmp_path, monkeypatch):
    """The last instant: --out is made room for (an empty folder removed, or nothing there) and
    then filled before the rename, which fails with ENOTEMPTY: a refusal, not a traceback."""
    import pathlib

    _, run, other = trained
    out = tmp_path / "E"
    remove = pathlib.Path.rmdir

    def then_another_export_finishes(self):
        if self == out:
            with contextlib.suppress(FileNotFoundError):
                remove(self)
            shutil.copytree(other, out)
        else:
            remove(self)

    monkeypatch.setattr(pathlib.Path, "rmdir", then_another_export_finishes)
    out.mkdir()  # an empty --out, removed and refilled at the swap
    one_line_error(invoke("export", run, "--out", out, "--quiet"), RECEIVED, "nothing was replaced")
    assert listing(out) == listing(other)
    assert leftovers(out) == []


@pytest.mark.parametrize("arrive", ["while scoring", "at the rename"])
def test_with_force_an_export_arriving_meanwhile_is_replaced(trained, tmp_path, monkeypatch, arrive):
    _, run, other = trained
    out = tmp_path / "E"
    arriving(arrive, other, out, monkeypatch)
    result = invoke("export", run, "--out", out, "--quiet", "--force")
    assert result.exit_code == 0, result.output
    assert is_export(out) and listing(out) != listing(other)  # its own, newly created manifest
    assert leftovers(out) == []


def test_an_empty_folder_made_at_the_rename_is_simply_filled(trained, tmp_path, monkeypatch):
    _, run, _ = trained
    out = tmp_path / "E"
    arriving_at_the_rename(None, out, monkeypatch)
    result = invoke("export", run, "--out", out, "--quiet")
    assert result.exit_code == 0, result.output
    assert is_export(out) and leftovers(out) == []


@pytest.fixture(scope="module")
def two_tower(trained):
    root, _, _ = trained
    run = root / "run-two-tower"
    result = invoke("train", "--model", "two-tower", "--dataset", root / "sequences.txt", "--split", "leave-one-out",
                    "--out", run, "--config", root / "tiny.json", "--quiet")
    assert result.exit_code == 0, result.output
    return run


def test_a_vector_export_never_replaces_an_export_arriving_meanwhile(trained, two_tower, tmp_path, monkeypatch):
    _, _, other = trained
    out = tmp_path / "E"
    arriving_during(vector_module, "item_vectors", other, out, monkeypatch)
    one_line_error(invoke("export", two_tower, "--out", out, "--quiet"), RECEIVED, "nothing was replaced")
    assert listing(out) == listing(other)
    assert leftovers(out) == []


def test_a_semantic_id_export_never_replaces_an_export_arriving_meanwhile(trained, tmp_path, monkeypatch):
    _, _, other = trained
    dataset, _, _ = toy_run(tmp_path / "run")
    out = tmp_path / "E"
    arriving_during(sid_module, "item_lines", other, out, monkeypatch)
    with pytest.raises(OccupiedTarget, match=RECEIVED):
        sid_module.export_semantic_ids(tmp_path / "run", dataset, out, {"model": "tiger"})
    assert listing(out) == listing(other)
    assert leftovers(out) == []


def test_outputs_other_than_exports_still_replace_what_arrives_at_the_rename(trained, tmp_path, monkeypatch):
    """Without a caller's check (hnsw, bench), an earlier output arriving at the rename is
    replaced as one found at the start would be, not left to a traceback."""
    _, _, other = trained
    out = tmp_path / "E"
    arriving_at_the_rename(other, out, monkeypatch)
    with staged_directory(out, marker="manifest.json") as tmp:
        (tmp / "manifest.json").write_text("{}")
    assert (out / "manifest.json").read_text() == "{}" and leftovers(out) == []



def test_the_same_run_exported_again_keeps_its_content_digest_and_another_setting_changes_it(trained, tmp_path):
    """An index built from an export serves the export made again into that folder (`--force`,
    same run and settings): the index's `_meta` and the new manifest agree on `content`, though
    their `created` differ; another stored fraction is another export."""
    from sparcode.pipeline.export import Export, same_export

    _, run, _ = trained
    first, again, other = tmp_path / "first", tmp_path / "again", tmp_path / "other"
    for out, extra in ((first, ()), (again, ()), (other, ("--stored-fraction", "0.5"))):
        result = invoke("export", run, "--out", out, "--quiet", *extra)
        assert result.exit_code == 0, result.output
    a, b, c = (Export.open(p).summary() for p in (first, again, other))
    assert a["content"].startswith("sha256:") and a["content"] == b["content"] != c["content"]
    assert same_export(a, {**b, "created": "another time"}) and not same_export(a, c)
