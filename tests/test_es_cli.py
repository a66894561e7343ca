"""The `sparcode es|index|reindex` commands through click's CliRunner."""
from __future__ import annotations

import json
import pathlib
import subprocess
import sys
import time

import pytest

from conftest import run_cli
from engine_contract import check_cli_index_then_reindex


ENGINE = "elasticsearch"  # for the `alias` fixture
run = run_cli


@pytest.mark.parametrize("engine_name,home_var,java_var", [
    ("elasticsearch", "SPARCODE_ES_HOME", "ES_JAVA_HOME"),
    ("opensearch", "SPARCODE_OPENSEARCH_HOME", "OPENSEARCH_JAVA_HOME")])
def test_es_start_without_java_is_one_clear_line(tmp_path, monkeypatch, engine_name, home_var, java_var):
    monkeypatch.setenv(home_var, str(tmp_path / "node"))
    monkeypatch.setenv("PATH", str(tmp_path))  # neither java nor mvn
    monkeypatch.delenv(java_var, raising=False)
    result = run("es", "start", "--engine", engine_name, "--port", "9299")
    assert result.exit_code != 0
    assert "java not found" in result.output and java_var in result.output
    assert "Traceback" not in result.output


@pytest.mark.parametrize("engine_name,home_var", [("elasticsearch", "SPARCODE_ES_HOME"),
                                                   ("opensearch", "SPARCODE_OPENSEARCH_HOME")])
def test_es_start_on_a_taken_port_is_one_line_before_java_runs(tmp_path, monkeypatch, engine_name, home_var):
    import socket

    monkeypatch.setenv(home_var, str(tmp_path / "node"))
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = run("es", "start", "--engine", engine_name, "--port", str(port))
    assert result.exit_code == 1, result.output
    assert result.output.strip() == f"Error: port {port} on 127.0.0.1 is taken by another program; choose another --port"


@pytest.mark.parametrize("port", ["0", "-5", "65536"])
def test_es_start_refuses_a_port_that_cannot_be(port):
    result = run("es", "start", "--port", port)
    assert result.exit_code == 2 and "1<=x<=65535" in result.output


@pytest.mark.parametrize("port,message", [("80", "port 80 is privileged"),
                                          ("65500", "no room for the transport port")])
def test_es_start_refuses_ports_the_node_cannot_bind_before_java_runs(tmp_path, monkeypatch, port, message):
    monkeypatch.setenv("SPARCODE_ES_HOME", str(tmp_path / "node"))
    monkeypatch.setenv("PATH", str(tmp_path))  # were Java reached, the error would be "java not found"
    result = run("es", "start", "--port", port)
    assert result.exit_code == 1 and message in result.output and len(result.output.strip().splitlines()) == 1


def test_a_server_error_is_its_most_specific_reason_on_one_line():
    from sparcode.pipeline.engine import error_reason

    shards = {"error": {"root_cause": [{"type": "illegal_argument_exception",
                                        "reason": "Result window is too large, from + size must be less than or equal "
                                                  "to: [10000] but was [10001]."}],
                        "type": "search_phase_execution_exception", "reason": "all shards failed"}}
    assert error_reason(shards, "?").startswith("Result window is too large")
    parse = {"error": {"reason": "Numeric value (99999999999999999999) out of range of int\n at [Source: {\"size\"..."}}
    assert error_reason(parse, "?") == "Numeric value (99999999999999999999) out of range of int"
    assert error_reason({"error": {"reason": "h" * 500 + "t" * 500}}, "?") == "h" * 150 + "…" + "t" * 150
    assert error_reason("<html>bad gateway</html>", "HTTP 502") == "HTTP 502"
    closed = {"error": {"root_cause": [{"type": "index_closed_exception", "reason": "closed", "index": "sc-1"}]}}
    assert error_reason(closed, "?") == "closed (index sc-1, index_closed_exception)"


@pytest.fixture
def recorded_process(tmp_path):
    """A live process recorded as the node of a fake home, as `es start` records one (pid file and
    port); `as_node` makes its command line name the home's distribution as the JVM's would."""
    from sparcode.pipeline.local_node import ELASTICSEARCH, LocalNode

    home = tmp_path / "node"
    (home / "run").mkdir(parents=True)
    (home / "node.json").write_text(json.dumps({"port": 9298, "heap": "1g"}))
    started = []

    def record(as_node: bool, home_suffix: str = "") -> subprocess.Popen:
        dist = LocalNode(ELASTICSEARCH, home).dist_dir
        extra = [f"-Des.path.home={dist.resolve()}{home_suffix}"] if as_node else []
        proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)", *extra])
        started.append(proc)
        for _ in range(100):  # /proc shows the new command line a moment after Popen returns
            if b"time.sleep" in pathlib.Path(f"/proc/{proc.pid}/cmdline").read_bytes():
                break
            time.sleep(0.01)
        (home / "run" / "node.pid").write_text(str(proc.pid))
        return proc

    yield home, record
    for proc in started:
        proc.kill()
        proc.wait()


def test_es_start_on_another_port_leaves_the_running_node_alone(recorded_process, monkeypatch):
    home, record = recorded_process
    node = record(as_node=True)
    monkeypatch.setenv("SPARCODE_ES_HOME", str(home))
    result = run("es", "start", "--port", "9299")
    assert result.exit_code != 0 and "Traceback" not in result.output
    assert "already runs on port 9298" in result.output and "SPARCODE_ES_HOME" in result.output
    assert (home / "run" / "node.pid").read_text() == str(node.pid) and node.poll() is None


