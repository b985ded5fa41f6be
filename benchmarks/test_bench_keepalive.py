"""Keepalive cost: store operations per second that keep a Runtime with E = 1, 10, 100 endpoints alive.

A Runtime (ttl = 2 s, so a keepalive every 0.67 s) registers E endpoints; then,
with nothing else running, the store operations made during a window of
several keepalive periods are counted and divided by the window:

* etcd:   gRPC requests the server received (``grpc_server_msg_received_total``
          from its ``/metrics``, all methods);
* Redis:  commands the server executed (``INFO commandstats``, all commands
          minus our own ``INFO``; commands run inside Lua scripts count too);
* Consul: HTTP requests the agent served (the ``consul_http_*_count`` counters
          of its Prometheus metrics, all endpoints minus our own metrics reads);
* file:   filesystem calls of this process, counted with an audit hook
          (``open``, ``os.utime``, ``os.scandir``, ``os.link``, ``os.rename``,
          ``os.remove``, ...; ``stat`` is not audited);
* memory: backend SPI calls (the store is a dict).

For Redis the client's round trips per second are reported too
(``keepalive_req``: redis-py requests, counted by wrapping its connection).
waypost's SPI calls per second (``keep_alive`` etc., counted by wrapping the
backend instance's methods) are reported too (``keepalive_spi``).
raw keeps the same E keys alive the minimal way for the layout (one lease
refresh per period; for the file layout, a touch of every file: liveness is
per-file mtime). tooz: one member in E groups, its own heartbeat thread.
"""

from __future__ import annotations

import re
import sys
import threading
import time
import urllib.request
from collections.abc import Callable
from typing import Any

import pytest
from _common import METRICS, NAMESPACE, Metric, encode, instance_dict, instance_key
from _raw import keepalive_thread
from _tooz import ToozMember

TTL = 2.0
ENDPOINTS = (1, 10, 100)
SPI_METHODS = ("grant_lease", "keep_alive", "revoke_lease", "create", "replace", "delete", "list", "watch")

# ---------------------------------------------------------------------------
# store-level counters
# ---------------------------------------------------------------------------

_audit_state = {"on": False, "count": 0}
_AUDITED = ("open", "os.utime", "os.scandir", "os.listdir", "os.link", "os.rename", "os.remove",
            "os.mkdir", "os.rmdir", "os.truncate", "os.chmod")
_audit_installed = False


def _audit(event: str, args: Any) -> None:
    if _audit_state["on"] and event in _AUDITED:
        _audit_state["count"] += 1


def _counter(target: Any) -> Callable[[], float]:
    """A function returning the store's operation counter now."""
    global _audit_installed
    if target.name == "etcd":
        url = f"http://{target.endpoint}/metrics"
        pattern = re.compile(r"^grpc_server_msg_received_total\{[^}]*\} (\S+)$", re.M)

        def etcd() -> float:
            with urllib.request.urlopen(url, timeout=10) as r:
                text = r.read().decode()
            return sum(float(v) for v in pattern.findall(text))

        return etcd
    if target.name == "redis":
        import redis

        client = redis.Redis.from_url(target.url)
        infos = [0]

        def redis_calls() -> float:
            infos[0] += 1
            stats = client.info("commandstats")
            total = sum(v["calls"] for k, v in stats.items() if k != "cmdstat_info")
            return float(total)

        return redis_calls
    if target.name == "consul":
        url = f"http://{target.endpoint}/v1/agent/metrics?format=prometheus"
        http = re.compile(r"^consul_http_(\S+)_count (\S+)$", re.M)

        def consul_calls() -> float:
            with urllib.request.urlopen(url, timeout=10) as r:
                text = r.read().decode()
            return sum(float(v) for name, v in http.findall(text) if "v1_agent_metrics" not in name)

        return consul_calls
    if target.name == "file":
        if not _audit_installed:
            sys.addaudithook(_audit)
            _audit_installed = True
        _audit_state["on"] = True
        return lambda: float(_audit_state["count"])
    return lambda: 0.0  # memory: the SPI counter is the figure


def _count_spi(backend: Any) -> dict[str, int]:
    counts = dict.fromkeys(SPI_METHODS, 0)
    lock = threading.Lock()
    for name in SPI_METHODS:
        original = getattr(backend, name)

        def wrapped(*args: Any, __original: Any = original, __name: str = name, **kwargs: Any) -> Any:
            with lock:
                counts[__name] += 1
            return __original(*args, **kwargs)

        setattr(backend, name, wrapped)
    return counts


_rtt = {"count": 0, "patched": False}


def _count_redis_round_trips() -> None:
    """Count redis-py requests (one per command or pipeline) made by this process."""
    if _rtt["patched"]:
        return
    from redis.connection import AbstractConnection

    original = AbstractConnection.send_packed_command

    def send_packed_command(self: Any, command: Any, check_health: bool = True) -> Any:
        _rtt["count"] += 1
        return original(self, command, check_health)

    AbstractConnection.send_packed_command = send_packed_command  # type: ignore[method-assign]
    _rtt["patched"] = True


