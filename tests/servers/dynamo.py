"""Real NVIDIA Dynamo processes for the interop tests (tests/test_dynamo_interop.py).

The Dynamo wheels (ai-dynamo-runtime + ai-dynamo 1.6.1) live in a venv of
their own, installed by ``scripts/install-dynamo`` at ``$WAYPOST_DYNAMO_VENV``
(default ``$WAYPOST_SERVERS_DIR/dynamo-venv``, i.e. ``<repo>/.servers/dynamo-venv``).
Its python runs the helper scripts of ``tests/dynamo/`` (a worker, a client)
and ``python -m dynamo.frontend``; waypost stays in the test process.

Every process here is started on 127.0.0.1 only, in its own session, with
``PDEATHSIG`` (through ``setpriv``) and an atexit kill, like the servers of
this package: nothing outlives the test run. Helper scripts speak JSON lines on
stdout (read by a thread into :attr:`DynamoProcess.lines`, each with the
``time.time()`` it arrived); their stderr goes to a log file, whose tail is in
every error.
"""

from __future__ import annotations

import base64
import contextlib
import http.client
import json
import os
import subprocess
import threading
import time
import urllib.parse
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import IO, Any, Self

from . import _process
from ._process import _SETPRIV, HOST, REPO_ROOT, ServerBinaryMissing, ServerError, servers_dir

__all__ = [
    "BUCKETS",
    "DYNAMO_VERSION",
    "HELPERS",
    "DynamoClient",
    "DynamoFrontend",
    "DynamoMissing",
    "DynamoProcess",
    "DynamoWorker",
    "dynamo_env",
    "dynamo_python",
    "dynamo_venv",
    "etcd_records",
    "file_store_records",
    "listening_addresses",
    "text_card",
]

DYNAMO_VERSION = "1.6.1"
#: The helper scripts (tests/dynamo/).
HELPERS = REPO_ROOT / "tests" / "dynamo"
_POLL = 0.02


class DynamoMissing(ServerBinaryMissing):
    """The Dynamo venv is not installed (``scripts/install-dynamo`` did not run, or failed)."""


def dynamo_venv() -> Path:
    return Path(os.environ.get("WAYPOST_DYNAMO_VENV") or (servers_dir() / "dynamo-venv"))


def dynamo_python() -> str:
    """The Dynamo venv's python, or :class:`DynamoMissing` saying how to install it."""
    venv = dynamo_venv()
    python = venv / "bin" / "python"
    if not (venv / ".installed").is_file() or not os.access(python, os.X_OK):
        raise DynamoMissing(
            f"the NVIDIA Dynamo {DYNAMO_VERSION} venv is not installed at {venv}: run `bash scripts/install-dynamo` "
            "(from the repo root; it needs PyPI) - the interop tests run the real Dynamo and cannot run without it")
    return str(python)


def dynamo_env(backend: str, *, file_root: str | os.PathLike[str] | None = None, etcd_endpoint: str | None = None,
               etcd_lease_ttl: int | None = None, extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """The environment of a Dynamo process on ``backend`` (``"file"`` or ``"etcd"``), loopback only.

    Our own ``DYN_*``/``ETCD_*``/``PYTHONPATH``/``VIRTUAL_ENV`` are dropped, so
    nothing of the test process's configuration leaks into Dynamo.
    """
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("DYN_", "ETCD_", "WAYPOST_")) and k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    env.update(
        DYN_DISCOVERY_BACKEND=backend,
        DYN_REQUEST_PLANE="tcp",
        # Without these Dynamo binds and advertises the host's non-loopback address.
        DYN_TCP_RPC_HOST=HOST,
        DYN_TCP_RESPONSE_STREAM_HOST=HOST,
        DYN_EVENT_PLANE_HOST=HOST,
        DYN_LOG="warn",
        PYTHONUNBUFFERED="1",
    )
    if backend == "file":
        if file_root is None:
            raise ValueError("the file store needs file_root")
        env["DYN_FILE_KV"] = str(file_root)
    elif backend == "etcd":
        if etcd_endpoint is None:
            raise ValueError("etcd needs etcd_endpoint (http://127.0.0.1:PORT)")
        env["ETCD_ENDPOINTS"] = etcd_endpoint
        if etcd_lease_ttl is not None:
            env["ETCD_LEASE_TTL"] = str(etcd_lease_ttl)  # Dynamo's lease TTL (default 30 s)
    else:
        raise ValueError(f"backend must be 'file' or 'etcd', not {backend!r}")
    env.update(extra or {})
    return env


