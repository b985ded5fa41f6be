"""The Redis backend on a real Redis 7: layout, options, leases, watch history and faults.

No mocks: a real server (``tests/servers/``), real child processes, and a
small loopback TCP proxy that counts the commands a client sends (to prove
"one round trip") and can cut a client off the server (to fake a network
partition for one watcher only).
"""

from __future__ import annotations

import contextlib
import socket
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import redis

import servers
import waypost
from waypost import Added, Interrupted, Query, Removed, Resynced, TransportType
from waypost.backends.redis import RedisBackend
from waypost.contrib.conformance._harness import wait_until
from waypost.core import Lease, faults, parse_url
from waypost.core._watch import InstanceView

TTL = 1.0


# -- a loopback TCP proxy -------------------------------------------------------------------

class Proxy:
    """Forwards 127.0.0.1:``port`` to a server; counts RESP commands sent upstream; can be cut."""

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.commands = 0
        self._lock = threading.Lock()
        self._sockets: set[socket.socket] = set()
        self._cut = False
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port: int = self._listener.getsockname()[1]
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            if self._cut:  # a partition: the connection dies at once
                client.close()
                continue
            try:
                upstream = socket.create_connection(("127.0.0.1", self.target_port))
            except OSError:  # the server is down: so is the proxied connection
                client.close()
                continue
            with self._lock:
                self._sockets |= {client, upstream}
            threading.Thread(target=self._pump, args=(client, upstream, True), daemon=True).start()
            threading.Thread(target=self._pump, args=(upstream, client, False), daemon=True).start()

    def _pump(self, source: socket.socket, sink: socket.socket, count: bool) -> None:
        pending = b""
        with contextlib.suppress(OSError):
            while data := source.recv(65536):
                if count:
                    pending = self._count(pending + data)
                sink.sendall(data)
        for sock in (source, sink):
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)

    def _count(self, buffer: bytes) -> bytes:
        """Count complete RESP arrays (``*N`` then N bulk strings); return the incomplete rest."""
        while buffer.startswith(b"*") and b"\r\n" in buffer:
            header, _, rest = buffer.partition(b"\r\n")
            for _ in range(int(header[1:])):
                length_line, sep, rest = rest.partition(b"\r\n")
                if not sep or len(rest) < int(length_line[1:]) + 2:
                    return buffer
                rest = rest[int(length_line[1:]) + 2:]
            with self._lock:
                self.commands += 1
            buffer = rest
        return buffer

    def cut(self) -> None:
        """Drop every connection and refuse new ones until :meth:`heal`."""
        self._cut = True
        with self._lock:
            sockets, self._sockets = self._sockets, set()
        for sock in sockets:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
            sock.close()

    def heal(self) -> None:
        self._cut = False

    def close(self) -> None:
        self.cut()
        self._listener.close()


# -- fixtures and helpers ---------------------------------------------------------------------

@pytest.fixture(scope="module")
def server() -> Iterator[servers.RedisServer]:
    with servers.RedisServer() as redis_server:
        yield redis_server


@pytest.fixture
def redis_server(server: servers.RedisServer) -> servers.RedisServer:
    if server.paused:
        server.resume()
    if not server.running:
        server.start()
    return server


@pytest.fixture
def runtimes() -> Iterator[Callable[..., waypost.Runtime]]:
    made: list[waypost.Runtime] = []

    def connect(url: str, **options: Any) -> waypost.Runtime:
        runtime = waypost.connect(url, **{"ttl": TTL, **options})
        made.append(runtime)
        return runtime

    yield connect
    for runtime in made:
        with contextlib.suppress(waypost.WaypostError):
            runtime.close()


@pytest.fixture
def proxy(redis_server: servers.RedisServer) -> Iterator[Proxy]:
    p = Proxy(_port(redis_server))
    yield p
    p.close()


@pytest.fixture
def ns() -> str:
    return f"t-{uuid.uuid4().hex[:10]}"


def _backend(url: str, **options: Any) -> RedisBackend:
    parsed = parse_url(url)
    defaults = {o.name: o.default for o in RedisBackend.options}
    return RedisBackend(parsed, {**defaults, **options})


def _port(server: servers.RedisServer) -> int:
    assert server.port is not None
    return server.port


def _raw(server: servers.RedisServer) -> Any:
    """A plain redis-py client on ``server`` (replies as bytes)."""
    return redis.Redis(host="127.0.0.1", port=_port(server))


