"""`sparcode es start|stop|status` against a fake distribution: its `bin/<engine>` launcher
daemonises a small Python HTTP server that answers as the engine's node would (`GET /`,
`/_cluster/health`, `/_nodes/_local/process`) and whose command line names the distribution as a
JVM's `-Des.path.home=` does, so the pid checks treat it as the node. No JVM, seconds per test."""
from __future__ import annotations

import _thread
import json
import os
import signal
import socket
import sys
import threading
import time
import zipfile
from pathlib import Path

import pytest

from conftest import run_cli as run
from sparcode.pipeline import local_node
from sparcode.pipeline.local_node import ELASTICSEARCH, OPENSEARCH, SPECS, LocalNode, LocalNodeError

FAKE_NODE = r'''
import http.server, json, os, sys, threading, time
port, engine, delay = int(sys.argv[1]), sys.argv[2], float(sys.argv[3])
threading.Timer(60, os._exit, (0,)).start()  # never outlives a test run by much
time.sleep(delay)  # "starting"


class Node(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        root = {"version": {"distribution": "opensearch", "number": "2.19.0"}} if engine == "opensearch" \
            else {"version": {"number": "8.19.8"}}
        body = {"/": root, "/_cluster/health": {"status": "green"},
                "/_nodes/_local/process": {"nodes": {"n1": {"process": {"id": os.getpid()}}}}}.get(self.path)
        if engine == "elasticsearch" and self.path == "/":
            body = None  # as the integ-test zip: 405, allowed: DELETE
        self.send_response(200 if body else 405 if self.path == "/" else 404)
        if engine == "elasticsearch":
            self.send_header("X-Elastic-Product", "Elasticsearch")
        self.send_header("Content-Type", "application/json")
        self.end_headers()
        self.wfile.write(json.dumps(body or {}).encode())

    def log_message(self, *args):
        pass


http.server.HTTPServer(("127.0.0.1", port), Node).serve_forever()
'''

# bin/<engine> -d -p PIDFILE, as the real launchers are called. It does what <home>/fake.json says.
FAKE_LAUNCHER = r'''#!{python}
import json, pathlib, re, shutil, subprocess, sys
dist = pathlib.Path(__file__).resolve().parents[1]
home, engine = dist.parent, pathlib.Path(__file__).name
todo = json.loads((home / "fake.json").read_text())
if (home / "node.json").exists():
    shutil.copy(home / "node.json", home / "node.json.at-launch")
if todo.get("fail"):
    print(todo["fail"])
    (home / "logs" / "sparcode-local.log").open("a").write("cluster log line of this start\n")
    sys.exit(1)
config = (dist / "config" / f"{engine}.yml").read_text()
port = re.search(r"^http\.port: (\d+)$", config, re.M).group(1)
node = subprocess.Popen([sys.executable, str(home / "fake_node.py"), port, engine, str(todo.get("delay", 0)),
                         f"-Des.path.home={dist}"], start_new_session=True,
                        stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
with open(home / "fake-pids", "a") as fh:
    fh.write(f"{node.pid}\n")
pathlib.Path(sys.argv[sys.argv.index("-p") + 1]).write_text(str(node.pid))
'''


def free_port(offset: int) -> int:
    """A port that is free, and whose transport port (+ offset) is free too."""
    for _ in range(50):
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            port = probe.getsockname()[1]
        if port + offset <= 65535 and local_node._port_free(port + offset):
            return port
    raise AssertionError("no free port pair")


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A killed child of this process stays a zombie until reaped: not alive for these tests.
    return Path(f"/proc/{pid}/stat").read_text().split(") ")[-1][:1] != "Z"


class FakeHome:
    def __init__(self, path: Path, spec=ELASTICSEARCH):
        self.path, self.spec = path, spec
        self.port = free_port(spec.transport_offset)
        dist = LocalNode(spec, path).dist_dir
        (dist / "config").mkdir(parents=True)
        (dist / "bin").mkdir()
        (dist / ".sparcode-unpacked").touch()
        launcher = dist / "bin" / spec.name
        launcher.write_text(FAKE_LAUNCHER.replace("{python}", sys.executable))
        launcher.chmod(0o755)
        (path / "fake_node.py").write_text(FAKE_NODE)
        self.behave()

    def behave(self, **todo) -> None:
        (self.path / "fake.json").write_text(json.dumps(todo))

    def node(self, **kwargs) -> LocalNode:
        return LocalNode(self.spec, self.path, port=kwargs.pop("port", self.port), **kwargs)

    def pids(self) -> list[int]:
        text = (self.path / "fake-pids").read_text() if (self.path / "fake-pids").exists() else ""
        return [int(line) for line in text.split()]

    def live_pids(self) -> list[int]:
        return [pid for pid in self.pids() if _alive(pid)]


