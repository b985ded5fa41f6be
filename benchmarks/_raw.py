"""The raw-client baselines: the same store work as waypost, without waypost.

Each class writes the same keys and JSON values as the waypost backend of the
same name, in the same layout, with the client library called directly (a dict
for memory, os calls for the file layout, pyetcd for etcd, redis-py for Redis).
A raw ``list`` fetches and ``json.loads`` every value (what a user of the raw
client would have to do to get usable instances), but does not validate or sort.
"""

from __future__ import annotations

import base64
import contextlib
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
        # gRPC refuses replies over 4 MB by default: a list of 100 000 instances is ~25 MB (the backend
        # raises the limit the same way).
        self.client = pyetcd.client(host=host, port=int(port), timeout=30, grpc_options=[
            ("grpc.max_receive_message_length", 256 * 1024 * 1024),
            ("grpc.max_send_message_length", 256 * 1024 * 1024)])
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


# ---------------------------------------------------------------------------
# file: Dynamo's file layout with plain os calls
# ---------------------------------------------------------------------------

def file_escape(relative_key: str) -> str:
    """Dynamo's file name of a key relative to its bucket: bytes outside [A-Za-z0-9] -> %XX."""
    return "".join(chr(b) if (48 <= b <= 57 or 65 <= b <= 90 or 97 <= b <= 122) else f"%{b:02X}"
                   for b in relative_key.encode())


def file_unescape(name: str) -> str:
    from urllib.parse import unquote

    return unquote(name)


class RawFile(RawStore):
    """``<root>/v1/instances/<%-encoded key>``; tmp file + ``link()`` (create-only); mtime liveness.

    A raw reader still has to skip ``.tmp_`` files and files older than the ttl
    (the layout's liveness rule), so ``list`` does a ``stat`` per file like the
    backend does. The raw "lease" is the list of files to touch.
    """

    name = "file"
    BUCKET = "v1/instances"

    def __init__(self, url: str, root: str, stale_after: float = 3600.0, **_: Any) -> None:
        self.bucket = os.path.join(root, self.BUCKET)
        for directory in (root, os.path.join(root, "v1"), self.bucket):  # 0700 whatever the umask: waypost
            os.makedirs(directory, mode=0o700, exist_ok=True)             # refuses a store others can write
            os.chmod(directory, 0o700)
        self.stale_after = stale_after
        self.leases: dict[int, list[str]] = {}

    def _path(self, key: str) -> str:
        return os.path.join(self.bucket, file_escape(key[len(self.BUCKET) + 1:]))

    def grant(self, ttl: float) -> Any:
        lease: list[str] = []
        self.leases[id(lease)] = lease
        return lease

    def keepalive(self, lease: Any) -> None:
        for path in lease:
            os.utime(path)

    def revoke(self, lease: Any) -> None:
        for path in lease:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(path)
        self.leases.pop(id(lease), None)

    def create(self, lease: Any, key: str, value: bytes) -> None:
        path = self._path(key)
        tmp = os.path.join(self.bucket, f".tmp_{os.urandom(8).hex()}")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
        try:
            os.write(fd, value)
        finally:
            os.close(fd)
        try:
            os.link(tmp, path)
        finally:
            os.unlink(tmp)
        if lease is not None:
            lease.append(path)

    def delete(self, key: str) -> None:
        path = self._path(key)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)
        for lease in self.leases.values():
            if path in lease:
                lease.remove(path)

    def list(self, prefix: str) -> list[tuple[str, Any]]:
        encoded = file_escape(prefix[len(self.BUCKET) + 1:])
        oldest = time.time() - self.stale_after
        out = []
        with os.scandir(self.bucket) as listing:
            for entry in listing:
                name = entry.name
                if not name.startswith(encoded) or name.startswith(".tmp_"):
                    continue
                if entry.stat().st_mtime < oldest:
                    continue
                with open(entry.path, "rb") as f:
                    out.append((f"{self.BUCKET}/{file_unescape(name)}", json.loads(f.read())))
        return out

    def watch(self, prefix: str, on_event: OnEvent) -> Callable[[], None]:
        """inotify on the bucket through libc (ctypes), as the backend does: no debounce, no polling.

        One ``IN_CREATE`` (``link()`` of the final name) / ``IN_DELETE`` / ``IN_MOVED_*`` per change, for
        the names under ``prefix``; the event is delivered as soon as ``select`` wakes up.
        """
        import ctypes
        import select
        import struct

        libc = ctypes.CDLL(None, use_errno=True)
        fd = libc.inotify_init1(os.O_NONBLOCK | os.O_CLOEXEC)
        if fd < 0:
            raise OSError(ctypes.get_errno(), "inotify_init1")
        in_create, in_delete, in_moved_from, in_moved_to, in_close_write = 0x100, 0x200, 0x40, 0x80, 0x8
        mask = in_create | in_delete | in_moved_from | in_moved_to | in_close_write
        if libc.inotify_add_watch(fd, os.fsencode(self.bucket), mask) < 0:
            os.close(fd)
            raise OSError(ctypes.get_errno(), "inotify_add_watch")
        encoded = file_escape(prefix[len(self.BUCKET) + 1:])
        event = struct.Struct("iIII")
        stop_r, stop_w = os.pipe()

        def run() -> None:
            while True:
                readable, _, _ = select.select([fd, stop_r], [], [])
                if stop_r in readable:
                    return
                try:
                    data = os.read(fd, 65536)
                except BlockingIOError:
                    continue
                offset = 0
                while offset + event.size <= len(data):
                    _, ev_mask, _, length = event.unpack_from(data, offset)
                    name = os.fsdecode(data[offset + event.size:offset + event.size + length].split(b"\0", 1)[0])
                    offset += event.size + length
                    if not name.startswith(encoded):
                        continue
                    key = f"{self.BUCKET}/{file_unescape(name)}"
                    if ev_mask & (in_delete | in_moved_from):
                        on_event("delete", key)
                    elif ev_mask & (in_create | in_moved_to):
                        on_event("put", key)

        thread = threading.Thread(target=run, name="raw-file-watch", daemon=True)
        thread.start()

        def stopper() -> None:
            os.write(stop_w, b"!")
            thread.join(5)
            for f in (fd, stop_r, stop_w):
                os.close(f)

        return stopper


