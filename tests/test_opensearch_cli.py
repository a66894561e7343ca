"""`sparcode es status|index|reindex --engine opensearch` through CliRunner (the node-less checks
for both engines are in test_es_cli.py)."""
from __future__ import annotations

import pytest

from conftest import run_cli
from engine_contract import check_cli_index_then_reindex


ENGINE = "opensearch"  # for the `alias` fixture
run = run_cli


@pytest.mark.opensearch
def test_status_prints_the_url(os_engine):
    result = run("es", "status", "--engine", "opensearch", "--port", os_engine.url.rsplit(":", 1)[1])
    assert result.exit_code == 0 and result.output.strip() == os_engine.url


@pytest.mark.opensearch
def test_index_then_reindex(os_engine, alias, export_dir):
    check_cli_index_then_reindex(os_engine, alias, export_dir, run, {"OPENSEARCH_URL": os_engine.url},
                                 "--engine", "opensearch")


@pytest.mark.opensearch
def test_engine_is_detected_and_a_mismatch_is_refused(os_engine, alias, export_dir):
    # OPENSEARCH_URL alone: detected as OpenSearch, no --engine needed.
    detected = run("index", str(export_dir), "--alias", alias, env={"OPENSEARCH_URL": os_engine.url,
                                                                     "ELASTICSEARCH_URL": None})
    assert detected.exit_code == 0, detected.output
    assert f"on OpenSearch {os_engine.version}" in detected.output
    # An OpenSearch node named as Elasticsearch: the elasticsearch client cannot talk to it.
    wrong = run("index", str(export_dir), "--alias", alias + "-x", "--engine", "elasticsearch",
                env={"ELASTICSEARCH_URL": os_engine.url})
    assert wrong.exit_code == 1
    assert "is not Elasticsearch (OpenSearch?); for OpenSearch use --engine opensearch" in wrong.output
    assert "--backend opensearch (search, evaluate)" in wrong.output  # search has no --engine


@pytest.mark.opensearch
@pytest.mark.es
def test_an_elasticsearch_node_named_as_opensearch_is_refused(es_engine, export_dir):
    result = run("index", str(export_dir), "--alias", "x", "--engine", "opensearch",
                 env={"OPENSEARCH_URL": es_engine.url})
    assert result.exit_code == 1
    assert "is not OpenSearch" in result.output and "use --engine elasticsearch" in result.output
    assert "--backend es (search, evaluate)" in result.output
