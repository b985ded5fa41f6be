"""Watch propagation and crash detection, across processes.

Watch propagation: this process registers an endpoint; a second process
(``_worker.py watch``) watching the component timestamps the ``Added`` event.
One sample = event time - time just before the register call (both
``time.monotonic()``, one system-wide clock). Then the endpoint is unregistered
and its ``Removed`` awaited before the next sample. Reported: p50 and p99.

Crash detection: a second process (``_worker.py hold``) registers with
ttl = 2 s; once this process's watch has seen it, it is SIGKILLed; one sample =
time from the kill to the ``Removed`` event here. Reported: the median of a
few samples (each takes ~ttl).

The memory backend is in-process only: neither applies (reported as n/a).
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Callable
from typing import Any

import pytest
from _common import METRICS, NAMESPACE, Metric, Worker, encode, instance_dict, instance_key, percentile
from _tooz import ToozMember, make_member

CRASH_TTL = 2.0


def _need_cross_process(target: Any) -> None:
    if not target.cross_process:
        METRICS.note(f"{target.name}: watch propagation and crash detection are cross-process measures; "
                     "the memory backend is in-process only (n/a)")
        pytest.skip("in-process backend")


def _writer(target: Any, impl: str, component: str, name: str) -> tuple[Callable[[], None], Callable[[], None],
                                                                          Callable[[], None]]:
    """(register, unregister, close) for one endpoint named ``name``."""
    if impl == "waypost":
        import waypost

        rt = target.connect(ttl=10)
        ep = rt.namespace(NAMESPACE).component(component).endpoint(name)
        held: list[Any] = []
        transport = waypost.TransportType.tcp("127.0.0.1:1")
        return (lambda: held.append(ep.register(transport=transport, device_type="cuda")),
                lambda: held.pop().unregister(), rt.close)
    if impl == "raw":
        store = target.raw()
        lease = store.grant(3600)  # not kept alive: it must outlast the test (see test_bench_register.py)
        iid = getattr(lease, "id", None) or 0x7A11_0000_0000_0003
        key = instance_key(NAMESPACE, component, name, iid)

        def close_raw() -> None:
            store.revoke(lease)
            store.close()

        return (lambda: store.create(lease, key, encode(instance_dict(NAMESPACE, component, name, iid))),
                lambda: store.delete(key), close_raw)
    if target.tooz_url is None:
        pytest.skip(target.tooz_skip or "no tooz driver")
    member = make_member(target, name, ttl=10)
    group = f"{NAMESPACE}.{component}"
    member.ensure_group(group)
    caps = instance_dict(NAMESPACE, component, name, 0x7A11_0000_0000_0004)
    return (lambda: member.join(group, caps), lambda: member.leave(group), member.stop)


@pytest.mark.parametrize("impl", ["waypost", "raw", "tooz"])
def test_watch_propagation(target: Any, mode: Any, impl: str) -> None:
    _need_cross_process(target)
    if impl == "tooz" and target.tooz_url is None:
        pytest.skip(target.tooz_skip or "no tooz driver")
    component, name = f"watch-{impl}", "w"
    register, unregister, close = _writer(target, impl, component, name)
    worker = Worker("watch", target, impl, component)
    samples: list[float] = []
    try:
        worker.expect(lambda s: s == "READY", 60, "READY")
        budget = time.monotonic() + (3 if mode.quick else 20)
        max_samples = mode.rounds(200, 5)
        while len(samples) < max_samples and (len(samples) < mode.rounds(30, 5) or time.monotonic() < budget):
            t0 = time.monotonic()
            register()
            samples.append(worker.event("put", name, 30) - t0)
            unregister()
            worker.event("delete", name, 30)
    finally:
        worker.close()
        close()
    METRICS.median("watch_p50", target.name, impl, samples, "s")
    METRICS.add(Metric("watch_p99", target.name, impl, percentile(samples, 99), "s", None, samples))


class _Watcher:
    """A watch in this process that reports (kind, name, time) into a queue."""

    def __init__(self, target: Any, impl: str, component: str) -> None:
        self.events: queue.SimpleQueue[tuple[str, str, float]] = queue.SimpleQueue()
        self._close: Callable[[], None]
        put = self.events.put
        if impl == "waypost":
            import waypost

            # file:// processes sharing a directory must agree on the ttl (stale_after)
            rt = target.connect(ttl=CRASH_TTL)
            w = rt.watch(waypost.Query.component(NAMESPACE, component))

            def pump() -> None:
                for ev in w:
                    if isinstance(ev, waypost.Added | waypost.Removed):
                        put(("put" if isinstance(ev, waypost.Added) else "delete", ev.instance.endpoint,
                             time.monotonic()))

            threading.Thread(target=pump, daemon=True).start()
            self._close = rt.close
        elif impl == "raw":
            store = target.raw()
            stop = store.watch(f"v1/instances/{NAMESPACE}/{component}/",
                               lambda kind, key: put((kind, key.split("/")[4], time.monotonic())))

            def close_raw() -> None:
                stop()
                store.close()

            self._close = close_raw
        else:
            member = ToozMember(target.tooz_url, f"crash-watcher-{id(self)}", ttl=CRASH_TTL)
            group = f"{NAMESPACE}.{component}"
            member.ensure_group(group)
            member.watch(group, lambda kind, name: put((kind, name, time.monotonic())))
            done = threading.Event()
            thread = threading.Thread(target=member.poll_forever, args=(done.is_set,), daemon=True)
            thread.start()

            def close_tooz() -> None:
                done.set()
                thread.join()
                member.stop()

            self._close = close_tooz

    def wait(self, kind: str, name: str, timeout: float) -> float:
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError(f"no {kind} {name} within {timeout} s")
            try:
                k, n, t = self.events.get(timeout=left)
            except queue.Empty:
                continue
            if (k, n) == (kind, name):
                return t

    def close(self) -> None:
        self._close()


@pytest.mark.parametrize("impl", ["waypost", "raw", "tooz"])
def test_crash_detection(target: Any, mode: Any, impl: str) -> None:
    _need_cross_process(target)
    if impl == "tooz" and target.tooz_url is None:
        pytest.skip(target.tooz_skip or "no tooz driver")
    if impl == "tooz" and target.tooz_python:
        METRICS.note(f"{target.name}: no tooz crash detection — tooz 8.1's Consul driver writes member keys "
                      "without its session (a killed member is never removed) and python-consul2 refuses "
                      "session TTLs below 10 s")
        pytest.skip("tooz 8.1 Consul members do not expire")
    if impl == "raw" and target.name not in ("etcd", "consul"):
        METRICS.note(f"{target.name}: no raw crash-detection baseline — the store does not expire anything "
                     "itself, so a raw client would have to re-implement the backend's reaping (liveness is "
                     "the backend's own scheme on top of the store)")
        pytest.skip("no server-side expiry to compare with")
    component = f"crash-{impl}"
    watcher = _Watcher(target, impl, component)
    samples: list[float] = []
    try:
        for i in range(mode.rounds(3, 1)):
            name = f"held{i}"
            worker = Worker("hold", target, impl, component, name=name, ttl=CRASH_TTL)
            try:
                worker.expect(lambda s: s == "HELD", 60, "HELD")
                watcher.wait("put", name, 30)
                t0 = time.monotonic()
                worker.kill()
                samples.append(watcher.wait("delete", name, 10 * CRASH_TTL + 10) - t0)
            finally:
                worker.kill()
    finally:
        watcher.close()
    METRICS.median("crash_detect", target.name, impl, samples, "s", note=f"ttl={CRASH_TTL:g} s")
