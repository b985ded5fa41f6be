"""In-process backend: ``memory://[name]``.

URL grammar
    ``memory://`` or ``memory://NAME``. Every Runtime in this process that
    uses the same NAME (default ``default``) shares one store; other processes
    never see it.

Options
    none besides the Runtime's (``ttl``, ``on_lease_lost``, ``instance_id``).

Semantics
    A real store, not a mock: leases expire on time (a reaper thread removes
    an expired lease's keys and notifies watchers within milliseconds of the
    deadline), registration is create-only, and watches are gap-free and
    ordered. ``instance_id`` may be chosen; otherwise a random non-zero u64.

Caveats
    Lives as long as the process. Watch delivery uses one thread per watch.
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

from waypost.core import (
    AlreadyRegistered,
    Backend,
    Capability,
    Lease,
    LeaseLost,
    ParsedURL,
    WatchHandle,
    WatchLoop,
    WatchRegistry,
    WatchSink,
    random_instance_id,
)

__all__ = ["MemoryBackend", "reset_stores"]

_Change = tuple[str, str, bytes]  # ("put" | "delete", key, value)


@dataclass(eq=False)
class _Grant:
    """One grant of a lease id. Identity matters: a lost id granted again is a new grant,
    so the first holder can never touch (keep alive, delete) what the second one owns."""

    deadline: float
    ttl: float


class _Store:
    """One named in-process store: keys, leases with deadlines, watchers."""

    def __init__(self) -> None:
        self.lock = threading.Condition()
        self.data: dict[str, tuple[bytes, _Grant]] = {}  # key -> (value, owning grant)
        self.leases: dict[int, _Grant] = {}  # live lease id -> its current grant
        self.watchers: list[_MemoryWatch] = []
        self._reaper = threading.Thread(target=self._reap_forever, name="waypost-memory-reaper", daemon=True)
        self._reaper.start()

    # called with self.lock held ------------------------------------------------
    def publish(self, kind: str, key: str, value: bytes = b"") -> None:
        for watcher in self.watchers:
            if key.startswith(watcher.prefix):
                watcher.changes.put((kind, key, value))

    def items(self, prefix: str) -> list[tuple[str, bytes]]:
        self.reap()
        return sorted((k, v) for k, (v, _) in self.data.items() if k.startswith(prefix))

    def drop_lease(self, lease_id: int) -> None:
        grant = self.leases.pop(lease_id, None)
        if grant is not None:
            self.drop_keys_of(grant)

    def drop_keys_of(self, grant: _Grant) -> None:
        for key in [k for k, (_, owner) in self.data.items() if owner is grant]:
            del self.data[key]
            self.publish("delete", key)

    def reap(self) -> None:
        now = time.monotonic()
        for lease_id in [i for i, grant in self.leases.items() if grant.deadline <= now]:
            self.drop_lease(lease_id)

    def require_grant(self, lease: Lease, grant: _Grant | None) -> _Grant:
        """``grant`` if it is still the live grant of ``lease.id``, else :class:`LeaseLost`."""
        self.reap()
        if grant is None or self.leases.get(lease.id) is not grant:
            raise LeaseLost(f"memory lease {lease.id:x} has expired or was revoked")
        return grant

    def _reap_forever(self) -> None:
        with self.lock:
            while True:
                self.reap()
                next_deadline = min((g.deadline for g in self.leases.values()), default=None)
                timeout = None if next_deadline is None else max(next_deadline - time.monotonic(), 0.0)
                self.lock.wait(timeout)


_stores: dict[str, _Store] = {}
_stores_lock = threading.Lock()


def _store(name: str) -> _Store:
    with _stores_lock:
        store = _stores.get(name)
        if store is None:
            store = _stores[name] = _Store()
        return store


def reset_stores() -> None:
    """Forget every store's data (tests)."""
    with _stores_lock:
        for store in _stores.values():
            with store.lock:
                for key in list(store.data):
                    store.publish("delete", key)
                store.data.clear()
                store.leases.clear()