def text_card(name: str, *, lora: bool = False, base: str | None = None) -> dict[str, Any]:
    """A model card (``card_json``) as Dynamo 1.6.1 writes it for ``ModelInput.Text``/``ModelType.Chat``.

    The frontend lists a Text card with no tokenizer (a Tokens card would need
    model files). ``lora=True`` makes it a LoRA adapter's card (``lora.name``;
    ``source_path`` is the base model's path, as Dynamo has it).
    """
    slug = "".join(c if c.isascii() and (c.isalnum() or c == "-") else "_" for c in name.lower())
    card: dict[str, Any] = {
        "display_name": name, "slug": slug, "source_path": f"/nonexistent/{base or name}", "model_info": None,
        "tokenizer": None, "context_length": 0, "kv_cache_block_size": 0, "migration_limit": 0,
        "model_type": "Chat", "model_input": "Text", "worker_type": "aggregated", "needs": [],
    }
    if lora:
        card["lora"] = {"name": name}
    card.update(runtime_config={}, media_decoder=None, media_fetcher=None)
    return card


# ---------------------------------------------------------------------------
# what is stored, byte for byte
# ---------------------------------------------------------------------------

BUCKETS = ("instances", "mdc", "event_channels", "event_sources")


def file_store_records(root: str | os.PathLike[str]) -> dict[str, bytes]:
    """Every record of a file store: ``v1/<bucket>/<key>`` (the file name percent-decoded) -> the file's bytes.

    Names starting with ``.`` (Dynamo's and waypost's temp files) are not records.
    """
    records = {}
    for bucket in BUCKETS:
        directory = Path(root) / "v1" / bucket
        with contextlib.suppress(FileNotFoundError):
            for name in sorted(os.listdir(directory)):
                if name.startswith("."):
                    continue
                with contextlib.suppress(FileNotFoundError):  # reaped meanwhile
                    records[f"v1/{bucket}/{urllib.parse.unquote(name)}"] = (directory / name).read_bytes()
    return records


def etcd_records(client_url: str) -> dict[str, tuple[bytes, int]]:
    """Every key under ``v1/`` of an etcd (``etcdctl get --prefix v1/``): key -> (value, lease id)."""
    argv = [_process.find_binary("etcdctl"), f"--endpoints={client_url}", "--dial-timeout=5s",
            "--command-timeout=10s", "-w", "json", "get", "--prefix", "v1/"]
    env = {k: v for k, v in os.environ.items() if not k.startswith("ETCDCTL_")}
    done = subprocess.run(argv, capture_output=True, text=True, timeout=30, env=env, check=False)
    if done.returncode != 0:
        raise ServerError(f"etcdctl get --prefix v1/ failed: {done.stderr.strip()}")
    return {base64.b64decode(kv["key"]).decode(): (base64.b64decode(kv.get("value", "")), int(kv.get("lease", 0)))
            for kv in json.loads(done.stdout).get("kvs", [])}


# ---------------------------------------------------------------------------
# sockets: prove that nothing listens beyond loopback
# ---------------------------------------------------------------------------


def _parse_address(hex_address: str) -> str:
    host, port = hex_address.split(":")
    raw = bytes.fromhex(host)
    # /proc/net/tcp{,6} print each 32-bit word in host (little-endian) order.
    words = b"".join(raw[i:i + 4][::-1] for i in range(0, len(raw), 4))
    if len(words) == 4:
        text = ".".join(str(b) for b in words)
    elif words[:12] == b"\0" * 10 + b"\xff\xff":  # IPv4-mapped
        text = ".".join(str(b) for b in words[12:])
    else:
        import ipaddress

        text = str(ipaddress.IPv6Address(words))
    return f"{text}:{int(port, 16)}"


def listening_addresses(pid: int) -> list[str]:
    """Every TCP socket of ``pid`` in LISTEN and every bound UDP socket, as ``host:port`` (Linux /proc)."""
    inodes = set()
    with contextlib.suppress(FileNotFoundError):
        for fd in os.listdir(f"/proc/{pid}/fd"):
            with contextlib.suppress(OSError):
                target = os.readlink(f"/proc/{pid}/fd/{fd}")
                if target.startswith("socket:["):
                    inodes.add(target[8:-1])
    found = []
    for table, state in (("tcp", "0A"), ("tcp6", "0A"), ("udp", "07"), ("udp6", "07")):
        try:
            lines = Path(f"/proc/{pid}/net/{table}").read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            fields = line.split()
            if fields[3] == state and fields[9] in inodes:
                found.append(_parse_address(fields[1]))
    return sorted(found)


