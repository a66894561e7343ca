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

import hashlib
import json
import os
import pwd
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

from sparcode.checkout import repository_root

DEFAULT_HEAP = "1g"
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


ELASTICSEARCH = EngineSpec(
    name="elasticsearch", version="8.19.8",
    artifact="org.elasticsearch.distribution.integ-test-zip:elasticsearch:8.19.8:zip",
    default_port=9250, transport_offset=50, java_home_var="ES_JAVA_HOME", home_var="SPARCODE_ES_HOME",
    cache_dir="es", extra_config="xpack.security.enabled: false\n")
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


class LocalNodeError(RuntimeError):
    """A failure the user can act on; the message is one line."""


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
    def url(self) -> str:
        return local_url(self.port)

    # -- lifecycle ------------------------------------------------------------------------
    def start(self) -> float:
        """Start the node (fetching/unpacking it first if needed); return seconds to healthy."""
        pid = self.running_pid()
        if pid is not None:
            running_port = LocalNode.from_state(self.spec, self.home).port
            if running_port != self.port:
                # Starting anyway would drop the running node's pid file (leaving it unstoppable
                # by `es stop`) and then fail on its data-directory lock.
                raise LocalNodeError(f"{self.spec.name} from {self.home} already runs on port {running_port} "
                                     f"(pid {pid}); stop it first (sparcode es stop) or set "
                                     f"{self.spec.home_var} to another directory for a second node")
            if self.healthy():
                return 0.0
        else:
            self._check_ports()
        java_home = _java_home(self.spec.java_home_var)
        self._ensure_unpacked()
        user = _ensure_user()
        self._write_config()
        self._chown(user)
        self.pid_file.unlink(missing_ok=True)
        started = time.monotonic()
        name = self.spec.name
        cmd = ["env", f"{self.spec.java_home_var}={java_home}", str(self.dist_dir / "bin" / name),
               "-d", "-p", str(self.pid_file)]
        if user is not None:
            cmd = ["runuser", "-u", user, "--", *cmd]
        # A file, not a pipe: the daemonised JVM keeps the descriptor open forever.
        with open(self.log_file, "ab") as log:
            rc = subprocess.run(cmd, stdout=log, stderr=subprocess.STDOUT, cwd=self.dist_dir).returncode
        if rc != 0:
            raise LocalNodeError(f"{name} exited with {rc} at start-up:\n{self.log_tail()}")
        self.state_file.write_text(json.dumps({"port": self.port, "heap": self.heap}))
        try:
            self._wait_healthy()
        except tenacity.RetryError:
            self.stop()
            raise LocalNodeError(
                f"{name} not healthy on {self.url} after {START_TIMEOUT_S:.0f}s:\n{self.log_tail()}")
        return time.monotonic() - started

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
        """Stop the node by its pid; return False when it was not running."""
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

    def log_tail(self, lines: int = 30) -> str:
        texts = []
        for path in [self.log_file, *sorted((self.home / "logs").glob("*.log"))[-1:]]:
            if path.exists():
                texts.extend(path.read_text(errors="replace").splitlines()[-lines:])
        return "\n".join(texts[-lines:]) or "(no log output)"

    @classmethod
    def from_state(cls, spec: EngineSpec = ELASTICSEARCH, home: Path | None = None,
                   port: int | None = None) -> "LocalNode":
        """The node as last started in `home`, unless `port` says otherwise."""
        node = cls(spec, home or default_home(spec))
        try:
            state = json.loads(node.state_file.read_text())
            node.port, node.heap = int(state["port"]), str(state["heap"])
        except (OSError, ValueError, KeyError):
            pass
        if port is not None:
            node.port = port
        return node

    # -- steps ----------------------------------------------------------------------------
    def _wait_healthy(self) -> None:
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
            raise LocalNodeError(f"{self.spec.name} died during start-up:\n{self.log_tail()}")

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
        (config / f"{self.spec.name}.yml").write_text(
            "# written by `sparcode es start`; edits are overwritten\n"
            "cluster.name: sparcode-local\n"
            "discovery.type: single-node\n"
            "network.host: 127.0.0.1\n"
            f"http.port: {self.port}\n"
            f"transport.port: {self.port + self.spec.transport_offset}\n"
            f"path.data: {self.home / 'data'}\n"
            f"path.logs: {self.home / 'logs'}\n"
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
    with zipfile.ZipFile(path) as zf:  # zips and jars alike
        bad = zf.testzip()
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
