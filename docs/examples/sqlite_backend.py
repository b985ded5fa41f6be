"""A waypost backend on SQLite: ``sqlite:///path/to/discovery.db`` (the example of docs/writing-a-backend.md).

Processes on one host share a database file; no server runs. Every change
is one transaction that also appends to a ``log`` table, so a watch follows
the log by revision, gap-free. Leases have deadlines on the host's clock;
every transaction first deletes the expired ones with their keys (so a
crashed process disappears once some process touches the database). Each
grant of a lease id has a random token: a Runtime whose lease was lost and
granted to another never touches the new holder's keys.

Options: ``timeout`` (seconds SQLite waits for a lock, default 5) and
``history`` (log entries kept, default 10000; a watch further behind re-lists).
"""

from __future__ import annotations

import secrets
import sqlite3
import threading
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import Any, ClassVar

from waypost import core as wp

SCHEMA = """
CREATE TABLE IF NOT EXISTS leases (id TEXT PRIMARY KEY, token TEXT NOT NULL, deadline REAL NOT NULL);
CREATE TABLE IF NOT EXISTS kv (key TEXT PRIMARY KEY, value BLOB NOT NULL, lease TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS log (rev INTEGER PRIMARY KEY AUTOINCREMENT, key TEXT NOT NULL, value BLOB);
"""


class SQLiteBackend(wp.Backend):
    __doc__ = __doc__
    schemes: ClassVar[tuple[str, ...]] = ("sqlite",)
    capabilities: ClassVar[frozenset[wp.Capability]] = frozenset(
        {wp.Capability.CROSS_PROCESS, wp.Capability.CHOSEN_INSTANCE_ID})
    options: ClassVar[tuple[wp.Option, ...]] = (
        wp.Option("timeout", wp.parse_float(0.1, 600.0), 5.0, "seconds SQLite waits for a lock"),
        wp.Option("history", wp.parse_int(10, 10_000_000), 10_000, "log entries kept for watches"),
    )
    distribution: ClassVar[str] = "waypost-sqlite-example"

    def __init__(self, path: str, timeout: float, history: int) -> None:
        self.path, self.timeout, self.history = path, timeout, history
        self._lock = threading.Lock()
        self._db = self._connect()
        self._tokens: dict[int, str] = {}  # our grants: lease id -> token
        self._watches: wp.WatchRegistry[_SQLiteWatch] = wp.WatchRegistry(self.describe)

    @classmethod
    def from_url(cls, url: wp.ParsedURL, options: Mapping[str, Any]) -> SQLiteBackend:
        if url.hosts or not url.path:
            raise wp.ConfigError("sqlite:// names a database file: sqlite:///absolute/path.db")
        return cls(url.path, options["timeout"], options["history"])

    def describe(self) -> str:
        return f"sqlite://{self.path}"

    def _connect(self) -> sqlite3.Connection:
        try:
            db = sqlite3.connect(self.path, timeout=self.timeout, isolation_level=None, check_same_thread=False)
            db.executescript(SCHEMA)
        except sqlite3.Error as exc:
            raise wp.BackendUnavailable(f"cannot open {self.describe()}: {exc}") from exc
        return db

    @contextmanager
    def _txn(self, db: sqlite3.Connection | None = None) -> Iterator[sqlite3.Cursor]:
        """One write transaction that first reaps expired leases; sqlite3 errors become waypost's."""
        self._watches.check_open()
        lock = self._lock if db is None else threading.Lock()
        db = db or self._db
        with lock:
            try:
                cur = db.execute("BEGIN IMMEDIATE")
                for (lease,) in cur.execute("SELECT id FROM leases WHERE deadline < ?", (time.time(),)).fetchall():
                    self._drop(cur, lease)
                yield cur
                cur.execute("COMMIT")
            except BaseException as exc:
                if db.in_transaction:
                    db.execute("ROLLBACK")
                if isinstance(exc, sqlite3.Error):
                    raise wp.BackendUnavailable(f"{self.describe()}: {exc}") from exc
                raise

    def _drop(self, cur: sqlite3.Cursor, lease: str) -> None:
        for (key,) in cur.execute("SELECT key FROM kv WHERE lease = ?", (lease,)).fetchall():
            self._write(cur, key, None)
        cur.execute("DELETE FROM leases WHERE id = ?", (lease,))

    def _write(self, cur: sqlite3.Cursor, key: str, value: bytes | None, lease: str = "") -> None:
        if value is None:
            cur.execute("DELETE FROM kv WHERE key = ?", (key,))
        else:
            cur.execute("INSERT OR REPLACE INTO kv VALUES (?, ?, ?)", (key, value, lease))
        cur.execute("INSERT INTO log (key, value) VALUES (?, ?)", (key, value))
        cur.execute("DELETE FROM log WHERE rev <= (SELECT MAX(rev) FROM log) - ?", (self.history,))

    def _mine(self, cur: sqlite3.Cursor, lease: wp.Lease) -> None:
        row = cur.execute("SELECT token FROM leases WHERE id = ?", (f"{lease.id:x}",)).fetchone()
        if row is None or row[0] != self._tokens.get(lease.id):
            raise wp.LeaseLost(f"sqlite lease {lease.id:x} expired, was revoked or was granted again")

    # leases -------------------------------------------------------------------------------------
    def grant_lease(self, ttl: float, preferred_id: int | None = None) -> wp.Lease:
        with self._txn() as cur:
            lease_id = preferred_id or wp.random_instance_id()
            while cur.execute("SELECT 1 FROM leases WHERE id = ?", (f"{lease_id:x}",)).fetchone():
                if preferred_id is not None:
                    raise wp.AlreadyRegistered(f"instance id {lease_id:x} is held by a live Runtime")
                lease_id = wp.random_instance_id()
            token = self._tokens[lease_id] = secrets.token_hex(8)
            cur.execute("INSERT INTO leases VALUES (?, ?, ?)", (f"{lease_id:x}", token, time.time() + ttl))
        return wp.Lease(lease_id, ttl)

    def keep_alive(self, lease: wp.Lease) -> None:
        with self._txn() as cur:
            self._mine(cur, lease)
            cur.execute("UPDATE leases SET deadline = ? WHERE id = ?", (time.time() + lease.ttl, f"{lease.id:x}"))

    def revoke_lease(self, lease_id: int) -> None:
        with self._txn() as cur:
            row = cur.execute("SELECT token FROM leases WHERE id = ?", (f"{lease_id:x}",)).fetchone()
            token = self._tokens.pop(lease_id, None)
            if row is not None and token in (None, row[0]):  # ours, or another Runtime's by id
                self._drop(cur, f"{lease_id:x}")

    # keys -----------------------------------------------------------------------------------------
    def create(self, lease: wp.Lease, key: str, value: bytes) -> None:
        with self._txn() as cur:
            self._mine(cur, lease)
            row = cur.execute("SELECT value, lease FROM kv WHERE key = ?", (key,)).fetchone()
            if row is not None and tuple(row) != (value, f"{lease.id:x}"):  # a retried create finds its own
                raise wp.AlreadyRegistered(f"{key} is already registered")
            self._write(cur, key, value, f"{lease.id:x}")

    def replace(self, lease: wp.Lease, key: str, value: bytes) -> None:
        with self._txn() as cur:
            self._mine(cur, lease)
            self._write(cur, key, value, f"{lease.id:x}")

    def delete(self, lease: wp.Lease, key: str) -> None:
        with self._txn() as cur:
            owner = cur.execute("SELECT lease FROM kv WHERE key = ?", (key,)).fetchone()
            token = cur.execute("SELECT token FROM leases WHERE id = ?", (f"{lease.id:x}",)).fetchone()
            if owner == (f"{lease.id:x}",) and token == (self._tokens.get(lease.id),):
                self._write(cur, key, None)

    def list(self, prefix: str) -> list[tuple[str, bytes]]:
        with self._txn() as cur:
            return _items(cur, prefix)

    def watch(self, prefix: str, sink: wp.WatchSink) -> wp.WatchHandle:
        return self._watches.open(_SQLiteWatch(self, prefix, sink))

    def close(self) -> None:
        if self._watches.close():
            self._db.close()