@pytest.fixture
def fake_home(tmp_path, monkeypatch):
    """A home holding a fake distribution; every fake node it started is killed afterwards."""
    homes = []

    def make(name="node", spec=ELASTICSEARCH) -> FakeHome:
        home = FakeHome(tmp_path / name, spec)
        monkeypatch.setenv(spec.home_var, str(home.path))
        monkeypatch.setenv(spec.java_home_var, str(tmp_path))  # never run: the launcher is fake
        homes.append(home)
        return home

    # Run as root, start would hand the node to a system user; the fake node needs no such care.
    monkeypatch.setattr(local_node, "_ensure_user", lambda: None)
    yield make
    for home in homes:
        for pid in home.pids():
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass


def es(*args, port: int):
    return run("es", *args, "--port", str(port))


# -- defect 1: overlapping starts --------------------------------------------------------------
def test_a_second_start_while_the_first_is_starting_is_refused_and_keeps_its_pid_file(fake_home):
    home = fake_home()
    home.behave(delay=2.5)
    first: list = []
    thread = threading.Thread(target=lambda: first.append(home.node(heap="256m").start()))
    thread.start()
    try:
        pid_file = home.node().pid_file
        for _ in range(100):
            if pid_file.exists():
                break
            time.sleep(0.05)
        result = es("start", port=home.port)
        assert result.exit_code == 1, result.output
        assert f"a start of elasticsearch from {home.path} is in progress (pid {os.getpid()})" in result.output
        assert len(result.output.strip().splitlines()) == 1
    finally:
        thread.join(timeout=30)
    assert first and first[0] > 0  # the first start went on to a healthy node
    assert len(home.pids()) == 1 and pid_file.read_text() == str(home.pids()[0])
    assert run("es", "stop").output.strip() == "stopped"
    assert home.live_pids() == []


def test_node_json_names_the_port_heap_and_engine_before_the_launcher_runs(fake_home):
    home = fake_home()
    (home.path / "node.json").write_text(json.dumps({"port": 9390, "heap": "1g"}))  # an earlier start's
    result = run("es", "start", "--port", str(home.port), "--heap", "256m")
    assert result.exit_code == 0, result.output
    at_launch = json.loads((home.path / "node.json.at-launch").read_text())
    assert at_launch == {"port": home.port, "heap": "256m", "engine": "elasticsearch"}


def test_a_start_while_the_node_of_an_abandoned_start_comes_up_waits_for_it(fake_home):
    """As after a start whose process alone was stopped (kill, SIGINT to it only) while its node came up."""
    import subprocess

    home = fake_home()
    home.behave(delay=1.5)
    node = home.node()
    node._write_config()
    (home.path / "node.json").write_text(json.dumps({"port": home.port, "heap": "1g", "engine": "elasticsearch"}))
    subprocess.run([node.dist_dir / "bin" / "elasticsearch", "-d", "-p", node.pid_file], check=True)
    result = es("start", port=home.port)
    assert result.exit_code == 0, result.output
    assert "healthy after" in result.output
    assert len(home.pids()) == 1 and node.pid_file.read_text() == str(home.pids()[0])


def test_an_interrupted_start_stops_the_node_it_launched(fake_home):
    home = fake_home()
    home.behave(delay=3)
    threading.Timer(1.0, _thread.interrupt_main).start()  # Ctrl-C while it waits for health
    with pytest.raises(KeyboardInterrupt):
        home.node().start()
    assert len(home.pids()) == 1 and home.live_pids() == []
    assert run("es", "status").exit_code == 1


