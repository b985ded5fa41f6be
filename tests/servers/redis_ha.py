"""Highly available Redis 7 for tests: :class:`RedisSentinelSet` (a primary, its replicas and three
Sentinels) and :class:`RedisClusterSet` (three primaries, each with a replica), on free 127.0.0.1 ports,
without persistence.

Both follow the other servers' pattern (own temp dir, own session per process, PDEATHSIG, killed at
exit) and are tuned for fast, reliable fail-overs on a loaded machine:

* Sentinel: ``down-after-milliseconds 1000``, ``failover-timeout 3000`` and, at runtime,
  ``SENTINEL DEBUG`` timers of 200 ms (info/ping/ask/publish periods; Redis ≥ 7.0). A SIGKILL of
  the primary fails over in ~1.8 s, a SIGSTOP in ~2.2 s; startup takes ~1 s.
* Cluster: ``cluster-node-timeout 1000``; a fail-over takes ~2.4 s; startup ~2.5 s (2 s of it is
  Redis's hard-coded ``CLUSTER_WRITABLE_DELAY``), so share one set per module.

"Ready" is never just "the process answers": a replica's link being up is not enough, because
with diskless sync a primary holds the command stream back until the replica's first ACK. Every
wait for replication therefore writes something and waits for a replica to acknowledge it
(``WAIT``) on the same connection.

Fault hooks with the conformance suite's names (``kill``/``restart``/``pause``/``resume``), acting
on the current primary (of the waypost hash slot, for a cluster), are :meth:`RedisSentinelSet.faults`
and :meth:`RedisClusterSet.faults`.
"""

from __future__ import annotations

import contextlib
import shutil
import socket
import ssl
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any
from urllib.parse import quote

from . import _process
from ._process import (
    DEFAULT_START_TIMEOUT,
    HOST,
    ServerError,
    _port_in_use_msg,
    _Process,
    _track,
    _untrack,
    _write_config,
    find_binary,
)
from .tls import TLSFiles

SENTINEL_DEBUG = {  # SENTINEL DEBUG <param> <ms> (Redis defaults: 10000/1000/1000/2000/10000)
    "info-period": 200,
    "ping-period": 200,
    "ask-period": 200,
    "publish-period": 200,  # x4: how soon a returning old primary is turned into a replica
    "slave-reconf-timeout": 2000,
}


# -- a small RESP2 client (readiness and topology checks; no redis-py in this package) -------------

class RespError(str):
    """An error reply (``-ERR …``), returned rather than raised."""


def _encode(*args: str | int | bytes) -> bytes:
    out = [b"*%d\r\n" % len(args)]
    for arg in args:
        data = arg if isinstance(arg, bytes) else str(arg).encode()
        out.append(b"$%d\r\n%s\r\n" % (len(data), data))
    return b"".join(out)


class _Reader:
    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.buffer = b""

    def _fill(self) -> None:
        chunk = self.sock.recv(65536)
        if not chunk:
            raise ConnectionError("connection closed")
        self.buffer += chunk

    def line(self) -> bytes:
        while b"\r\n" not in self.buffer:
            self._fill()
        line, self.buffer = self.buffer.split(b"\r\n", 1)
        return line

    def exact(self, n: int) -> bytes:
        while len(self.buffer) < n + 2:
            self._fill()
        data, self.buffer = self.buffer[:n], self.buffer[n + 2:]
        return data

    def reply(self) -> Any:
        line = self.line()
        kind, rest = line[:1], line[1:]
        if kind == b"+":
            return rest.decode()
        if kind == b"-":
            return RespError(rest.decode())
        if kind == b":":
            return int(rest)
        if kind == b"$":
            return None if int(rest) < 0 else self.exact(int(rest)).decode(errors="replace")
        if kind == b"*":
            return None if int(rest) < 0 else [self.reply() for _ in range(int(rest))]
        raise ServerError(f"bad RESP reply line {line!r}")


