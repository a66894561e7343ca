"""A throwaway single-node Elasticsearch or OpenSearch for tests and local use, fetched through Maven.

We use the `integ-test-zip` distributions because they are what both projects publish to
Maven Central, and Maven is the only package route this project can count on offline-ish
machines (no Docker, no artifacts.elastic.co). Elasticsearch's lacks mapper-extras (no
`rank_features`) but has `sparse_vector`, which is all its default pipeline needs.
OpenSearch's holds only transport-netty4 and OpenSearch has no `sparse_vector`, so we add
the mapper-extras module from its Maven jar: that gives it `rank_features`.
One `LocalNode` runs either; an `EngineSpec` holds everything that differs.
"""
from __future__ import annotations

import contextlib
import hashlib
import http.client
import json
import os
import pwd
import re
import shutil
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
import zipfile
from dataclasses import dataclass
from pathlib import Path

import tenacity

from sparcode import locks
from sparcode.checkout import repository_root
from sparcode.errors import SparcodeError
from sparcode.staging import UnreadableFile, atomic_write_bytes, read_json

DEFAULT_HEAP = "1g"
CLUSTER_NAME = "sparcode-local"  # also the name of the node's main log file
# One unprivileged user runs either engine (both refuse to run as root).
ES_USER = "sparcode-es"
START_TIMEOUT_S = 120.0


@dataclass(frozen=True)
class Module:
    """A module shipped as a plain Maven jar, installed next to the distribution's own."""
    name: str
    artifact: str
    classname: str
    description: str


@dataclass(frozen=True)
class EngineSpec:
    name: str  # also the distribution's directory prefix, start script and artifactId
    version: str
    artifact: str
    default_port: int
    transport_offset: int  # transport port = HTTP port + this
    java_home_var: str
    home_var: str
    cache_dir: str
    extra_config: str = ""
    modules: tuple[Module, ...] = ()
    # Elasticsearch finds its own files through a URL of its path, which ends at a '#'.
    hash_in_path_ok: bool = True


ELASTICSEARCH = EngineSpec(
    name="elasticsearch", version="8.19.8",
    artifact="org.elasticsearch.distribution.integ-test-zip:elasticsearch:8.19.8:zip",
    default_port=9250, transport_offset=50, java_home_var="ES_JAVA_HOME", home_var="SPARCODE_ES_HOME",
    cache_dir="es", extra_config="xpack.security.enabled: false\n", hash_in_path_ok=False)
# Ports of its own, so both nodes can run side by side (the test script starts both).
OPENSEARCH = EngineSpec(
    name="opensearch", version="2.19.0",
    artifact="org.opensearch.distribution.integ-test-zip:opensearch:2.19.0:zip",
    default_port=9260, transport_offset=100, java_home_var="OPENSEARCH_JAVA_HOME",
    home_var="SPARCODE_OPENSEARCH_HOME", cache_dir="opensearch",
    modules=(Module("mapper-extras", "org.opensearch.plugin:mapper-extras-client:2.19.0",
                    "org.opensearch.index.mapper.MapperExtrasPlugin",
                    "Adds rank_features and other field types (from the Maven client jar)"),))
SPECS = {spec.name: spec for spec in (ELASTICSEARCH, OPENSEARCH)}
ENGINES = tuple(SPECS)
DEFAULT_PORT = ELASTICSEARCH.default_port


class LocalNodeError(SparcodeError, RuntimeError):
    """A failure the user can act on; the message is one line."""


class NodeStateError(LocalNodeError, UnreadableFile):
    """node.json is there but cannot be used. An `UnreadableFile` too, so the commands that only
    look up the local node's URL (index, search, ...) report it as one line as well."""


_HEAP = re.compile(r"[1-9][0-9]*[kmgt]", re.IGNORECASE)


def heap_bytes(heap: str) -> int:
    """The size a JVM heap setting such as 512m or 2g stands for; ValueError for anything else
    (the JVM's own refusal is a stack of lines in the node's output)."""
    if not _HEAP.fullmatch(heap):
        raise ValueError(f"--heap {heap!r}: expected a JVM size such as 512m, 1g or 2g")
    return int(heap[:-1]) << (10 * "kmgt".index(heap[-1].lower()) + 10)