def _tcp(n: int) -> TransportType:
    return TransportType.tcp(f"127.0.0.1:{n}")


class _Events:
    """A watch's events in arrival order, drained into a list by the caller."""

    def __init__(self, watch: waypost.Watch) -> None:
        self.watch = watch
        self.seen: list[waypost.Event] = []

    def drain(self) -> list[waypost.Event]:
        while (event := self.watch.get(timeout=0)) is not None:
            self.seen.append(event)
        return self.seen

    def wait_for(self, kind: type, timeout: float) -> Any:
        return wait_until(lambda: next((e for e in self.drain() if isinstance(e, kind)), None), timeout,
                          what=f"a {kind.__name__} event")


# -- URL, options, credentials ----------------------------------------------------------------


def test_password_never_shown_and_wrong_one_is_an_auth_error(server_factory: Callable[..., Any],
                                                             runtimes: Callable[..., waypost.Runtime]) -> None:
    secret = "pw-Zq7!xx"
    srv = server_factory("redis", password=secret)
    with pytest.raises(waypost.AuthenticationError) as wrong:
        waypost.connect(f"redis://:not-{secret}@{srv.endpoint}/0")
    assert secret not in str(wrong.value)
    with pytest.raises(waypost.AuthenticationError):
        waypost.connect(srv.url)  # no password at all
    rt = runtimes(srv.auth_url)
    for shown in (repr(rt), rt.backend.describe(), repr(rt.backend)):
        assert secret not in shown
    # The option wins over the URL's user info (keyword > URL).
    rt2 = runtimes(f"redis://:wrong@{srv.endpoint}/0", password=secret)
    assert rt2.list_instances() == []


def test_acl_user_outside_its_prefix_is_refused(server_factory: Callable[..., Any]) -> None:
    """The coarse ACL rule of the docs (the conformance suite runs the narrowest one)."""
    coarse = "-@all +@read +@write +@scripting +@stream +@connection +time"
    srv = server_factory("redis", acl_user=("limited", "pw", "waypost:*"), acl_commands=coarse)
    with pytest.raises(waypost.AuthenticationError, match="ACL"):
        waypost.connect(srv.auth_url, prefix="other:")
    with waypost.connect(srv.auth_url) as rt:
        rt.namespace("ns").component("c").endpoint("e").register(_tcp(1))
        assert len(rt.list_instances()) == 1
    no_time = server_factory("redis", acl_user=("limited", "pw", "waypost:*"),
                             acl_commands=coarse.replace(" +time", ""))
    with pytest.raises(waypost.AuthenticationError, match="lacks a permission"):
        waypost.connect(no_time.auth_url)  # a command the scripts need is denied


def test_tls_needs_the_ca(tmp_path: Path, server_factory: Callable[..., Any]) -> None:
    tls = servers.make_tls(tmp_path)
    srv = server_factory("redis", tls=tls)
    with pytest.raises(waypost.BackendUnavailable):
        waypost.connect(srv.url, timeout=2)  # the system CAs do not know the test CA
    with waypost.connect(srv.url, ca_cert=tls.ca) as rt:
        rt.namespace("ns").component("c").endpoint("e").register(_tcp(1))
        assert [i.endpoint for i in rt.list_instances()] == ["e"]


# -- layout ----------------------------------------------------------------------------------

def test_keys_and_values_are_the_design_wire_format(redis_server: servers.RedisServer,
                                                    runtimes: Callable[..., waypost.Runtime]) -> None:
    prefix = f"wp-{uuid.uuid4().hex[:6]}:"
    rt = runtimes(redis_server.url, prefix=prefix)
    reg = rt.namespace("dynamo").component("backend").endpoint("generate").register(
        _tcp(9), device_type="cuda", request_plane_codec="msgpack")
    instance = reg.instance
    assert instance.key == f"v1/instances/dynamo/backend/generate/{rt.instance_id:x}"
    raw = _raw(redis_server)
    assert raw.hget(prefix + "values", instance.key) == instance.to_json()
    assert raw.zrangebylex(prefix + "index", "-", "+") == [instance.key.encode()]
    assert all(k.startswith(prefix.encode()) for k in raw.keys(prefix + "*"))
    assert not [k for k in raw.keys("*") if k.startswith(b"wp-") and not k.startswith(prefix.encode())]
    raw.close()