# -- defect 2: what a failed start shows -------------------------------------------------------
def test_a_failed_start_shows_this_starts_output_not_an_earlier_runs_log(fake_home):
    home = fake_home()
    (home.path / "logs").mkdir()
    (home.path / "logs" / "sparcode-local.log").write_text("OLD cluster line of a healthy run\n" * 50)
    (home.path / "run").mkdir()
    (home.path / "run" / "node.out").write_text("OLD launcher output\n")
    home.behave(fail="Invalid maximum heap size: the cause")
    result = es("start", port=home.port)
    assert result.exit_code == 1, result.output
    assert "Invalid maximum heap size: the cause" in result.output
    assert "cluster log line of this start" in result.output
    assert "OLD" not in result.output
    assert str(home.path / "run" / "node.out") in result.output and str(home.path / "logs") in result.output
    # the launcher's output (where the JVM's refusals go) comes first
    assert result.output.index("the cause") < result.output.index("cluster log line")


@pytest.mark.parametrize("heap", ["banana", "512", "1.5g", "-1g", "0m"])
def test_a_heap_that_is_no_jvm_size_is_a_usage_error_before_anything_runs(tmp_path, monkeypatch, heap):
    monkeypatch.setenv("SPARCODE_ES_HOME", str(tmp_path / "node"))
    result = run("es", "start", "--port", "9399", "--heap", heap)
    assert result.exit_code == 2, result.output
    assert "--heap" in result.output and "512m" in result.output and "Traceback" not in result.output
    assert not (tmp_path / "node").exists()


def test_heap_sizes():
    assert local_node.heap_bytes("512m") == 512 << 20 and local_node.heap_bytes("1G") == 1 << 30
    assert local_node.heap_bytes("1g") == local_node.heap_bytes("1024m")


# -- defect 3: a damaged node.json --------------------------------------------------------------
BAD_STATES = ["", "{", "null", "[9392]", '"9392"', '{"heap": "1g"}', '{"port": "9392"}', '{"port": 0}']


@pytest.mark.parametrize("text", BAD_STATES)
def test_a_damaged_node_json_is_one_line_naming_it_never_the_default_port(tmp_path, monkeypatch, text):
    from sparcode.pipeline.connect import engine_url

    monkeypatch.setenv("SPARCODE_ES_HOME", str(tmp_path))
    monkeypatch.delenv("ELASTICSEARCH_URL", raising=False)
    (tmp_path / "node.json").write_text(text)
    result = run("es", "status")
    assert result.exit_code == 1 and "Traceback" not in result.output
    assert len(result.output.strip().splitlines()) == 1
    assert str(tmp_path / "node.json") in result.output and "sparcode es stop" in result.output
    assert "9250" not in result.output
    # The other commands look the URL up the same way; their error handler prints it as one line.
    with pytest.raises(local_node.NodeStateError, match="node.json"):
        engine_url("elasticsearch")
    stop = run("es", "stop")  # by the pid file: works whatever node.json holds
    assert stop.exit_code == 0 and stop.output.strip() == "not running"


def test_the_commands_report_a_damaged_node_json_as_one_line(tmp_path, monkeypatch, export_dir):
    monkeypatch.setenv("SPARCODE_ES_HOME", str(tmp_path))
    monkeypatch.delenv("ELASTICSEARCH_URL", raising=False)
    monkeypatch.delenv("OPENSEARCH_URL", raising=False)
    (tmp_path / "node.json").write_text("null")
    result = run("index", str(export_dir), "--alias", "x")
    assert result.exit_code == 1 and "Traceback" not in result.output
    assert str(tmp_path / "node.json") in result.output


def test_node_json_without_heap_or_engine_still_gives_the_port(tmp_path):
    (tmp_path / "node.json").write_text('{"port": 9392}')
    node = LocalNode.from_state(ELASTICSEARCH, tmp_path)
    assert node.port == 9392 and node.heap == local_node.DEFAULT_HEAP


def test_a_start_over_a_damaged_node_json_of_no_running_node_writes_it_anew(fake_home):
    home = fake_home()
    (home.path / "node.json").write_text("")
    result = run("es", "start", "--port", str(home.port), "--heap", "256m")
    assert result.exit_code == 0, result.output
    assert json.loads((home.path / "node.json").read_text())["port"] == home.port