def resp_call(port: int, *commands: Sequence[str | int | bytes], password: str | None = None,
              tls: TLSFiles | None = None, timeout: float = 2.0) -> list[Any]:
    """Run ``commands`` (each a sequence of arguments) on one connection; return their replies."""
    sock: socket.socket = socket.create_connection((HOST, port), timeout=timeout)
    try:
        if tls is not None:
            context = ssl.create_default_context(cafile=tls.ca)
            sock = context.wrap_socket(sock, server_hostname=HOST)
        reader = _Reader(sock)
        if password is not None:
            sock.sendall(_encode("AUTH", password))
            if isinstance(reply := reader.reply(), RespError):
                raise ServerError(f"AUTH on port {port} failed: {reply}")
        replies = []
        for args in commands:
            sock.sendall(_encode(*args))
            replies.append(reader.reply())
        return replies
    finally:
        sock.close()


def _pairs(flat: Sequence[Any]) -> dict[str, Any]:
    return dict(zip(flat[::2], flat[1::2], strict=True))


def _info(text: Any) -> dict[str, str]:
    return dict(line.split(":", 1) for line in str(text).splitlines() if ":" in line and not line.startswith("#"))


def _wait(check: Callable[[], object], timeout: float, what: str, nodes: Sequence[_Node] = (),
          interval: float = 0.02) -> Any:
    """Poll ``check`` (an exception counts as "not yet") until truthy; fail fast if one of ``nodes`` died."""
    deadline = time.monotonic() + timeout
    last: BaseException | None = None
    while True:
        for node in nodes:
            if node.started and not node.process.running:
                raise ServerError(f"{node.name} exited while waiting for {what}; log tail:\n{node.process.tail()}")
        try:
            if value := check():
                return value
        except Exception as exc:
            last = exc
        if time.monotonic() >= deadline:
            raise ServerError(f"{what} not reached within {timeout:.1f} s (last error: {last!r})")
        time.sleep(interval)


# -- CRC16 (XMODEM), for key slots: what Redis Cluster hashes a key's tag with -----------------------

def _crc16(data: bytes) -> int:
    crc = 0
    for byte in data:
        crc ^= byte << 8
        for _ in range(8):
            crc = ((crc << 1) ^ 0x1021) if crc & 0x8000 else crc << 1
            crc &= 0xFFFF
    return crc


def key_slot(key: str | bytes) -> int:
    """The cluster slot of ``key`` (its ``{hash tag}`` if it has a non-empty one)."""
    data = key.encode() if isinstance(key, str) else key
    start = data.find(b"{")
    if start >= 0:
        end = data.find(b"}", start + 1)
        if end > start + 1:
            data = data[start + 1:end]
    return _crc16(data) % 16384


_range_keys: dict[tuple[int, int], str] = {}


def key_in(low: int, high: int) -> str:
    """A key name whose slot is in ``low..high`` (found by trying names, then cached)."""
    if (low, high) not in _range_keys:
        n = 0
        while not low <= key_slot(f"fixture:{n}") <= high:
            n += 1
        _range_keys[low, high] = f"fixture:{n}"
    return _range_keys[low, high]


# -- one process of a set ---------------------------------------------------------------------------

class _Node:
    """One redis-server (a data node or a Sentinel) of a set: its dir, config file and process."""

    def __init__(self, name: str, workdir: Path, *, sentinel: bool = False, bus_port: bool = False) -> None:
        self.name = name
        self.dir = workdir / name
        self.dir.mkdir()
        self.port = _process.free_port()
        self.bus_port = _process.free_port() if bus_port else None  # cluster-port (Redis >= 7.0)
        self.sentinel = sentinel
        self.config_path = self.dir / "redis.conf"
        self.process = _Process(name, self.dir)
        self.started = False

    @property
    def address(self) -> tuple[str, int]:
        return (HOST, self.port)

    @property
    def endpoint(self) -> str:
        return f"{HOST}:{self.port}"

    @property
    def running(self) -> bool:
        return self.process.running

    @property
    def paused(self) -> bool:
        return self.process.paused

    def start(self, binary: str, config: Sequence[str] | None) -> None:
        """Start (writing ``config`` first, unless ``None``: a Sentinel keeps the file it rewrote)."""
        if config is not None:
            _write_config(self.config_path, config)
        self.process.spawn([binary, str(self.config_path), *(["--sentinel"] if self.sentinel else [])])
        self.started = True

    def kill(self) -> None:
        self.process.kill()

    def new_ports(self) -> None:
        """Other free ports (after a clash), and no cluster state from the failed start."""
        self.port = _process.free_port()
        self.bus_port = _process.free_port() if self.bus_port is not None else None
        (self.dir / "nodes.conf").unlink(missing_ok=True)

    def pause(self) -> None:
        self.process.pause()

    def resume(self) -> None:
        self.process.resume()

    def __repr__(self) -> str:
        state = "paused" if self.paused else ("running" if self.running else "stopped")
        return f"<{self.name} :{self.port} {state}>"