def _is_loopback(address: str) -> bool:
    host = address.rsplit(":", 1)[0]
    return host.startswith("127.") or host == "::1"


# ---------------------------------------------------------------------------
# processes
# ---------------------------------------------------------------------------


class DynamoProcess:
    """A child process: JSON lines from its stdout (or stdout to the log), commands to its stdin."""

    def __init__(self, name: str, argv: Sequence[str], env: Mapping[str, str], workdir: Path, *,
                 json_lines: bool = True) -> None:
        self.name = name
        self.argv = list(argv)
        self.env = dict(env)
        self.workdir = workdir
        self.log_path = workdir / f"{name}.log"
        self.json_lines = json_lines
        #: ``(time.time() of arrival, the parsed line)``; a line that is not JSON is ``{"event": "text", ...}``.
        self.lines: list[tuple[float, dict[str, Any]]] = []
        self._cond = threading.Condition()
        self._eof = False
        self.proc: subprocess.Popen[str] | None = None
        self.started_at = 0.0
        self.killed_at: float | None = None

    # lifecycle ------------------------------------------------------------
    def start(self, timeout: float = 60.0) -> Self:
        """Launch it and wait until it is ready (see :meth:`wait_ready`)."""
        self.launch()
        self.wait_ready(timeout)
        return self

    def wait_ready(self, timeout: float = 60.0) -> None:
        """Nothing to wait for here; subclasses wait for their readiness line or port."""

    def launch(self) -> Self:
        """Start the process without waiting for it (to start several at once, then ``wait_ready`` each)."""
        self.workdir.mkdir(parents=True, exist_ok=True)
        argv = self.argv
        if _SETPRIV and threading.current_thread() is threading.main_thread():
            argv = [_SETPRIV, "--pdeathsig", "KILL", "--", *argv]
        log: IO[str]
        with open(self.log_path, "a") as log:
            log.write(f"\n==== start {time.strftime('%H:%M:%S')}: {' '.join(argv)}\n")
            log.flush()
            self.started_at = time.time()
            self.proc = subprocess.Popen(
                argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE if self.json_lines else log,
                stderr=log, cwd=str(self.workdir), env=self.env, text=True, start_new_session=True,
                umask=0o022,  # Dynamo creates store directories 0777 & ~umask: never group/other-writable
            )
        _process._track(self)
        if self.json_lines:
            threading.Thread(target=self._read, name=f"dynamo-{self.name}-stdout", daemon=True).start()
        return self

    def _read(self) -> None:
        assert self.proc is not None and self.proc.stdout is not None
        for raw in self.proc.stdout:
            try:
                line = json.loads(raw)
            except ValueError:
                line = {"event": "text", "text": raw.rstrip("\n")}
            with self._cond:
                self.lines.append((time.time(), line))
                self._cond.notify_all()
        with self._cond:
            self._eof = True
            self._cond.notify_all()

    @property
    def pid(self) -> int:
        assert self.proc is not None, f"{self.name} was not started"
        return self.proc.pid

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def send(self, line: str) -> None:
        assert self.proc is not None and self.proc.stdin is not None
        self.proc.stdin.write(line + "\n")
        self.proc.stdin.flush()

    def close_stdin(self) -> None:
        if self.proc is not None and self.proc.stdin is not None and not self.proc.stdin.closed:
            with contextlib.suppress(OSError):
                self.proc.stdin.close()

    def wait_exit(self, timeout: float) -> int:
        assert self.proc is not None
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            raise ServerError(f"{self.name} (pid {self.proc.pid}) did not exit within {timeout:.0f} s; "
                              f"log tail:\n{self.log_tail()}") from None

    def kill(self) -> float:
        """SIGKILL (the whole session: the process and any child); returns when it was sent."""
        if self.proc is None:
            return time.time()
        if self.proc.poll() is None:
            self.killed_at = time.time()
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self.proc.pid, 9)
            with contextlib.suppress(ProcessLookupError):
                self.proc.kill()
        self.proc.wait(10)
        return self.killed_at or time.time()

    def terminate(self, timeout: float = 15.0) -> int:
        """SIGTERM, then wait for the exit (a graceful shutdown for the helpers and the frontend)."""
        assert self.proc is not None
        if self.proc.poll() is None:
            self.proc.terminate()
        return self.wait_exit(timeout)

    def close(self) -> None:
        """Kill it if it still runs; idempotent (also called at exit)."""
        self.close_stdin()
        if self.proc is not None and self.proc.poll() is None:
            self.kill()
        if self.proc is not None and self.proc.stdout is not None:
            with contextlib.suppress(OSError):
                self.proc.stdout.close()
        _process._untrack(self)

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # output ---------------------------------------------------------------
    def log_tail(self, n: int = 30) -> str:
        return _process._tail(self.log_path, n)

    def wait_line(self, predicate: Callable[[dict[str, Any]], bool], timeout: float, what: str,
                  since: int = 0) -> tuple[float, dict[str, Any]]:
        """The first line from index ``since`` on that satisfies ``predicate``: ``(arrival time, line)``.

        Fails at once if the process ends first, with its log's tail.
        """
        deadline = time.monotonic() + timeout
        index = since
        with self._cond:
            while True:
                while index < len(self.lines):
                    arrived, line = self.lines[index]
                    index += 1
                    if predicate(line):
                        return arrived, line
                    if line.get("event") == "error":
                        raise ServerError(f"{self.name}: {line}; log tail:\n{self.log_tail()}")
                if self._eof:
                    code = self.proc.poll() if self.proc else None
                    raise ServerError(f"{self.name} ended (exit code {code}) before {what}; last lines: "
                                      f"{[line for _, line in self.lines[-3:]]}; log tail:\n{self.log_tail()}")
                left = deadline - time.monotonic()
                if left <= 0:
                    raise ServerError(f"{what}: not within {timeout:.1f} s; last lines: "
                                      f"{[line for _, line in self.lines[-3:]]}; log tail:\n{self.log_tail()}")
                self._cond.wait(left)

    def check_loopback_only(self) -> list[str]:
        """Assert that every socket the process listens on is on loopback; returns them."""
        addresses = listening_addresses(self.pid)
        outside = [a for a in addresses if not _is_loopback(a)]
        if outside:
            raise AssertionError(f"{self.name} (pid {self.pid}) listens beyond loopback: {outside}")
        return addresses


