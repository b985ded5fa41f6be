"""Reproduction (found by the soak suite): a Runtime whose re-registration after a lease loss takes longer
than its ttl never recovers.

    PYTHONPATH=src python benchmarks/soak/repro_slow_recovery.py     # exit 1 while the bug is there

After a lease loss, ``Runtime._handle_lease_loss`` (core/_runtime.py) runs on the keepalive thread: it
grants a replacement lease, then re-creates every registration one store call at a time, and nothing keeps
the replacement lease alive meanwhile. When those calls take longer than the ttl in all (a loaded server:
in the soak run, etcd with 200 Runtimes recovering at once after a restart without data answered calls in
~0.3-1 s), the replacement lease expires before the recovery ends, a ``create`` meets ``LeaseLost``, the
loop "starts over with a new one" — and the same happens again, forever while the store stays that slow:
its instances appear and vanish every ttl for every watcher, the hook never fires, and ``register()`` calls
block on the Runtime's lock.

Here: the memory backend (nothing else involved), ttl 1 s, 5 endpoints, every ``create`` delayed by 0.3 s
(so a recovery needs 1.5 s of store time; each call succeeds), one lease revoked from outside.
"""

from __future__ import annotations

import sys
import time
from typing import Any

import waypost

TTL, ENDPOINTS, DELAY, WATCH_FOR = 1.0, 5, 0.3, 10.0


class LeaseLostHook:
    def __init__(self) -> None:
        self.calls = 0

    @waypost.hookimpl
    def waypost_on_lease_lost(self, runtime: Any, old_instance_id: int, new_instance_id: int | None,
                              reason: str) -> None:
        self.calls += 1


def main() -> int:
    hook = LeaseLostHook()
    waypost.register_plugin(hook)
    rt = waypost.connect("memory://repro-slow-recovery", ttl=TTL)
    comp = rt.namespace("n").component("c")
    for j in range(ENDPOINTS):
        comp.endpoint(f"e{j}").register(transport=waypost.TransportType.tcp(f"127.0.0.1:{j + 1}"))
    original = rt.backend.create

    def slow_create(lease: Any, key: str, value: bytes) -> None:  # a store that answers writes in 0.3 s
        time.sleep(DELAY)
        original(lease, key, value)

    rt.backend.create = slow_create  # type: ignore[method-assign]
    observer = waypost.connect("memory://repro-slow-recovery", ttl=TTL)
    observer.backend.revoke_lease(rt.instance_id)  # one lease loss, from outside
    started = time.monotonic()
    seen = []
    while time.monotonic() - started < WATCH_FOR:
        time.sleep(0.25)  # sampling the store, not synchronising
        seen.append(len(observer.list_instances("n")))
    complete = [n == ENDPOINTS for n in seen]
    recovered = any(complete) and all(complete[complete.index(True):])
    print(f"listed over {WATCH_FOR:g} s (every 0.25 s): {seen}")
    print(f"waypost_on_lease_lost calls: {hook.calls}; recovered and stayed: {recovered}")
    return 0 if recovered else 1


if __name__ == "__main__":
    sys.exit(main())
