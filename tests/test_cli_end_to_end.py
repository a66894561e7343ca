"""The whole product on a tiny generic dataset: train → evaluate → export → serve → search.

The invariant that matters: the served-exact evaluation (offline, from the model) and the
embedded backend built from the export file rank every test user identically, so the number
`sparcode evaluate` prints is the number the index delivers.
"""
import json
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from sparcode.cli import main
from sparcode.config import RunConfig

TINY = {
    "model": {"dim": 16, "codebooks": 2, "codes": 8, "user_tokens": 2, "scorer_hidden": 8, "tokenizer": "dnn",
              "kmeans_iters": 3},
    "train": {"epochs": 2, "batch_size": 64, "negatives": 16, "patience": 5, "max_history": 5, "threads": 1},
    "serve": {"stored_fraction": 0.3},
}


def make_dataset(folder, items_per_group=10, seed=0):
    """80 users in 4 taste groups over 40 items, so even two epochs learn something."""
    rng = np.random.default_rng(seed)
    folder.mkdir()
    lines, genres = [], []
    for user in range(80):
        group = user % 4
        items = rng.choice(np.arange(group * items_per_group, (group + 1) * items_per_group), size=8, replace=False)
        lines.append(f"u{user} " + " ".join(f"i{i}" for i in items))
    (folder / "sequences.txt").write_text("\n".join(lines) + "\n")
    for item in range(4 * items_per_group):
        genres.append(f"i{item}\tgenre=g{item // items_per_group}|all")
    (folder / "items.tsv").write_text("\n".join(genres) + "\n")
    return folder


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    root = tmp_path_factory.mktemp("e2e")
    data = make_dataset(root / "data")
    cfg = root / "tiny.json"
    cfg.write_text(json.dumps(TINY))
    run = root / "run"
    result = CliRunner().invoke(main, ["train", "--model", "sparcode", "--dataset", str(data), "--split",
                                       "leave-one-out", "--out", str(run), "--config", str(cfg), "--quiet"])
    assert result.exit_code == 0, result.output
    return root, data, cfg, run


def invoke(*args):
    result = CliRunner().invoke(main, [str(a) for a in args])
    return result


def served_through(trained, engine, engine_name: str, alias: str):
    """Export the trained run and `reindex` it into a live node; yields (root, run, export, alias)
    and drops the alias's indices afterwards. Module fixtures of the engine tests wrap it."""
    from conftest import drop_alias_family

    root, _, _, run = trained
    export = root / f"export-{engine_name}"
    assert invoke("export", run, "--out", export, "--quiet").exit_code == 0
    drop_alias_family(engine, alias)
    result = invoke("reindex", export, "--alias", alias, "--engine", engine_name)
    assert result.exit_code == 0, result.output
    yield root, run, export, alias
    drop_alias_family(engine, alias)


def assert_backends_match_model(indexed, tmp_path, backends):
    """`evaluate --backend B` ranks every user as the served-exact model does, with equal metrics."""
    root, run, export, alias = indexed
    runs = {}
    for backend in ("model", *backends):
        path = tmp_path / f"{backend}.run"
        serving = [] if backend == "model" else ["--export", export] + ([] if backend == "local" else ["--alias", alias])
        result = invoke("evaluate", run, "--backend", backend, *serving, "--json", "--run-file", path)
        assert result.exit_code == 0, result.output
        runs[backend] = (json.loads(result.stdout), path.read_text().replace(f"-{backend}", ""))
    for backend in backends:
        assert runs[backend][1] == runs["model"][1], f"{backend} ranked lists differ from the model's"
        for key in ("recall@50", "ndcg@10", "hr@20"):
            assert runs[backend][0][key] == runs["model"][0][key]


def test_train_writes_tensor_only_checkpoint(trained):
    import torch

    _, _, _, run = trained
    assert (run / "config.json").exists() and (run / "run.json").exists()
    state = torch.load(run / "weights.pt", weights_only=True)
    assert all(isinstance(v, torch.Tensor) for v in state.values())


def test_served_exact_equals_embedded_backend(trained):
    root, _, _, run = trained
    served = invoke("evaluate", run, "--json")
    assert served.exit_code == 0, served.output
    served = json.loads(served.stdout)
    export = root / "export"
    out = invoke("export", run, "--out", export, "--quiet")
    assert out.exit_code == 0, out.output
    manifest = json.loads((export / "manifest.json").read_text())
    assert manifest["pairs"] == served["pairs"] and manifest["bias"] == served["bias"]
    local_run, served_run = root / "local.run", root / "served.run"
    local = invoke("evaluate", run, "--backend", "local", "--export", export, "--json", "--run-file", local_run)
    assert local.exit_code == 0, local.output
    invoke("evaluate", run, "--json", "--run-file", served_run)
    local = json.loads(local.stdout)
    for key in ("recall@10", "ndcg@10", "hr@5", "recall@50"):
        assert local[key] == served[key], key
    # Same ranked lists item by item, not just the same averages.
    assert local_run.read_text().replace("-local", "-model") == served_run.read_text()
    assert 0 < served["stored_fraction"] <= 0.31