def test_foreign_and_corrupt_entries_are_skipped(redis_server: servers.RedisServer,
                                                 runtimes: Callable[..., waypost.Runtime], ns: str) -> None:
    rt = runtimes(redis_server.url)
    good = rt.namespace(ns).component("c").endpoint("good").register(_tcp(1))
    raw = _raw(redis_server)
    base = f"v1/instances/{ns}/c"
    # A foreign writer that bypasses the scripts: junk values, and an index entry without a value.
    raw.hset("waypost:values", mapping={f"{base}/junk/1": b"\xff\x00", f"{base}/model/2": b'{"type":"Model"}'})
    raw.zadd("waypost:index", {f"{base}/junk/1": 0, f"{base}/model/2": 0, f"{base}/novalue/3": 0})
    raw.close()
    assert rt.list_instances(Query.namespace(ns)) == [good.instance]
    with rt.watch(Query.namespace(ns)) as watch:
        assert watch.instances == [good.instance]


# -- leases at the SPI level ------------------------------------------------------------------

def test_lease_rules(redis_server: servers.RedisServer, ns: str) -> None:
    a, b = _backend(redis_server.url), _backend(redis_server.url)
    try:
        lease = a.grant_lease(5.0)
        key = f"v1/instances/{ns}/c/e/{lease.id:x}"
        with pytest.raises(waypost.AlreadyRegistered):
            b.grant_lease(5.0, preferred_id=lease.id)
        a.create(lease, key, b"v1")
        a.create(lease, key, b"v1")  # a retried create (lost reply) is not a conflict
        with pytest.raises(waypost.AlreadyRegistered):
            a.create(lease, key, b"v2")
        other = b.grant_lease(5.0)
        with pytest.raises(waypost.AlreadyRegistered):
            b.replace(other, key, b"theirs")
        b.delete(other, key)  # not b's key: left alone
        assert a.list(f"v1/instances/{ns}/") == [(key, b"v1")]
        b.revoke_lease(lease.id)
        assert a.list(f"v1/instances/{ns}/") == []
        with pytest.raises(waypost.LeaseLost):
            a.keep_alive(lease)
        with pytest.raises(waypost.LeaseLost):
            a.create(lease, key, b"v1")
        b.revoke_lease(lease.id)  # idempotent
        assert b.grant_lease(5.0, preferred_id=lease.id) == Lease(lease.id, 5.0)
    finally:
        a.close()
        b.close()


def test_expired_lease_is_reaped_by_a_lone_watcher(redis_server: servers.RedisServer, ns: str) -> None:
    """No other Runtime is alive, only a watch (on a backend without a lease): it reaps."""
    writer, watcher = _backend(redis_server.url), _backend(redis_server.url)
    events: list[waypost.Event] = []
    view = InstanceView(Query.namespace(ns), events.extend)
    try:
        lease = writer.grant_lease(TTL)
        instance = waypost.Instance(ns, "c", "e", lease.id, _tcp(1))
        writer.create(lease, instance.key, instance.to_json())
        writer.close()  # crashed: no keepalive, no revoke
        crashed = time.monotonic()
        handle = watcher.watch(f"v1/instances/{ns}/", view)
        assert view.instances() == [instance]
        wait_until(lambda: view.instances() == [], TTL + 1.0, what="the lone watcher reaps the lease")
        assert time.monotonic() - crashed <= TTL + 1.0
        handle.close()
    finally:
        watcher.close()


# -- the "done when" --------------------------------------------------------------------

@pytest.mark.slow
def test_component_list_of_10k_instances_is_one_round_trip(server_factory: Callable[..., Any]) -> None:
    srv = server_factory("redis")
    proxy = Proxy(srv.port)
    backend = _backend(f"redis://127.0.0.1:{proxy.port}/0")
    try:
        leases = [backend.grant_lease(60.0) for _ in range(10)]
        for lease in leases:
            for n in range(1000):
                instance = waypost.Instance("big", "comp", f"ep{n}", lease.id, _tcp(n))
                backend.create(lease, instance.key, instance.to_json())
        other = waypost.Instance("big", "comp2", "ep", leases[0].id, _tcp(1))
        backend.create(leases[0], other.key, other.to_json())
        backend.list("v1/instances/nothing/")  # loads the script once (SCRIPT LOAD after NOSCRIPT)
        before = proxy.commands
        started = time.perf_counter()
        items = backend.list(Query.component("big", "comp").prefix)
        elapsed = time.perf_counter() - started
        assert proxy.commands - before == 1, "a component-level list must be one command"
        assert len(items) == 10_000
        assert [k for k, _ in items] == sorted(k for k, _ in items)
        print(f"10k-instance component list: 1 round trip, {elapsed * 1000:.1f} ms")
        assert elapsed < 2.0
    finally:
        backend.close()
        proxy.close()


