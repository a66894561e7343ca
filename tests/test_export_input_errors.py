"""`sparcode export` and the export reader against inputs a user can get wrong.

Each refusal is one line and a non-zero exit, and nothing is deleted or half-written:
--out on the run itself or on a folder of the user's own files, a non-finite or score-swamping
--bias, and an export whose files are truncated, corrupt or missing.
"""
import gzip
import json

import numpy as np
import pytest
from click.testing import CliRunner

from sparcode.cli import main
from sparcode.pipeline.export import Export, ExportError

TINY = {
    "model": {"dim": 16, "codebooks": 2, "codes": 8, "user_tokens": 2, "scorer_hidden": 8, "tokenizer": "dnn",
              "kmeans_iters": 3},
    "train": {"epochs": 1, "batch_size": 64, "negatives": 16, "patience": 5, "max_history": 5, "threads": 1},
    "serve": {"stored_fraction": 0.3},
}


def invoke(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


def one_line_error(result, *fragments):
    assert result.exit_code == 1, result.output
    assert "Traceback" not in result.output and "Aborted!" not in result.output, result.output
    errors = [line for line in result.output.splitlines() if line.startswith("Error: ")]
    assert len(errors) == 1, result.output
    for fragment in fragments:
        assert fragment in errors[0], result.output
    return errors[0]


def listing(folder):
    return sorted((p.relative_to(folder).as_posix(), p.read_bytes() if p.is_file() else None)
                  for p in folder.rglob("*"))


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    root = tmp_path_factory.mktemp("inputs")
    rng = np.random.default_rng(0)
    lines = [f"u{u} " + " ".join(f"i{i}" for i in rng.choice(np.arange((u % 4) * 10, (u % 4) * 10 + 10), 8,
                                                                 replace=False)) for u in range(80)]
    (root / "sequences.txt").write_text("\n".join(lines) + "\n")
    (root / "tiny.json").write_text(json.dumps(TINY))
    run = root / "run"
    result = invoke("train", "--model", "sparcode", "--dataset", root / "sequences.txt", "--split",
                    "leave-one-out", "--out", run, "--config", root / "tiny.json", "--quiet")
    assert result.exit_code == 0, result.output
    export = root / "export"
    result = invoke("export", run, "--out", export, "--quiet")
    assert result.exit_code == 0, result.output
    return root, run, export


# --- --out never deletes what is not an export ---------------------------------------------------

@pytest.mark.parametrize("force", [[], ["--force"]])
def test_export_onto_the_run_itself_is_refused_and_the_run_survives(trained, force):
    root, run, _ = trained
    before = listing(run)
    one_line_error(invoke("export", run, "--out", run, "--quiet", *force), "nothing was deleted")
    assert listing(run) == before
    assert not [p for p in root.iterdir() if p.name.startswith(".run.")]  # no staging leftovers


def test_export_onto_a_folder_containing_the_run_is_refused(trained):
    root, run, _ = trained
    before = listing(run)
    one_line_error(invoke("export", run, "--out", root, "--force", "--quiet"), "nothing was deleted")
    assert listing(run) == before


@pytest.mark.parametrize("force", [[], ["--force"]])
@pytest.mark.parametrize("shard", [[], ["--shard", "0/2"]])
def test_export_onto_a_folder_of_user_files_is_refused_and_they_survive(trained, tmp_path, force, shard):
    _, run, _ = trained
    victim = tmp_path / "victim"
    victim.mkdir()
    (victim / "notes.txt").write_text("mine")
    one_line_error(invoke("export", run, "--out", victim, "--quiet", *force, *shard),
                   "is not", "notes.txt", "nothing was deleted")
    assert listing(victim) == [("notes.txt", b"mine")]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["victim"]


def test_a_manifest_json_that_is_not_an_export_does_not_make_a_folder_replaceable(trained, tmp_path):
    _, run, _ = trained
    other = tmp_path / "webapp"
    other.mkdir()
    (other / "manifest.json").write_text('{"name": "my web app"}')
    (other / "index.html").write_text("<html/>")
    one_line_error(invoke("export", run, "--out", other, "--force", "--quiet"), "nothing was deleted")
    assert sorted(p.name for p in other.iterdir()) == ["index.html", "manifest.json"]


def test_export_onto_a_file_is_refused(trained, tmp_path):
    _, run, _ = trained
    (tmp_path / "afile").write_text("keep")
    result = invoke("export", run, "--out", tmp_path / "afile", "--quiet")
    # The refusal is click's own check of --out (file_okay=False), hence exit 2; pinning its
    # sentence keeps an unrelated usage error (a renamed option) from passing for it.
    assert result.exit_code == 2, result.output
    refusal = f"Error: Invalid value for '--out': Directory '{tmp_path / 'afile'}' is a file."
    assert result.output.splitlines()[-1] == refusal
    assert (tmp_path / "afile").read_text() == "keep"


def test_an_empty_folder_is_used_and_an_export_is_replaced_only_with_force(trained, tmp_path):
    _, run, _ = trained
    out = tmp_path / "out"
    out.mkdir()
    assert invoke("export", run, "--out", out, "--quiet").exit_code == 0
    first = listing(out)
    assert {name for name, _ in first} == {"manifest.json", "items.jsonl.gz", "codes.npz"}
    one_line_error(invoke("export", run, "--out", out, "--quiet"), "pass --force")
    assert listing(out) == first
    result = invoke("export", run, "--out", out, "--force", "--quiet")
    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]  # no staged or moved-aside copies