def test_sharded_export_serves_the_same(trained):
    root, _, _, run = trained
    whole, sharded = root / "whole", root / "sharded"
    assert invoke("export", run, "--out", whole, "--quiet").exit_code == 0
    for shard in ("0/2", "1/2"):
        result = invoke("export", run, "--out", sharded, "--shard", shard, "--quiet")
        assert result.exit_code == 0, result.output
    merged = json.loads((sharded / "manifest.json").read_text())
    assert merged["items"] == 40 and len(merged["files"]["items"]) == 2
    assert merged["pairs"] == json.loads((whole / "manifest.json").read_text())["pairs"]
    a = invoke("search", "--run", run, "--user", "u3", "--backend", "local", "--export", whole, "--json", "--k", "8")
    b = invoke("search", "--run", run, "--user", "u3", "--backend", "local", "--export", sharded, "--json", "--k", "8")
    assert json.loads(a.stdout)["hits"] == json.loads(b.stdout)["hits"]


def test_search_one_user_and_explain(trained):
    root, _, _, run = trained
    export = root / "export-search"
    assert invoke("export", run, "--out", export, "--quiet").exit_code == 0
    # A user whose codes all lack postings above the serving bias legitimately gets no hits;
    # take the first user who gets some (most do).
    for row in range(80):
        user = f"u{row}"
        result = invoke("search", "--run", run, "--user", user, "--k", "5", "--backend", "local", "--export", export, "--json")
        assert result.exit_code == 0, result.output
        payload = json.loads(result.stdout)
        hits = payload["hits"]
        if hits:
            break
    assert 1 <= len(hits) <= 5, "no user got any hit"
    assert [h["score"] for h in hits] == sorted((h["score"] for h in hits), reverse=True)
    # Every token sends its query_probes nearest indexed codes (fewer when fewer are indexed).
    indexed = json.loads((export / "manifest.json").read_text())["codes_with_postings"]
    probes = min(RunConfig().serve.query_probes, indexed)
    assert sum(payload["query"].values()) == TINY["model"]["user_tokens"] * probes
    assert len(payload["query"]) <= TINY["model"]["user_tokens"] * probes
    seen = set(open(root / "data" / "sequences.txt").read().splitlines()[row].split()[1:])
    assert not seen & {h["item_id"] for h in hits}  # seen items are excluded by default
    explained = invoke("search", "--run", run, "--user", user, "--backend", "local", "--export", export, "--explain")
    body = json.loads(explained.output[: explained.output.rindex("}") + 1].split("\nuser ")[0])
    assert body["track_total_hits"] is False
    # k = 40 is the whole catalog, so filtering must equal the unfiltered ranking cut to genre g1.
    everything = invoke("search", "--run", run, "--user", user, "--backend", "local", "--export", export,
                        "--json", "--k", "40")
    filtered = invoke("search", "--run", run, "--user", user, "--backend", "local", "--export", export,
                      "--filter", "genre=g1", "--json", "--k", "40")
    assert everything.exit_code == 0 and filtered.exit_code == 0, filtered.output
    everything, filtered = json.loads(everything.stdout)["hits"], json.loads(filtered.stdout)["hits"]
    in_g1 = [h for h in everything if int(h["item_id"][1:]) // 10 == 1]
    # Non-empty on both sides of the filter, or the comparison below proves nothing.
    assert in_g1 and len(in_g1) < len(everything)
    assert filtered == in_g1
    nothing = invoke("search", "--run", run, "--user", user, "--backend", "local", "--export", export,
                     "--filter", "genre=no-such-genre")
    assert nothing.exit_code == 1
    assert nothing.stderr.strip() == ("Error: no item has genre=no-such-genre (values are case-sensitive), "
                                      "so the filter matches nothing")


def test_a_sampled_evaluation_ranks_its_users_as_the_full_one_does(trained):
    root, _, _, run = trained
    full_run, sample_run = root / "full.run", root / "sample.run"
    full = invoke("evaluate", run, "--json", "--run-file", full_run)
    sample = invoke("evaluate", run, "--json", "--sample-users", 20, "--sample-seed", 3, "--run-file", sample_run)
    assert sample.exit_code == 0, sample.output
    metrics = json.loads(sample.stdout)
    assert (metrics["users"], metrics["sampled_from"], metrics["sample_seed"]) == (20, 80, 3)
    assert "sampled_from" not in json.loads(full.stdout)
    lines = sample_run.read_text().splitlines()
    assert len({line.split()[0] for line in lines}) == 20
    assert set(lines) <= set(full_run.read_text().splitlines())
    again = invoke("evaluate", run, "--json", "--sample-users", 20, "--sample-seed", 3)
    assert json.loads(again.stdout) == metrics
    other = invoke("evaluate", run, "--json", "--sample-users", 20, "--sample-seed", 4, "--run-file", root / "other.run")
    assert other.exit_code == 0
    assert (root / "other.run").read_text() != sample_run.read_text()


def popularity_recall_at_10(data):
    """recall@10 on the leave-one-out test targets of the 10 items most often seen before them."""
    from collections import Counter

    sequences = [line.split()[1:] for line in (data / "sequences.txt").read_text().splitlines()]
    counts = Counter(item for seq in sequences for item in seq[:-1])
    top = {item for item, _ in counts.most_common(10)}
    return sum(seq[-1] in top for seq in sequences) / len(sequences)


@pytest.mark.parametrize("kind", ["two-tower", "all-to-all"])
def test_baselines_train_and_evaluate(trained, kind):
    root, data, cfg, _ = trained
    run = root / f"run-{kind}"
    result = invoke("train", "--model", kind, "--dataset", data, "--split", "leave-one-out", "--out", run,
                    "--config", cfg, "--quiet")
    assert result.exit_code == 0, result.output
    metrics = json.loads(invoke("evaluate", run, "--json").output)
    # A model that learned nothing ranks like popularity (~0.2 here; 0.25 for a random order):
    # the taste groups must lift it well clear. Seeds 0-3 gave 0.5-1.0 for both kinds.
    popular = popularity_recall_at_10(data)
    assert metrics["users"] == 80 and metrics["recall@10"] >= 2 * popular, (metrics["recall@10"], popular)
    unserved = invoke("evaluate", run, "--stored-fraction", "0.1")
    assert unserved.exit_code == 1
    assert unserved.output.strip().endswith(f"serve.stored_fraction apply to SparCode runs; {run} was trained with --model {kind}")
    if kind == "all-to-all":  # the unquantized bound has no codes to serve
        refused = invoke("export", run, "--out", root / "export-all-to-all")
        assert refused.exit_code == 1 and not (root / "export-all-to-all").exists()
        assert refused.output.strip().endswith(f"{run} was trained with --model all-to-all")
        quantized_after_training(root, run, metrics)


def quantized_after_training(root, run, dense_metrics):
    """scripts/posthoc_quantization.py turns the all-to-all into a SparCode run that serves."""
    import subprocess
    import sys

    target, report = root / "run-posthoc", root / "posthoc.json"
    script = Path(__file__).resolve().parents[1] / "scripts" / "posthoc_quantization.py"
    subprocess.run([sys.executable, str(script), str(run), str(target), "--windows", "2000", "--iters", "5",
                    "--probes", "4", "--out", str(report)], check=True, capture_output=True)
    rows = json.loads(report.read_text())["rows"]
    # Its continuous stage is the all-to-all itself: same weights, same users, same exclusion.
    assert rows["continuous"]["ndcg@50"] == round(dense_metrics["ndcg@50"], 4)  # recall@50 saturates here
    assert set(rows) == {"continuous", "quantized", "served, 4 probes, uniform", "served, 4 probes, nnls"}
    served = json.loads(invoke("evaluate", target, "--json").output)
    assert served["model"] == "sparcode" and served["users"] == dense_metrics["users"]
    assert invoke("export", target, "--out", root / "export-posthoc", "--quiet").exit_code == 0


def test_ease_is_scored_each_way_at_the_lambda_chosen_for_it(tmp_path):
    # The shared data saturates recall@10 at every λ, so both ways would choose the same λ and an
    # evaluation ignoring lambda_by_mode would pass; 20-item groups make them choose apart.
    data = make_dataset(tmp_path / "data", items_per_group=20, seed=2)
    run, cfg = tmp_path / "run-ease", tmp_path / "ease.json"
    cfg.write_text(json.dumps({"model": {"ease_lambda": [1, 30, 1000], "ease_fold_in": True},
                               "train": {"select_metric": "recall@10"}}))
    result = invoke("train", "--model", "ease", "--dataset", data, "--split", "leave-one-out", "--out", run,
                    "--config", cfg, "--quiet")
    assert result.exit_code == 0, result.output
    stored = json.loads((run / "ease" / "ease.json").read_text())
    chosen, selection = stored["info"]["lambda_by_mode"], stored["info"]["selection"]
    assert stored["fold_in"] and stored["info"]["refit_for_test"]
    assert set(chosen) == {"keep_seen", "exclude_seen"}
    assert chosen["keep_seen"] != chosen["exclude_seen"], "the data no longer tells the two ways apart"
    assert stored["lambda"] == chosen["keep_seen"]  # leave-one-out keeps seen items by default
    assert json.loads((run / "run.json").read_text())["lambda_by_mode"] == chosen
    for part in ("test", "valid"):
        for exclude in (False, True):
            flags = ["--users", part] + (["--exclude-seen"] if exclude else [])
            result = invoke("evaluate", run, "--json", *flags)
            assert result.exit_code == 0, result.output
            metrics = json.loads(result.stdout)
            mode = "exclude_seen" if exclude else "keep_seen"
            assert metrics["users"] == 80 and metrics["exclude_seen"] == exclude
            assert metrics["lambda"] == chosen[mode], flags
            # The stored B was fitted with the validation targets, so validation users always get a refit.
            assert metrics["refitted"] == (part == "valid" or chosen[mode] != stored["lambda"]), flags
            if part == "valid":
                # The number training chose λ by, so the λ used is the one named, not just its label.
                row = next(r for r in selection if r["lambda"] == chosen[mode])
                assert round(metrics["recall@10"], 5) == row[mode], flags


def test_a_run_on_a_relative_dataset_path_opens_from_anywhere(trained, tmp_path, monkeypatch):
    root, data, _, _ = trained
    monkeypatch.chdir(data.parent)
    result = invoke("train", "--model", "ease", "--dataset", data.name, "--out", tmp_path / "ease")
    assert result.exit_code == 0, result.output
    monkeypatch.chdir(tmp_path)
    result = invoke("evaluate", tmp_path / "ease")
    assert result.exit_code == 0, result.output


def test_user_errors_are_one_clear_line(trained, tmp_path):
    root, data, cfg, run = trained
    unknown = invoke("search", "--run", run, "--user", "nobody", "--backend", "local", "--export", root / "export")
    assert unknown.exit_code != 0 and "unknown user 'nobody'" in unknown.output
    too_many = invoke("search", "--run", run, "--user", "u1", "--k", 10001, "--backend", "local")
    assert too_many.exit_code == 2 and "1<=x<=10000" in too_many.output
    same = invoke("evaluate", run, "--run-file", tmp_path / "x", "--qrels", tmp_path / "x")
    assert same.exit_code == 2 and "name the same file" in same.output
    config_before = (run / "config.json").read_bytes()
    inside = invoke("evaluate", run, "--qrels", run / "config.json")
    assert inside.exit_code == 2 and "is inside the run" in inside.output
    assert (run / "config.json").read_bytes() == config_before
    wrong_knob = invoke("evaluate", run, "--backend", "local", "--export", root / "export", "--ef", 60)
    assert wrong_knob.exit_code == 2 and "--ef applies to --backend hnsw" in wrong_knob.output
    assert "Traceback" not in unknown.output
    not_a_run = invoke("evaluate", tmp_path)
    assert not_a_run.exit_code != 0 and "not a sparcode run directory" in not_a_run.output
    bad_cfg = tmp_path / "bad.json"
    bad_cfg.write_text(json.dumps({"train": {"epochz": 1}}))
    result = invoke("train", "--dataset", data, "--out", tmp_path / "r", "--config", bad_cfg)
    assert result.exit_code != 0 and "epochz" in result.output
    assert not (tmp_path / "r").exists()  # nothing half-written
    again = invoke("train", "--dataset", data, "--out", run, "--config", cfg)
    assert again.exit_code != 0 and "already holds a finished run" in again.output
    bad_data = tmp_path / "broken.txt"
    bad_data.write_text("u1 i1 i2\nu2\n")
    result = invoke("train", "--dataset", bad_data, "--out", tmp_path / "r2", "--config", cfg)
    assert result.exit_code != 0 and "line 2" in result.output
    # Output paths are checked before the evaluation, and a refused one leaves no other file behind.
    result = invoke("evaluate", run, "--run-file", tmp_path / "kept.run", "--qrels", tmp_path / "no" / "q")
    assert result.exit_code != 0 and f"folder {tmp_path / 'no'} does not exist" in result.output
    assert not (tmp_path / "kept.run").exists()
    # --out on the run itself (or any folder that is not an export) is refused before any work,
    # and nothing in it is deleted.
    before = sorted(p.name for p in run.iterdir())
    onto_run = invoke("export", run, "--out", run, "--force")
    assert onto_run.exit_code == 1 and "nothing was deleted" in onto_run.output
    assert sorted(p.name for p in run.iterdir()) == before
    ignored = invoke("evaluate", run, "--export", root / "export")
    assert ignored.exit_code == 2 and "--backend model scores the run itself" in ignored.output


def test_every_served_code_has_postings_so_every_user_gets_hits(trained):
    """Codes whose scores all fell below b̃ are left out of the code table, so a user's query
    falls back to the nearest code that serves something — whole or sharded export alike."""
    import gzip

    root, _, _, run = trained
    whole, sharded = root / "whole-fallback", root / "sharded-fallback"
    assert invoke("export", run, "--out", whole, "--quiet").exit_code == 0
    for shard in ("0/3", "1/3", "2/3"):
        assert invoke("export", run, "--out", sharded, "--shard", shard, "--quiet").exit_code == 0
    with np.load(whole / "codes.npz") as npz:
        table_terms = set(npz["terms"].tolist())
    with np.load(sharded / "codes.npz") as npz:
        assert set(npz["terms"].tolist()) == table_terms
    with gzip.open(whole / "items.jsonl.gz", "rt") as fh:
        posted = {term for line in fh for term in json.loads(line)["codes"]}
    assert table_terms == posted
    manifest = json.loads((whole / "manifest.json").read_text())
    assert manifest["codes_with_postings"] == len(posted) <= manifest["codes"]
    for row in range(0, 80, 4):
        result = invoke("search", "--run", run, "--user", f"u{row}", "--k", "5", "--backend", "local",
                        "--export", whole, "--keep-seen", "--json")
        assert result.exit_code == 0, result.output
        assert json.loads(result.stdout)["hits"], f"u{row} got no hits"


def test_search_by_history_equals_search_by_user_without_profiles(trained):
    """The tiny dataset has no user features, so a user is exactly their items: --history with
    a user's sequence must serve what --user serves."""
    root, data, _, run = trained
    export = root / "export-history"
    assert invoke("export", run, "--out", export, "--quiet").exit_code == 0
    line = (data / "sequences.txt").read_text().splitlines()[3].split()
    by_user = invoke("search", "--run", run, "--user", line[0], "--backend", "local", "--export", export, "--json")
    by_history = invoke("search", "--run", run, "--history", ",".join(line[1:]), "--backend", "local",
                        "--export", export, "--json")
    assert by_user.exit_code == 0 and by_history.exit_code == 0, by_history.output
    assert json.loads(by_user.stdout)["query"] == json.loads(by_history.stdout)["query"]
    assert json.loads(by_user.stdout)["hits"] == json.loads(by_history.stdout)["hits"]
    unknown = invoke("search", "--run", run, "--history", "i1,nope", "--backend", "local", "--export", export)
    assert unknown.exit_code == 1 and "unknown item 'nope'" in unknown.output
    both = invoke("search", "--run", run, "--history", "i1", "--user", "u1", "--backend", "local", "--export", export)
    assert both.exit_code == 2 and "exactly one of" in both.output
    listed = root / "history.txt"  # one id per line and several on one, as a user's export would mix them
    listed.write_text("\n".join([" ".join(line[1:3]), *line[3:]]) + "\n")
    by_file = invoke("search", "--run", run, "--history-file", listed, "--backend", "local", "--export", export, "--json")
    assert by_file.exit_code == 0, by_file.output
    assert json.loads(by_file.stdout)["hits"] == json.loads(by_history.stdout)["hits"]
    two = invoke("search", "--run", run, "--history", "i1", "--history-file", listed, "--backend", "local")
    assert two.exit_code == 2 and "exactly one of" in two.output


def test_four_codebooks_spell_four_part_terms_and_serve_as_evaluated(trained, tmp_path):
    """Beauty's preset quantizes with M = 8 (M = 4 here, what a 16-dim token allows): the terms,
    the export and the embedded backend must carry any M, ranking every user exactly as the
    served-exact evaluation does."""
    _, data, _, _ = trained
    cfg = tmp_path / "m4.json"
    cfg.write_text(json.dumps({**TINY, "model": {**TINY["model"], "codebooks": 4}}))
    run, export = tmp_path / "run", tmp_path / "export"
    result = invoke("train", "--model", "sparcode", "--dataset", data, "--split", "leave-one-out", "--out", run,
                    "--config", cfg, "--quiet")
    assert result.exit_code == 0, result.output
    assert invoke("export", run, "--out", export, "--quiet").exit_code == 0
    with np.load(export / "codes.npz") as npz:
        terms = npz["terms"].tolist()
        assert npz["codebooks"].shape[0] == 4
    assert terms and all(len(term.split("_")) == 4 for term in terms)
    lists = {}
    for backend in ("model", "local"):
        path = tmp_path / f"{backend}.run"
        serving = [] if backend == "model" else ["--export", export]
        result = invoke("evaluate", run, "--backend", backend, *serving, "--json", "--run-file", path)
        assert result.exit_code == 0, result.output
        lists[backend] = path.read_text().replace(f"-{backend}", "")
    assert lists["local"] == lists["model"]


def test_serving_sweep_rows_are_what_evaluate_prints(trained, tmp_path):
    """scripts/serving_sweep.py re-serves one model under other settings in memory; its row for
    the run's own settings must be the number `sparcode evaluate` gives, or its table means nothing."""
    import subprocess
    import sys
    from pathlib import Path

    _, _, _, run = trained
    config = json.loads((run / "config.json").read_text())["serve"]
    out = tmp_path / "sweep.json"
    script = Path(__file__).resolve().parents[1] / "scripts" / "serving_sweep.py"
    subprocess.run([sys.executable, str(script), str(run), "--fractions", str(config["stored_fraction"]),
                    "--probes", f"1,{config['query_probes']}", "--out", str(out)], check=True, capture_output=True)
    rows = json.loads(out.read_text())["rows"]
    assert [r["stage"] for r in rows] == ["unquantized", "quantized", "served", "served"]
    served = json.loads(invoke("evaluate", run, "--json").output)
    own = rows[-1]
    assert own["probes"] == config["query_probes"]
    for key in ("recall@5", "ndcg@10", "recall@50"):
        assert own[key] == round(served[key], 4), key
    assert own["pairs"] == served["pairs"]


def test_ease_hybrid_weight_zero_is_the_served_model_and_engine_semantics_hold(trained, tmp_path, monkeypatch):
    """scripts/ease_hybrid.py: its weight-0 row must be `sparcode evaluate`'s number, and its sum must
    behave as an engine's would (unmatched items absent, EASE alone can reach an item)."""
    import importlib.util
    import subprocess
    import sys

    _, _, _, run = trained
    script = Path(__file__).resolve().parents[1] / "scripts" / "ease_hybrid.py"
    out = tmp_path / "hybrid.json"
    subprocess.run([sys.executable, str(script), str(run), "--weights", "0,1", "--positive-only", "--lambda", "10",
                    "--out", str(out)], check=True, capture_output=True)
    result = json.loads(out.read_text())
    served = json.loads(invoke("evaluate", run, "--json").output)
    for key in ("recall@20", "ndcg@50"):
        assert result["test_model_alone"][key] == round(served[key], 4), key
    assert [row["weight"] for row in result["valid"]] == [0.0, 1.0] and result["scale"] > 0

    monkeypatch.syspath_prepend(str(script.parent))  # as running the script puts its folder first
    spec = importlib.util.spec_from_file_location("ease_hybrid", script)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    model = np.array([[2.0, -np.inf, -np.inf, 1.0]])
    ease = np.array([[0.0, 3.0, 0.0, 0.5]])
    assert module.hybrid(model, ease, 0.0, True) is model
    assert module.hybrid(model, ease, 2.0, True).tolist() == [[2.0, 6.0, -np.inf, 2.0]]
    assert module.hybrid(model, ease, 2.0, False).tolist() == [[2.0, 6.0, 0.0, 2.0]]


def test_max_codes_indexes_a_seeded_sample_that_export_and_evaluate_share(trained, tmp_path):
    _, _, _, run = trained
    full = json.loads(invoke("evaluate", run, "--json").output)
    assert full["training_codes"] >= 4
    keep = full["training_codes"] // 2
    export = tmp_path / "export"
    result = invoke("export", run, "--out", export, "--max-codes", keep)
    assert result.exit_code == 0, result.output
    assert f"{keep} codes (a sample of the training windows' {full['training_codes']})" in result.output
    manifest = json.loads((export / "manifest.json").read_text())
    assert (manifest["codes"], manifest["training_codes"], manifest["max_codes"]) == (keep, full["training_codes"], keep)
    terms = np.load(export / "codes.npz", allow_pickle=False)["terms"]
    assert len(terms) == manifest["codes_with_postings"] <= keep and list(terms) == sorted(terms)
    lists = {}
    for backend, options in (("model", ("--max-codes", keep)), ("local", ("--export", export))):
        path = tmp_path / f"{backend}.run"
        result = invoke("evaluate", run, "--backend", backend, *options, "--json", "--run-file", path)
        assert result.exit_code == 0, result.output
        lists[backend] = path.read_text().replace(f"-{backend}", "")
        if backend == "model":
            sampled = json.loads(result.stdout)
            assert sampled["codes"] == keep and sampled["pairs"] == manifest["pairs"] < full["pairs"]
    assert lists["local"] == lists["model"]
    for bad in ("0", "some"):
        refused = invoke("export", run, "--out", tmp_path / "none", "--max-codes", bad)
        assert refused.exit_code == 2 and "--max-codes" in refused.output and not (tmp_path / "none").exists()
    # `all` lifts a run's own serve.max_codes: every training code is indexed again.
    original = (run / "config.json").read_text()
    config = json.loads(original)
    config["serve"]["max_codes"] = keep
    try:
        (run / "config.json").write_text(json.dumps(config))
        sampled_by_config = json.loads(invoke("evaluate", run, "--json").output)
        every = json.loads(invoke("evaluate", run, "--json", "--max-codes", "all").output)
    finally:  # the run is shared with other tests, and its fingerprint covers config.json
        (run / "config.json").write_text(original)
    assert sampled_by_config["codes"] == keep and every["codes"] == every["training_codes"] == full["codes"]


def test_serve_settings_chosen_after_training_are_what_the_export_serves(trained, tmp_path):
    """`--stored-fraction`/`--query-probes` re-choose a trained run's serving without retraining:
    the export made with them, served by the embedded backend, ranks every user as `evaluate`
    with the same options does, and the run's own config is left as it was."""
    _, _, _, run = trained
    config_before = (run / "config.json").read_text()
    export = tmp_path / "export"
    chosen = ("--stored-fraction", "0.1", "--query-probes", "2")
    result = invoke("export", run, "--out", export, *chosen, "--quiet")
    assert result.exit_code == 0, result.output
    manifest = json.loads((export / "manifest.json").read_text())
    assert manifest["query_probes"] == 2 and 0 < manifest["stored_fraction"] <= 0.1 + 1e-9
    lists, metrics = {}, {}
    for backend, options in (("model", chosen), ("local", ("--export", export))):
        path = tmp_path / f"{backend}.run"
        result = invoke("evaluate", run, "--backend", backend, *options, "--json", "--run-file", path)
        assert result.exit_code == 0, result.output
        lists[backend], metrics[backend] = path.read_text().replace(f"-{backend}", ""), json.loads(result.stdout)
    assert lists["local"] == lists["model"]
    assert metrics["model"]["pairs"] == manifest["pairs"] and metrics["model"]["query_probes"] == 2
    run_default = invoke("evaluate", run, "--json", "--run-file", tmp_path / "default.run")
    assert run_default.exit_code == 0, run_default.output
    assert json.loads(run_default.stdout)["pairs"] > manifest["pairs"]
    assert (run / "config.json").read_text() == config_before
    on_backend = invoke("evaluate", run, "--backend", "local", "--export", export, "--query-probes", "2")
    assert on_backend.exit_code == 2 and "pass them to `sparcode export`" in on_backend.output
    zero = invoke("export", run, "--out", tmp_path / "none", "--stored-fraction", "0")
    assert zero.exit_code == 2 and not (tmp_path / "none").exists()


def test_training_codes_are_cached_in_the_run_and_encoded_again_when_the_model_changes(trained, tmp_path, monkeypatch):
    import shutil

    import torch

    from sparcode.encoder import training_codes as cache
    from sparcode.encoder.runs import open_run
    from sparcode.encoder.serving import distinct_codes

    _, _, _, shared_run = trained
    run_dir = tmp_path / "run"
    shutil.copytree(shared_run, run_dir)
    (run_dir / cache.CACHE_NAME).unlink(missing_ok=True)
    encodings = []
    real_user_codes = cache.user_codes
    monkeypatch.setattr(cache, "user_codes", lambda *a, **k: encodings.append(1) or real_user_codes(*a, **k))

    def codes_of(run_dir):
        run = open_run(run_dir)
        model, device = run.load_model()
        train = run.split.train
        return cache.training_codes(model, run, device), distinct_codes(real_user_codes(model, train.users, train.histories, device))

    first, encoded = codes_of(run_dir)
    assert np.array_equal(first, encoded) and len(encodings) == 1 and (run_dir / cache.CACHE_NAME).is_file()
    again, _ = codes_of(run_dir)
    assert np.array_equal(again, encoded) and len(encodings) == 1  # read back, not encoded

    (run_dir / cache.CACHE_NAME).write_bytes(b"PK\x03\x04 not a zip")  # a damaged cache is encoded again
    repaired, _ = codes_of(run_dir)
    assert np.array_equal(repaired, encoded) and len(encodings) == 2
    assert np.array_equal(codes_of(run_dir)[0], encoded) and len(encodings) == 2  # and rewritten whole

    weights = torch.load(run_dir / "weights.pt", weights_only=True)
    name = next(k for k in weights if "codebook" in k or "embed" in k)
    weights[name] = weights[name] + 0.5 * torch.randn_like(weights[name].float()).to(weights[name].dtype)
    torch.save(weights, run_dir / "weights.pt")
    changed, encoded_changed = codes_of(run_dir)  # another model: its own codes, not the cached ones
    assert np.array_equal(changed, encoded_changed) and len(encodings) == 3

    # A run directory nobody may write to still serves; the codes are just not kept.
    (run_dir / cache.CACHE_NAME).unlink()

    def refuse(*args, **kwargs):
        raise PermissionError("read-only")

    import sparcode.staging

    monkeypatch.setattr(sparcode.staging.tempfile, "mkstemp", refuse)  # where the cache's temporary file is made
    unwritable, _ = codes_of(run_dir)
    assert np.array_equal(unwritable, encoded_changed) and not (run_dir / cache.CACHE_NAME).exists()


def test_codebooks_are_seeded_from_many_windows_once_per_run_not_on_resume(trained, tmp_path, monkeypatch):
    import sparcode.encoder.train as training

    root, data, _, _ = trained
    seeded = []
    real = training.seed_codebooks
    monkeypatch.setattr(training, "seed_codebooks", lambda model, train_set, windows, *a, **k: (
        seeded.append(windows), real(model, train_set, windows, *a, **k)))
    cfg = tmp_path / "seeded.json"
    cfg.write_text(json.dumps({**TINY, "model": {**TINY["model"], "kmeans_init_windows": 200},
                               "train": {**TINY["train"], "epochs": 1}}))
    run = tmp_path / "run"
    args = ("train", "--model", "sparcode", "--dataset", data, "--split", "leave-one-out", "--out", run, "--quiet")
    result = invoke(*args, "--config", cfg)
    assert result.exit_code == 0, result.output
    assert seeded == [200]
    assert RunConfig.load(run / "config.json").model.kmeans_init_windows == 200
    result = invoke(*args, "--config", cfg, "--epochs", 2, "--resume")
    assert result.exit_code == 0, result.output
    assert seeded == [200]  # the resumed codebook is the trained one, not a second k-means


def test_an_interrupted_run_resumed_trains_exactly_what_an_uninterrupted_one_does(trained, tmp_path, monkeypatch):
    """Resume restores every random stream (window order, negatives, dropout): the weights and
    history after 1 + 2 epochs equal those after 3 straight. A stop between an epoch's history
    line and its state leaves a line that the resume must not keep twice."""
    import torch

    from sparcode.encoder import checkpoint as ckpt

    root, data, _, _ = trained
    cfg = tmp_path / "three.json"
    cfg.write_text(json.dumps({**TINY, "model": {**TINY["model"], "dropout": 0.3},
                               "train": {**TINY["train"], "epochs": 3}}))
    args = ("train", "--model", "sparcode", "--dataset", data, "--split", "leave-one-out", "--quiet")
    straight, stopped = tmp_path / "straight", tmp_path / "stopped"
    assert invoke(*args, "--config", cfg, "--out", straight).exit_code == 0
    assert invoke(*args, "--config", cfg, "--epochs", 1, "--out", stopped).exit_code == 0
    # The stop came after epoch 2's history line was appended, before its state was saved.
    history = (stopped / "history.jsonl").read_text()
    (stopped / "history.jsonl").write_text(history + history.replace('"epoch": 1', '"epoch": 2') + '{"epo')
    result = invoke(*args[:-1], "--out", stopped, "--resume", "--epochs", 3, "--quiet")
    assert result.exit_code == 0, result.output
    a, b = (ckpt.load_tensors(run / "weights.pt") for run in (straight, stopped))
    assert a.keys() == b.keys() and all(torch.equal(a[key], b[key]) for key in a)
    lines = [json.loads(line) for line in (stopped / "history.jsonl").read_text().splitlines()]
    assert [row["epoch"] for row in lines] == [1, 2, 3]
    expected = [json.loads(line) for line in (straight / "history.jsonl").read_text().splitlines()]
    assert [row["loss"] for row in lines] == [row["loss"] for row in expected]


def test_a_run_patience_stopped_says_so_and_stays_stopped_on_resume(trained, tmp_path):
    root, data, _, _ = trained
    cfg = tmp_path / "impatient.json"
    cfg.write_text(json.dumps({**TINY, "train": {**TINY["train"], "epochs": 40, "patience": 1}}))
    run = tmp_path / "run"
    args = ("train", "--model", "sparcode", "--dataset", data, "--split", "leave-one-out", "--out", run, "--quiet")
    first = invoke(*args, "--config", cfg)
    assert first.exit_code == 0 and "stopped early: no better validation recall@50 for 1 epochs, of 40 planned" \
        in first.output, first.output
    history = (run / "history.jsonl").read_text()
    again = invoke(*args, "--resume", "--epochs", 45)
    assert again.exit_code == 0 and "stopped early" in again.output, again.output
    assert (run / "history.jsonl").read_text() == history  # not one more epoch per resume
    patient = tmp_path / "patient.json"
    patient.write_text(json.dumps({"train": {"patience": 3}}))
    goes_on = invoke(*args, "--resume", "--config", patient)
    assert goes_on.exit_code == 0 and len((run / "history.jsonl").read_text().splitlines()) > len(history.splitlines())