class _Set:
    """What both sets share: a temp dir, nodes, the binary, raw commands, cleanup."""

    kind = ""

    def __init__(self, password: str | None, tls: TLSFiles | None, start_timeout: float) -> None:
        self.binary = find_binary("redis-server")
        self.password = password
        self.tls = tls
        self.start_timeout = start_timeout
        self.workdir = Path(tempfile.mkdtemp(prefix=f"waypost-{self.kind}-"))
        self.nodes: list[_Node] = []
        self._closed = False
        _track(self)

    @property
    def url(self) -> str:
        raise NotImplementedError

    @property
    def auth_url(self) -> str:
        """``url`` with the data nodes' password (``:PASSWORD@``), if any."""
        if not self.password:
            return self.url
        scheme, rest = self.url.split("://", 1)
        return f"{scheme}://:{quote(self.password, safe='')}@{rest}"

    def _common(self, node: _Node) -> list[str]:
        q = _quote
        lines = ["bind 127.0.0.1", "protected-mode no", "daemonize no", f"dir {q(str(node.dir))}", 'logfile ""']
        if self.tls:
            lines += ["port 0", f"tls-port {node.port}", f"tls-cert-file {q(self.tls.server_cert)}",
                      f"tls-key-file {q(self.tls.server_key)}", f"tls-ca-cert-file {q(self.tls.ca)}",
                      "tls-auth-clients no", "tls-replication yes"]
        else:
            lines.append(f"port {node.port}")
        return lines

    def _data_config(self, node: _Node) -> list[str]:
        lines = [*self._common(node), 'save ""', "appendonly no",
                 # 7.0's default delay is 5 s: every (re)sync of a replica would wait for it.
                 "repl-diskless-sync yes", "repl-diskless-sync-delay 0"]
        if self.password:
            lines += [f"requirepass {_quote(self.password)}", f"masterauth {_quote(self.password)}"]
        return lines

    def call(self, node: _Node, *args: str | int | bytes, timeout: float = 2.0) -> Any:
        """One command on ``node`` (authenticated as the data nodes' or Sentinels' default user)."""
        return resp_call(node.port, args, password=self._password_of(node), tls=self.tls, timeout=timeout)[0]

    def _password_of(self, node: _Node) -> str | None:
        return self.password

    def info(self, node: _Node, section: str = "replication") -> dict[str, str]:
        return _info(self.call(node, "INFO", section))

    def _kill_all(self) -> None:
        for node in self.nodes:
            node.kill()

    def _start_retrying(self, start_once: Callable[[], None]) -> None:
        """``start_once()``; if a port was taken meanwhile (by another process), new ports, up to 5 times."""
        for attempt in range(5):
            marks = [len(node.process.log_text()) for node in self.nodes]
            try:
                start_once()
                return
            except BaseException:
                self._kill_all()
                logs = "".join(node.process.log_text()[mark:] for node, mark in zip(self.nodes, marks, strict=True))
                if attempt == 4 or not _port_in_use_msg(logs):
                    raise
            for node in self.nodes:
                node.new_ports()

    def close(self) -> None:
        """Kill every process and remove the temp dir. Safe to call twice."""
        if self._closed:
            return
        self._closed = True
        for node in self.nodes:
            node.process.close()
        shutil.rmtree(self.workdir, ignore_errors=True)
        _untrack(self)

    def __exit__(self, *exc: object) -> None:
        self.close()


def _quote(text: str) -> str:
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


# -- Sentinel -------------------------------------------------------------------------------------------

