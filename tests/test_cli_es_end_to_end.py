"""Train → export → index into the live Elasticsearch node → search and evaluate through it.

ES must reproduce the model exactly: same metrics and the same ranked lists as the embedded
backend and as the served-exact offline evaluation, and `_score` equal to the model's score.
"""
import json

import pytest

from test_cli_end_to_end import invoke, trained  # noqa: F401  (module-scoped fixture)

pytestmark = pytest.mark.es


@pytest.fixture(scope="module")
def indexed(trained, es_engine):  # noqa: F811
    root, _, _, run = trained
    export = root / "export-es"
    assert invoke("export", run, "--out", export, "--quiet").exit_code == 0
    alias = "sparcode-test-e2e"
    from conftest import drop_alias_family

    drop_alias_family(es_engine, alias)
    result = invoke("reindex", export, "--alias", alias, "--engine", "elasticsearch")
    assert result.exit_code == 0, result.output
    yield root, run, export, alias
    drop_alias_family(es_engine, alias)


def test_es_evaluation_equals_local_and_served(indexed, tmp_path):
    root, run, export, alias = indexed
    runs = {}
    for backend in ("model", "local", "es"):
        path = tmp_path / f"{backend}.run"
        result = invoke("evaluate", run, "--backend", backend, "--alias", alias, "--export", export, "--json",
                        "--run-file", path)
        assert result.exit_code == 0, result.output
        runs[backend] = (json.loads(result.output), path.read_text().replace(f"-{backend}", ""))
    for backend in ("local", "es"):
        assert runs[backend][1] == runs["model"][1], f"{backend} ranked lists differ from the model's"
        for key in ("recall@50", "ndcg@10", "hr@20"):
            assert runs[backend][0][key] == runs["model"][0][key]


def test_es_search_scores_equal_local_scores(indexed):
    root, run, export, alias = indexed
    for user in ("u0", "u7", "u42"):
        es = invoke("search", "--run", run, "--user", user, "--backend", "es", "--alias", alias, "--export", export,
                    "--json", "--k", "20")
        local = invoke("search", "--run", run, "--user", user, "--backend", "local", "--export", export,
                       "--json", "--k", "20")
        assert es.exit_code == 0, es.output
        assert json.loads(es.output)["hits"] == json.loads(local.output)["hits"]


def test_es_refuses_export_of_another_model(indexed, tmp_path):
    root, run, export, alias = indexed
    other = tmp_path / "other-export"
    other.mkdir()
    for name in ("items.jsonl.gz", "codes.npz"):
        (other / name).write_bytes((export / name).read_bytes())
    manifest = json.loads((export / "manifest.json").read_text())
    manifest["fingerprint"] = "0" * 64
    (other / "manifest.json").write_text(json.dumps(manifest))
    result = invoke("search", "--run", run, "--user", "u0", "--backend", "es", "--alias", alias, "--export", other)
    assert result.exit_code != 0 and "exported from another model" in result.output
