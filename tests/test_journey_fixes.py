"""A user's own dataset through export and search: engine reasons keep their cause, exports
count the items no query can reach, and `search` explains a short or empty answer, refuses a
filter value no item has, and names every unknown history item."""
import gzip
import json

import numpy as np
import pytest
from click.testing import CliRunner

from sparcode.cli import main
from sparcode.pipeline.engine import error_reason

TINY = {
    "model": {"dim": 16, "codebooks": 2, "codes": 8, "user_tokens": 2, "scorer_hidden": 8, "tokenizer": "dnn",
              "kmeans_iters": 3},
    "train": {"epochs": 1, "batch_size": 64, "negatives": 16, "patience": 5, "max_history": 5, "threads": 1},
    # Sparse enough that some items get no posting at all, as in a user's real export.
    "serve": {"stored_fraction": 0.05},
}


def invoke(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    root = tmp_path_factory.mktemp("journey")
    rng = np.random.default_rng(0)
    lines = [f"u{u} " + " ".join(f"i{i}" for i in rng.choice(np.arange((u % 4) * 10, (u % 4) * 10 + 10), 8,
                                                                 replace=False)) for u in range(80)]
    (root / "sequences.txt").write_text("\n".join(lines) + "\n")
    # genre g0 … g3 by tens; studio 7 on every third item.
    (root / "items.tsv").write_text("".join(f"i{i}\tgenre=g{i // 10}" + ("\tstudio=7" if i % 3 == 0 else "") + "\n"
                                            for i in range(40)))
    (root / "tiny.json").write_text(json.dumps(TINY))
    run = root / "run"
    result = invoke("train", "--model", "sparcode", "--dataset", root, "--split", "leave-one-out", "--out", run,
                    "--config", root / "tiny.json", "--quiet")
    assert result.exit_code == 0, result.output
    export = root / "export"
    exported = invoke("export", run, "--out", export, "--quiet")
    assert exported.exit_code == 0, exported.output
    return root, run, export, exported.output


def manifest(folder):
    return json.loads((folder / "manifest.json").read_text())


def without_postings(folder):
    rows = [json.loads(line) for name in manifest(folder)["files"]["items"] for line in gzip.open(folder / name)]
    return sum(not row["codes"] for row in rows)


def search(run, export, *args):
    return invoke("search", "--run", run, "--export", export, "--backend", "local", *args)


# --- 1. an engine's long reason keeps its cause ---------------------------------------------------

def test_a_long_engine_reason_keeps_its_head_and_its_tail():
    reason = f"Validation Failed: 1: id [{'é' * 600}] is too long, must be no longer than 512 bytes but was 1202;"
    kept = error_reason({"error": {"reason": reason}}, "?")
    assert kept.startswith("Validation Failed: 1: id [")
    assert kept.endswith("is too long, must be no longer than 512 bytes but was 1202;")
    assert len(kept) <= 301 and "…" in kept
    assert error_reason({"error": {"reason": "short"}}, "?") == "short"


# --- 3. items without postings are counted --------------------------------------------------------

def test_export_reports_the_items_no_query_can_reach(trained):
    _, _, export, output = trained
    count = manifest(export)["items_without_postings"]
    assert count == without_postings(export) and 0 < count < 40, count
    assert f"40 items ({count} without any posting" in output


def test_a_sharded_export_sums_its_parts_items_without_postings(trained, tmp_path):
    _, run, export, _ = trained
    folder = tmp_path / "sharded"
    for shard in ("1/2", "0/2"):
        assert invoke("export", run, "--out", folder, "--shard", shard, "--quiet").exit_code == 0
    parts = [json.loads(p.read_text()) for p in sorted(folder.glob("items.part-*.manifest.json"))]
    assert manifest(folder)["items_without_postings"] == sum(p["items_without_postings"] for p in parts)
    assert manifest(folder)["items_without_postings"] == manifest(export)["items_without_postings"]


def test_a_part_from_before_the_count_leaves_it_out_of_the_merged_manifest(trained, tmp_path):
    _, run, _, _ = trained
    folder = tmp_path / "sharded"
    assert invoke("export", run, "--out", folder, "--shard", "0/2", "--quiet").exit_code == 0
    part, = folder.glob("items.part-*.manifest.json")
    old = json.loads(part.read_text())
    del old["items_without_postings"]
    part.write_text(json.dumps(old))
    assert invoke("export", run, "--out", folder, "--shard", "1/2", "--quiet").exit_code == 0
    assert "items_without_postings" not in manifest(folder)  # one part's count is not the whole's


# --- 2. and 4. a short answer is explained; a filter value no item has is refused ----------------

def test_a_short_filtered_answer_says_how_many_and_why(trained):
    _, run, export, _ = trained
    result = search(run, export, "--user", "u1", "--k", "40", "--keep-seen", "--filter", "genre=g1")
    assert result.exit_code == 0, result.output
    hits = [line for line in result.stdout.splitlines()[1:] if line.strip()]
    assert len(hits) < 40
    returned = f"{len(hits)} of 40 items returned" if hits else "no items matched"
    assert result.stderr.strip() == (f"{returned} (--filter genre=g1): only items with a stored score for this "
                                     "user's codes can be returned; 10 items match the filter")


def test_a_short_json_answer_carries_the_same_explanation(trained):
    """A service reading --json gets the reason in the object, and a person reading the terminal on stderr."""
    _, run, export, _ = trained
    text = search(run, export, "--user", "u1", "--k", "40", "--keep-seen", "--filter", "genre=g1")
    result = search(run, export, "--user", "u1", "--k", "40", "--keep-seen", "--filter", "genre=g1", "--json")
    assert result.exit_code == 0, result.output
    reply = json.loads(result.stdout)
    assert reply["fewer_than_k"] == {"k": 40, "returned": len(reply["hits"]), "reasons": [
        "only items with a stored score for this user's codes can be returned", "10 items match the filter"]}
    assert result.stderr == text.stderr
    full = search(run, export, "--user", "u1", "--k", "3", "--json")
    assert "fewer_than_k" not in json.loads(full.stdout) and full.stderr == ""


def test_a_short_answer_counts_the_seen_items_the_filter_also_matches(trained):
    root, run, export, _ = trained
    seen = next(line.split()[1:] for line in (root / "sequences.txt").read_text().splitlines() if line.split()[0] == "u1")
    seen_g1 = sum(10 <= int(item[1:]) < 20 for item in seen)
    assert 0 < seen_g1 < 10
    result = search(run, export, "--user", "u1", "--k", "40", "--filter", "genre=g1")
    assert result.exit_code == 0, result.output
    unseen = 10 - seen_g1
    assert result.stderr.strip().endswith(
        f"{unseen} unseen item{'s' if unseen > 1 else ''} {'match' if unseen > 1 else 'matches'} the filter "
        f"({seen_g1} the user has seen: --keep-seen includes them)")


def test_a_number_no_item_has_gets_no_hint_about_case():
    from types import SimpleNamespace

    from sparcode.commands.search import _why_short

    dataset = SimpleNamespace(item_ids=["a", "b"], item_attributes=[{"year": 1995}, {"year": 1996, "genres": ["X"]}],
                              item_attribute_types={"year": "integer", "genres": "keyword"})
    run = SimpleNamespace(kind="two-tower", dataset=dataset)
    from sparcode.recommender import RecommenderError

    with pytest.raises(RecommenderError) as refused:  # one line through the CLI's user_errors
        _why_short(run, {"year": ["95"]}, ())
    assert str(refused.value) == "no item has year=95, so the filter matches nothing"
    with pytest.raises(RecommenderError) as refused:
        _why_short(run, {"genres": ["x"]}, ())
    assert str(refused.value) == ("no item has genres=x (values are case-sensitive; did you mean genres=X?), "
                                  "so the filter matches nothing")
    assert _why_short(run, {"year": ["1995"]}, ()) == ["1 item matches the filter"]


def test_a_filter_value_no_item_has_is_an_error_naming_it(trained):
    _, run, export, _ = trained
    result = search(run, export, "--user", "u1", "--k", "5", "--filter", "genre=G1", "--filter", "genre=nope")
    assert result.exit_code == 1
    assert result.stderr.strip() == ("Error: no item has genre=G1, genre=nope (values are case-sensitive; did you "
                                     "mean genre=g1?), so the filter matches nothing")
    assert result.stdout == ""


def test_an_unknown_value_beside_a_known_one_is_named_in_the_note(trained):
    _, run, export, _ = trained
    result = search(run, export, "--user", "u1", "--k", "40", "--keep-seen", "--filter", "genre=g1",
                    "--filter", "genre=nope")
    assert result.exit_code == 0, result.output
    assert result.stderr.strip().endswith("10 items match the filter; no item has genre=nope (values are "
                                          "case-sensitive)")


def test_filter_values_are_trimmed_like_feature_files(trained):
    _, run, export, _ = trained
    plain = search(run, export, "--user", "u0", "--k", "40", "--keep-seen", "--json", "--filter", "studio=7")
    spaced = search(run, export, "--user", "u0", "--k", "40", "--keep-seen", "--json", "--filter", "studio= 7 ")
    assert plain.exit_code == 0 and spaced.exit_code == 0, spaced.output
    assert json.loads(spaced.stdout)["hits"] == json.loads(plain.stdout)["hits"]


# --- 5. and 6. --------------------------------------------------------------------------------------

def test_explain_help_says_what_local_prints():
    text = " ".join(invoke("search", "--help").output.split())
    assert "with local, which sends nothing, the one an Elasticsearch index of this export would be sent" in text


def test_every_unknown_history_item_is_named(trained):
    _, run, export, _ = trained
    result = search(run, export, "--history", "i1,nosuch,alsonot,nosuch")
    assert result.exit_code == 1
    assert "unknown items 'nosuch', 'alsonot' in the history" in result.stderr
    many = search(run, export, "--history", ",".join(["i1"] + [f"x{n}" for n in range(8)]))
    assert "'x0', 'x1', 'x2', 'x3', 'x4' and 3 more in the history" in many.stderr