# -- defect 4: status names the local node only -------------------------------------------------
@pytest.fixture
def fake_server(tmp_path):
    """A fake node (engine of choice) that this home never started."""
    import subprocess

    script = tmp_path / "fake_node.py"
    script.write_text(FAKE_NODE)
    procs = []

    def serve(engine: str) -> int:
        port = free_port(0)
        procs.append(subprocess.Popen([sys.executable, str(script), str(port), engine, "0"]))
        for _ in range(200):
            if LocalNode(ELASTICSEARCH, tmp_path, port=port).healthy():
                return port
            time.sleep(0.05)
        raise AssertionError("fake node did not come up")

    yield serve
    for proc in procs:
        proc.kill()
        proc.wait()


@pytest.mark.parametrize("name,other", [("elasticsearch", "opensearch"), ("opensearch", "elasticsearch"),
                                          ("elasticsearch", "elasticsearch")])
def test_status_does_not_call_a_node_it_never_started_the_local_node(tmp_path, monkeypatch, fake_server, name,
                                                                      other):
    monkeypatch.setenv(SPECS[name].home_var, str(tmp_path / "home"))  # nothing ever started from it
    port = fake_server(other)
    result = run("es", "status", "--engine", name, "--port", str(port))
    assert result.exit_code == 1, result.output
    assert (f"{other} answers on http://127.0.0.1:{port} but is not the {name} node sparcode started"
            in result.output)
    assert str(tmp_path / "home" / "run" / "node.pid") in result.output


def test_status_prints_the_url_of_the_node_this_home_started(fake_home):
    home = fake_home(spec=OPENSEARCH)
    assert run("es", "start", "--engine", "opensearch", "--port", str(home.port)).exit_code == 0
    result = run("es", "status", "--engine", "opensearch")
    assert result.exit_code == 0 and result.output.strip() == f"http://127.0.0.1:{home.port}"


def test_status_of_a_running_node_asked_about_a_port_another_node_serves(fake_home, fake_server):
    home = fake_home()
    assert es("start", port=home.port).exit_code == 0
    elsewhere = fake_server("elasticsearch")
    result = es("status", port=elsewhere)
    assert result.exit_code == 1 and f"answers on http://127.0.0.1:{elsewhere} but is not" in result.output


def test_status_asked_about_a_port_nothing_serves_names_the_port_the_node_was_started_on(fake_home):
    """`--port` names the wrong port: the running node is not "still starting", it serves another."""
    home = fake_home()
    assert es("start", port=home.port).exit_code == 0
    silent = free_port(7)
    result = es("status", port=silent)
    assert result.exit_code == 1
    assert result.output.strip() == (
        f"elasticsearch is not running on http://127.0.0.1:{silent}; the node sparcode started from {home.path} "
        f"(pid {home.pids()[0]}) was started on port {home.port}: `sparcode es status` without --port checks it")


# -- defect 5: a truncated download ---------------------------------------------------------------
def test_a_truncated_zip_without_its_checksum_is_removed_and_named(tmp_path, monkeypatch):
    home = tmp_path / "node"
    zip_path = LocalNode(ELASTICSEARCH, home).zip_path
    zip_path.parent.mkdir(parents=True)
    whole = tmp_path / "whole.zip"
    with zipfile.ZipFile(whole, "w") as zf:
        zf.writestr("elasticsearch-8.19.8/bin/elasticsearch", os.urandom(200_000))
    zip_path.write_bytes(whole.read_bytes()[:50_000])  # a fetch cut short
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "mvn").write_text("#!/bin/sh\nexit 0\n")  # as dependency:copy over an existing file: no copy
    (bin_dir / "mvn").chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}:{os.environ['PATH']}")
    monkeypatch.setenv("SPARCODE_ES_HOME", str(home))
    monkeypatch.setenv("ES_JAVA_HOME", str(tmp_path))
    result = run("es", "start", "--port", str(free_port(50)))
    assert result.exit_code == 1 and "Traceback" not in result.output
    assert "elasticsearch-8.19.8.zip is corrupt" in result.output and "run again" in result.output
    assert not zip_path.exists()


