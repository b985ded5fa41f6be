"""Process handling shared by every server: binaries, free ports, child processes
(spawn, signals, pause/resume, cleanup at exit), readiness polling, and the
``_Server`` base class (start/stop/kill/restart/pause/resume, context manager)."""

from __future__ import annotations

import atexit
import contextlib
import http.client
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .tls import TLSFiles

HOST = "127.0.0.1"
REPO_ROOT = Path(__file__).resolve().parents[2]  # tests/servers/_process.py -> <repo>
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

    The server modules call it as ``_process.free_port()``, looked up at call
    time, so a test can monkeypatch ``servers._process.free_port``.
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
# registry: nothing is left behind
# ---------------------------------------------------------------------------

_SETPRIV = shutil.which("setpriv") if os.uname().sysname == "Linux" else None
# Every process, server and cluster not closed yet (strong refs: atexit must see
# each one): closing a server also removes its temp dir.
_live: set = set()
_live_lock = threading.Lock()


def _track(obj) -> None:
    """Have ``obj.close()`` called at exit unless ``_untrack(obj)`` is called first."""
    with _live_lock:
        _live.add(obj)


def _untrack(obj) -> None:
    with _live_lock:
        _live.discard(obj)


def _cleanup_all() -> None:
    with _live_lock:
        objs = list(_live)
    for obj in objs:  # any order: every close() is idempotent
        with contextlib.suppress(Exception):
            obj.close()


atexit.register(_cleanup_all)


class _Process:
    """One child process with a log file, started in its own session."""

    def __init__(self, name: str, workdir: Path):
        self.name = name
        self.workdir = workdir
        self.log_path = workdir / f"{name}.log"
        self.proc: subprocess.Popen | None = None
        self.paused = False
        _track(self)

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
        _untrack(self)

    def tail(self, n: int = 40) -> str:
        return _tail(self.log_path, n)

    def log_text(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""


# ---------------------------------------------------------------------------
# readiness
# ---------------------------------------------------------------------------


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


def _http_request(
    port: int,
    method: str,
    path: str,
    body: bytes | None = None,
    tls: TLSFiles | None = None,
    headers: dict | None = None,
    timeout: float = 2.0,
) -> tuple[int, bytes]:
    """One HTTP(S) request to ``127.0.0.1:port`` (HTTPS with the test CA and client cert when ``tls``)."""
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


def _env_without(prefix: str, keep: Sequence[str] = ()) -> dict:
    """Our environment without the ``prefix*`` variables (except those in ``keep``)."""
    return {k: v for k, v in os.environ.items() if not k.startswith(prefix) or k in keep}


def _write_config(path: Path, lines: Sequence[str]) -> None:
    """Write a server's config file, one line each, readable by us only."""
    path.write_text("\n".join(lines) + "\n")
    os.chmod(path, 0o600)


# ---------------------------------------------------------------------------
# common server base
# ---------------------------------------------------------------------------


class _Server:
    """Base: start/stop/kill/restart/pause/resume, context manager.

    ``binary`` is looked up (``find_binary``) before anything is created, so a
    missing server fails with :class:`ServerBinaryMissing` and leaves nothing
    behind; ``data_dir`` is ``workdir/data`` (each server decides what goes in).
    """

    kind = "server"
    scheme = ""
    tls_scheme = ""

    def __init__(
        self,
        binary: str,
        tls: TLSFiles | None = None,
        workdir: str | None = None,
        start_timeout: float = DEFAULT_START_TIMEOUT,
        *,
        process_name: str | None = None,
    ):
        self.binary = find_binary(binary)
        self.tls = tls
        self.start_timeout = start_timeout
        self._own_workdir = workdir is None
        self.workdir = Path(workdir or tempfile.mkdtemp(prefix=f"waypost-{self.kind}-"))
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.data_dir = self.workdir / "data"
        self.host = HOST
        self.port: int | None = None
        self._process = _Process(process_name or self.kind, self.workdir)
        self._closed = False
        self._started_once = False
        _track(self)

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
    def _url_scheme(self) -> str:
        """``scheme``, or ``tls_scheme`` when serving TLS."""
        return self.tls_scheme if self.tls else self.scheme

    @property
    def url(self) -> str:
        return f"{self._url_scheme}://{self.endpoint}"

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
        _untrack(self)

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc) -> None:
        self.close()

    def _what(self) -> str:
        return f"{self.kind} on {self.endpoint}"

    def __repr__(self) -> str:
        state = "paused" if self.paused else ("running" if self.running else "stopped")
        return f"<{type(self).__name__} {self.url} {state}>"
