"""`sparcode export` fixes: sharded exports beside other exports, their merged manifest, the
per-code stored-fraction ceiling, and the runs and options export refuses (no search node needed)."""
import json

import pytest

from sparcode.pipeline.export import Export
from test_export_input_errors import invoke, one_line_error, trained  # noqa: F401  (module fixture)


def manifest(folder):
    return json.loads((folder / "manifest.json").read_text())


def last_export(run):
    return json.loads((run / "last_export.json").read_text())["path"]


def test_a_shard_into_a_complete_export_needs_force_and_then_replaces_it(trained, tmp_path):
    _, run, _ = trained
    folder = tmp_path / "ex"
    assert invoke("export", run, "--out", folder, "--quiet").exit_code == 0
    before = sorted(p.name for p in folder.iterdir())
    one_line_error(invoke("export", run, "--out", folder, "--shard", "0/2", "--quiet"), "already holds", "--force")
    assert sorted(p.name for p in folder.iterdir()) == before
    assert invoke("export", run, "--out", folder, "--shard", "0/2", "--quiet", "--force").exit_code == 0
    # The old export's files went with it: no manifest describing the parts wrongly, no stale items.
    assert not (folder / "manifest.json").exists() and not (folder / "items.jsonl.gz").exists()
    assert invoke("export", run, "--out", folder, "--shard", "1/2", "--quiet").exit_code == 0
    assert not (folder / "items.jsonl.gz").exists()
    assert Export.open(folder).validate() == 40


def test_a_merged_manifest_reports_what_one_unsharded_export_would(trained, tmp_path):
    _, run, export = trained
    folder = tmp_path / "sharded"
    for shard in ("1/2", "0/2"):
        assert invoke("export", run, "--out", folder, "--shard", shard, "--quiet").exit_code == 0
    merged, whole = manifest(folder), manifest(export)
    assert merged["pairs"] == whole["pairs"]
    assert merged["postings_per_code"] == whole["postings_per_code"]
    parts = [json.loads(p.read_text()) for p in sorted(folder.glob("items.part-*.manifest.json"))]
    assert merged["export_seconds"] == pytest.approx(sum(p["export_seconds"] for p in parts), abs=0.011)
    assert [s["shard"] for s in merged["shard_exports"]] == [0, 1]


def test_a_complete_sharded_export_resharded_with_force_keeps_no_merged_manifest(trained, tmp_path):
    _, run, _ = trained
    folder = tmp_path / "sharded"
    for shard in ("0/2", "1/2"):
        assert invoke("export", run, "--out", folder, "--shard", shard, "--quiet").exit_code == 0
    one_line_error(invoke("export", run, "--out", folder, "--shard", "0/3", "--quiet"), "2 shards")
    assert invoke("export", run, "--out", folder, "--shard", "0/3", "--quiet", "--force").exit_code == 0
    # The 2-part manifest listed files --force deleted: left behind, the folder read as a broken export.
    assert not (folder / "manifest.json").exists() and not (folder / "codes.npz").exists()
    for shard in ("1/3", "2/3"):
        assert invoke("export", run, "--out", folder, "--shard", shard, "--quiet").exit_code == 0
    assert len(manifest(folder)["files"]["items"]) == 3 and Export.open(folder).validate() == 40


def test_an_unfinished_sharded_export_is_not_the_runs_last_export(trained, tmp_path):
    _, run, export = trained
    assert invoke("export", run, "--out", export, "--quiet", "--force").exit_code == 0
    folder = tmp_path / "half"
    result = invoke("export", run, "--out", folder, "--shard", "1/3", "--quiet")
    assert result.exit_code == 0, result.output
    assert "2 of 3 shards still missing (0/3, 2/3)" in result.output
    assert last_export(run) == str(export.resolve())
    for shard in ("0/3", "2/3"):
        result = invoke("export", run, "--out", folder, "--shard", shard, "--quiet")
    assert "still missing" not in result.output
    assert last_export(run) == str(folder.resolve())


def test_force_replaces_an_unfinished_sharded_export(trained, tmp_path):
    _, run, _ = trained
    folder = tmp_path / "half"
    assert invoke("export", run, "--out", folder, "--shard", "0/2", "--quiet").exit_code == 0
    before = sorted(p.name for p in folder.iterdir())
    one_line_error(invoke("export", run, "--out", folder, "--quiet"), "unfinished sharded export", "--force")
    assert sorted(p.name for p in folder.iterdir()) == before
    assert invoke("export", run, "--out", folder, "--quiet", "--force").exit_code == 0
    assert sorted(p.name for p in folder.iterdir()) == ["codes.npz", "items.jsonl.gz", "manifest.json"]


def test_a_per_code_stored_fraction_beyond_what_it_can_store_is_refused(trained, tmp_path):
    _, run, _ = trained
    one_line_error(invoke("export", run, "--out", tmp_path / "f8", "--stored-fraction", "0.8", "--quiet"),
                   "per-code allocation stores at most about 0.5", "--allocation global")
    assert not (tmp_path / "f8").exists()
    assert invoke("export", run, "--out", tmp_path / "g8", "--stored-fraction", "0.8", "--allocation", "global",
                  "--quiet").exit_code == 0
    assert manifest(tmp_path / "g8")["stored_fraction"] > 0.7


@pytest.fixture(scope="module")
def other_runs(trained):
    root, _, _ = trained
    runs = {}
    for kind in ("ease", "two-tower"):
        runs[kind] = root / f"run-{kind}"
        result = invoke("train", "--model", kind, "--dataset", root / "sequences.txt", "--split", "leave-one-out",
                        "--out", runs[kind], "--config", root / "tiny.json", "--quiet")
        assert result.exit_code == 0, result.output
    return runs


def test_an_ease_run_is_refused_saying_which_runs_export(other_runs, tmp_path):
    line = one_line_error(invoke("export", other_runs["ease"], "--out", tmp_path / "e"),
                          "only sparcode, two-tower and tiger runs can be exported", "sparcode evaluate")
    assert "export writes SparCode codes" not in line and not (tmp_path / "e").exists()


def test_allocation_is_refused_for_a_two_tower_export(other_runs, tmp_path):
    one_line_error(invoke("export", other_runs["two-tower"], "--out", tmp_path / "t", "--allocation", "global"),
                   "--allocation", "two-tower run")
    assert not (tmp_path / "t").exists()


def test_a_run_retrained_while_it_is_exported_is_refused_not_mislabelled(trained, tmp_path, monkeypatch):
    """`train --resume` may rewrite a finished run while `export` scores it: the manifest's
    fingerprint would then name files other than those scored (or no model at all)."""
    import shutil

    import sparcode.encoder.export as export_module

    _, run, _ = trained
    copy = tmp_path / "run"
    shutil.copytree(run, copy)
    scored = export_module.build_postings

    def retrained_meanwhile(*args, **kwargs):
        postings = scored(*args, **kwargs)
        (copy / "config.json").write_text((copy / "config.json").read_text() + "\n")  # as a resume rewrites it
        return postings

    monkeypatch.setattr(export_module, "build_postings", retrained_meanwhile)
    out = tmp_path / "export"
    recorded = (copy / "last_export.json").read_bytes() if (copy / "last_export.json").exists() else None
    message = one_line_error(invoke("export", copy, "--out", out))
    assert "changed while it was exported" in message and "nothing was written" in message
    assert not out.exists()
    assert ((copy / "last_export.json").read_bytes() if (copy / "last_export.json").exists() else None) == recorded