# Neither engine documents a least heap, and the JVM itself takes a few megabytes: a node given so
# little comes up and then dies of an OutOfMemoryError, reported in its log rather than here.
# 256m is what Elasticsearch's own launcher once gave a node at the least (ES_MIN_MEM).
MIN_HEAP = "256m"


def check_heap(heap: str) -> None:
    """ValueError (one line) unless `heap` is a JVM size a node can start with."""
    if heap_bytes(heap) < heap_bytes(MIN_HEAP):
        raise ValueError(f"{heap!r} is below {MIN_HEAP}, the least heap sparcode starts a node with")


def default_home(spec: EngineSpec = ELASTICSEARCH) -> Path:
    env = os.environ.get(spec.home_var)
    if env:
        return Path(env).expanduser().resolve()
    repo = repository_root()
    if repo:
        return repo / ".cache" / spec.cache_dir  # git-ignored
    # Installed: one per-user cache, so `es stop` finds the node `es start` ran from any folder.
    # A relative XDG_CACHE_HOME is ignored, as the XDG spec says: it would depend on that folder.
    xdg = os.environ.get("XDG_CACHE_HOME", "")
    cache = Path(xdg) if os.path.isabs(xdg) else Path.home() / ".cache"
    return cache / "sparcode" / spec.cache_dir


def local_url(port: int = DEFAULT_PORT) -> str:
    return f"http://127.0.0.1:{port}"