# ---------------------------------------------------------------------------
# redis: redis-py on the backend's layout (index zset, values/owners hashes,
# lease sets, change-log stream), each write one atomic script, no reaping
# ---------------------------------------------------------------------------

_REDIS_CREATE = """
if redis.call('HSETNX', KEYS[2], ARGV[1], ARGV[2]) == 0 then return 0 end
redis.call('ZADD', KEYS[1], 0, ARGV[1])
redis.call('HSET', KEYS[3], ARGV[1], ARGV[3])
redis.call('SADD', KEYS[4], ARGV[1])
local seq = redis.call('INCR', KEYS[5])
redis.call('XADD', KEYS[6], 'MAXLEN', '~', 10000, '*', 's', seq, 'e', redis.call('GET', KEYS[7]) or '',
           'o', 'put', 'k', ARGV[1], 'v', ARGV[2])
return 1
"""

_REDIS_DELETE = """
redis.call('ZREM', KEYS[1], ARGV[1])
redis.call('HDEL', KEYS[2], ARGV[1])
redis.call('HDEL', KEYS[3], ARGV[1])
redis.call('SREM', KEYS[4], ARGV[1])
local seq = redis.call('INCR', KEYS[5])
redis.call('XADD', KEYS[6], 'MAXLEN', '~', 10000, '*', 's', seq, 'e', redis.call('GET', KEYS[7]) or '',
           'o', 'del', 'k', ARGV[1], 'v', '')
return 1
"""

_REDIS_LIST = """
local keys = redis.call('ZRANGEBYLEX', KEYS[1], '[' .. ARGV[1], '(' .. ARGV[1] .. '\\255')
local values = {}
for i = 1, #keys, 1000 do
  local chunk = redis.call('HMGET', KEYS[2], unpack(keys, i, math.min(i + 999, #keys)))
  for j = 1, #chunk do values[#values + 1] = chunk[j] end
end
return {keys, values}
"""