def _churn(rt: waypost.Runtime, ns: str, rounds: int) -> dict[str, list[TransportType]]:
    """Register, update and unregister endpoints; return every transport each endpoint had."""
    history: dict[str, list[TransportType]] = {}
    comp = rt.namespace(ns).component("c")
    for n in range(rounds):
        name = f"e{n % 40}"
        reg = comp.endpoint(name).register(_tcp(n))
        history.setdefault(name, []).append(_tcp(n))
        if n % 5 == 4:
            reg.unregister()
    return history


@pytest.mark.slow
def test_watcher_catches_up_from_history_after_a_5s_disconnect(
        redis_server: servers.RedisServer, proxy: Proxy, runtimes: Callable[..., waypost.Runtime], ns: str) -> None:
    writer = runtimes(redis_server.url)
    # The watcher's ttl outlives the outage, so only its watch is affected.
    observer = runtimes(f"redis://127.0.0.1:{proxy.port}/0", ttl=10)
    writer.namespace(ns).component("c").endpoint("before").register(_tcp(1))
    with observer.watch(Query.namespace(ns)) as watch:
        events = _Events(watch)
        wait_until(lambda: len(watch.instances) == 1, 2, what="snapshot")
        cut_at = time.monotonic()
        proxy.cut()
        events.wait_for(Interrupted, 2.0)
        history = _churn(writer, ns, 200)
        time.sleep(max(0.0, cut_at + 5 - time.monotonic()))  # the fault: a 5 s partition
        proxy.heal()
        # The outage ends with one confirming re-list; history covered it, so its diff is empty.
        resynced = events.wait_for(Resynced, 5)
        assert (resynced.reason.startswith("reconnected"), resynced.added, resynced.removed) == (True, 0, 0)
        expected = writer.list_instances(Query.namespace(ns))
        assert watch.instances == expected
        seen = events.drain()
        for name, transports in history.items():
            added = [e.instance.transport for e in seen if isinstance(e, Added) and e.instance.endpoint == name]
            assert added == transports, f"every change of {name} seen, in order"


@pytest.mark.slow
def test_watcher_resyncs_when_history_was_trimmed(
        redis_server: servers.RedisServer, proxy: Proxy, runtimes: Callable[..., waypost.Runtime], ns: str) -> None:
    writer = runtimes(redis_server.url, history=10)
    observer = runtimes(f"redis://127.0.0.1:{proxy.port}/0", ttl=10, history=10)
    writer.namespace(ns).component("c").endpoint("gone").register(_tcp(1)).unregister()
    kept = writer.namespace(ns).component("c").endpoint("kept").register(_tcp(2))
    with observer.watch(Query.namespace(ns)) as watch:
        events = _Events(watch)
        proxy.cut()
        events.wait_for(Interrupted, 2.0)
        kept.unregister()
        _churn(writer, ns, 400)  # far more than history=10 (+ Redis's ~100-entry trim blocks)
        proxy.heal()
        resynced = events.wait_for(Resynced, 5.0)
        assert "trimmed" in resynced.reason
        expected = writer.list_instances(Query.namespace(ns))
        wait_until(lambda: watch.instances == expected, 5, what="watcher converged")
        replayed = {i.key: i for i in [kept.instance]}
        for event in events.drain():
            if isinstance(event, Added):
                replayed[event.instance.key] = event.instance
            elif isinstance(event, Removed):
                replayed.pop(event.instance.key, None)
        assert sorted(replayed.values()) == expected, "the resync diff brings the view up to date"


_CHILD = """
import sys, waypost
rt = waypost.connect(sys.argv[1], ttl=float(sys.argv[2]))
rt.namespace(sys.argv[3]).component("c").endpoint("e").register(waypost.TransportType.tcp("127.0.0.1:1"))
print(rt.instance_id, flush=True)
sys.stdin.read()
"""


