"""The raw-client baselines: the same store work as waypost, without waypost.

Each class writes the same keys and JSON values as the waypost backend of the
same name, in the same layout, with the client library called directly (a dict
for memory, os calls for the file layout, pyetcd for etcd, redis-py for Redis).
A raw ``list`` fetches and ``json.loads`` every value (what a user of the raw
client would have to do to get usable instances), but does not validate or sort.
"""

from __future__ import annotations

import json
import os
import threading
import time
from collections.abc import Callable
from typing import Any

__all__ = ["RAW_STORES", "RawStore"]

OnEvent = Callable[[str, str], None]  # (kind "put"|"delete", key)


class RawStore:
    """The operations a benchmark needs from a raw client."""

    name = "?"

    def grant(self, ttl: float) -> Any:
        """A lease (or whatever stands for liveness) to attach keys to."""
        return None

    def keepalive(self, lease: Any) -> None:
        pass

    def revoke(self, lease: Any) -> None:
        pass

    def create(self, lease: Any, key: str, value: bytes) -> None:
        raise NotImplementedError

    def delete(self, key: str) -> None:
        raise NotImplementedError

    def list(self, prefix: str) -> list[tuple[str, Any]]:
        raise NotImplementedError

    def watch(self, prefix: str, on_event: OnEvent) -> Callable[[], None]:
        """Deliver changes under ``prefix`` from a background thread; return a stopper."""
        raise NotImplementedError

    def close(self) -> None:
        pass


# ---------------------------------------------------------------------------
# memory: a dict behind a lock
# ---------------------------------------------------------------------------

class RawMemory(RawStore):
    name = "memory"

    def __init__(self, url: str, **_: Any) -> None:
        self.lock = threading.Lock()
        self.data: dict[str, bytes] = {}

    def create(self, lease: Any, key: str, value: bytes) -> None:
        with self.lock:
            if key in self.data:
                raise KeyError(key)
            self.data[key] = value

    def delete(self, key: str) -> None:
        with self.lock:
            self.data.pop(key, None)

    def list(self, prefix: str) -> list[tuple[str, Any]]:
        with self.lock:
            items = [(k, v) for k, v in self.data.items() if k.startswith(prefix)]
        return [(k, json.loads(v)) for k, v in items]


# ---------------------------------------------------------------------------
# etcd: pyetcd, keys attached to a lease, create-only through a transaction
# ---------------------------------------------------------------------------

class RawEtcd(RawStore):
    name = "etcd"

    def __init__(self, url: str, root: str = "", **_: Any) -> None:
        import pyetcd

        host, port = url.split("://", 1)[1].split("/", 1)[0].rsplit(":", 1)
        self.client = pyetcd.client(host=host, port=int(port), timeout=10)
        self.root = root

    def grant(self, ttl: float) -> Any:
        return self.client.lease(max(1, round(ttl)))

    def keepalive(self, lease: Any) -> None:
        for _ in self.client.refresh_lease(lease.id):
            pass

    def revoke(self, lease: Any) -> None:
        self.client.revoke_lease(lease.id)

    def create(self, lease: Any, key: str, value: bytes) -> None:
        full = self.root + key
        ok, _ = self.client.transaction(
            compare=[self.client.transactions.create(full) == 0],
            success=[self.client.transactions.put(full, value, lease=lease)],
            failure=[],
        )
        if not ok:
            raise KeyError(key)

    def delete(self, key: str) -> None:
        self.client.delete(self.root + key)

    def list(self, prefix: str) -> list[tuple[str, Any]]:
        return [(meta.key.decode(), json.loads(value))
                for value, meta in self.client.get_prefix(self.root + prefix)]

    def watch(self, prefix: str, on_event: OnEvent) -> Callable[[], None]:
        from pyetcd.events import DeleteEvent

        n = len(self.root)

        def callback(response: Any) -> None:
            for event in getattr(response, "events", ()):
                kind = "delete" if isinstance(event, DeleteEvent) else "put"
                on_event(kind, event.key.decode()[n:])

        watch_id = self.client.add_watch_prefix_callback(self.root + prefix, callback)
        return lambda: self.client.cancel_watch(watch_id)

    def close(self) -> None:
        self.client.close()


RAW_STORES: dict[str, type[RawStore]] = {"memory": RawMemory, "etcd": RawEtcd}


def keepalive_thread(store: RawStore, lease: Any, period: float) -> Callable[[], None]:
    """Keep ``lease`` alive every ``period`` seconds from a thread; return a stopper."""
    stop = threading.Event()

    def run() -> None:
        while not stop.wait(period):
            try:
                store.keepalive(lease)
            except Exception:  # a benchmark baseline: keep trying
                time.sleep(0)

    thread = threading.Thread(target=run, name="raw-keepalive", daemon=True)
    thread.start()

    def stopper() -> None:
        stop.set()
        thread.join()

    return stopper


def file_escape(name: str) -> str:  # pragma: no cover - replaced once the layout is confirmed
    return "".join(c if c.isascii() and c.isalnum() else "".join(f"%{b:02X}" for b in c.encode())
                   for c in name)


_ = os  # used by the file baseline
