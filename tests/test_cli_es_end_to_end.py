"""Train → export → index into the live Elasticsearch node → search and evaluate through it.

ES must reproduce the model exactly: same metrics and the same ranked lists as the embedded
backend and as the served-exact offline evaluation, and `_score` equal to the model's score.
"""
import json

import pytest

from test_cli_end_to_end import assert_backends_match_model, invoke, served_through, trained  # noqa: F401

pytestmark = pytest.mark.es


@pytest.fixture(scope="module")
def indexed(trained, es_engine):  # noqa: F811
    yield from served_through(trained, es_engine, "elasticsearch", "sparcode-test-e2e")


def test_es_evaluation_equals_local_and_served(indexed, tmp_path):
    assert_backends_match_model(indexed, tmp_path, ("local", "es"))


def test_es_search_scores_equal_local_scores(indexed):
    root, run, export, alias = indexed
    for user in ("u0", "u7", "u42"):
        es = invoke("search", "--run", run, "--user", user, "--backend", "es", "--alias", alias, "--export", export,
                    "--json", "--k", "20")
        local = invoke("search", "--run", run, "--user", user, "--backend", "local", "--export", export,
                       "--json", "--k", "20")
        assert es.exit_code == 0, es.output
        assert json.loads(es.stdout)["hits"] == json.loads(local.stdout)["hits"]


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


def test_url_flag_wins_over_the_environment(indexed, es_engine, tmp_path, monkeypatch):
    """--url names the node for one command: with ELASTICSEARCH_URL pointing at a dead port, index,
    search and evaluate given --url still reach the live node (and without it they fail)."""
    from conftest import drop_alias_family

    root, run, export, alias = indexed
    monkeypatch.setenv("ELASTICSEARCH_URL", "http://127.0.0.1:9")
    refused = invoke("search", "--run", run, "--user", "u0", "--backend", "es", "--alias", alias, "--export", export)
    assert refused.exit_code == 1 and "127.0.0.1:9" in refused.output
    other = f"{alias}-url"
    drop_alias_family(es_engine, other)
    try:
        built = invoke("index", export, "--alias", other, "--url", es_engine.url)
        assert built.exit_code == 0, built.output
        found = invoke("search", "--run", run, "--user", "u0", "--alias", other, "--export", export, "--url",
                       es_engine.url, "--json", "--k", "20")  # --url alone makes es the default backend
        assert found.exit_code == 0, found.output
        assert json.loads(found.stdout)["backend"] == "es"
        local = invoke("search", "--run", run, "--user", "u0", "--backend", "local", "--export", export, "--json",
                       "--k", "20")
        assert json.loads(found.stdout)["hits"] == json.loads(local.stdout)["hits"]
        served = invoke("evaluate", run, "--backend", "es", "--alias", other, "--export", export, "--url",
                        es_engine.url, "--json")
        model = invoke("evaluate", run, "--json")
        assert served.exit_code == 0, served.output
        assert json.loads(served.stdout)["recall@50"] == json.loads(model.stdout)["recall@50"]
    finally:
        drop_alias_family(es_engine, other)