class RawRedis(RawStore):
    name = "redis"

    def __init__(self, url: str, prefix: str = "waypost:", **_: Any) -> None:
        import redis

        self.client = redis.Redis.from_url(url, socket_timeout=10)
        p = prefix
        self.keys = {"index": p + "index", "values": p + "values", "owners": p + "owners",
                     "leases": p + "leases", "seq": p + "seq", "log": p + "log", "epoch": p + "epoch"}
        self.prefix = p
        self._create = self.client.register_script(_REDIS_CREATE)
        self._delete = self.client.register_script(_REDIS_DELETE)
        self._list = self.client.register_script(_REDIS_LIST)
        self._lease_of: dict[str, int] = {}

    def grant(self, ttl: float) -> Any:
        lease = int.from_bytes(os.urandom(8), "big") | 1
        self.ttl_ms = int(ttl * 1000)
        self.client.zadd(self.keys["leases"], {str(lease): int(time.time() * 1000) + self.ttl_ms})
        return _Lease(lease)

    def keepalive(self, lease: Any) -> None:
        self.client.zadd(self.keys["leases"], {str(lease.id): int(time.time() * 1000) + self.ttl_ms}, xx=True)

    def revoke(self, lease: Any) -> None:
        lease_set = f"{self.prefix}lease:{lease.id}"
        for key in self.client.smembers(lease_set):
            self.delete(key.decode())
        self.client.delete(lease_set)
        self.client.zrem(self.keys["leases"], str(lease.id))

    def create(self, lease: Any, key: str, value: bytes) -> None:
        k = self.keys
        lease_id = str(lease.id if lease is not None else 0)
        self._lease_of[key] = int(lease_id)
        ok = self._create(keys=[k["index"], k["values"], k["owners"], f"{self.prefix}lease:{lease_id}", k["seq"],
                                k["log"], k["epoch"]], args=[key, value, lease_id])
        if not ok:
            raise KeyError(key)

    def delete(self, key: str) -> None:
        k = self.keys
        lease_id = self._lease_of.pop(key, 0)
        self._delete(keys=[k["index"], k["values"], k["owners"], f"{self.prefix}lease:{lease_id}", k["seq"],
                           k["log"], k["epoch"]], args=[key])

    def list(self, prefix: str) -> list[tuple[str, Any]]:
        keys, values = self._list(keys=[self.keys["index"], self.keys["values"]], args=[prefix])
        return [(k.decode(), json.loads(v)) for k, v in zip(keys, values, strict=True) if v is not None]

    def watch(self, prefix: str, on_event: OnEvent) -> Callable[[], None]:
        """Follow the change log with ``XREAD BLOCK`` on a connection of its own."""
        import redis

        client = redis.Redis(connection_pool=redis.ConnectionPool(**self.client.connection_pool.connection_kwargs))
        last = [self.client.xrevrange(self.keys["log"], count=1)]
        position = last[0][0][0] if last[0] else b"0-0"
        stop = threading.Event()
        pfx = prefix.encode()

        def run() -> None:
            nonlocal position
            while not stop.is_set():
                for _stream, entries in client.xread({self.keys["log"]: position}, block=200, count=1000) or []:
                    for entry_id, fields in entries:
                        position = entry_id
                        key = fields[b"k"]
                        if key.startswith(pfx):
                            on_event("put" if fields[b"o"] == b"put" else "delete", key.decode())

        thread = threading.Thread(target=run, name="raw-redis-watch", daemon=True)
        thread.start()

        def stopper() -> None:
            stop.set()
            thread.join(5)
            client.close()

        return stopper

    def close(self) -> None:
        self.client.close()


# ---------------------------------------------------------------------------
# consul: py-consul, keys locked by a session (Behavior=delete), create-only
# through the backend's transaction shape, list = one recursive GET
# ---------------------------------------------------------------------------

