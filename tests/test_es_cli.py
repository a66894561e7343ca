"""The `sparcode es|index|reindex` commands through click's CliRunner."""
from __future__ import annotations

import pytest
from click.testing import CliRunner

from sparcode.cli import main
from sparcode.pipeline import indexer


def run(*args, env=None):
    return CliRunner().invoke(main, list(args), env=env, catch_exceptions=False)


def test_es_start_without_java_is_one_clear_line(tmp_path, monkeypatch):
    monkeypatch.setenv("SPARCODE_ES_HOME", str(tmp_path / "es"))
    monkeypatch.setenv("PATH", str(tmp_path))  # neither java nor mvn
    monkeypatch.delenv("ES_JAVA_HOME", raising=False)
    result = run("es", "start", "--port", "9299")
    assert result.exit_code != 0
    assert "java not found" in result.output and "Traceback" not in result.output


def test_es_status_exits_nonzero_when_down(tmp_path, monkeypatch):
    monkeypatch.setenv("SPARCODE_ES_HOME", str(tmp_path / "es"))
    result = run("es", "status", "--port", "9")
    assert result.exit_code == 1
    assert "not running on http://127.0.0.1:9" in result.output


def test_unreachable_node_is_one_line_without_secrets(export_dir):
    result = run("index", str(export_dir), "--alias", "x",
                 env={"ELASTICSEARCH_URL": "http://bob:s3cret@127.0.0.1:9"})
    assert result.exit_code == 1
    assert "not reachable at http://***@127.0.0.1:9" in result.output
    assert "s3cret" not in result.output and "Traceback" not in result.output


def test_bad_export_is_refused(tmp_path):
    result = run("index", str(tmp_path), "--alias", "x")
    assert result.exit_code == 1 and "no manifest.json" in result.output


@pytest.mark.es
def test_index_then_reindex(es_client, alias, export_dir):
    url = es_client.transport.node_pool.get().base_url
    env = {"ELASTICSEARCH_URL": url}
    first = run("index", str(export_dir), "--alias", alias, env=env)
    assert first.exit_code == 0, first.output
    assert "400 docs" in first.output and f"alias {alias} -> {alias}-ab12cd34-" in first.output
    (old,) = indexer.alias_holders(es_client, alias)

    again = run("index", str(export_dir), "--alias", alias, env=env)
    assert again.exit_code == 1 and "use `sparcode reindex`" in again.output

    second = run("reindex", str(export_dir), "--alias", alias, "--delete-old", env=env)
    assert second.exit_code == 0, second.output
    assert f"deleted {old}" in second.output
    (new,) = indexer.alias_holders(es_client, alias)
    assert new != old and not es_client.indices.exists(index=old)
    assert es_client.count(index=alias)["count"] == 400


def test_a_server_of_another_major_is_refused():
    from types import SimpleNamespace

    from sparcode.pipeline.connect import ConnectionProblem, check_server

    fake = SimpleNamespace(nodes=SimpleNamespace(info=lambda **_: {"nodes": {"n1": {"version": "9.1.0"}}}))
    with pytest.raises(ConnectionProblem, match=r"version 9\.1\.0; sparcode needs 8\.x"):
        check_server(fake, "https://u:pw@es.example:9200")
    assert check_server(SimpleNamespace(nodes=SimpleNamespace(
        info=lambda **_: {"nodes": {"n1": {"version": "8.19.8"}}})), "http://x") == "8.19.8"