def test_es_stop_never_signals_a_process_that_reused_the_nodes_pid(recorded_process, monkeypatch):
    """After a reboot the pid file can name another program; stop must not kill it."""
    home, record = recorded_process
    stranger = record(as_node=False)
    monkeypatch.setenv("SPARCODE_ES_HOME", str(home))
    result = run("es", "stop")
    assert result.exit_code == 0, result.output
    assert "not running" in result.output
    time.sleep(0.3)
    assert stranger.poll() is None  # still alive


def test_es_stop_never_signals_a_node_of_a_sibling_folder(recorded_process, monkeypatch):
    home, record = recorded_process
    sibling = record(as_node=True, home_suffix="-old")
    monkeypatch.setenv("SPARCODE_ES_HOME", str(home))
    assert "not running" in run("es", "stop").output
    time.sleep(0.3)
    assert sibling.poll() is None


def test_es_stop_stops_the_recorded_node(recorded_process, monkeypatch):
    home, record = recorded_process
    node = record(as_node=True)
    monkeypatch.setenv("SPARCODE_ES_HOME", str(home))
    result = run("es", "stop")
    assert result.exit_code == 0 and "not running" not in result.output, result.output
    assert node.wait(timeout=10) is not None


@pytest.mark.parametrize("engine_name,home_var", [("elasticsearch", "SPARCODE_ES_HOME"),
                                                   ("opensearch", "SPARCODE_OPENSEARCH_HOME")])
def test_es_status_exits_nonzero_when_down(tmp_path, monkeypatch, engine_name, home_var):
    monkeypatch.setenv(home_var, str(tmp_path / "node"))
    result = run("es", "status", "--engine", engine_name, "--port", "9")
    assert result.exit_code == 1
    assert f"{engine_name} is not running on http://127.0.0.1:9" in result.output


@pytest.mark.parametrize("engine_name,label", [("elasticsearch", "Elasticsearch"), ("opensearch", "OpenSearch")])
def test_unreachable_node_is_one_line_without_secrets(export_dir, engine_name, label):
    result = run("index", str(export_dir), "--alias", "x", "--engine", engine_name,
                 env={f"{engine_name.upper()}_URL": "http://bob:s3cret@127.0.0.1:9"})
    assert result.exit_code == 1
    assert f"{label} not reachable at http://***@127.0.0.1:9" in result.output
    assert "s3cret" not in result.output and "Traceback" not in result.output


@pytest.mark.parametrize("engine_name", ["elasticsearch", "opensearch"])
@pytest.mark.parametrize("url", ["http://bob:s3cret@127.0.0.1:notaport", "http://bob:s3cret@[::1",
                                 "bob:s3cret@127.0.0.1:9", "http://bob:s3cret/x@127.0.0.1:9",
                                 "http://bob:s3cret#?x@127.0.0.1:9"])
def test_malformed_url_is_one_line_without_secrets(export_dir, engine_name, url):
    # Malformed URLs are where parsers raise or misread the userinfo, and where we print the URL.
    result = run("index", str(export_dir), "--alias", "x", "--engine", engine_name,
                 env={f"{engine_name.upper()}_URL": url})
    assert result.exit_code == 1, result.output
    assert "***@" in result.output
    assert "s3cret" not in result.output and "Traceback" not in result.output


def test_bad_export_is_refused(tmp_path):
    result = run("index", str(tmp_path), "--alias", "x")
    assert result.exit_code == 1 and "no manifest.json" in result.output


@pytest.mark.es
def test_index_then_reindex(es_engine, alias, export_dir):
    check_cli_index_then_reindex(es_engine, alias, export_dir, run, {"ELASTICSEARCH_URL": es_engine.url})


@pytest.mark.es
def test_engine_is_detected_from_the_server(es_engine, alias, export_dir):
    # No --engine: the server at ELASTICSEARCH_URL says what it is.
    result = run("index", str(export_dir), "--alias", alias, env={"ELASTICSEARCH_URL": es_engine.url})
    assert result.exit_code == 0, result.output
    assert f"on Elasticsearch {es_engine.version}" in result.output


def test_a_server_of_another_major_is_refused():
    from types import SimpleNamespace

    from sparcode.pipeline.connect import ConnectionProblem
    from sparcode.pipeline.engine_es import ElasticsearchEngine

    def fake(version):
        return SimpleNamespace(nodes=SimpleNamespace(info=lambda **_: {"nodes": {"n1": {"version": version}}}))

    with pytest.raises(ConnectionProblem, match=r"version 9\.1\.0; sparcode needs 8\.x"):
        ElasticsearchEngine(fake("9.1.0"), "https://u:pw@es.example:9200").check()
    assert ElasticsearchEngine(fake("8.19.8"), "http://x").check() == "8.19.8"


def test_index_help_states_the_settle_rule_the_indexer_applies():
    # The help is plain text; this keeps it from drifting from the constants the build uses.
    from sparcode.commands.index import command, reindex_command
    from sparcode.pipeline.indexer import SETTLE_MIN_DOCS, SETTLE_TIMEOUT_S

    for cmd in (command, reindex_command):
        assert f"{SETTLE_MIN_DOCS:,} items" in cmd.help
        assert f"up to {SETTLE_TIMEOUT_S} s" in cmd.help


def test_a_server_that_is_neither_engine_is_named_so(export_dir):
    import http.server
    import threading

    class NotASearchNode(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.end_headers()
            self.wfile.write(b"{}")

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), NotASearchNode)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}"
        result = run("index", str(export_dir), "--alias", "x", env={"ELASTICSEARCH_URL": url})
    finally:
        server.shutdown()
    assert result.exit_code == 1, result.output
    assert f"{url} answers neither as Elasticsearch" in result.output and "ELASTICSEARCH_URL" in result.output
