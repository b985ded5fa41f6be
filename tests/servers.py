"""Real etcd, Redis and Consul servers for tests.

Each server runs in its own temp dir on free 127.0.0.1 ports (never a
default port, never another address).  Binaries come from
``$WAYPOST_SERVERS_DIR/bin`` (default ``<repo>/.servers/bin``), installed by
``scripts/install-servers``.

Only the standard library and ``trustme`` (for :func:`make_tls`) are used;
``pytest`` is needed for the fixtures at the bottom.

Typical use::

    with EtcdServer() as etcd:
        connect(etcd.url)           # "etcd://127.0.0.1:PORT"
        etcd.pause(); ...; etcd.resume()
        etcd.restart()              # same port, same data dir

Readiness is always a real protocol check polled until a deadline (etcd
``/health``, Redis ``PING``, Consul ``/v1/status/leader`` + node health).
"""

from __future__ import annotations

import atexit
import contextlib
import dataclasses
import http.client
import json
import os
import shutil
import signal
import socket
import ssl
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import pytest

__all__ = [
    "HOST",
    "ServerError",
    "ServerBinaryMissing",
    "servers_dir",
    "find_binary",
    "free_port",
    "TLSFiles",
    "make_tls",
    "EtcdServer",
    "EtcdCluster",
    "RedisServer",
    "ConsulServer",
    # pytest fixtures
    "tls_files",
    "etcd_server",
    "etcd_factory",
    "etcd_cluster_factory",
    "redis_server",
    "redis_factory",
    "consul_server",
    "consul_factory",
]

HOST = "127.0.0.1"
REPO_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_START_TIMEOUT = 30.0
_POLL = 0.02  # readiness poll interval (polling a real check, not a sync sleep)


class ServerError(RuntimeError):
    """A test server failed to start / stop."""


class ServerBinaryMissing(ServerError):
    """A server binary is not installed."""


# ---------------------------------------------------------------------------
# binaries, ports
# ---------------------------------------------------------------------------


def servers_dir() -> Path:
    return Path(os.environ.get("WAYPOST_SERVERS_DIR") or (REPO_ROOT / ".servers"))


def find_binary(name: str) -> str:
    """Absolute path of ``$WAYPOST_SERVERS_DIR/bin/NAME`` or a clear error."""
    path = servers_dir() / "bin" / name
    if not (path.exists() and os.access(path, os.X_OK)):
        raise ServerBinaryMissing(
            f"test server binary {name!r} not found at {path}: run `scripts/install-servers` (from the repo root) first"
        )
    return str(path)


_port_lock = threading.Lock()
_recent_ports: set[int] = set()


def free_port() -> int:
    """A currently free TCP port on 127.0.0.1 (bind :0, read, close).

    Ports handed out by this process are not handed out again, so servers
    started back to back don't collide with each other.
    """
    with _port_lock:
        for _ in range(100):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            try:
                s.bind((HOST, 0))
                port = s.getsockname()[1]
            finally:
                s.close()
            if port not in _recent_ports:
                _recent_ports.add(port)
                return port
    raise ServerError("could not find a free port on 127.0.0.1")


def _port_in_use_msg(text: str) -> bool:
    t = text.lower()
    return "address already in use" in t or "bind: address" in t


def _tail(path: Path, n: int = 40) -> str:
    try:
        lines = path.read_text(errors="replace").splitlines()
    except OSError:
        return "(no log)"
    return "\n".join(lines[-n:]) or "(empty log)"


# ---------------------------------------------------------------------------
# TLS
# ---------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class TLSFiles:
    """PEM files of a test CA, a server cert (127.0.0.1, localhost) and a client cert."""

    ca: str
    server_cert: str
    server_key: str
    client_cert: str
    client_key: str

    def client_context(self, client_cert: bool = True) -> ssl.SSLContext:
        """An ``ssl.SSLContext`` trusting the test CA (with the client cert if asked)."""
        ctx = ssl.create_default_context(cafile=self.ca)
        if client_cert:
            ctx.load_cert_chain(self.client_cert, self.client_key)
        return ctx