class RedisSentinelSet(_Set):
    """A Redis primary, ``replicas`` replicas and ``sentinels`` Sentinels monitoring it as ``service``.

    - ``password``: ``requirepass``/``masterauth`` of the data nodes (Sentinels get ``auth-pass``).
    - ``sentinel_password``: ``requirepass`` of the Sentinels (and ``sentinel-pass`` between them).
    - ``tls``: every process speaks TLS only (replication and Sentinel links included).

    ``url`` is ``redis+sentinel://H1:P1,H2:P2,H3:P3/SERVICE/0`` (``rediss+sentinel://`` with TLS);
    ``auth_url`` adds ``:PASSWORD@`` for the data nodes.
    """

    kind = "redis-sentinel"
    scheme = "redis+sentinel"
    tls_scheme = "rediss+sentinel"

    def __init__(self, service: str = "mymaster", *, replicas: int = 1, sentinels: int = 3,
                 password: str | None = None, sentinel_password: str | None = None, tls: TLSFiles | None = None,
                 down_after_ms: int = 1000, failover_timeout_ms: int = 3000, debug_timers: bool = True,
                 extra_config: str = "", start_timeout: float = DEFAULT_START_TIMEOUT) -> None:
        if replicas < 1 or sentinels < 1:
            raise ValueError("a Sentinel set needs at least one replica and one Sentinel")
        super().__init__(password, tls, start_timeout)
        self.service = service
        self.sentinel_password = sentinel_password
        self.down_after_ms = down_after_ms
        self.failover_timeout_ms = failover_timeout_ms
        self.debug_timers = debug_timers
        self.extra_config = extra_config
        self.data_nodes = [_Node(f"redis{i}", self.workdir) for i in range(1 + replicas)]
        self.sentinel_nodes = [_Node(f"sentinel{i}", self.workdir, sentinel=True) for i in range(sentinels)]
        self.nodes = [*self.data_nodes, *self.sentinel_nodes]
        self.quorum = len(self.sentinel_nodes) // 2 + 1
        self.startup_seconds: float | None = None

    def _password_of(self, node: _Node) -> str | None:
        return self.sentinel_password if node.sentinel else self.password

    # configs ------------------------------------------------------------------------------------------
    def _node_config(self, node: _Node, replicaof: _Node | None) -> list[str]:
        lines = self._data_config(node)
        if self.extra_config:
            lines.append(self.extra_config)
        if replicaof is not None:
            lines.append(f"replicaof {HOST} {replicaof.port}")
        return lines

    def _sentinel_config(self, node: _Node, primary: _Node) -> list[str]:
        svc = self.service
        lines = [*self._common(node), "sentinel resolve-hostnames no", "sentinel announce-hostnames no",
                 f"sentinel announce-ip {HOST}",
                 f"sentinel monitor {svc} {HOST} {primary.port} {self.quorum}",
                 f"sentinel down-after-milliseconds {svc} {self.down_after_ms}",
                 f"sentinel failover-timeout {svc} {self.failover_timeout_ms}",
                 f"sentinel parallel-syncs {svc} 1"]
        if self.password:
            lines.append(f"sentinel auth-pass {svc} {_quote(self.password)}")
        if self.sentinel_password:
            lines += [f"requirepass {_quote(self.sentinel_password)}",
                      f"sentinel sentinel-pass {_quote(self.sentinel_password)}"]
        return lines

    # lifecycle ------------------------------------------------------------------------------------------
    def start(self) -> RedisSentinelSet:
        started = time.monotonic()
        self._start_retrying(self._start_once)
        self.startup_seconds = time.monotonic() - started
        return self

    def _start_once(self) -> None:
        primary, *replicas = self.data_nodes
        primary.start(self.binary, self._node_config(primary, None))
        for node in replicas:
            node.start(self.binary, self._node_config(node, primary))
        for node in self.sentinel_nodes:
            node.start(self.binary, self._sentinel_config(node, primary))
        for node in self.nodes:
            _wait(lambda node=node: self.call(node, "PING", timeout=1.0) == "PONG", self.start_timeout,
                  f"{node.name} answering PING", self.nodes)
        if self.debug_timers:
            args = [x for pair in SENTINEL_DEBUG.items() for x in pair]
            for node in self.sentinel_nodes:
                self.call(node, "SENTINEL", "DEBUG", *args)
        for node in replicas:
            _wait(lambda node=node: self.info(node).get("master_link_status") == "up", self.start_timeout,
                  f"{node.name} replicating", self.nodes)
        self.wait_replication(primary, len(replicas))
        self.wait_converged(primary)

    def __enter__(self) -> RedisSentinelSet:
        return self.start()

    def wait_replication(self, primary: _Node, replicas: int = 1, timeout: float | None = None) -> None:
        """Until a propagated write (``PUBLISH``) on ``primary`` is acknowledged by ``replicas`` replicas."""
        def flowing() -> bool:
            replies = resp_call(primary.port, ("PUBLISH", "__fixture__", "x"), ("WAIT", replicas, 1000),
                                password=self.password, tls=self.tls, timeout=3.0)
            return isinstance(replies[1], int) and replies[1] >= replicas
        _wait(flowing, timeout or self.start_timeout, f"replication from {primary.name}", [primary])

    def sentinel_master(self, node: _Node) -> dict[str, Any]:
        reply = self.call(node, "SENTINEL", "MASTER", self.service)
        if isinstance(reply, RespError):
            raise ServerError(f"SENTINEL MASTER on {node.name}: {reply}")
        return _pairs(reply)

    def wait_converged(self, primary: _Node | None = None, replicas: int | None = None,
                       timeout: float | None = None) -> None:
        """Until every running Sentinel sees ``primary`` (default: the current one) as an up primary with
        ``replicas`` up replicas (default: every other running data node) and knows its peers."""
        def converged() -> bool:
            target = primary or self.primary
            want = replicas if replicas is not None else len([n for n in self.data_nodes
                                                              if n is not target and n.running and not n.paused])
            for node in self.sentinel_nodes:
                if not node.running:
                    continue
                master = self.sentinel_master(node)
                if int(master["port"]) != target.port or master["flags"] != "master":
                    return False
                if int(master["num-other-sentinels"]) != len(self.sentinel_nodes) - 1:
                    return False
                up = [r for r in map(_pairs, self.call(node, "SENTINEL", "REPLICAS", self.service))
                      if "s_down" not in r["flags"] and "disconnected" not in r["flags"]
                      and r.get("master-link-status") == "ok"]
                if len(up) < want:
                    return False
            return True
        _wait(converged, timeout or self.start_timeout, "the Sentinels agreeing on the topology", interval=0.05)

    def heal(self, timeout: float | None = None) -> None:
        """Undo faults: resume paused nodes, start stopped data nodes as replicas, wait for convergence."""
        for node in self.nodes:
            if node.paused:
                node.resume()
        for node in self.sentinel_nodes:
            if not node.running:
                node.start(self.binary, None)
        if any(not node.running for node in self.data_nodes):
            primary = self.wait_primary(timeout)
            for node in self.data_nodes:
                if not node.running:
                    self.restart_as_replica(node, timeout)
            self.wait_replication(primary, len(self.data_nodes) - 1, timeout)
        self.wait_converged(timeout=timeout)

    # topology --------------------------------------------------------------------------------------------
    @property
    def sentinel_addresses(self) -> list[tuple[str, int]]:
        return [node.address for node in self.sentinel_nodes]

    @property
    def url(self) -> str:
        scheme = self.tls_scheme if self.tls else self.scheme
        return f"{scheme}://{','.join(n.endpoint for n in self.sentinel_nodes)}/{self.service}/0"

    def reported_primaries(self) -> list[tuple[str, int] | None]:
        """What each Sentinel reports as the primary's address (``None``: it does not answer)."""
        out: list[tuple[str, int] | None] = []
        for node in self.sentinel_nodes:
            try:
                host, port = self.call(node, "SENTINEL", "GET-MASTER-ADDR-BY-NAME", self.service, timeout=0.5)
                out.append((host, int(port)))
            except (OSError, ServerError, ValueError, TypeError):
                out.append(None)
        return out

    @property
    def primary(self) -> _Node:
        """The data node a majority of the Sentinels report as the primary."""
        votes = [a for a in self.reported_primaries() if a]
        best = max(set(votes), key=votes.count) if votes else None
        if best is None or votes.count(best) < self.quorum:
            raise ServerError(f"no Sentinel majority on the primary: {votes}")
        return next(n for n in self.data_nodes if n.port == best[1])

    @property
    def replicas(self) -> list[_Node]:
        primary = self.primary
        return [n for n in self.data_nodes if n is not primary]

    def role(self, node: _Node) -> str:
        return self.info(node).get("role", "")

    def wait_primary(self, timeout: float | None = None) -> _Node:
        """Until every running Sentinel reports the same running data node, which says ``role:master``."""
        def agreed() -> _Node | None:
            addresses = {a for a, n in zip(self.reported_primaries(), self.sentinel_nodes, strict=True)
                         if n.running}
            if len(addresses) != 1 or None in addresses:
                return None
            port = next(iter(addresses))[1]  # type: ignore[index]
            node = next(n for n in self.data_nodes if n.port == port)
            return node if node.running and not node.paused and self.role(node) == "master" else None
        return _wait(agreed, timeout or self.start_timeout, "an agreed primary")

    # faults ------------------------------------------------------------------------------------------------
    def kill_primary(self) -> _Node:
        """SIGKILL the primary; return it."""
        node = self.primary
        node.kill()
        return node

    def pause_primary(self) -> _Node:
        """SIGSTOP the primary; return it."""
        node = self.primary
        node.pause()
        return node

    def wait_failover(self, old: _Node, timeout: float = 30.0) -> float:
        """Until every running Sentinel reports a primary other than ``old`` which says ``role:master``;
        return the seconds waited."""
        started = time.monotonic()

        def done() -> bool:
            return self.wait_primary(0.0) is not old
        _wait(done, timeout, f"a fail-over away from {old.name}", interval=0.02)
        return time.monotonic() - started

    def restart_as_replica(self, node: _Node, timeout: float | None = None) -> float:
        """Start a stopped data node as a replica of the current primary (its config says so, so it never
        serves as an empty primary); wait until it replicates and the Sentinels list it. Seconds taken."""
        started = time.monotonic()
        if node.running:
            raise ServerError(f"{node.name} is running")
        timeout = timeout or self.start_timeout
        primary = self.wait_primary(timeout)
        node.start(self.binary, self._node_config(node, primary))
        _wait(lambda: self.info(node).get("master_link_status") == "up", timeout, f"{node.name} replicating",
              [node])
        self.wait_replication(primary, len([n for n in self.data_nodes if n.running]) - 1, timeout)
        self.wait_converged(primary, timeout=timeout)
        return time.monotonic() - started

    def faults(self) -> PrimaryFaults:
        """The conformance suite's server fault hooks, acting on whichever node is the primary."""
        return PrimaryFaults(self)

    def __repr__(self) -> str:
        return f"<RedisSentinelSet {self.url}>"


