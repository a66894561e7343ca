"""The ES end-to-end invariants on OpenSearch: a `rank_features` index reproduces the model's
served-exact ranking and metrics through `evaluate --backend opensearch`."""
import json

import pytest

from test_cli_end_to_end import assert_backends_match_model, invoke, served_through, trained  # noqa: F401

pytestmark = pytest.mark.opensearch


@pytest.fixture(scope="module")
def indexed(trained, os_engine):  # noqa: F811
    yield from served_through(trained, os_engine, "opensearch", "sparcode-test-os-e2e")


def test_opensearch_evaluation_equals_served_model(indexed, tmp_path):
    assert_backends_match_model(indexed, tmp_path, ("opensearch",))


def test_opensearch_search_equals_local_and_explains_rank_feature(indexed):
    root, run, export, alias = indexed
    for user in ("u1", "u9"):
        found = invoke("search", "--run", run, "--user", user, "--backend", "opensearch", "--alias", alias,
                       "--export", export, "--json", "--k", "20")
        local = invoke("search", "--run", run, "--user", user, "--backend", "local", "--export", export,
                       "--json", "--k", "20")
        assert found.exit_code == 0, found.output
        assert json.loads(found.stdout)["hits"] == json.loads(local.stdout)["hits"]
    explained = invoke("search", "--run", run, "--user", "u1", "--backend", "opensearch", "--alias", alias,
                       "--export", export, "--explain")
    assert explained.exit_code == 0, explained.output
    assert '"rank_feature"' in explained.output and '"linear"' in explained.output


def test_search_url_alone_finds_the_engine_it_names(indexed, os_engine, monkeypatch):
    """`search --url` without --backend asks the node what it is, as `index --url` does."""
    root, run, export, alias = indexed
    monkeypatch.delenv("OPENSEARCH_URL", raising=False)
    found = invoke("search", "--run", run, "--user", "u1", "--alias", alias, "--export", export, "--url",
                   os_engine.url, "--json", "--k", "20")
    assert found.exit_code == 0, found.output
    assert json.loads(found.stdout)["backend"] == "opensearch"
    local = invoke("search", "--run", run, "--user", "u1", "--backend", "local", "--export", export, "--json", "--k", "20")
    assert json.loads(found.stdout)["hits"] == json.loads(local.stdout)["hits"]