# --- --bias ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("bias", ["nan", "-inf", "inf"])
def test_a_non_finite_bias_is_refused_before_anything_is_written(trained, tmp_path, bias):
    _, run, _ = trained
    one_line_error(invoke("export", run, "--out", tmp_path / "out", f"--bias={bias}", "--quiet"),
                   "--bias must be a finite number")
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("allocation", ["per-code", "global"])
def test_a_bias_that_makes_every_stored_score_equal_is_refused(trained, tmp_path, allocation):
    _, run, _ = trained
    one_line_error(invoke("export", run, "--out", tmp_path / "out", "--bias=1e9", "--allocation", allocation,
                          "--quiet"), "swamps", "could not rank")
    assert list(tmp_path.iterdir()) == []


def test_bias_is_honoured_and_per_code_explains_what_it_can_do(trained, tmp_path):
    _, run, _ = trained
    per_code = invoke("export", run, "--out", tmp_path / "p", "--bias=50", "--quiet")
    assert per_code.exit_code == 0, per_code.output
    manifest = json.loads((tmp_path / "p" / "manifest.json").read_text())
    assert manifest["bias"] == 50 and manifest["allocation"] == "per-code"
    # b̃ is added to every stored score …
    scores = [v for line in gzip.open(tmp_path / "p" / "items.jsonl.gz") for v in json.loads(line)["codes"].values()]
    assert min(scores) > 40
    # … but cannot lift a code above its stored_fraction (0.3): the note says so.
    assert manifest["stored_fraction"] <= 0.31
    assert "per-code allocation" in per_code.output and "--allocation global" in per_code.output
    glob = invoke("export", run, "--out", tmp_path / "g", "--bias=50", "--allocation", "global", "--quiet")
    assert glob.exit_code == 0, glob.output
    assert json.loads((tmp_path / "g" / "manifest.json").read_text())["stored_fraction"] == 1.0
    assert "note:" not in glob.output


# --- the reader -----------------------------------------------------------------------------------

def damaged_copy(export, tmp_path, name):
    import shutil

    copy = tmp_path / name
    shutil.copytree(export, copy)
    return copy