class PrimaryFaults:
    """``kill``/``restart``/``pause``/``resume`` of a set's current primary (the suite's ``ServerControl``).

    ``kill`` is SIGKILL (the Sentinels or the cluster fail over); ``restart`` waits for that fail-over
    and starts the old primary again as a replica (a restart of a running primary is a kill first: a
    restarted node comes back with its data only as a replica); ``pause``/``resume`` are SIGSTOP and
    SIGCONT of the primary (whatever the set does meanwhile: a pause past the fail-over time makes the
    returning node a stale primary until it is demoted).
    """

    def __init__(self, target: RedisSentinelSet | RedisClusterSet) -> None:
        self.target = target
        self.killed: _Node | None = None
        self.paused: _Node | None = None

    def _primary(self) -> _Node:
        target = self.target
        return target.primary if isinstance(target, RedisSentinelSet) else target.slot_primary()

    def kill(self) -> None:
        node = self._primary()
        node.kill()
        self.killed = node

    def restart(self) -> None:
        if self.killed is None:
            self.kill()
        node, self.killed = self.killed, None
        assert node is not None
        if isinstance(self.target, RedisSentinelSet):
            self.target.wait_failover(node)
            self.target.restart_as_replica(node)
        else:
            self.target.wait_failover(node)
            self.target.restart(node)

    def pause(self) -> None:
        node = self._primary()
        node.pause()
        self.paused = node

    def resume(self) -> None:
        if self.paused is not None:
            self.paused.resume()
            self.paused = None