@dataclass
class LocalNode:
    spec: EngineSpec
    home: Path
    port: int = 0  # 0: the spec's default port
    heap: str = DEFAULT_HEAP

    def __post_init__(self):
        self.port = self.port or self.spec.default_port

    # -- layout ---------------------------------------------------------------------------
    @property
    def zip_path(self) -> Path:
        return self.home / "dist" / _artifact_file(self.spec.artifact)

    @property
    def dist_dir(self) -> Path:
        return self.home / f"{self.spec.name}-{self.spec.version}"

    @property
    def run_dir(self) -> Path:
        return self.home / "run"

    @property
    def pid_file(self) -> Path:
        return self.run_dir / "node.pid"

    @property
    def log_file(self) -> Path:
        return self.run_dir / "node.out"

    @property
    def state_file(self) -> Path:
        # Remembers the port of the running node so `status`/`stop` need no flags.
        return self.home / "node.json"

    @property
    def cluster_log(self) -> Path:
        return self.home / "logs" / f"{CLUSTER_NAME}.log"

    @property
    def url(self) -> str:
        return local_url(self.port)

    # -- lifecycle ------------------------------------------------------------------------
    def start(self) -> float:
        """Start the node (fetching/unpacking it first if needed); return seconds to healthy, 0.0
        when it was already running (then `heap` is the running node's, if recorded)."""
        try:
            heap_bytes(self.heap)
        except ValueError as err:
            raise LocalNodeError(str(err)) from None
        try:
            check_heap(self.heap)
        except ValueError as err:
            raise LocalNodeError(f"--heap {err}") from None
        if "#" in str(self.home) and not self.spec.hash_in_path_ok:
            raise LocalNodeError(f"{self.spec.home_var}={self.home} contains '#', from which {self.spec.name} "
                                 "cannot run; choose a folder without it")
        with self._lock("start"):
            self._refuse_other_engine()
            pid = self.running_pid()
            if pid is not None:
                return self._join_running(pid)
            self._check_ports()
            return self._launch()

    def _join_running(self, pid: int) -> float:
        state = self._read_state()
        if state is None:
            raise self._damaged(f"{self.state_file} is missing while pid {pid} runs")
        if state["port"] != self.port:
            # Starting anyway would drop the running node's pid file (leaving it unstoppable
            # by `es stop`) and then fail on its data-directory lock.
            raise LocalNodeError(f"{self.spec.name} from {self.home} already runs on port {state['port']} "
                                 f"(pid {pid}); stop it first ({self._cli('stop')}) or set "
                                 f"{self.spec.home_var} to another directory for a second node")
        self.heap = state["heap"] or self.heap  # a running JVM keeps its heap until restarted
        if self.healthy():
            return 0.0
        # An earlier start was interrupted and its JVM is still coming up: wait for it, rather
        # than launch a second JVM on the same data.
        started = time.monotonic()
        self._wait_healthy(self._log_marks())
        return time.monotonic() - started

    def _launch(self) -> float:
        java_home = _java_home(self.spec.java_home_var)
        self._ensure_unpacked()
        user = _ensure_user()
        self._write_config()
        self._chown(user)
        # Before the launch: a node that comes up after this process was stopped (a signal to it
        # alone) is then still found by `es status`/`es stop` and the other commands.
        atomic_write_bytes(self.state_file, json.dumps(
            {"port": self.port, "heap": self.heap, "engine": self.spec.name}).encode())
        self.pid_file.unlink(missing_ok=True)  # a dead node's: none runs from here (checked under the lock)
        marks = self._log_marks()
        started = time.monotonic()
        name = self.spec.name
        cmd = ["env", f"{self.spec.java_home_var}={java_home}", str(self.dist_dir / "bin" / name),
               "-d", "-p", str(self.pid_file)]
        if user is not None:
            cmd = ["runuser", "-u", user, "--", *cmd]
        try:
            # A file, not a pipe: the daemonised JVM keeps the descriptor open forever.
            with open(self.log_file, "ab") as log:
                rc = subprocess.run(cmd, stdout=log, stderr=subprocess.STDOUT, cwd=self.dist_dir).returncode
            if rc != 0:
                raise LocalNodeError(f"{name} exited with {rc} at start-up:\n{self.log_tail(marks)}")
            self._wait_healthy(marks)
        except KeyboardInterrupt:
            self._stop()  # an abandoned start leaves no node behind (once its pid file is written)
            raise
        return time.monotonic() - started

    @contextlib.contextmanager
    def _lock(self, action: str):
        """Held by a start from the first check until the node is healthy, and by a stop: a second
        `es start` meanwhile would otherwise see a node that is not healthy yet, drop its pid file
        and launch a second JVM on the same data, leaving the first one unstoppable by `es stop`;
        a stop would leave the start waiting for a node that is gone, or find no pid file yet."""
        with contextlib.ExitStack() as held:
            try:
                self.home.mkdir(parents=True, exist_ok=True)
                held.enter_context(locks.exclusive(self.home / "start.lock", action))
            except locks.LockHeld as other:
                doing = other.action or "start"  # a lock file from before actions were recorded was a start's
                then = f"check with `{self._cli('status')}`" if doing == action else f"run `{self._cli(action)}` again"
                raise LocalNodeError(f"a {doing} of {self.spec.name} from {self.home} is in progress "
                                     f"(pid {other.pid or '?'}); wait for it to finish, then {then}") from None
            except OSError as err:
                raise LocalNodeError(f"cannot use {self.spec.home_var}={self.home} as the node's folder: "
                                     f"{err.strerror or err}") from None
            yield

    def _refuse_other_engine(self) -> None:
        """Both engines keep their pid file, node.json and data at the same places in a home:
        one home for both would orphan the running node and mix their data."""
        other = next(spec for spec in SPECS.values() if spec is not self.spec)
        try:
            recorded = read_json(self.state_file).get("engine")
        except (OSError, UnreadableFile):
            recorded = None
        if recorded == other.name or LocalNode(other, self.home).running_pid() is not None:
            raise LocalNodeError(f"{self.home} holds the {other.name} node; give each engine a folder of its "
                                 f"own ({self.spec.home_var} must differ from {other.home_var})")

    def _check_ports(self) -> None:
        """The HTTP and transport ports can be had; the node itself would fail on either with a
        screenful of Java stack trace."""
        transport = self.port + self.spec.transport_offset
        if transport > 65535:
            raise LocalNodeError(f"--port {self.port} leaves no room for the transport port (HTTP port + "
                                 f"{self.spec.transport_offset} > 65535); choose a lower --port")
        if self.port < 1024:  # the node never runs as root (as root we start it as ES_USER)
            raise LocalNodeError(f"port {self.port} is privileged and the node runs unprivileged; "
                                 f"choose --port 1024 or above")
        for what, port in (("port", self.port), ("transport port", transport)):
            if not _port_free(port):
                raise LocalNodeError(f"{what} {port} on 127.0.0.1 is taken by another program; "
                                     f"choose another --port")

    def stop(self, timeout: float = 30.0) -> bool:
        """Stop the node by its pid; return False when it was not running. Refused while a start
        from this home is in progress: its node would come up after the stop, or the start would
        wait out its timeout for one that is gone."""
        if not self.home.is_dir():
            return False  # nothing ever started from here (the lock would make the folder)
        with self._lock("stop"):
            return self._stop(timeout)

    def _stop(self, timeout: float = 30.0) -> bool:
        pid = self.running_pid()
        if pid is None:
            return False
        os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + timeout
        while self.running_pid() == pid and time.monotonic() < deadline:
            time.sleep(0.2)
        if self.running_pid() == pid:
            os.kill(pid, signal.SIGKILL)
        self.pid_file.unlink(missing_ok=True)
        return True

    def running_pid(self) -> int | None:
        """The pid in the pid file, when that process is this home's node. After a reboot or a
        crashed JVM the file can hold a pid the system has since given to another program, which
        `stop` would otherwise signal."""
        try:
            pid = int(self.pid_file.read_text().strip())
        except (OSError, ValueError):
            return None
        return pid if _alive(pid) and _runs_from(pid, self.dist_dir) else None

    def healthy(self) -> bool:
        try:
            with urllib.request.urlopen(f"{self.url}/_cluster/health", timeout=2) as resp:
                return json.load(resp).get("status") in ("green", "yellow")
        except (OSError, urllib.error.URLError, ValueError):
            return False

    def check_serving(self) -> None:
        """Raise LocalNodeError unless the node answering on `port` is this home's running node
        and healthy: a healthy cluster there may be the other engine, or a node started elsewhere."""
        pid = self.running_pid()
        answering = _answering(self.url)
        if answering is None:
            raise LocalNodeError(f"{self.spec.name} is not running on {self.url}{self._elsewhere(pid)}")
        engine, node_pid = answering
        if pid is None or node_pid != pid or engine != self.spec.name:
            recorded = f"pid {pid}" if pid is not None else "no running node"
            raise LocalNodeError(f"{engine or 'a program'} answers on {self.url} but is not the {self.spec.name} "
                                 f"node sparcode started from {self.home} (pid file {self.pid_file}: {recorded})")
        if not self.healthy():
            raise LocalNodeError(f"{self.spec.name} from {self.home} (pid {pid}) answers on {self.url} "
                                 "but is not healthy")

    def _elsewhere(self, pid: int | None) -> str:
        """Why this home's running node (`pid`) does not answer on this port: it was started on
        another (`--port` asked about the wrong one), or it is still starting."""
        if pid is None:
            return ""
        try:
            state = self._read_state()
        except NodeStateError:
            state = None
        started_on = state["port"] if state else None
        if started_on is not None and started_on != self.port:
            return (f"; the node sparcode started from {self.home} (pid {pid}) was started on port {started_on}: "
                    f"`{self._cli('status')}` without --port checks it")
        return f" (pid {pid} from {self.home} runs: still starting?)"

    def log_tail(self, since: dict[Path, int] | None = None, lines: int = 20) -> str:
        """The end of what the launcher (where the JVM's own refusals go) and then the node wrote
        since `since` (sizes from `_log_marks`), and where the whole of it is."""
        parts = []
        for path in (self.log_file, self.cluster_log):
            tail = _read_from(path, (since or {}).get(path, 0)).splitlines()[-lines:]
            if tail:
                parts.append(f"[{path}]\n" + "\n".join(tail))
        where = f"(all output: {self.log_file} and {self.home / 'logs'}/)"
        return "\n".join([*parts, where] if parts else ["(no output from this start)", where])

    def _log_marks(self) -> dict[Path, int]:
        """The sizes of the logs now, so a failure quotes this start's lines and not an earlier run's."""
        return {path: path.stat().st_size if path.exists() else 0 for path in (self.log_file, self.cluster_log)}

    @classmethod
    def from_state(cls, spec: EngineSpec = ELASTICSEARCH, home: Path | None = None,
                   port: int | None = None) -> "LocalNode":
        """The node as last started in `home`, unless `port` says otherwise. A node.json that is
        there but unusable raises NodeStateError: falling back to the default port would point at
        some other node."""
        node = cls(spec, home or default_home(spec))
        state = node._read_state()
        if state is not None:
            node.port, node.heap = state["port"], state["heap"] or node.heap
        if port is not None:
            node.port = port
        return node

    def _read_state(self) -> dict | None:
        """node.json as {port, heap (None if not recorded), engine}; None when no node was ever
        started from this home."""
        try:
            state = read_json(self.state_file)
        except (FileNotFoundError, NotADirectoryError):
            return None
        except (OSError, UnreadableFile) as err:
            raise self._damaged(str(err)) from None
        port, heap = state.get("port"), state.get("heap")
        if type(port) is not int or not 1 <= port <= 65535:
            raise self._damaged(f"{self.state_file} records no port (port: {port!r})")
        # Files written before the engine was recorded are this engine's: each has its own home.
        engine = state.get("engine", self.spec.name)
        if engine not in SPECS:
            raise self._damaged(f"{self.state_file} records no engine of sparcode's (engine: {engine!r})")
        if engine != self.spec.name:
            raise NodeStateError(f"{self.home} holds the {engine} node ({self.state_file}); give each engine a "
                                 f"folder of its own ({self.spec.home_var} must differ from {SPECS[engine].home_var})")
        return {"port": port, "heap": heap if isinstance(heap, str) and _HEAP.fullmatch(heap) else None,
                "engine": engine}

    def _damaged(self, why: str) -> NodeStateError:
        return NodeStateError(f"{why} — so the port of the {self.spec.name} node of {self.home} is unknown: "
                              f"`{self._cli('stop')}` stops that node by its pid file, and `{self._cli('start')}` "
                              "then writes the file anew")

    def _cli(self, action: str) -> str:
        engine = "" if self.spec is ELASTICSEARCH else f" --engine {self.spec.name}"
        return f"sparcode es {action}{engine}"

    # -- steps ----------------------------------------------------------------------------
    def _wait_healthy(self, marks: dict[Path, int]) -> None:
        pid_seen = False

        def check() -> None:
            nonlocal pid_seen
            pid = self.running_pid()
            pid_seen = pid_seen or pid is not None
            if pid_seen and pid is None:
                # The JVM died: no point waiting out the timeout.
                raise _NodeDied()
            if not self.healthy():
                raise tenacity.TryAgain

        retry = tenacity.Retrying(stop=tenacity.stop_after_delay(START_TIMEOUT_S),
                                  wait=tenacity.wait_fixed(0.5),
                                  retry=tenacity.retry_if_not_exception_type(_NodeDied))
        try:
            retry(check)
        except _NodeDied:
            raise LocalNodeError(f"{self.spec.name} died during start-up:\n{self.log_tail(marks)}") from None
        except tenacity.RetryError:
            self._stop()
            raise LocalNodeError(f"{self.spec.name} not healthy on {self.url} after {START_TIMEOUT_S:.0f}s:\n"
                                 f"{self.log_tail(marks)}") from None

    def _ensure_unpacked(self) -> None:
        marker = self.dist_dir / ".sparcode-unpacked"
        if marker.exists():
            return
        _fetch(self.spec.artifact, self.zip_path)
        if self.dist_dir.exists():
            shutil.rmtree(self.dist_dir)  # a half-unpacked tree from an interrupted run
        with zipfile.ZipFile(self.zip_path) as zf:
            for info in zf.infolist():
                target = Path(zf.extract(info, self.home))
                mode = info.external_attr >> 16
                if mode and not info.is_dir():
                    # zipfile drops permissions; bin/ scripts and the bundled tools need +x.
                    target.chmod(mode & 0o777)
        for module in self.spec.modules:
            self._install_module(module)
        marker.touch()

    def _install_module(self, module: Module) -> None:
        jar = self.zip_path.parent / _artifact_file(module.artifact)
        _fetch(module.artifact, jar)
        target = self.dist_dir / "modules" / module.name
        target.mkdir(parents=True, exist_ok=True)
        shutil.copy2(jar, target / jar.name)
        # The keys the node's plugin loader requires; the jar itself carries no descriptor.
        (target / "plugin-descriptor.properties").write_text(
            f"name={module.name}\ndescription={module.description}\nversion={self.spec.version}\n"
            f"classname={module.classname}\n{self.spec.name}.version={self.spec.version}\njava.version=11\n")

    def _write_config(self) -> None:
        for d in (self.home / "data", self.home / "logs", self.run_dir):
            d.mkdir(parents=True, exist_ok=True)
        config = self.dist_dir / "config"
        # Paths as JSON strings, which YAML reads as they are: unquoted, a '#' in them starts a comment.
        (config / f"{self.spec.name}.yml").write_text(
            "# written by `sparcode es start`; edits are overwritten\n"
            f"cluster.name: {CLUSTER_NAME}\n"
            "discovery.type: single-node\n"
            "network.host: 127.0.0.1\n"
            f"http.port: {self.port}\n"
            f"transport.port: {self.port + self.spec.transport_offset}\n"
            f"path.data: {json.dumps(str(self.home / 'data'))}\n"
            f"path.logs: {json.dumps(str(self.home / 'logs'))}\n"
            f"{self.spec.extra_config}"
            # Dev machines are often nearly full; the disk watermark would block every write.
            "cluster.routing.allocation.disk.threshold_enabled: false\n")
        opts = config / "jvm.options.d"
        opts.mkdir(exist_ok=True)
        (opts / "heap.options").write_text(f"-Xms{self.heap}\n-Xmx{self.heap}\n")

    def _chown(self, user: str | None) -> None:
        if user is None:
            return
        pw = pwd.getpwnam(user)
        for path in (self.dist_dir, self.home / "data", self.home / "logs", self.run_dir):
            os.chown(path, pw.pw_uid, pw.pw_gid)
            for root, dirs, files in os.walk(path):
                for name in dirs + files:
                    os.chown(os.path.join(root, name), pw.pw_uid, pw.pw_gid, follow_symlinks=False)
        # The node's user must be able to reach its files through our cache directories.
        for parent in [self.home, *self.home.parents]:
            if parent.stat().st_mode & 0o001 == 0:
                raise LocalNodeError(f"{parent} is not traversable by user {user}; "
                                     f"set {self.spec.home_var} to a world-readable location")