# -- defect 6: a home that cannot be made --------------------------------------------------------
def test_a_home_that_cannot_be_created_is_one_line_naming_its_variable(tmp_path, monkeypatch):
    (tmp_path / "afile").touch()
    monkeypatch.setenv("SPARCODE_ES_HOME", str(tmp_path / "afile" / "home"))
    result = run("es", "start", "--port", "9399")
    assert result.exit_code == 1 and "Traceback" not in result.output
    assert len(result.output.strip().splitlines()) == 1
    assert f"SPARCODE_ES_HOME={tmp_path / 'afile' / 'home'}" in result.output


# -- defect 7: one home for both engines ------------------------------------------------------------
def test_a_home_holding_the_other_engines_node_is_refused(fake_home, monkeypatch):
    es_home = fake_home()
    assert es("start", port=es_home.port).exit_code == 0
    es_pid = es_home.node().pid_file.read_text()
    monkeypatch.setenv("SPARCODE_OPENSEARCH_HOME", str(es_home.path))  # the same folder, given to OpenSearch
    monkeypatch.setenv("OPENSEARCH_JAVA_HOME", str(es_home.path))
    result = run("es", "start", "--engine", "opensearch", "--port", str(free_port(100)))
    assert result.exit_code == 1, result.output
    assert f"{es_home.path} holds the elasticsearch node" in result.output
    assert "SPARCODE_OPENSEARCH_HOME must differ from SPARCODE_ES_HOME" in result.output
    assert es_home.node().pid_file.read_text() == es_pid
    assert json.loads((es_home.path / "node.json").read_text())["engine"] == "elasticsearch"
    # a node.json of before engines were recorded: the running node tells
    (es_home.path / "node.json").write_text(json.dumps({"port": es_home.port, "heap": "1g"}))
    again = run("es", "start", "--engine", "opensearch", "--port", str(free_port(100)))
    assert again.exit_code == 1 and "holds the elasticsearch node" in again.output
    assert run("es", "stop").output.strip() == "stopped"


# -- defect 9: a home path YAML would cut -----------------------------------------------------------
def test_config_paths_survive_yaml_whatever_they_hold(tmp_path):
    import yaml

    home = tmp_path / "a: b #1 'c\" d"
    node = LocalNode(ELASTICSEARCH, home, port=9399)
    (node.dist_dir / "config").mkdir(parents=True)
    node._write_config()
    config = yaml.safe_load((node.dist_dir / "config" / "elasticsearch.yml").read_text())
    assert config["path.data"] == str(home / "data") and config["path.logs"] == str(home / "logs")
    assert config["http.port"] == 9399


def test_an_elasticsearch_home_with_a_hash_is_refused_up_front(tmp_path, monkeypatch):
    """Elasticsearch cannot run from such a path (it cuts its own path.home at the '#')."""
    monkeypatch.setenv("SPARCODE_ES_HOME", str(tmp_path / "h #1"))
    result = run("es", "start", "--port", "9399")
    assert result.exit_code == 1 and "contains '#'" in result.output and "SPARCODE_ES_HOME" in result.output
    assert not (tmp_path / "h #1").exists()


def test_an_opensearch_home_with_a_hash_is_used(fake_home):
    """OpenSearch runs from such a path (tried on 2.19.0), once its config quotes it."""
    home = fake_home("h #1", spec=OPENSEARCH)
    result = run("es", "start", "--engine", "opensearch", "--port", str(home.port))
    assert result.exit_code == 0, result.output


# -- defect 10: --heap of a running node ------------------------------------------------------------
def test_start_on_a_running_node_says_its_heap_when_another_is_asked_for(fake_home):
    home = fake_home()
    assert run("es", "start", "--port", str(home.port), "--heap", "256m").exit_code == 0
    result = run("es", "start", "--port", str(home.port), "--heap", "512m")
    assert result.exit_code == 0, result.output
    assert "already running with heap 256m" in result.output and "sparcode es stop" in result.output
    plain = run("es", "start", "--port", str(home.port))  # no --heap: nothing to say
    assert plain.output.strip() == f"elasticsearch http://127.0.0.1:{home.port} (already running)"
    same = run("es", "start", "--port", str(home.port), "--heap", "256m")
    assert "heap" not in same.output


def test_a_failed_start_lets_go_of_the_start_lock(fake_home):
    home = fake_home()
    home.behave(fail="boom")
    with pytest.raises(LocalNodeError):
        home.node().start()
    home.behave()
    assert home.node().start() > 0