def test_an_error_reply_interrupts_a_watch_which_then_recovers(
        server_factory: Callable[..., Any], runtimes: Callable[..., waypost.Runtime], ns: str) -> None:
    """An error reply that is not a lost connection (OOM at maxmemory) is an outage, not the end of the watch.

    The server is put over ``maxmemory`` with ``noeviction`` (by the test: the
    backend never needs CONFIG) and its epoch key removed, as a flush or a
    restart would, so the watch's next poll must write (store a new epoch) and
    gets ``OOM command not allowed`` back. The watch reports ``Interrupted``,
    keeps retrying, and resyncs once memory is available again.
    """
    srv = server_factory("redis")
    raw = _raw(srv)
    writer = runtimes(srv.url, ttl=10)
    observer = runtimes(srv.url, ttl=10)
    before = writer.namespace(ns).component("c").endpoint("before").register(_tcp(1))
    try:
        with observer.watch(Query.namespace(ns)) as watch:
            events = _Events(watch)
            assert watch.instances == [before.instance]
            raw.config_set("maxmemory-policy", "noeviction")
            raw.config_set("maxmemory", 1)
            try:
                raw.delete("waypost:epoch")  # deletes are allowed at maxmemory; storing a new epoch is not
                interrupted = events.wait_for(Interrupted, 3.0)
                assert "maxmemory" in interrupted.reason
                with pytest.raises(redis.exceptions.OutOfMemoryError):
                    raw.set("waypost:probe", "x")  # still out of memory: the watch had to keep retrying
                assert watch.instances == [before.instance]
            finally:
                raw.config_set("maxmemory", 0)
            resynced = events.wait_for(Resynced, 5.0)
            assert "replaced" in resynced.reason  # the epoch changed while it was out
            assert watch.instances == [before.instance]
            after = writer.namespace(ns).component("c").endpoint("after").register(_tcp(2))
            wait_until(lambda: watch.instances == sorted([before.instance, after.instance]), 2.0,
                       what="changes after the outage")
    finally:
        raw.close()




@pytest.mark.parametrize("fields", [
    {b"s": b"not-a-number", b"e": b"x", b"o": b"put", b"k": b"v1/instances/x/c/e/1", b"v": b"{}"},
    {b"junk": b"\xff\xfe"},
    {b"s": b"999999", b"e": b"\xff", b"o": b"put", b"k": b"\xc3\x28", b"v": b""},
])
def test_a_foreign_entry_in_the_change_log_makes_the_watch_relist_not_stall(
        redis_server: servers.RedisServer, runtimes: Callable[..., waypost.Runtime], ns: str,
        fields: dict[bytes, bytes]) -> None:
    rt = runtimes(redis_server.url, ttl=10)
    before = rt.namespace(ns).component("c").endpoint("before").register(_tcp(1))
    raw = _raw(redis_server)
    try:
        with rt.watch(Query.namespace(ns)) as watch:
            events = _Events(watch)
            raw.xadd("waypost:log", fields)  # what a foreign writer (or a corruption) leaves in the log
            resynced = events.wait_for(Resynced, 5.0)
            assert "foreign entry" in resynced.reason or "gap" in resynced.reason
            after = rt.namespace(ns).component("c").endpoint("after").register(_tcp(2))
            wait_until(lambda: watch.instances == sorted([before.instance, after.instance], key=str), 5.0,
                       what="the watch carries on after the foreign entry")
    finally:
        raw.close()


def test_lease_records_deleted_from_outside_leave_no_phantoms(
        redis_server: servers.RedisServer, runtimes: Callable[..., waypost.Runtime], ns: str) -> None:
    """What an operator "revoking leases" by hand (or an eviction) does: the orphans are swept, the live
    Runtime re-registers, and its graceful close still removes everything it wrote."""
    live = runtimes(redis_server.url, ttl=2)
    crashed = runtimes(redis_server.url, ttl=2)
    observer = runtimes(redis_server.url, ttl=2)
    for n in range(5):
        live.namespace(ns).component("c").endpoint(f"live{n}").register(_tcp(n))
        crashed.namespace(ns).component("c").endpoint(f"crashed{n}").register(_tcp(n))
    faults.crash(crashed)
    raw = _raw(redis_server)
    try:
        raw.delete("waypost:leases", "waypost:grants", *raw.keys("waypost:lease:*"))
    finally:
        raw.close()
    with observer.watch(Query.namespace(ns)) as watch:
        wait_until(lambda: sorted(i.endpoint for i in watch.instances) == [f"live{n}" for n in range(5)], 10.0,
                   what="the crashed Runtime's instances swept, the live one's back")
    assert sorted(i.endpoint for i in observer.list_instances(Query.namespace(ns))) == [f"live{n}" for n in range(5)]
    live.close()
    assert observer.list_instances(Query.namespace(ns)) == [], "a graceful close left instances behind"