class _NodeDied(Exception):
    pass


def _answering(url: str) -> tuple[str | None, int | None] | None:
    """What answers at `url`: (engine, the node's process id), either None when it does not say;
    None when nothing answers."""
    try:
        product, info = _get_json(f"{url}/_nodes/_local/process")
    except http.client.HTTPException:
        return None, None  # something answers, and not in HTTP
    except OSError:
        return None
    if product == "Elasticsearch":  # a header on every answer; `GET /` is refused by the integ-test zip
        engine = "elasticsearch"
    else:
        try:
            root = _get_json(f"{url}/")[1]
        except (OSError, http.client.HTTPException):
            root = None
        version = root.get("version") if isinstance(root, dict) else None
        engine = "opensearch" if isinstance(version, dict) and version.get("distribution") == "opensearch" else None
    try:
        return engine, next(iter(info["nodes"].values()))["process"]["id"]
    except (LookupError, TypeError, AttributeError, StopIteration):
        return engine, None


def _get_json(url: str) -> tuple[str | None, object]:
    """(X-Elastic-Product, JSON body or None) of GET `url`, error statuses included; OSError when
    nothing answers."""
    try:
        resp = urllib.request.urlopen(url, timeout=2)
    except urllib.error.HTTPError as err:
        resp = err
    with resp:
        try:
            body = json.load(resp)
        except ValueError:
            body = None
        return resp.headers.get("X-Elastic-Product"), body