def truncate_items(export):
    data = (export / "items.jsonl.gz").read_bytes()
    (export / "items.jsonl.gz").write_bytes(data[: len(data) // 2])


def corrupt_items(export):
    data = bytearray((export / "items.jsonl.gz").read_bytes())
    data[40:len(data) - 20] = b"x" * (len(data) - 60)
    (export / "items.jsonl.gz").write_bytes(bytes(data))


def malformed_json_line(export):
    lines = gzip.decompress((export / "items.jsonl.gz").read_bytes()).split(b"\n")
    lines[2] = b'{"item_id": oops'
    (export / "items.jsonl.gz").write_bytes(gzip.compress(b"\n".join(lines)))


def missing_codes(export):
    (export / "codes.npz").unlink()


def missing_items(export):
    (export / "items.jsonl.gz").unlink()


def corrupt_codes(export):
    (export / "codes.npz").write_bytes(b"not a zip")


DAMAGE = {
    "truncated": (truncate_items, ["items.jsonl.gz", "truncated"]),
    "corrupt-gzip": (corrupt_items, ["items.jsonl.gz", "not a readable gzip"]),
    "bad-json": (malformed_json_line, ["items.jsonl.gz, line 3", "not JSON"]),
    "no-codes": (missing_codes, ["codes.npz", "missing"]),
    "no-items": (missing_items, ["items.jsonl.gz", "missing"]),
    "bad-codes": (corrupt_codes, ["codes.npz", "not a readable code table"]),
}


def spoiled(export, tmp_path, damage):
    """A copy of `export` with `damage` done to it, and what the error must say."""
    spoil, fragments = DAMAGE[damage]
    copy = damaged_copy(export, tmp_path, damage)
    spoil(copy)
    return copy, fragments


@pytest.mark.parametrize("damage", DAMAGE)
def test_damaged_export_is_an_export_error_naming_the_file(trained, tmp_path, damage):
    copy, fragments = spoiled(trained[2], tmp_path, damage)
    with pytest.raises(ExportError) as err:
        e = Export.open(copy)
        e.validate()
        e.code_table()
    for fragment in fragments:
        assert fragment in str(err.value)


@pytest.mark.parametrize("damage", DAMAGE)
def test_damaged_export_gives_one_line_in_search_and_evaluate(trained, tmp_path, damage):
    _, run, export = trained
    copy, fragments = spoiled(export, tmp_path, damage)
    one_line_error(invoke("search", "--run", run, "--user", "u3", "--backend", "local", "--export", copy), *fragments)
    one_line_error(invoke("evaluate", run, "--backend", "local", "--export", copy), *fragments)


def test_an_export_missing_a_promised_file_is_refused_by_index_before_connecting(trained, tmp_path, monkeypatch):
    """Used to be indexed (rc 0), with search failing later on a raw Errno 2. No node is
    contacted: the URLs point nowhere, and the refusal must come first."""
    _, _, export = trained
    copy = damaged_copy(export, tmp_path, "no-codes")
    missing_codes(copy)
    monkeypatch.setenv("ELASTICSEARCH_URL", "http://127.0.0.1:9")
    monkeypatch.setenv("OPENSEARCH_URL", "http://127.0.0.1:9")
    one_line_error(invoke("index", copy, "--alias", "sparcode-test-never-created"), "codes.npz", "missing")


# --- content the reader accepts line by line but an index cannot serve ------------------------------

def edit_items(export, change):
    items = [json.loads(line) for line in gzip.decompress((export / "items.jsonl.gz").read_bytes()).splitlines()]
    change(items)
    (export / "items.jsonl.gz").write_bytes(gzip.compress(b"".join(json.dumps(i).encode() + b"\n" for i in items)))


def edit_manifest(export, **values):
    manifest = json.loads((export / "manifest.json").read_text())
    (export / "manifest.json").write_text(json.dumps({**manifest, **values}))


def repeat_an_ord(items):
    items[5]["ord"] = items[4]["ord"]


def unknown_term(items):
    scored = next(i for i in items if i["codes"])
    scored["codes"]["c9999_9999"] = 1.0


CONTENT = {
    "repeated-ord": (lambda e: edit_items(e, repeat_an_ord), ["ord 4 is not a new whole number"]),
    "text-ord": (lambda e: edit_items(e, lambda items: items[0].update(ord="x")), ["ord 'x'"]),
    "unknown-term": (lambda e: edit_items(e, unknown_term), ["term 'c9999_9999' is not in the export's code table"]),
    "items-not-a-count": (lambda e: edit_manifest(e, items="many"), ["'items' must be a count, not 'many'"]),
    "no-fingerprint": (lambda e: edit_manifest(e, fingerprint=None), ["'fingerprint' must be"]),
    "zero-probes": (lambda e: edit_manifest(e, query_probes=0), ["'query_probes' must be a count ≥ 1, not 0"]),
    "fractional-probes": (lambda e: edit_manifest(e, query_probes=2.5), ["'query_probes' must be a count"]),
    "list-codes": (lambda e: edit_items(e, lambda items: items[1].update(codes=[1, 2])), ["codes must be a map"]),
    "text-score": (lambda e: edit_items(e, lambda items: items[2].update(codes={"c0000_0000": "1"})),
                   ["cannot be stored"]),
}


MANIFEST_DAMAGE = {"items-not-a-count", "no-fingerprint", "zero-probes", "fractional-probes"}


@pytest.mark.parametrize("damage", CONTENT)
def test_content_an_index_cannot_serve_is_refused_before_any_index_exists(trained, tmp_path, monkeypatch, damage):
    """These used to create an index and fail half-way (a term the mapping does not know), or
    be served with ties broken wrongly (a repeated ord), or fail with a traceback. `build`
    validates before it creates anything (engine_contract checks that order)."""
    spoil, fragments = CONTENT[damage]
    copy = damaged_copy(trained[2], tmp_path, damage)
    spoil(copy)
    with pytest.raises(ExportError) as err:
        Export.open(copy).validate()
    for fragment in fragments:
        assert fragment in str(err.value)
    if damage in MANIFEST_DAMAGE:  # refused on opening, before connecting
        monkeypatch.setenv("ELASTICSEARCH_URL", "http://127.0.0.1:9")
        one_line_error(invoke("index", copy, "--alias", "sparcode-test-never-created"), *fragments)
    else:  # the embedded backend refuses what an index would
        one_line_error(invoke("search", "--run", trained[1], "--user", "u3", "--backend", "local", "--export", copy),
                       *fragments)


def test_shards_of_another_model_in_the_folder_are_refused_before_the_work(trained, tmp_path):
    _, run, _ = trained
    folder = tmp_path / "shards"
    assert invoke("export", run, "--out", folder, "--shard", "0/2", "--quiet").exit_code == 0
    part = next(folder.glob("items.part-*.manifest.json"))
    part.write_text(json.dumps({**json.loads(part.read_text()), "fingerprint": "ab" * 32}))
    before = listing(folder)
    one_line_error(invoke("export", run, "--out", folder, "--shard", "1/2", "--quiet"),
                   "holds parts of another export", "new folder")
    assert listing(folder) == before
    mixed = tmp_path / "mixed"
    assert invoke("export", run, "--out", mixed, "--shard", "0/2", "--quiet").exit_code == 0
    one_line_error(invoke("export", run, "--out", mixed, "--shard", "1/3", "--quiet"), "2 shards")
    one_line_error(invoke("export", run, "--out", mixed, "--shard", "1/2", "--stored-fraction", "0.6", "--quiet"),
                   "exported with other settings", "stored_fraction 0.3 there, 0.6 here")
    assert invoke("export", run, "--out", mixed, "--shard", "1/2", "--quiet").exit_code == 0
    assert Export.open(mixed).validate() == 40


def test_a_damaged_last_export_record_is_one_line(trained, tmp_path):
    import shutil

    _, run, _ = trained
    copy = tmp_path / "run"
    shutil.copytree(run, copy)
    (copy / "last_export.json").write_text("{")
    one_line_error(invoke("search", "--run", copy, "--user", "u3", "--backend", "local"), "last_export.json is damaged")