def make_tls(tmpdir) -> TLSFiles:
    """Create a trustme CA, server and client certs as 0600 files in ``tmpdir``."""
    import trustme  # only needed for TLS tests

    d = Path(tmpdir)
    d.mkdir(parents=True, exist_ok=True)
    ca = trustme.CA(organization_name="waypost test CA")
    server = ca.issue_cert("127.0.0.1", "localhost", common_name="localhost")
    client = ca.issue_cert("waypost-client", common_name="waypost-client")

    def write(name: str, data: bytes) -> str:
        p = d / name
        fd = os.open(p, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.chmod(p, 0o600)
        return str(p)

    return TLSFiles(
        ca=write("ca.pem", ca.cert_pem.bytes()),
        server_cert=write("server.pem", b"".join(b.bytes() for b in server.cert_chain_pems)),
        server_key=write("server-key.pem", server.private_key_pem.bytes()),
        client_cert=write("client.pem", b"".join(b.bytes() for b in client.cert_chain_pems)),
        client_key=write("client-key.pem", client.private_key_pem.bytes()),
    )


# ---------------------------------------------------------------------------
# process registry: nothing is left behind
# ---------------------------------------------------------------------------

_SETPRIV = shutil.which("setpriv") if os.uname().sysname == "Linux" else None
_live: set[_Process] = set()  # strong refs: atexit must see every process
_live_lock = threading.Lock()


def _cleanup_all() -> None:
    with _live_lock:
        procs = list(_live)
    for p in procs:
        with contextlib.suppress(Exception):
            p.close()


atexit.register(_cleanup_all)


class _Process:
    """One child process with a log file, started in its own session."""

    def __init__(self, name: str, workdir: Path):
        self.name = name
        self.workdir = workdir
        self.log_path = workdir / f"{name}.log"
        self.proc: subprocess.Popen | None = None
        self.paused = False
        with _live_lock:
            _live.add(self)

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.running else None

    def spawn(self, argv: Sequence[str], env: dict | None = None) -> None:
        """Start ``argv`` with environment ``env`` (default: ours)."""
        if self.running:
            raise ServerError(f"{self.name} is already running (pid {self.proc.pid})")
        full_env = dict(os.environ) if env is None else env
        argv = list(argv)
        # If this Python dies without running atexit (SIGKILL, SIGTERM from a
        # `timeout`...), have the kernel kill the server too. PDEATHSIG fires
        # when the spawning *thread* ends, so only when spawned from the main
        # thread; setpriv (util-linux) sets it and execs the server in place.
        if _SETPRIV and threading.current_thread() is threading.main_thread():
            argv = [_SETPRIV, "--pdeathsig", "KILL", "--", *argv]
        with open(self.log_path, "ab") as log:
            log.write(("\n==== start {}: {}\n".format(time.strftime("%H:%M:%S"), " ".join(argv))).encode())
            log.flush()
            self.proc = subprocess.Popen(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=str(self.workdir),
                env=full_env,
                start_new_session=True,
            )
        self.paused = False

    def _signal(self, sig: int) -> None:
        if not self.running:
            return
        try:
            os.killpg(self.proc.pid, sig)
        except (ProcessLookupError, PermissionError):
            with contextlib.suppress(ProcessLookupError):
                self.proc.send_signal(sig)

    def stop(self, timeout: float = 10.0) -> None:
        """Graceful stop (SIGTERM, then SIGKILL after ``timeout``). Idempotent."""
        if self.proc is None:
            return
        if self.running:
            if self.paused:
                self._signal(signal.SIGCONT)
            self._signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self._signal(signal.SIGKILL)
                self.proc.wait(10)
        else:
            self.proc.wait()
        self.paused = False

    def kill(self) -> None:
        """SIGKILL, and reap. Idempotent."""
        if self.proc is None:
            return
        if self.running:
            self._signal(signal.SIGKILL)
        self.proc.wait(10)
        self.paused = False

    def _threads_state(self) -> list[str]:
        """Scheduler states (``R``, ``S``, ``T``...) of all the process's threads."""
        states = []
        task_dir = f"/proc/{self.proc.pid}/task"
        try:
            tids = os.listdir(task_dir)
        except OSError:
            return states
        for tid in tids:
            try:
                with open(f"{task_dir}/{tid}/stat") as f:
                    # "pid (comm) S ..." - comm may contain spaces/parens
                    states.append(f.read().rsplit(")", 1)[1].split()[0])
            except (OSError, IndexError):
                pass
        return states

    def _wait_threads(self, stopped: bool, timeout: float = 5.0) -> None:
        # SIGSTOP/SIGCONT are delivered asynchronously to every thread: poll
        # /proc until all threads are (not) stopped, so callers can rely on it.
        if not os.path.isdir("/proc/self/task"):
            return
        deadline = time.monotonic() + timeout
        while self.running and time.monotonic() < deadline:
            states = self._threads_state()
            if stopped and states and all(s in ("T", "t") for s in states):
                return
            if not stopped and not any(s in ("T", "t") for s in states):
                return
            time.sleep(0.002)

    def pause(self) -> None:
        """SIGSTOP; returns once every thread is stopped."""
        if not self.running:
            raise ServerError(f"{self.name} is not running")
        self._signal(signal.SIGSTOP)
        self.paused = True
        self._wait_threads(stopped=True)

    def resume(self) -> None:
        """SIGCONT; returns once no thread is stopped."""
        if self.running:
            self._signal(signal.SIGCONT)
            self._wait_threads(stopped=False)
        self.paused = False

    def close(self) -> None:
        # The temp dir goes away with it, so nothing needs a graceful stop.
        self.kill()
        with _live_lock:
            _live.discard(self)

    def tail(self, n: int = 40) -> str:
        return _tail(self.log_path, n)

    def log_text(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""


def _wait_until(
    check: Callable[[], bool],
    proc: _Process,
    timeout: float,
    what: str,
) -> None:
    """Poll ``check`` until True; fail fast if the process dies."""
    deadline = time.monotonic() + timeout
    last_exc: BaseException | None = None
    while True:
        if not proc.running:
            code = proc.proc.returncode if proc.proc else None
            raise ServerError(f"{what} exited (code {code}) before becoming ready; log tail:\n{proc.tail()}")
        try:
            if check():
                return
        except Exception as e:
            last_exc = e
        if time.monotonic() >= deadline:
            raise ServerError(
                f"{what} not ready after {timeout:.1f}s (last probe error: {last_exc!r}); log tail:\n{proc.tail()}"
            )
        time.sleep(_POLL)


def _http_get(
    port: int,
    path: str,
    tls: TLSFiles | None = None,
    headers: dict | None = None,
    timeout: float = 2.0,
) -> tuple[int, bytes]:
    return _http_request(port, "GET", path, None, tls, headers, timeout)


def _http_request(
    port: int,
    method: str,
    path: str,
    body: bytes | None = None,
    tls: TLSFiles | None = None,
    headers: dict | None = None,
    timeout: float = 2.0,
) -> tuple[int, bytes]:
    if tls is not None:
        conn: http.client.HTTPConnection = http.client.HTTPSConnection(
            HOST, port, timeout=timeout, context=tls.client_context()
        )
    else:
        conn = http.client.HTTPConnection(HOST, port, timeout=timeout)
    try:
        conn.request(method, path, body=body, headers=headers or {})
        resp = conn.getresponse()
        return resp.status, resp.read()
    finally:
        conn.close()


# ---------------------------------------------------------------------------
# common server base
# ---------------------------------------------------------------------------


class _Server:
    """Base: start/stop/kill/restart/pause/resume, context manager."""

    kind = "server"
    scheme = ""
    tls_scheme = ""

    def __init__(
        self, tls: TLSFiles | None = None, workdir: str | None = None, start_timeout: float = DEFAULT_START_TIMEOUT
    ):
        self.tls = tls
        self.start_timeout = start_timeout
        self._own_workdir = workdir is None
        self.workdir = Path(workdir or tempfile.mkdtemp(prefix=f"waypost-{self.kind}-"))
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.host = HOST
        self.port: int | None = None
        self._process = _Process(self.kind, self.workdir)
        self._closed = False
        self._started_once = False

    # -- to implement -------------------------------------------------------
    def _pick_ports(self) -> None:
        raise NotImplementedError

    def _argv(self) -> list[str]:
        raise NotImplementedError

    def _env(self) -> dict:
        return dict(os.environ)

    def _ready(self) -> bool:
        raise NotImplementedError

    def _before_spawn(self) -> None:
        pass

    # -- public -------------------------------------------------------------
    @property
    def endpoint(self) -> str:
        return f"{self.host}:{self.port}"

    @property
    def url(self) -> str:
        return f"{self.tls_scheme if self.tls else self.scheme}://{self.endpoint}"

    @property
    def running(self) -> bool:
        return self._process.running

    @property
    def paused(self) -> bool:
        return self._process.paused

    @property
    def pid(self) -> int | None:
        return self._process.pid

    @property
    def log_path(self) -> Path:
        return self._process.log_path

    def log_tail(self, n: int = 40) -> str:
        return self._process.tail(n)

    def start(self, timeout: float | None = None):
        """Start and wait until ready. First start picks free ports (retrying on
        a clash); later starts reuse the same ports. Returns self."""
        if self._closed:
            raise ServerError(f"{self.kind} server was closed")
        if self.running:
            return self
        timeout = self.start_timeout if timeout is None else timeout
        fixed = self._started_once
        attempts = 1 if fixed else 5
        for attempt in range(attempts):
            if not fixed:
                self._pick_ports()
            log_mark = len(self._process.log_text())
            self._before_spawn()
            self._process.spawn(self._argv(), self._env())
            try:
                _wait_until(self._ready, self._process, timeout, self._what())
            except ServerError:
                new_log = self._process.log_text()[log_mark:]
                self._process.kill()
                if not fixed and _port_in_use_msg(new_log) and attempt + 1 < attempts:
                    continue  # port clash: pick new ports and try again
                raise
            self._started_once = True
            return self
        raise AssertionError("unreachable")  # pragma: no cover

    def stop(self, timeout: float = 10.0) -> None:
        """Graceful stop (SIGTERM; SIGKILL after ``timeout``). Safe to call twice."""
        self._process.stop(timeout)

    def kill(self) -> None:
        """SIGKILL the server. Safe to call twice."""
        self._process.kill()

    def restart(self, timeout: float | None = None):
        """Stop (gracefully) and start again on the same port and data dir."""
        self.stop()
        return self.start(timeout)

    def pause(self) -> None:
        """SIGSTOP: the server keeps its sockets but answers nothing."""
        self._process.pause()

    def resume(self) -> None:
        """SIGCONT."""
        self._process.resume()

    def close(self) -> None:
        """Kill the server and remove its temp dir. Safe to call twice."""
        if self._closed:
            return
        self._closed = True
        self._process.close()
        if self._own_workdir:
            shutil.rmtree(self.workdir, ignore_errors=True)

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc) -> None:
        self.close()

    def _what(self) -> str:
        return f"{self.kind} on {self.endpoint}"

    def __repr__(self) -> str:
        state = "paused" if self.paused else ("running" if self.running else "stopped")
        return f"<{type(self).__name__} {self.url} {state}>"


# ---------------------------------------------------------------------------
# etcd
# ---------------------------------------------------------------------------

_ETCD_BINARIES = {"3.5": "etcd", "3.4": "etcd-3.4"}


class EtcdServer(_Server):
    """A real etcd (3.5 or 3.4) with fast elections (heartbeat 10 ms, election 50 ms).

    ``url`` is ``etcd://127.0.0.1:PORT`` (``etcds://`` with TLS). With ``tls``
    the client port serves TLS (``client_cert_auth`` makes client certs
    mandatory); peers always talk plain HTTP on loopback.

    For clusters use :class:`EtcdCluster`; the ``name``/``peer_port``/
    ``initial_cluster`` arguments are for its use.
    """

    kind = "etcd"
    scheme = "etcd"
    tls_scheme = "etcds"

    def __init__(
        self,
        version: str = "3.5",
        tls: TLSFiles | None = None,
        client_cert_auth: bool = False,
        *,
        name: str = "default",
        port: int | None = None,
        peer_port: int | None = None,
        initial_cluster: str | None = None,
        cluster_token: str = "waypost-test",
        extra_args: Sequence[str] = (),
        workdir: str | None = None,
        start_timeout: float = DEFAULT_START_TIMEOUT,
    ):
        if version not in _ETCD_BINARIES:
            raise ValueError(f"etcd version must be one of {sorted(_ETCD_BINARIES)}, not {version!r}")
        self.binary = find_binary(_ETCD_BINARIES[version])
        super().__init__(tls=tls, workdir=workdir, start_timeout=start_timeout)
        if client_cert_auth and tls is None:
            raise ValueError("client_cert_auth needs tls")
        self.version = version
        self.client_cert_auth = client_cert_auth
        self.name = name
        self.data_dir = self.workdir / "data"
        self.port = port
        self.peer_port = peer_port
        self.initial_cluster = initial_cluster
        self.cluster_token = cluster_token
        self.extra_args = list(extra_args)
        self._fixed_ports = port is not None
        self._process.name = f"etcd-{name}"
        self._process.log_path = self.workdir / f"etcd-{name}.log"

    @property
    def client_url(self) -> str:
        return f"{'https' if self.tls else 'http'}://{HOST}:{self.port}"

    @property
    def peer_url(self) -> str:
        return f"http://{HOST}:{self.peer_port}"

    def _pick_ports(self) -> None:
        if self._fixed_ports:
            return
        self.port = free_port()
        self.peer_port = free_port()

    def _argv(self) -> list[str]:
        argv = [
            self.binary,
            "--name",
            self.name,
            "--data-dir",
            str(self.data_dir),
            "--listen-client-urls",
            self.client_url,
            "--advertise-client-urls",
            self.client_url,
            "--listen-peer-urls",
            self.peer_url,
            "--initial-advertise-peer-urls",
            self.peer_url,
            "--initial-cluster",
            self.initial_cluster or f"{self.name}={self.peer_url}",
            "--initial-cluster-state",
            "new",
            "--initial-cluster-token",
            self.cluster_token,
            "--heartbeat-interval",
            "10",
            "--election-timeout",
            "50",
            "--logger",
            "zap",
            "--log-level",
            "warn",
        ]
        if self.version == "3.5":
            argv += ["--unsafe-no-fsync"]
        if self.tls:
            argv += [
                "--cert-file",
                self.tls.server_cert,
                "--key-file",
                self.tls.server_key,
            ]
            if self.client_cert_auth:
                # etcd verifies client certificates whenever it is given a trusted CA.
                argv += ["--client-cert-auth", "--trusted-ca-file", self.tls.ca]
        return argv + self.extra_args

    def _env(self) -> dict:
        # Don't let ETCD_* variables from the environment change the config.
        return {k: v for k, v in os.environ.items() if not k.startswith("ETCD_") or k == "ETCD_UNSUPPORTED_ARCH"}

    def _ready(self) -> bool:
        status, body = _http_get(self.port, "/health", self.tls)
        return status == 200 and json.loads(body).get("health") in ("true", True)

    def status(self, timeout: float = 2.0) -> dict:
        """``/v3/maintenance/status`` (JSON gateway): ``header.member_id``,
        ``leader``, ``raftTerm``, ``version``... (ids are decimal strings)."""
        status, body = _http_request(self.port, "POST", "/v3/maintenance/status", b"{}", self.tls, timeout=timeout)
        if status != 200:
            raise ServerError(f"etcd status on {self.endpoint}: HTTP {status}: {body[:200]!r}")
        st = json.loads(body)
        self._member_id = st["header"]["member_id"]
        return st

    @property
    def member_id(self) -> str:
        """This member's raft id (decimal string, as the JSON gateway shows it)."""
        if getattr(self, "_member_id", None) is None:
            self.status()
        return self._member_id


class EtcdCluster:
    """A 3-member (by default) etcd cluster on loopback.

    ``members`` are :class:`EtcdServer` objects, each killable/restartable/
    pausable on its own; ``endpoints`` is ``["127.0.0.1:PORT", ...]`` and
    ``url`` is ``etcd://127.0.0.1:P1,127.0.0.1:P2,127.0.0.1:P3``.
    """

    def __init__(
        self,
        size: int = 3,
        version: str = "3.5",
        tls: TLSFiles | None = None,
        client_cert_auth: bool = False,
        start_timeout: float = DEFAULT_START_TIMEOUT,
    ):
        if size < 1:
            raise ValueError("size must be >= 1")
        self.size = size
        self.version = version
        self.tls = tls
        self.client_cert_auth = client_cert_auth
        self.start_timeout = start_timeout
        self.workdir = Path(tempfile.mkdtemp(prefix="waypost-etcd-cluster-"))
        self.members: list[EtcdServer] = []
        self._closed = False
        self._token_n = 0

    def _build(self) -> None:
        for m in self.members:
            m.close()
        self._token_n += 1
        ports = [(free_port(), free_port()) for _ in range(self.size)]
        initial = ",".join(f"m{i}=http://{HOST}:{pp}" for i, (_, pp) in enumerate(ports))
        self.members = []
        for i, (cp, pp) in enumerate(ports):
            wd = self.workdir / f"m{i}"
            shutil.rmtree(wd, ignore_errors=True)
            self.members.append(
                EtcdServer(
                    self.version,
                    self.tls,
                    self.client_cert_auth,
                    name=f"m{i}",
                    port=cp,
                    peer_port=pp,
                    initial_cluster=initial,
                    cluster_token=f"waypost-cluster-{os.getpid()}-{self._token_n}",
                    workdir=str(wd),
                    start_timeout=self.start_timeout,
                )
            )

    def start(self, timeout: float | None = None) -> EtcdCluster:
        if self._closed:
            raise ServerError("etcd cluster was closed")
        timeout = self.start_timeout if timeout is None else timeout
        if not self.members:
            for attempt in range(5):
                self._build()
                try:
                    self._start_all(timeout)
                    return self
                except ServerError as e:
                    logs = "".join(m._process.log_text() for m in self.members)
                    for m in self.members:
                        m.kill()
                    if _port_in_use_msg(logs + str(e)) and attempt < 4:
                        continue
                    raise
        self._start_all(timeout)
        return self

    def _start_all(self, timeout: float) -> None:
        # Spawn every member first (they need each other for an election),
        # then wait for each to report healthy.
        pending = [m for m in self.members if not m.running]
        for m in pending:
            m._process.spawn(m._argv(), m._env())
        for m in pending:
            _wait_until(m._ready, m._process, timeout, m._what())
            m._started_once = True

    def leader(self, timeout: float = 10.0) -> EtcdServer:
        """Wait until every running, unpaused member agrees on a leader that
        is one of them, and return it (use after killing/pausing members)."""
        ids = {}
        deadline = time.monotonic() + timeout
        last: object = None
        while True:
            live = [m for m in self.members if m.running and not m.paused]
            try:
                leaders = set()
                for m in live:
                    st = m.status(timeout=0.5)
                    ids[st["header"]["member_id"]] = m
                    leaders.add(st.get("leader"))
                if len(leaders) == 1:
                    lid = leaders.pop()
                    if lid in ids and ids[lid] in live:
                        return ids[lid]
                last = leaders
            except Exception as e:
                last = e
            if time.monotonic() >= deadline:
                raise ServerError(f"etcd cluster has no agreed leader after {timeout}s (last: {last!r})")
            time.sleep(_POLL)

    def stop(self) -> None:
        for m in self.members:
            m.stop()

    def kill(self) -> None:
        for m in self.members:
            m.kill()

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        for m in self.members:
            m.close()
        shutil.rmtree(self.workdir, ignore_errors=True)

    @property
    def endpoints(self) -> list[str]:
        return [m.endpoint for m in self.members]

    @property
    def url(self) -> str:
        return f"{'etcds' if self.tls else 'etcd'}://{','.join(self.endpoints)}"

    def __enter__(self) -> EtcdCluster:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<EtcdCluster {self.url}>"


# ---------------------------------------------------------------------------
# Redis
# ---------------------------------------------------------------------------


def _resp_command(*args: str) -> bytes:
    out = [b"*%d\r\n" % len(args)]
    for a in args:
        b = a.encode()
        out.append(b"$%d\r\n%s\r\n" % (len(b), b))
    return b"".join(out)


def _read_line(sock) -> bytes:
    buf = b""
    while not buf.endswith(b"\r\n"):
        chunk = sock.recv(1)
        if not chunk:
            raise ConnectionError("connection closed")
        buf += chunk
    return buf[:-2]


class RedisServer(_Server):
    """A real Redis 7 with no persistence (``save ""``, ``appendonly no``):
    a restart (or kill + start) loses all data, by design.

    - ``password``: ``requirepass`` (the ``default`` user's password).
    - ``acl_user=(user, password, pattern)``: an ACL user allowed keys
      ``~pattern`` and channels ``&pattern`` with ``acl_commands``
      (default ``+@all``). If ``acl_user`` is given without ``password`` the
      ``default`` user is turned off, so every client must AUTH.
    - ``tls``: serve TLS only (``tls-port``, plain port disabled);
      ``client_cert_auth`` makes client certs mandatory.

    ``url`` is ``redis://127.0.0.1:PORT/0`` (``rediss://`` with TLS), without
    credentials; ``auth_url`` adds them (ACL user if any, else password).
    """

    kind = "redis"
    scheme = "redis"
    tls_scheme = "rediss"

    def __init__(
        self,
        password: str | None = None,
        acl_user: tuple[str, str, str] | None = None,
        tls: TLSFiles | None = None,
        *,
        client_cert_auth: bool = False,
        acl_commands: str = "+@all",
        extra_config: str = "",
        start_timeout: float = DEFAULT_START_TIMEOUT,
    ):
        self.binary = find_binary("redis-server")
        super().__init__(tls=tls, start_timeout=start_timeout)
        self.password = password
        self.acl_user = tuple(acl_user) if acl_user else None
        if self.acl_user is not None and len(self.acl_user) != 3:
            raise ValueError("acl_user must be (user, password, key-pattern)")
        self.client_cert_auth = client_cert_auth
        self.acl_commands = acl_commands
        self.extra_config = extra_config
        self.data_dir = self.workdir / "data"
        self.data_dir.mkdir(exist_ok=True)
        self.config_path = self.workdir / "redis.conf"

    @property
    def url(self) -> str:
        return f"{self.tls_scheme if self.tls else self.scheme}://{self.endpoint}/0"

    @property
    def auth_url(self) -> str:
        """``url`` with credentials (``user:pw@`` for the ACL user, ``:pw@`` for the password)."""
        from urllib.parse import quote

        scheme = self.tls_scheme if self.tls else self.scheme
        if self.acl_user:
            cred = f"{quote(self.acl_user[0], safe='')}:{quote(self.acl_user[1], safe='')}@"
        elif self.password:
            cred = f":{quote(self.password, safe='')}@"
        else:
            cred = ""
        return f"{scheme}://{cred}{self.endpoint}/0"

    def _pick_ports(self) -> None:
        self.port = free_port()

    @staticmethod
    def _q(s: str) -> str:
        # Redis config string quoting.
        return '"' + s.replace("\\", "\\\\").replace('"', '\\"') + '"'

    def _before_spawn(self) -> None:
        # No persistence: make sure nothing survives a restart.
        for f in self.data_dir.glob("*"):
            if f.is_file():
                f.unlink()
        q = self._q
        lines = [
            f"bind {HOST}",
            "protected-mode no",
            "daemonize no",
            f"dir {q(str(self.data_dir))}",
            'save ""',
            "appendonly no",
            'logfile ""',
            "loglevel notice",
            "databases 16",
        ]
        if self.tls:
            lines += [
                "port 0",
                f"tls-port {self.port}",
                f"tls-cert-file {q(self.tls.server_cert)}",
                f"tls-key-file {q(self.tls.server_key)}",
                f"tls-ca-cert-file {q(self.tls.ca)}",
                f"tls-auth-clients {'yes' if self.client_cert_auth else 'no'}",
            ]
        else:
            lines.append(f"port {self.port}")
        if self.password:
            lines.append(f"requirepass {q(self.password)}")
        elif self.acl_user:
            lines.append("user default off")
        if self.acl_user:
            user, pw, pattern = self.acl_user
            lines.append(f"user {user} on >{pw} resetkeys ~{pattern} resetchannels &{pattern} {self.acl_commands}")
        if self.extra_config:
            lines.append(self.extra_config)
        self.config_path.write_text("\n".join(lines) + "\n")
        os.chmod(self.config_path, 0o600)

    def _argv(self) -> list[str]:
        return [self.binary, str(self.config_path)]

    def _connect(self, timeout: float = 2.0):
        sock = socket.create_connection((HOST, self.port), timeout=timeout)
        if self.tls:
            sock = self.tls.client_context().wrap_socket(sock, server_hostname=HOST)
        return sock

    def command(self, *args: str, timeout: float = 2.0) -> bytes:
        """Run one command over a raw connection (after AUTH), return the
        first reply line (e.g. ``b"+PONG"``). For tests and readiness only."""
        sock = self._connect(timeout)
        try:
            if self.acl_user:
                sock.sendall(_resp_command("AUTH", self.acl_user[0], self.acl_user[1]))
                line = _read_line(sock)
                if not line.startswith(b"+OK"):
                    raise ServerError(f"redis AUTH failed: {line!r}")
            elif self.password:
                sock.sendall(_resp_command("AUTH", self.password))
                line = _read_line(sock)
                if not line.startswith(b"+OK"):
                    raise ServerError(f"redis AUTH failed: {line!r}")
            sock.sendall(_resp_command(*args))
            return _read_line(sock)
        finally:
            sock.close()

    def _ready(self) -> bool:
        return self.command("PING", timeout=1.0) == b"+PONG"

    def flushall(self) -> None:
        """``FLUSHALL`` (as the ACL user / with the password if configured)."""
        reply = self.command("FLUSHALL")
        if reply != b"+OK":
            raise ServerError(f"FLUSHALL failed: {reply!r}")


# ---------------------------------------------------------------------------
# Consul
# ---------------------------------------------------------------------------


class ConsulServer(_Server):
    """A real Consul 1.8 agent in ``-dev`` mode (in-memory: a restart loses
    all state), loopback-only, with DNS, gRPC and serf WAN disabled.

    - ``tls``: HTTPS on ``port`` and the plain HTTP port disabled;
      ``client_cert_auth`` sets ``verify_incoming_https``.
    - ``acl_token``: ACLs enabled with ``default_policy = "deny"`` and this
      token as master (and agent) token; anonymous requests are denied.
    - ``session_ttl_min``: e.g. ``"1s"`` to allow short session TTLs
      (Consul's default minimum is 10s).

    ``url`` is ``consul://127.0.0.1:PORT`` (``consuls://`` with TLS).
    """

    kind = "consul"
    scheme = "consul"
    tls_scheme = "consuls"

    def __init__(
        self,
        tls: TLSFiles | None = None,
        acl_token: str | None = None,
        *,
        client_cert_auth: bool = False,
        session_ttl_min: str | None = None,
        node_name: str = "waypost-test",
        datacenter: str = "dc1",
        extra_hcl: str = "",
        start_timeout: float = DEFAULT_START_TIMEOUT,
    ):
        self.binary = find_binary("consul")
        super().__init__(tls=tls, start_timeout=start_timeout)
        self.acl_token = acl_token
        self.client_cert_auth = client_cert_auth
        self.session_ttl_min = session_ttl_min
        self.node_name = node_name
        self.datacenter = datacenter
        self.extra_hcl = extra_hcl
        self.config_path = self.workdir / "consul.hcl"
        self.data_dir = self.workdir / "data"
        self.server_port: int | None = None
        self.serf_lan_port: int | None = None

    def _pick_ports(self) -> None:
        self.port = free_port()
        self.server_port = free_port()
        self.serf_lan_port = free_port()

    def _before_spawn(self) -> None:
        j = json.dumps  # JSON strings are valid HCL strings
        ports = [
            f"server = {self.server_port}",
            f"serf_lan = {self.serf_lan_port}",
            "serf_wan = -1",
            "dns = -1",
            "grpc = -1",
        ]
        if self.tls:
            ports += ["http = -1", f"https = {self.port}"]
        else:
            ports += [f"http = {self.port}", "https = -1"]
        lines = [
            f"datacenter = {j(self.datacenter)}",
            f"node_name = {j(self.node_name)}",
            "disable_update_check = true",
            "disable_anonymous_signature = true",
            f"ports {{ {', '.join(ports)} }}",
        ]
        if self.session_ttl_min:
            lines.append(f"session_ttl_min = {j(self.session_ttl_min)}")
        if self.tls:
            lines += [
                f"ca_file = {j(self.tls.ca)}",
                f"cert_file = {j(self.tls.server_cert)}",
                f"key_file = {j(self.tls.server_key)}",
                "verify_incoming = false",
                "verify_incoming_rpc = false",
                f"verify_incoming_https = {'true' if self.client_cert_auth else 'false'}",
            ]
        if self.acl_token:
            lines.append(
                'acl { enabled = true, default_policy = "deny", '
                "enable_token_persistence = false, "
                f"tokens {{ master = {j(self.acl_token)}, agent = {j(self.acl_token)} }} }}"
            )
        if self.extra_hcl:
            lines.append(self.extra_hcl)
        self.config_path.write_text("\n".join(lines) + "\n")
        os.chmod(self.config_path, 0o600)

    def _argv(self) -> list[str]:
        return [
            self.binary,
            "agent",
            "-dev",
            "-bind",
            HOST,
            "-client",
            HOST,
            "-serf-lan-bind",
            HOST,
            "-dns-port",
            "-1",
            "-grpc-port",
            "-1",
            "-serf-wan-port",
            "-1",
            "-log-level",
            "info",
            "-config-file",
            str(self.config_path),
        ]

    def _env(self) -> dict:
        # Don't let CONSUL_* variables (e.g. CONSUL_HTTP_ADDR) leak in.
        env = {k: v for k, v in os.environ.items() if not k.startswith("CONSUL_")}
        env["CHECKPOINT_DISABLE"] = "1"
        return env

    def _headers(self) -> dict:
        return {"X-Consul-Token": self.acl_token} if self.acl_token else {}

    def http_get(self, path: str, timeout: float = 2.0) -> tuple[int, bytes]:
        """GET ``path`` on the agent's HTTP(S) API (with the ACL token if any)."""
        return _http_get(self.port, path, self.tls, self._headers(), timeout)

    def _ready(self) -> bool:
        status, body = _http_get(self.port, "/v1/status/leader", self.tls)
        if status != 200 or json.loads(body) in ("", None):
            return False
        if self.acl_token:
            status, _ = self.http_get("/v1/acl/token/self")
            if status != 200:
                return False
        # Sessions need the node registered with a passing serfHealth check.
        status, body = self.http_get(f"/v1/health/node/{self.node_name}")
        if status != 200:
            return False
        checks = json.loads(body) or []
        return any(c.get("CheckID") == "serfHealth" and c.get("Status") == "passing" for c in checks)


# ---------------------------------------------------------------------------
# pytest fixtures (re-exportable from tests/conftest.py)
# ---------------------------------------------------------------------------


@pytest.fixture
def tls_files(tmp_path) -> TLSFiles:
    """A fresh CA + server/client certs (``trustme`` is a dev dependency)."""
    return make_tls(tmp_path / "tls")


@pytest.fixture(scope="session")
def etcd_server():
    """One etcd 3.5 shared by the session (use unique key prefixes)."""
    with EtcdServer() as s:
        yield s


@pytest.fixture(scope="session")
def redis_server():
    """One Redis shared by the session (use unique key prefixes)."""
    with RedisServer() as s:
        yield s


@pytest.fixture(scope="session")
def consul_server():
    """One Consul dev agent shared by the session (session_ttl_min 1s)."""
    with ConsulServer(session_ttl_min="1s") as s:
        yield s


def _make_factory(cls):
    made = []

    def make(*args, **kwargs):
        s = cls(*args, **kwargs)
        made.append(s)
        return s.start()

    return make, made


def _close_all(made) -> None:
    for s in reversed(made):
        s.close()


@pytest.fixture
def etcd_factory():
    """``make(version="3.5", tls=None, client_cert_auth=False, **kw)`` -> started
    :class:`EtcdServer`, closed at the end of the test."""
    make, made = _make_factory(EtcdServer)
    yield make
    _close_all(made)


@pytest.fixture
def etcd_cluster_factory():
    """``make(size=3, version="3.5", tls=None, client_cert_auth=False)`` -> started
    :class:`EtcdCluster`, closed at the end of the test."""
    make, made = _make_factory(EtcdCluster)
    yield make
    _close_all(made)


@pytest.fixture
def redis_factory():
    """``make(password=None, acl_user=None, tls=None, **kw)`` -> started
    :class:`RedisServer`, closed at the end of the test."""
    make, made = _make_factory(RedisServer)
    yield make
    _close_all(made)


@pytest.fixture
def consul_factory():
    """``make(tls=None, acl_token=None, **kw)`` -> started :class:`ConsulServer`,
    closed at the end of the test."""
    make, made = _make_factory(ConsulServer)
    yield make
    _close_all(made)