class _MemoryWatch(WatchLoop):
    """Changes reach the watch through a queue filled under the store's lock: ordered, gap-free."""

    thread_name = "waypost-memory-watch"

    def __init__(self, store: _Store, prefix: str, sink: WatchSink, registry: WatchRegistry[_MemoryWatch]) -> None:
        super().__init__(prefix, sink, on_close=registry.forget)
        self._store = store
        self.changes: queue.SimpleQueue[_Change | None] = queue.SimpleQueue()

    def snapshot(self) -> list[tuple[str, bytes]]:
        with self._store.lock:
            # Registered with the snapshot under one lock: every later change queues up here.
            if self not in self._store.watchers:
                self._store.watchers.append(self)
            return self._store.items(self.prefix)

    def follow(self) -> None:
        while (change := self.changes.get()) is not None:
            kind, key, value = change
            if kind == "put":
                self.put(key, value)
            else:
                self.delete(key)

    def interrupt(self) -> None:
        self.changes.put(None)

    def release(self) -> None:
        with self._store.lock:
            if self in self._store.watchers:
                self._store.watchers.remove(self)


class MemoryBackend(Backend):
    __doc__ = __doc__
    schemes: ClassVar[tuple[str, ...]] = ("memory",)
    extra: ClassVar[str | None] = None
    capabilities: ClassVar[frozenset[Capability]] = frozenset(
        {Capability.SERVER_EXPIRY, Capability.CHOSEN_INSTANCE_ID}
    )
    min_ttl: ClassVar[float] = 0.1

    def __init__(self, name: str) -> None:
        self.name = name
        self._store = _store(name)
        self._grants: dict[int, _Grant] = {}  # lease ids this backend was granted
        self._watches: WatchRegistry[_MemoryWatch] = WatchRegistry(self.describe)

    @classmethod
    def from_url(cls, url: ParsedURL, options: Mapping[str, Any]) -> MemoryBackend:
        name = ",".join(host for host, _ in url.hosts) + url.path.strip("/")
        return cls(name or "default")

    def describe(self) -> str:
        return f"memory://{self.name}"

    def _check(self) -> None:
        self._watches.check_open()

    def grant_lease(self, ttl: float, preferred_id: int | None = None) -> Lease:
        self._check()
        store = self._store
        with store.lock:
            store.reap()
            lease_id = preferred_id or random_instance_id()
            while lease_id in store.leases:
                if preferred_id is not None:
                    raise AlreadyRegistered(f"instance id {lease_id:x} is held by a live Runtime")
                lease_id = random_instance_id()
            store.leases[lease_id] = self._grants[lease_id] = _Grant(time.monotonic() + ttl, ttl)
            store.lock.notify_all()
            return Lease(lease_id, ttl)

    def keep_alive(self, lease: Lease) -> None:
        self._check()
        store = self._store
        with store.lock:
            grant = store.require_grant(lease, self._grants.get(lease.id))
            grant.deadline = time.monotonic() + lease.ttl

    def revoke_lease(self, lease_id: int) -> None:
        self._check()
        store = self._store
        with store.lock:
            mine = self._grants.pop(lease_id, None)
            if mine is None or store.leases.get(lease_id) is mine:
                store.drop_lease(lease_id)  # ours and live, or another Runtime's: revoke by id
            else:
                store.drop_keys_of(mine)  # our grant was lost and the id re-granted: leave the new holder be

    def create(self, lease: Lease, key: str, value: bytes) -> None:
        self._check()
        store = self._store
        with store.lock:
            grant = store.require_grant(lease, self._grants.get(lease.id))
            if key in store.data:
                raise AlreadyRegistered(f"{key} is already registered")
            store.data[key] = (value, grant)
            store.publish("put", key, value)

    def replace(self, lease: Lease, key: str, value: bytes) -> None:
        self._check()
        store = self._store
        with store.lock:
            grant = store.require_grant(lease, self._grants.get(lease.id))
            store.data[key] = (value, grant)
            store.publish("put", key, value)

    def delete(self, lease: Lease, key: str) -> None:
        self._check()
        store = self._store
        with store.lock:
            entry = store.data.get(key)
            if entry is not None and entry[1] is self._grants.get(lease.id):  # only what this grant owns
                del store.data[key]
                store.publish("delete", key)

    def list(self, prefix: str) -> list[tuple[str, bytes]]:
        self._check()
        with self._store.lock:
            return self._store.items(prefix)

    def watch(self, prefix: str, sink: WatchSink) -> WatchHandle:
        return self._watches.open(_MemoryWatch(self._store, prefix, sink, self._watches))

    def close(self) -> None:
        self._watches.close()