def _read_from(path: Path, offset: int) -> str:
    """`path` from byte `offset` on; all of it when it has since been replaced by a shorter file."""
    try:
        with open(path, "rb") as fh:
            fh.seek(offset if offset <= os.fstat(fh.fileno()).st_size else 0)
            return fh.read().decode(errors="replace")
    except OSError:
        return ""


def _port_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # a closed node's TIME_WAIT is no owner
        try:
            probe.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def _runs_from(pid: int, dist_dir: Path) -> bool:
    """True when process `pid` was started from `dist_dir` (its JVM names it as path.home).
    Without /proc there is no way to tell, and the pid file is trusted as before."""
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    except FileNotFoundError:
        return not Path("/proc/self").exists()
    except OSError:
        return True  # unreadable (hidepid): alive, of unknown origin; better stoppable than orphaned
    # The argument's end (NUL) too: a sibling folder (elasticsearch-8.19.8-old) is another node.
    return f"path.home={Path(dist_dir).resolve()}\0".encode() in cmdline


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _artifact_file(artifact: str) -> str:
    """The file `mvn dependency:copy` writes for `group:artifactId:version[:type]`."""
    _, artifact_id, version, *kind = artifact.split(":")
    return f"{artifact_id}-{version}.{kind[0] if kind else 'jar'}"