class RawConsul(RawStore):
    """The backend's Consul layout with py-consul called directly.

    * lease  = a session (``Behavior=delete``, ``TTL``, ``LockDelay=0``), created
      through py-consul's HTTP client (its ``session.create`` helper refuses
      TTLs below 10 s);
    * create = ``PUT /v1/txn`` [``check-not-exists`` key, ``lock`` key+value with
      the session] (py-consul ``txn.put``): the backend's exact shape. A single
      ``kv.put(cas=0, acquire=session)`` is *not* equivalent: Consul's KV
      endpoint lets ``acquire`` override ``cas``, so it would not be create-only;
    * delete = ``kv.delete(key)``; list = ``kv.get(prefix, recurse=True)`` (py-consul
      base64-decodes the values) + ``json.loads``; keepalive = ``session.renew``;
    * watch  = blocking queries (``index``, ``wait``) diffed on ``ModifyIndex``.
    """

    name = "consul"

    def __init__(self, url: str, **_: Any) -> None:
        import consul

        host, port = url.split("://", 1)[1].split("/", 1)[0].split("?", 1)[0].rsplit(":", 1)
        self._consul = consul
        self.host, self.port = host, int(port)
        self.client = consul.Consul(host=host, port=int(port), connections_timeout=10)

    def grant(self, ttl: float) -> Any:
        from consul.callback import CB

        instance_id = int.from_bytes(os.urandom(8), "big") | 1  # an instance id for the keys, like the backend's
        body = json.dumps({"Name": f"raw/{instance_id:x}", "Behavior": "delete", "TTL": f"{max(1, round(ttl))}s",
                           "LockDelay": "0s"})
        lease = _Lease(instance_id)
        lease.session = self.client.http.put(CB.json(), "/v1/session/create", data=body)["ID"]
        return lease

    def keepalive(self, lease: Any) -> None:
        self.client.session.renew(lease.session)

    def revoke(self, lease: Any) -> None:
        self.client.session.destroy(lease.session)

    def create(self, lease: Any, key: str, value: bytes) -> None:
        lock: dict[str, Any] = {"Verb": "lock", "Key": key, "Value": base64.b64encode(value).decode("ascii")}
        if lease is not None:
            lock["Session"] = lease.session
        else:
            lock["Verb"] = "set"
        try:
            self.client.txn.put([{"KV": {"Verb": "check-not-exists", "Key": key}}, {"KV": lock}])
        except self._consul.ConsulException as exc:  # HTTP 409: the check failed
            raise KeyError(key) from exc

    def delete(self, key: str) -> None:
        self.client.kv.delete(key)

    def list(self, prefix: str) -> list[tuple[str, Any]]:
        _index, items = self.client.kv.get(prefix, recurse=True)
        return [(item["Key"], json.loads(item["Value"])) for item in items or ()]

    def watch(self, prefix: str, on_event: OnEvent) -> Callable[[], None]:
        """A blocking query loop on its own client (connection); diffs states on ``ModifyIndex``."""
        client = self._consul.Consul(host=self.host, port=self.port, connections_timeout=10)
        index, items = client.kv.get(prefix, recurse=True)
        known = {item["Key"]: item["ModifyIndex"] for item in items or ()}
        stop = threading.Event()

        def run() -> None:
            nonlocal index, known
            while not stop.is_set():
                try:
                    index, items = client.kv.get(prefix, recurse=True, index=max(int(index or 1), 1), wait="1s")
                except Exception:  # a benchmark baseline: keep trying
                    time.sleep(0.05)
                    continue
                now = {item["Key"]: item["ModifyIndex"] for item in items or ()}
                for key in sorted(now, key=now.__getitem__):
                    if known.get(key) != now[key]:
                        on_event("put", key)
                for key in known.keys() - now.keys():
                    on_event("delete", key)
                known = now

        thread = threading.Thread(target=run, name="raw-consul-watch", daemon=True)
        thread.start()

        def stopper() -> None:
            stop.set()
            thread.join(5)

        return stopper

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.client.http.session.close()


class _Lease:
    def __init__(self, lease_id: int) -> None:
        self.id = lease_id
        self.session = ""  # Consul: the session that stands for the lease


RAW_STORES: dict[str, type[RawStore]] = {"memory": RawMemory, "file": RawFile, "etcd": RawEtcd, "redis": RawRedis,
                                          "consul": RawConsul}


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