def _measure(target: Any, impl: str, endpoints: int, counter: Callable[[], float], window: float) -> float:
    """Store operations per second over ``window``; for Redis also records client round trips per second."""
    if target.name == "redis":
        _count_redis_round_trips()
    before = counter()
    rtt0, t0 = _rtt["count"], time.monotonic()
    time.sleep(window)  # a measurement window, not a synchronisation
    rtt1, elapsed = _rtt["count"], time.monotonic() - t0
    rate = (counter() - before) / elapsed
    if target.name == "redis":
        METRICS.add(Metric("keepalive_req", target.name, impl, (rtt1 - rtt0) / elapsed, "req/s", endpoints,
                           note=f"ttl={TTL:g} s"))
    return rate


def _window(mode: Any) -> float:
    return 2.0 if mode.quick else 6.0


@pytest.mark.parametrize("endpoints", ENDPOINTS)
@pytest.mark.parametrize("impl", ["waypost", "raw", "tooz"])
def test_keepalive(target: Any, mode: Any, impl: str, endpoints: int) -> None:
    if mode.quick and endpoints == 10:
        pytest.skip("quick mode: E = 1 and 100 only")
    if impl == "tooz" and target.tooz_url is None:
        pytest.skip(target.tooz_skip or "no tooz driver")
    if impl == "raw" and target.name == "memory":
        pytest.skip("a dict needs no keepalive")
    if impl == "tooz" and target.tooz_python:
        METRICS.note(f"{target.name}: no tooz keepalive figure — python-consul2 refuses session TTLs below 10 s "
                      "(tooz 8.1 renews its one session every max(ttl/2, 1) s whatever the group count)")
        pytest.skip("tooz 8.1 on Consul cannot run at ttl = 2 s")
    target = target.variant("keepalive")
    component = f"ka{endpoints}"
    counter = _counter(target)
    window = _window(mode)
    try:
        if impl == "waypost":
            _waypost(target, component, endpoints, counter, window)
        elif impl == "raw":
            _raw(target, component, endpoints, counter, window)
        else:
            _tooz(target, component, endpoints, counter, window)
    finally:
        _audit_state["on"] = False


def _waypost(target: Any, component: str, endpoints: int, counter: Callable[[], float], window: float) -> None:
    import waypost

    with target.connect(ttl=TTL) as rt:
        comp = rt.namespace(NAMESPACE).component(component)
        for i in range(endpoints):
            comp.endpoint(f"e{i}").register(transport=waypost.TransportType.tcp("127.0.0.1:1"))
        spi = _count_spi(rt.backend)
        t0 = time.monotonic()
        store_rate = _measure(target, "waypost", endpoints, counter, window)
        spi_rate = sum(spi.values()) / (time.monotonic() - t0)
    METRICS.add(Metric("keepalive_spi", target.name, "waypost", spi_rate, "calls/s", endpoints,
                       note=f"ttl={TTL:g} s; {({k: v for k, v in spi.items() if v})}"))
    METRICS.add(Metric("keepalive_ops", target.name, "waypost",
                       spi_rate if target.name == "memory" else store_rate, "ops/s", endpoints,
                       note=f"ttl={TTL:g} s"))


def _raw(target: Any, component: str, endpoints: int, counter: Callable[[], float], window: float) -> None:
    store = target.raw()
    lease = store.grant(TTL)
    base = getattr(lease, "id", None) or 0x7A11_0000_0000_1000
    for i in range(endpoints):
        store.create(lease, instance_key(NAMESPACE, component, f"e{i}", base),
                     encode(instance_dict(NAMESPACE, component, f"e{i}", base)))
    stop = keepalive_thread(store, lease, TTL / 3)
    try:
        rate = _measure(target, "raw", endpoints, counter, window)
    finally:
        stop()
        store.revoke(lease)
        store.close()
    METRICS.add(Metric("keepalive_ops", target.name, "raw", rate, "ops/s", endpoints, note=f"ttl={TTL:g} s"))


def _tooz(target: Any, component: str, endpoints: int, counter: Callable[[], float], window: float) -> None:
    member = ToozMember(target.tooz_url, f"ka-{component}", ttl=TTL)
    try:
        for i in range(endpoints):
            group = f"{NAMESPACE}.{component}.e{i}"
            member.ensure_group(group)
            member.join(group, instance_dict(NAMESPACE, component, f"e{i}", 1))
        rate = _measure(target, "tooz", endpoints, counter, window)
    finally:
        member.stop()
    METRICS.add(Metric("keepalive_ops", target.name, "tooz", rate, "ops/s", endpoints,
                       note=f"membership_timeout={TTL:g} s"))