def _fetch(artifact: str, path: Path) -> None:
    """Copy `artifact` to `path` with Maven unless a verified copy is already there."""
    sha_file = path.with_name(path.name + ".sha256")
    if path.exists() and sha_file.exists():
        if _sha256(path) == sha_file.read_text().strip():
            return
        path.unlink()
    mvn = shutil.which("mvn")
    if mvn is None:
        raise LocalNodeError(f"mvn not found on PATH: install Maven to fetch {artifact} "
                             "(or point ELASTICSEARCH_URL / OPENSEARCH_URL at an existing node)")
    path.parent.mkdir(parents=True, exist_ok=True)
    proc = subprocess.run([mvn, "-B", "-q", "dependency:copy", f"-Dartifact={artifact}",
                           f"-DoutputDirectory={path.parent}"], capture_output=True, text=True)
    if proc.returncode != 0 or not path.exists():
        tail = (proc.stdout + proc.stderr).strip().splitlines()[-5:]
        raise LocalNodeError(f"mvn could not fetch {artifact}: " + " | ".join(tail))
    try:
        with zipfile.ZipFile(path) as zf:  # zips and jars alike
            bad = zf.testzip()
    except (zipfile.BadZipFile, EOFError) as err:
        bad = f"unreadable: {err}"  # cut short, e.g. an interrupted fetch (which mvn never fetches again)
    if bad is not None:
        path.unlink()
        raise LocalNodeError(f"downloaded {path.name} is corrupt (first bad member {bad}); run again to re-fetch")
    # Recorded after the first verified fetch, so later starts detect a damaged cache cheaply.
    sha_file.write_text(_sha256(path) + "\n")


def _java_home(var: str) -> str:
    env = os.environ.get(var)
    if env:
        return env
    java = shutil.which("java")
    if java is None:
        raise LocalNodeError(f"java not found on PATH: install a JDK (17+) or set {var}")
    return str(Path(os.path.realpath(java)).parents[1])


def _ensure_user() -> str | None:
    """The system user to run as when we are root (both engines refuse to run as root)."""
    if os.geteuid() != 0:
        return None
    try:
        pwd.getpwnam(ES_USER)
    except KeyError:
        proc = subprocess.run(["useradd", "--system", "--no-create-home", "--shell", "/usr/sbin/nologin",
                               ES_USER], capture_output=True, text=True)
        if proc.returncode != 0:
            raise LocalNodeError(f"could not create user {ES_USER}: {proc.stderr.strip()}")
    return ES_USER


def _sha256(path: Path) -> str:
    with open(path, "rb") as fh:
        return hashlib.file_digest(fh, "sha256").hexdigest()