def _items(cur: sqlite3.Cursor, prefix: str) -> list[tuple[str, bytes]]:
    rows = cur.execute("SELECT key, value FROM kv WHERE substr(key, 1, ?) = ? ORDER BY key", (len(prefix), prefix))
    return [(key, bytes(value)) for key, value in rows]


class _SQLiteWatch(wp.WatchLoop):
    """Follows the log table by revision on a connection of its own, polling every 50 ms."""

    resumable = True

    def __init__(self, backend: SQLiteBackend, prefix: str, sink: wp.WatchSink) -> None:
        super().__init__(prefix, sink, on_close=backend._watches.forget)
        self._backend, self._db, self._rev = backend, backend._connect(), 0

    def snapshot(self) -> list[tuple[str, bytes]]:
        with self._backend._txn(self._db) as cur:
            self._rev = cur.execute("SELECT COALESCE(MAX(rev), 0) FROM log").fetchone()[0]
            return _items(cur, self.prefix)

    def follow(self) -> None:
        while not self.wait(0.05):
            with self._backend._txn(self._db) as cur:  # a transaction: it also reaps expired leases
                first = cur.execute("SELECT MIN(rev) FROM log").fetchone()[0]
                rows = cur.execute("SELECT rev, key, value FROM log WHERE rev > ? ORDER BY rev", (self._rev,))
                changes = rows.fetchall()
            if first is not None and first > self._rev + 1:
                raise wp.Resync("the log was trimmed past this watch")
            for rev, key, value in changes:
                if key.startswith(self.prefix) and value is not None:
                    self.put(key, bytes(value))
                elif key.startswith(self.prefix):
                    self.delete(key)
                self._rev = rev
            self.caught_up()

    def release(self) -> None:
        self._db.close()