class DynamoWorker(DynamoProcess):
    """tests/dynamo/worker.py: a real Dynamo worker serving ``endpoint`` (``ns.comp.ep``)."""

    def __init__(self, python: str, env: Mapping[str, str], workdir: Path, endpoint: str, *,
                 model: str | None = "base-model", lora: str | None = "my-lora", args: Sequence[str] = (),
                 name: str = "worker", wrapper: Sequence[str] = ()) -> None:
        argv = [*wrapper, python, str(HELPERS / "worker.py"), "--endpoint", endpoint]
        argv += ["--model-name", model, "--lora", lora or ""] if model else ["--no-model"]
        super().__init__(name, [*argv, *args], env, workdir)
        self.endpoint = endpoint
        self.ready: dict[str, Any] = {}

    def wait_ready(self, timeout: float = 60.0) -> None:
        _, self.ready = self.wait_line(lambda line: line.get("event") == "ready", timeout, f"{self.name} ready")

    @property
    def instance_id(self) -> int:
        return int(self.ready["instance_id"])

    def registered_at(self, kind: str) -> tuple[float, float]:
        """When the worker's ``kind`` registration call (``instance``, ``model``, ``lora``...) began and returned."""
        _, line = self.wait_line(lambda ln: ln.get("event") == "registered" and ln.get("kind") == kind, 0,
                                 f"{self.name} registered {kind}")
        return float(line["t0"]), float(line["t"])

    def command(self, command: str, timeout: float = 30.0) -> dict[str, Any]:
        """Send a stdin command (``taints a,b``, ``unregister-lora``...) and return its successful answer."""
        since = len(self.lines)
        self.send(command)
        name = command.split(" ", 1)[0]
        _, line = self.wait_line(lambda ln: ln.get("event") == name, timeout, f"{self.name} answers {command!r}",
                                 since=since)
        if not line.get("ok"):
            raise ServerError(f"{self.name}: {command!r} failed: {line}; log tail:\n{self.log_tail()}")
        return line

    def shutdown(self, timeout: float = 30.0) -> float:
        """Graceful shutdown by closing stdin; waits for the exit (code 0).

        Returns when the worker called ``DistributedRuntime.shutdown()``.
        """
        since = len(self.lines)
        self.close_stdin()
        code = self.wait_exit(timeout)
        if code != 0:
            raise ServerError(f"{self.name} exited with code {code}; log tail:\n{self.log_tail()}")
        _, line = self.wait_line(lambda ln: ln.get("event") == "exiting", timeout, f"{self.name} exiting", since)
        return float(line["t"])


