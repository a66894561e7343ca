"""The ES end-to-end invariants on OpenSearch: a `rank_features` index reproduces the model's
served-exact ranking and metrics through `evaluate --backend opensearch`."""
import json

import pytest

from test_cli_end_to_end import invoke, trained  # noqa: F401  (module-scoped fixture)

pytestmark = pytest.mark.opensearch


@pytest.fixture(scope="module")
def indexed(trained, os_engine):  # noqa: F811
    root, _, _, run = trained
    export = root / "export-os"
    assert invoke("export", run, "--out", export, "--quiet").exit_code == 0
    alias = "sparcode-test-os-e2e"
    from conftest import drop_alias_family

    drop_alias_family(os_engine, alias)
    result = invoke("reindex", export, "--alias", alias, "--engine", "opensearch")
    assert result.exit_code == 0, result.output
    yield root, run, export, alias
    drop_alias_family(os_engine, alias)


def test_opensearch_evaluation_equals_served_model(indexed, tmp_path):
    root, run, export, alias = indexed
    runs = {}
    for backend in ("model", "opensearch"):
        path = tmp_path / f"{backend}.run"
        result = invoke("evaluate", run, "--backend", backend, "--alias", alias, "--export", export, "--json",
                        "--run-file", path)
        assert result.exit_code == 0, result.output
        runs[backend] = (json.loads(result.output), path.read_text().replace(f"-{backend}", ""))
    assert runs["opensearch"][1] == runs["model"][1], "OpenSearch ranked lists differ from the model's"
    for key in ("recall@50", "ndcg@10", "hr@20"):
        assert runs["opensearch"][0][key] == runs["model"][0][key]


def test_opensearch_search_equals_local_and_explains_rank_feature(indexed):
    root, run, export, alias = indexed
    for user in ("u1", "u9"):
        found = invoke("search", "--run", run, "--user", user, "--backend", "opensearch", "--alias", alias,
                       "--export", export, "--json", "--k", "20")
        local = invoke("search", "--run", run, "--user", user, "--backend", "local", "--export", export,
                       "--json", "--k", "20")
        assert found.exit_code == 0, found.output
        assert json.loads(found.output)["hits"] == json.loads(local.output)["hits"]
    explained = invoke("search", "--run", run, "--user", "u1", "--backend", "opensearch", "--alias", alias,
                       "--export", export, "--explain")
    assert explained.exit_code == 0, explained.output
    assert '"rank_feature"' in explained.output and '"linear"' in explained.output