# -- Cluster ------------------------------------------------------------------------------------------------

class RedisClusterSet(_Set):
    """A Redis Cluster of ``primaries`` primaries with ``replicas`` replicas each (all 16384 slots assigned).

    ``url`` is ``redis+cluster://H1:P1,…`` (every node; ``rediss+cluster://`` with TLS). ``slot`` is the
    slot the fault hooks act on (default: that of the hash tag ``{waypost}``). A stopped node restarted
    with :meth:`restart` keeps its ``nodes.conf`` and rejoins as a replica of the node that took over.
    """

    kind = "redis-cluster"
    scheme = "redis+cluster"
    tls_scheme = "rediss+cluster"

    def __init__(self, primaries: int = 3, replicas: int = 1, *, password: str | None = None,
                 tls: TLSFiles | None = None, node_timeout_ms: int = 1000, slot: int | None = None,
                 extra_config: str = "", start_timeout: float = 60.0) -> None:
        super().__init__(password, tls, start_timeout)
        self.primaries_count = primaries
        self.replicas_count = replicas
        self.node_timeout_ms = node_timeout_ms
        self.slot = key_slot("{waypost}") if slot is None else slot
        self.extra_config = extra_config
        self.nodes = [_Node(f"node{i}", self.workdir, bus_port=True) for i in range(primaries * (1 + replicas))]
        self.startup_seconds: float | None = None

    def _config(self, node: _Node) -> list[str]:
        lines = [*self._data_config(node), f"cluster-port {node.bus_port}", "cluster-enabled yes",
                 "cluster-config-file nodes.conf", f"cluster-node-timeout {self.node_timeout_ms}",
                 f"cluster-announce-ip {HOST}"]
        if self.tls:
            lines.append("tls-cluster yes")
        if self.extra_config:
            lines.append(self.extra_config)
        return lines

    def start(self) -> RedisClusterSet:
        started = time.monotonic()
        self._start_retrying(self._start_once)
        self.startup_seconds = time.monotonic() - started
        return self

    def _start_once(self) -> None:
        for node in self.nodes:
            node.start(self.binary, self._config(node))
        for node in self.nodes:
            _wait(lambda node=node: self.call(node, "PING", timeout=1.0) == "PONG", self.start_timeout,
                  f"{node.name} answering PING", self.nodes)
        self._create()
        self.wait_healthy()

    def __enter__(self) -> RedisClusterSet:
        return self.start()

    def _create(self) -> None:
        """What ``redis-cli --cluster create`` does: slots, epochs, MEET, REPLICATE (no redis-cli needed)."""
        primaries = self.nodes[:self.primaries_count]
        share = 16384 // len(primaries)
        for i, node in enumerate(primaries):
            last = 16383 if i == len(primaries) - 1 else (i + 1) * share - 1
            if (reply := self.call(node, "CLUSTER", "ADDSLOTSRANGE", i * share, last)) != "OK":
                raise ServerError(f"CLUSTER ADDSLOTSRANGE on {node.name}: {reply}")
            self.call(node, "CLUSTER", "SET-CONFIG-EPOCH", i + 1)
        first = self.nodes[0]
        for node in self.nodes[1:]:
            self.call(node, "CLUSTER", "MEET", HOST, first.port, first.bus_port or 0)
        ids = {node.port: self.call(node, "CLUSTER", "MYID") for node in self.nodes}
        for j, node in enumerate(self.nodes[self.primaries_count:]):
            primary = primaries[j % len(primaries)]
            _wait(lambda node=node, primary=primary: self.call(node, "CLUSTER", "REPLICATE", ids[primary.port]) == "OK",
                  self.start_timeout, f"{node.name} replicating {primary.name}", self.nodes)

    def _cluster_info(self, node: _Node) -> dict[str, str]:
        return _info(self.call(node, "CLUSTER", "INFO", timeout=1.0))

    def wait_healthy(self, timeout: float | None = None) -> None:
        """``cluster_state:ok`` on every running node, all nodes known, no failing slot, and every primary's
        replicas acknowledging a write (``WAIT``)."""
        def healthy() -> bool:
            live = [n for n in self.nodes if n.running and not n.paused]
            for node in live:
                info = self._cluster_info(node)
                if info["cluster_state"] != "ok" or int(info["cluster_known_nodes"]) != len(self.nodes):
                    return False
                if int(info["cluster_slots_pfail"]) or int(info["cluster_slots_fail"]):
                    return False
            primaries = self.primaries()
            listed = sum(len(self.replicas_of(node)) for node in primaries)
            if listed != len(live) - len(primaries):  # every running replica is known as one
                return False
            return all(self._replicating(node) for node in primaries)
        _wait(healthy, timeout or self.start_timeout, "a healthy cluster", interval=0.05)

    def _replicating(self, primary: _Node) -> bool:
        ranges = self.slots_of(primary)
        if not ranges:
            return True
        key = key_in(*ranges[0])
        replicas = len([n for n in self.replicas_of(primary) if n.running and not n.paused])
        replies = resp_call(primary.port, ("SET", key, "1"), ("WAIT", replicas, 1000), ("DEL", key),
                            password=self.password, tls=self.tls, timeout=3.0)
        return isinstance(replies[1], int) and replies[1] >= replicas

    def heal(self, timeout: float | None = None) -> None:
        """Undo faults: resume paused nodes, restart stopped ones, wait until healthy."""
        for node in self.nodes:
            if node.paused:
                node.resume()
        for node in self.nodes:
            if not node.running:
                ranges = self.slots_of(node)  # still a primary: its replica must take over first
                if ranges:
                    self.wait_failover(node, slot=ranges[0][0], timeout=timeout or self.start_timeout)
                self.restart(node, timeout)
        self.wait_healthy(timeout)

    # topology ------------------------------------------------------------------------------------------------
    @property
    def url(self) -> str:
        scheme = self.tls_scheme if self.tls else self.scheme
        return f"{scheme}://{','.join(n.endpoint for n in self.nodes)}"

    def _slots(self, via: _Node | None = None) -> list[Any]:
        candidates = ([via] if via else []) + [n for n in self.nodes if n.running and not n.paused]
        for node in candidates:
            with contextlib.suppress(OSError, ServerError):
                reply = self.call(node, "CLUSTER", "SLOTS", timeout=1.0)
                if not isinstance(reply, RespError):
                    return list(reply)
        raise ServerError("no cluster node answers CLUSTER SLOTS")

    def node_by_port(self, port: int) -> _Node:
        return next(n for n in self.nodes if n.port == port)

    def primary_for_slot(self, slot: int, via: _Node | None = None) -> _Node:
        for low, high, primary, *_ in self._slots(via):
            if low <= slot <= high:
                return self.node_by_port(int(primary[1]))
        raise ServerError(f"slot {slot} is not covered")

    def slot_primary(self) -> _Node:
        """The primary of :attr:`slot`."""
        return self.primary_for_slot(self.slot)

    def slots_of(self, node: _Node) -> list[tuple[int, int]]:
        """The slot ranges ``node`` is the primary of."""
        return [(low, high) for low, high, primary, *_ in self._slots() if int(primary[1]) == node.port]

    def primaries(self) -> list[_Node]:
        ports = {int(primary[1]) for _low, _high, primary, *_ in self._slots()}
        return [n for n in self.nodes if n.port in ports]

    def replicas_of(self, primary: _Node) -> list[_Node]:
        out: list[_Node] = []
        for _low, _high, owner, *replicas in self._slots():
            if int(owner[1]) == primary.port:
                out += [self.node_by_port(int(r[1])) for r in replicas if self.node_by_port(int(r[1])) not in out]
        return out

    # faults ------------------------------------------------------------------------------------------------
    def wait_failover(self, old: _Node, slot: int | None = None, timeout: float = 30.0) -> float:
        """Until every other running node maps ``slot`` (default :attr:`slot`) to one new primary that says
        ``role:master`` and every one reports ``cluster_state:ok``; return the seconds waited."""
        started = time.monotonic()
        slot = self.slot if slot is None else slot

        def done() -> bool:
            others = [n for n in self.nodes if n is not old and n.running and not n.paused]
            owners = {self.primary_for_slot(slot, via=n).port for n in others}
            if len(owners) != 1 or old.port in owners:
                return False
            if self.info(self.node_by_port(owners.pop())).get("role") != "master":
                return False
            return all(self._cluster_info(n)["cluster_state"] == "ok" for n in others)
        _wait(done, timeout, f"a fail-over of slot {slot} away from {old.name}")
        return time.monotonic() - started

    def restart(self, node: _Node, timeout: float | None = None) -> float:
        """Start a stopped node again with its ``nodes.conf``: it rejoins as a replica. Seconds until healthy."""
        started = time.monotonic()
        timeout = timeout or self.start_timeout
        node.start(self.binary, self._config(node))
        _wait(lambda: self.call(node, "PING", timeout=1.0) == "PONG", timeout, f"{node.name} answering PING", [node])
        _wait(lambda: self.info(node).get("role") == "slave" and self.info(node).get("master_link_status") == "up",
              timeout, f"{node.name} replicating", [node])
        self.wait_healthy(timeout)
        return time.monotonic() - started

    def faults(self) -> PrimaryFaults:
        """The conformance suite's server fault hooks, acting on the primary of :attr:`slot`."""
        return PrimaryFaults(self)

    def __repr__(self) -> str:
        return f"<RedisClusterSet {self.url}>"