class DynamoClient(DynamoProcess):
    """tests/dynamo/client.py: what a real Dynamo client sees of ``endpoint`` (and, ``cards=True``, its cards)."""

    def __init__(self, python: str, env: Mapping[str, str], workdir: Path, endpoint: str, *,
                 cards: bool = False, name: str = "client") -> None:
        super().__init__(name, [python, str(HELPERS / "client.py"), "--endpoint", endpoint,
                                *(["--cards"] if cards else [])], env, workdir)

    def wait_ready(self, timeout: float = 60.0) -> None:
        self.wait_line(lambda line: "instance_ids" in line, timeout, f"{self.name}'s first view")

    def mark(self) -> int:
        """Where the output is now: pass it as ``since`` to wait for a view printed after this point."""
        with self._cond:
            return len(self.lines)

    def wait_view(self, predicate: Callable[[dict[str, Any]], bool], timeout: float, what: str,
                  since: int = 0) -> tuple[float, dict[str, Any]]:
        """The first view from line ``since`` on that satisfies ``predicate``: ``(when it was printed, view)``."""
        _, view = self.wait_line(lambda line: "instance_ids" in line and predicate(line), timeout, what, since)
        return float(view["t"]), view

    def view(self) -> dict[str, Any]:
        """The latest view."""
        with self._cond:
            views = [line for _, line in self.lines if "instance_ids" in line]
        return views[-1] if views else {}


class DynamoFrontend(DynamoProcess):
    """``python -m dynamo.frontend --http-host 127.0.0.1 --http-port PORT`` (the OpenAI HTTP frontend)."""

    def __init__(self, python: str, env: Mapping[str, str], workdir: Path, *, name: str = "frontend") -> None:
        self.port = _process.free_port()
        super().__init__(name, [python, "-m", "dynamo.frontend", "--http-host", HOST, "--http-port", str(self.port)],
                         env, workdir, json_lines=False)

    def wait_ready(self, timeout: float = 60.0) -> None:
        for attempt in range(3):
            if attempt:
                self.launch()
            deadline = time.monotonic() + timeout
            while time.monotonic() < deadline and self.running:
                if self.models() is not None:
                    return
                time.sleep(_POLL)
            if self.running:
                raise ServerError(f"{self.name} did not answer on {HOST}:{self.port} within {timeout:.0f} s; "
                                  f"log tail:\n{self.log_tail()}")
            if attempt < 2 and "in use" in self.log_tail().lower():
                self.port = _process.free_port()  # a port clash: try another
                self.argv[-1] = str(self.port)
                continue
            raise ServerError(f"{self.name} exited (code {self.proc.returncode if self.proc else None}); "
                              f"log tail:\n{self.log_tail()}")
        raise AssertionError("unreachable")  # pragma: no cover

    def get(self, path: str, timeout: float = 2.0) -> tuple[int, bytes]:
        conn = http.client.HTTPConnection(HOST, self.port, timeout=timeout)
        try:
            conn.request("GET", path)
            response = conn.getresponse()
            return response.status, response.read()
        finally:
            conn.close()

    def models(self) -> list[str] | None:
        """The model ids ``GET /v1/models`` lists, sorted; ``None`` if it does not answer (yet)."""
        try:
            status, body = self.get("/v1/models")
        except OSError:
            return None
        if status != 200:
            return None
        return sorted(str(m["id"]) for m in json.loads(body)["data"])

    def wait_models(self, expected: Sequence[str], timeout: float, what: str) -> float:
        """Wait until ``/v1/models`` lists exactly ``expected``; returns when it first did."""
        want = sorted(expected)
        deadline = time.monotonic() + timeout
        seen = None
        while True:
            seen = self.models()
            if seen == want:
                return time.time()
            if not self.running:
                raise ServerError(f"{self.name} died; log tail:\n{self.log_tail()}")
            if time.monotonic() >= deadline:
                raise AssertionError(f"{what}: /v1/models lists {seen}, not {want}, after {timeout:.1f} s")
            time.sleep(_POLL)
