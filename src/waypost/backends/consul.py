"""Consul backend: ``consul://host:port`` (``consuls://`` for HTTPS), Consul ≥ 1.8.

URL grammar
    ``consul://host[:port][?option=value&…]``: the HTTP API of one Consul
    agent (usually the local client agent, which forwards to the servers).
    The default port is 8500; ``consuls://`` speaks HTTPS and defaults to
    8501; ``consul://`` alone means ``127.0.0.1:8500``. The URL carries no credentials: the ACL token is the ``token``
    option (or ``CONSUL_HTTP_TOKEN``), never ``user:password@``.

Options (keyword > URL query > environment > default)
    ``ttl``
        lease time-to-live in seconds (default 10). It becomes the Consul
        session TTL. Consul refuses TTLs below the agent's ``session_ttl_min``,
        which is **10 s unless the agent configures it lower** (tests use
        ``session_ttl_min = "1s"``); a refused TTL is a ``ConfigError``.
    ``timeout``
        seconds any single HTTP call may take before
        :class:`~waypost.BackendUnavailable` (default 5).
    ``token``
        ACL token (env ``CONSUL_HTTP_TOKEN``), sent as ``X-Consul-Token``;
        never shown in ``repr``, logs or errors. A request the ACLs deny is an
        :class:`~waypost.AuthenticationError`.
    ``ca_cert``, ``cert_cert``, ``cert_key``
        PEM files (env ``CONSUL_CACERT``, ``CONSUL_CLIENT_CERT``,
        ``CONSUL_CLIENT_KEY``): the CA that signed the agent's certificate
        (default: the system's roots) and a client certificate and key for
        ``verify_incoming_https``. Used with ``consuls://`` only; like the
        ``consul`` CLI, plain ``consul://`` ignores them.
    ``root``
        key prefix (default empty, so keys are exactly Dynamo's
        ``v1/instances/…``); a ``/`` is appended when missing.
    ``dc``
        datacenter to address (default: the agent's own).
    ``consistency``
        read mode of ``list`` and watches: ``default`` (the leader answers,
        Consul's default), ``consistent`` (the leader first confirms it still
        leads: one more quorum round trip per read) or ``stale`` (any server).
    ``watch_wait``
        seconds a watch's blocking query waits for a change before asking
        again (default 5). It bounds how late a silent agent is noticed.

Mapping onto Consul
    A lease is a session with ``Behavior=delete``, ``TTL=ttl`` and
    ``LockDelay=0`` (a lock delay would keep a crashed process's keys from
    being re-acquired for 15 s). The instance id is a random non-zero u64 (or
    the chosen one): the session is named ``waypost/<id hex>`` and holds the
    lock on ``<root>waypost/leases/<id hex>``, created with the session in a
    check-not-exists transaction, so an id is held by at most one live
    session and any process can find (and revoke) the session of an id with
    one key read. Keep-alive renews the session (``404`` means it is gone:
    ``LeaseLost``). Registration is one transaction: ``check-not-exists`` on
    the key plus ``lock`` with the session (the key is deleted with the
    session; a create retried after a lost reply that finds the key held by
    its own session with the same value succeeds); re-registration is a
    ``lock`` by the same session; unregister is a ``check-session`` plus
    ``delete`` transaction, so it only deletes a key this lease's session
    still holds. ``list`` is one recursive KV read. Revoking destroys the
    session, which deletes its keys in the same Raft entry.

Crash detection bound
    Consul expires a session **2 x TTL** after its last renewal (it doubles
    the TTL to tolerate clock skew). Renewals happen every ttl/3, so a
    crashed process's registrations disappear at most **2 x ttl** after the
    crash (ttl + a bound of ttl), e.g. 20 s with the default ttl of 10 s;
    measured: 2.0 s with ttl = 1 s. A session also ends (and the keys go)
    when the agent it was created through leaves or fails its
    ``serfHealth`` check.

Watches
    A watch lists the prefix, then runs blocking queries on it
    (``?recurse&index=N&wait=watch_wait``). Consul returns the whole current
    state, not a history, so the backend diffs consecutive states into puts
    (in ``ModifyIndex`` order) and deletes. Another process's changes that
    come and go between two answers are not seen (hence no ``watch-history``
    capability), but the watch's state always converges to the store's. A
    process's own writes are fenced: ``register``/``unregister`` return once
    the same Runtime's watches covering the key have delivered the change (at
    most ``min(timeout, 1 s)`` later), so they are never merged. After an
    error the watch reports itself interrupted, retries with backoff and
    re-lists (``Resynced``); when the index goes backwards with different
    data (the servers lost their state, e.g. a dev agent restarted) it
    re-lists too. A silent agent (paused, partitioned) is noticed within
    ``watch_wait * 17/16 + timeout`` seconds. Each watch uses two threads
    (one sends the blocking queries, one diffs) and one HTTP connection;
    closing it aborts its blocking query at once.

ACL policy
    The token needs ``session_prefix "" { policy = "write" }`` and write on
    ``key_prefix "<root>v1/instances/"`` and ``key_prefix "<root>waypost/leases/"``.

Caveats
    py-consul ≥ 1.8 (``pip install 'waypost[consul]'``) carries the HTTP.
    1.8 added ``connections_timeout``, which bounds every call and adds a
    blocking query's ``wait`` (and its jitter) to the read timeout; older
    releases have no timeout at all and refuse the argument. Its
    high-level helpers refuse TTLs below 10 s and hide the structured
    transaction errors, so the backend calls its HTTP client directly and
    interprets the replies itself. Sessions are tied to the agent's node: point
    every process at an agent on its own host (as Consul recommends).
"""

from __future__ import annotations

import base64
import contextlib
import functools
import json
import logging
import os
import queue
import socket
import threading
import time
import weakref
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

from waypost.core import (
    AlreadyRegistered,
    AuthenticationError,
    Backend,
    BackendNotInstalled,
    BackendUnavailable,
    Capability,
    Closed,
    ConfigError,
    Lease,
    LeaseLost,
    Option,
    ParsedURL,
    WatchHandle,
    WatchSink,
    WaypostError,
    hookimpl,
    parse_choice,
    parse_float,
    parse_str,
    random_instance_id,
)

try:
    import consul
    import consul.std
    from urllib3.connectionpool import HTTPConnectionPool, HTTPSConnectionPool
except ImportError as _exc:  # pragma: no cover - depends on the installed extras
    raise BackendNotInstalled(
        f"the consul:// backend needs py-consul ({_exc}): pip install 'waypost[consul]'"
    ) from _exc

__all__ = ["ConsulBackend"]

_log = logging.getLogger("waypost.consul")

DEFAULT_PORTS = {"consul": 8500, "consuls": 8501}
LEASE_DIR = "waypost/leases/"
_BACKOFF_MIN = 0.05
_BACKOFF_MAX = 2.0
_FENCE_MAX = 1.0  # longest a write waits for this process's watches to see it
# py-consul's transport is requests (untyped); keep its exception types as Any here.
_RequestError: Any = consul.std.requests.exceptions.RequestException
_SSLError: Any = consul.std.requests.exceptions.SSLError


def _parse_root(value: Any) -> str:
    root = parse_str(value).lstrip("/")
    return root if not root or root.endswith("/") else root + "/"


OPTIONS = (
    Option("timeout", parse_float(0.1, 3600.0), 5.0, "seconds a single Consul HTTP call may take"),
    Option("token", parse_str, None, "ACL token", env="CONSUL_HTTP_TOKEN", secret=True),
    Option("ca_cert", parse_str, None, "PEM file of the CA of the agent's certificate (consuls://)",
           env="CONSUL_CACERT"),
    Option("cert_cert", parse_str, None, "PEM client certificate (consuls://)", env="CONSUL_CLIENT_CERT"),
    Option("cert_key", parse_str, None, "PEM client key (consuls://)", env="CONSUL_CLIENT_KEY"),
    Option("root", _parse_root, "", "key prefix (default none: keys are exactly Dynamo's v1/instances/...)"),
    Option("dc", parse_str, None, "datacenter (default: the agent's)"),
    Option("consistency", parse_choice("default", "consistent", "stale"), "default",
           "read mode of list and watch: default, consistent or stale"),
    Option("watch_wait", parse_float(0.1, 600.0), 5.0, "seconds a watch's blocking query waits for a change"),
)


# ----------------------------------------------------------------------------------------------
# settings
# ----------------------------------------------------------------------------------------------

def _check_tls_files(options: Mapping[str, Any]) -> None:
    # requests would only fail at the first call, as an unreachable agent; say what is wrong instead.
    if (options["cert_cert"] is None) != (options["cert_key"] is None):
        raise ConfigError("cert_cert and cert_key go together (a client certificate and its key)")
    for name in ("ca_cert", "cert_cert", "cert_key"):
        path = options[name]
        if path is not None and not os.path.isfile(path):
            raise ConfigError(f"{name}: no such file {path!r}")


@dataclass(frozen=True)
class _Settings:
    scheme: str
    host: str
    port: int
    timeout: float
    token: str | None = field(repr=False)
    ca_cert: str | None
    client_cert: tuple[str, str] | None
    root: str
    dc: str | None
    consistency: str
    watch_wait: float

    @classmethod
    def from_url(cls, url: ParsedURL, options: Mapping[str, Any]) -> _Settings:
        if url.username is not None or url.password is not None:
            raise ConfigError(f"{url.scheme}:// URLs carry no credentials: give the ACL token as the `token` "
                              "option or CONSUL_HTTP_TOKEN")
        if len(url.hosts) > 1:
            raise ConfigError(f"{url.redacted}: give one Consul agent (it forwards to the servers)")
        if url.path.strip("/"):
            raise ConfigError(f"{url.redacted}: a consul URL has no path; use the `root` option for a key prefix")
        host, port = url.hosts[0] if url.hosts else ("127.0.0.1", None)
        tls = url.scheme == "consuls"
        cert, key = options["cert_cert"], options["cert_key"]
        if tls:
            _check_tls_files(options)
        return cls(
            scheme=url.scheme, host=host or "127.0.0.1", port=port or DEFAULT_PORTS[url.scheme],
            timeout=options["timeout"], token=options["token"] or None,
            ca_cert=options["ca_cert"] if tls else None,
            client_cert=(cert, key) if tls and cert is not None else None,
            root=options["root"], dc=options["dc"], consistency=options["consistency"],
            watch_wait=options["watch_wait"],
        )

    @property
    def where(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{self.scheme}://{host}:{self.port}"


# ----------------------------------------------------------------------------------------------
# HTTP: the one boundary where py-consul/requests errors become waypost errors
# ----------------------------------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class _Reply:
    status: int
    index: int | None  # X-Consul-Index
    body: str

    def json(self) -> Any:
        try:
            return json.loads(self.body) if self.body.strip() else None
        except ValueError as exc:
            raise BackendUnavailable(f"Consul sent an unreadable reply (HTTP {self.status})") from exc


def _raw(response: Any) -> Any:
    """py-consul callback that hands back the response untouched (we interpret statuses ourselves)."""
    return response


class _Agent:
    """One HTTP connection pool to a Consul agent (a py-consul client)."""

    def __init__(self, settings: _Settings, *, interruptible: bool = False) -> None:
        self.settings = settings
        verify: bool | str = settings.ca_cert or True
        self._client: Any = consul.Consul(
            host=settings.host, port=settings.port, scheme="https" if settings.scheme == "consuls" else "http",
            verify=verify, cert=settings.client_cert, connections_timeout=settings.timeout)
        # py-consul prefers CONSUL_HTTP_TOKEN over its argument; our options already resolved it.
        self._client.token = settings.token
        self._headers: dict[str, str] = self._client.prepare_headers()
        self._dc = [("dc", settings.dc)] if settings.dc else []
        self._abort = _track_connections(self._client.http.session) if interruptible else None

    def call(self, method: str, path: str, what: str, *, params: Sequence[tuple[str, str]] = (),
             body: str | bytes = "", expect: Iterable[int] = (200,)) -> _Reply:
        """Send one request; return the reply if its status is expected, else raise a waypost error."""
        http = self._client.http
        query = [*params, *self._dc]
        try:
            if method == "GET":
                response = http.get(_raw, path, params=query, headers=self._headers)
            elif method == "PUT":
                response = http.put(_raw, path, params=query, headers=self._headers, data=body)
            else:
                response = http.delete(_raw, path, params=query, headers=self._headers)
        except _SSLError as exc:
            raise self._tls_error(exc, what) from exc
        except (_RequestError, OSError, consul.ConsulException) as exc:
            raise BackendUnavailable(f"{self.settings.where} unreachable while {what} "
                                     f"({type(exc).__name__})") from exc
        index = response.headers.get("X-Consul-Index")
        reply = _Reply(int(response.code), int(index) if index and index.isdigit() else None, str(response.body))
        if reply.status in expect:
            return reply
        raise self.status_error(reply, what)

    def _tls_error(self, exc: BaseException, what: str) -> WaypostError:
        # A certificate problem will not go away by retrying; an EOF in the handshake (agent restarting) may.
        if "certificate" in str(exc).lower():
            return AuthenticationError(f"TLS handshake with {self.settings.where} failed while {what}: check "
                                       "ca_cert / cert_cert / cert_key")
        return BackendUnavailable(f"TLS connection to {self.settings.where} failed while {what}")

    def status_error(self, reply: _Reply, what: str) -> WaypostError:
        detail = self._redact(reply.body.strip())[:200]
        if reply.status in (401, 403):
            return AuthenticationError(f"{self.settings.where} denied {what}: {detail or 'ACL permission denied'} "
                                       "(check the ACL token and its policy)")
        if reply.status >= 500:
            return BackendUnavailable(f"{self.settings.where} failed {what}: HTTP {reply.status} {detail}")
        return WaypostError(f"{self.settings.where} refused {what}: HTTP {reply.status} {detail}")

    def _redact(self, text: str) -> str:
        token = self.settings.token
        return text.replace(token, "***") if token else text

    def abort(self) -> None:
        """Break the connection under an in-flight request (another thread's blocking query)."""
        if self._abort is not None:
            self._abort()

    def close(self) -> None:
        self.abort()
        with contextlib.suppress(Exception):  # closing a pool must never mask the real outcome
            self._client.http.session.close()


def _track_connections(session: Any) -> Callable[[], None]:
    """Make ``session``'s pools remember their connections; return a function that shuts them down.

    urllib3 pools only keep idle connections, so a blocking query cannot be
    interrupted through the session; shutting its socket down makes the
    blocked read return at once (a watch's ``close()`` must be prompt).
    """
    connections: weakref.WeakSet[Any] = weakref.WeakSet()

    def factory(base: type[HTTPConnectionPool]) -> Callable[..., HTTPConnectionPool]:
        def make(host: str, port: int, **kwargs: Any) -> HTTPConnectionPool:
            pool = base(host, port, **kwargs)
            new_conn = getattr(pool, "_new_conn", None)
            if new_conn is None:  # another urllib3: closing then waits for the query's end instead
                return pool

            def tracked() -> Any:
                conn = new_conn()
                connections.add(conn)
                return conn

            pool._new_conn = tracked  # type: ignore[method-assign]
            return pool

        return make

    for prefix in ("http://", "https://"):
        session.get_adapter(prefix).poolmanager.pool_classes_by_scheme = {
            "http": factory(HTTPConnectionPool), "https": factory(HTTPSConnectionPool)}

    def abort() -> None:
        for conn in list(connections):
            sock = getattr(conn, "sock", None)
            if sock is not None:
                with contextlib.suppress(OSError):
                    socket.socket.shutdown(sock, socket.SHUT_RDWR)

    return abort


# ----------------------------------------------------------------------------------------------
# KV helpers
# ----------------------------------------------------------------------------------------------

_Entries = dict[str, tuple[int, bytes]]  # relative key -> (ModifyIndex, value)


def _decode_entries(payload: Any, root: str) -> _Entries:
    entries: _Entries = {}
    for item in payload or ():
        key = str(item["Key"])
        if not key.startswith(root):
            continue
        raw = item.get("Value")
        entries[key[len(root):]] = (int(item.get("ModifyIndex", 0)), base64.b64decode(raw) if raw else b"")
    return entries


def _duration(seconds: float) -> str:
    """A Go duration, in whole seconds when exact (Consul shows a session's TTL as given)."""
    millis = round(seconds * 1000)
    return f"{millis // 1000}s" if millis % 1000 == 0 else f"{millis}ms"


def _kv_op(verb: str, key: str, value: bytes | None = None, session: str | None = None) -> dict[str, Any]:
    op: dict[str, Any] = {"Verb": verb, "Key": key}
    if value is not None:
        op["Value"] = base64.b64encode(value).decode("ascii")
    if session is not None:
        op["Session"] = session
    return {"KV": op}


def _txn_errors(reply: _Reply) -> list[str]:
    payload = reply.json() or {}
    return [str(error.get("What", "")) for error in payload.get("Errors") or ()]


class _Backoff:
    def __init__(self) -> None:
        self.delay = _BACKOFF_MIN

    def next(self) -> float:
        delay, self.delay = self.delay, min(self.delay * 2, _BACKOFF_MAX)
        return delay

    def reset(self) -> None:
        self.delay = _BACKOFF_MIN


# ----------------------------------------------------------------------------------------------
# watch
# ----------------------------------------------------------------------------------------------

class _ConsulWatch:
    """Blocking queries on a KV prefix, diffed into sink calls.

    Two threads: the fetcher only sends blocking queries, re-sending the next
    one as soon as an answer arrives; the applier diffs answers into sink
    calls. Keeping the diffing off the fetcher shortens the time between two
    queries, so fewer intermediate states are missed.

    Writers of the same backend wait in :meth:`wait_seen` until the watch has
    delivered their change (a fence), so a process's own changes are never
    merged into one state.
    """

    def __init__(self, backend: ConsulBackend, agent: _Agent, prefix: str, sink: WatchSink,
                 entries: _Entries, index: int) -> None:
        self._backend = backend
        self._agent = agent
        self._prefix = prefix
        self._sink = sink
        self._entries = entries
        self._index = index
        self._replies: queue.SimpleQueue[_Reply | WaypostError | None] = queue.SimpleQueue()
        self._lock = threading.RLock()  # held around sink calls, so none happens after close()
        self._stop = threading.Event()
        # What the sink has been given so far, for writers' fences.
        self._seen = threading.Condition()
        self._seen_index = index
        self._seen_keys = frozenset(entries)
        self._healthy = True
        self._fetcher = threading.Thread(target=self._fetch, name="waypost-consul-watch", daemon=True)
        self._applier = threading.Thread(target=self._apply_all, name="waypost-consul-watch-apply", daemon=True)
        self._applier.start()
        self._fetcher.start()

    def _fetch(self) -> None:
        backoff = _Backoff()
        index: int | None = max(self._index, 1)  # Consul: never block on index 0
        try:
            while not self._stop.is_set():
                try:
                    reply = self._backend.read_prefix(self._prefix, self._agent, index=index)
                except WaypostError as exc:
                    if self._stop.is_set():
                        return
                    self._replies.put(exc)
                    index = None  # re-list without blocking once the agent answers again
                    self._stop.wait(backoff.next())
                    continue
                backoff.reset()
                self._replies.put(reply)
                # Follow the index even when it went backwards (Consul's advice): the applier resyncs.
                index = max(reply.index or 1, 1)
        finally:
            self._replies.put(None)
            self._agent.close()

    def _apply_all(self) -> None:
        resync: str | None = None
        while (item := self._replies.get()) is not None:
            if isinstance(item, WaypostError):
                resync = f"reconnected after: {item}"
                self._deliver(functools.partial(self._sink.interrupted, str(item)))
                self._publish(healthy=False)
                continue
            try:
                self._apply(item, resync)
                resync = None
            except Exception as exc:  # a reply we cannot read: say so, and re-list from the next one
                _log.exception("watch on %s could not apply a Consul reply", self._prefix)
                resync = f"recovered from an unreadable reply: {exc}"
                self._deliver(functools.partial(self._sink.interrupted, resync))

    def _apply(self, reply: _Reply, resync: str | None) -> None:
        entries = _decode_entries(reply.json() if reply.status == 200 else None, self._backend.settings.root)
        index = reply.index or 0
        # A lower index with the very same entries is Consul reaping tombstones, not new data.
        if resync is None and index < self._index and entries != self._entries:
            resync = f"the Consul index went backwards ({self._index} -> {index}): the servers' state was replaced"
        old, self._entries, self._index = self._entries, entries, index
        if resync is not None:
            self._deliver(lambda: self._sink.reset(sorted((k, v) for k, (_, v) in entries.items()), resync))
            self._publish(healthy=True)
            return
        puts = sorted((mi, key, value) for key, (mi, value) in entries.items() if old.get(key, (None,))[0] != mi)
        deletes = sorted(key for key in old if key not in entries)
        # Blocking queries give states, not histories: a delete is known to be the latest
        # change only when the reply's index is above every put's.
        deletes_last = bool(deletes) and index > max((mi for mi, _, _ in puts), default=0)

        def deliver() -> None:
            for key in () if deletes_last else deletes:
                self._sink.delete(key)
            for _, key, value in puts:
                self._sink.put(key, value)
            for key in deletes if deletes_last else ():
                self._sink.delete(key)

        if puts or deletes:
            self._deliver(deliver)
        self._publish(healthy=True)

    def _publish(self, *, healthy: bool) -> None:
        with self._seen:
            self._seen_index, self._seen_keys, self._healthy = self._index, frozenset(self._entries), healthy
            self._seen.notify_all()

    @property
    def prefix(self) -> str:
        return self._prefix

    def wait_seen(self, key: str, index: int | None, deadline: float) -> None:
        """Wait until the sink got a state at or after a write: put at ``index``, or delete (``None``)."""
        if threading.current_thread() is self._applier:
            return  # written from inside a sink call: waiting would only delay it

        def seen() -> bool:
            if self._stop.is_set() or not self._healthy:
                return True
            return self._seen_index >= index if index is not None else key not in self._seen_keys

        with self._seen:
            self._seen.wait_for(seen, max(deadline - time.monotonic(), 0.0))

    def _deliver(self, call: Callable[[], None]) -> None:
        with self._lock:
            if not self._stop.is_set():
                call()

    def close(self) -> None:
        with self._lock:
            self._stop.set()
        self._backend.forget_watch(self)
        with self._seen:
            self._seen.notify_all()
        current = threading.current_thread()
        deadline = time.monotonic() + self._backend.settings.timeout
        # Abort again until the fetcher is gone: its next request may have been opening a connection.
        while current is not self._fetcher and self._fetcher.is_alive() and time.monotonic() < deadline:
            self._agent.abort()
            self._fetcher.join(0.05)
        if current is not self._applier:
            self._applier.join(max(deadline - time.monotonic(), 0.0))


# ----------------------------------------------------------------------------------------------
# backend
# ----------------------------------------------------------------------------------------------

class ConsulBackend(Backend):
    __doc__ = __doc__
    schemes: ClassVar[tuple[str, ...]] = ("consul", "consuls")
    capabilities: ClassVar[frozenset[Capability]] = frozenset({
        Capability.CROSS_PROCESS, Capability.CROSS_HOST, Capability.SERVER_EXPIRY,
        Capability.CHOSEN_INSTANCE_ID, Capability.TLS, Capability.AUTH,
    })
    options: ClassVar[tuple[Option, ...]] = OPTIONS
    #: Consul's own floor is the agent's session_ttl_min (10 s unless configured lower).
    min_ttl: ClassVar[float] = 1.0

    def __init__(self, settings: _Settings) -> None:
        self.settings = settings
        self._agent = _Agent(settings)
        self._lock = threading.Lock()
        self._sessions: dict[int, str] = {}  # our leases: instance id -> session id
        # Ids whose session we held and lost: revoking one of them must not reach whoever holds the id now.
        self._lost: set[int] = set()
        self._watches: set[_ConsulWatch] = set()
        self._closed = False

    @classmethod
    def from_url(cls, url: ParsedURL, options: Mapping[str, Any]) -> ConsulBackend:
        backend = cls(_Settings.from_url(url, options))
        try:
            backend._check_leader()
        except BaseException:
            backend.close()
            raise
        return backend

    def _check_leader(self) -> None:
        what = "asking for the cluster leader"
        reply = self._agent.call("GET", "/v1/status/leader", what, expect=(200, 500))
        if reply.status == 500 and "No path to datacenter" in reply.body:
            raise ConfigError(f"{self.describe()} knows no datacenter {self.settings.dc!r} (option dc)")
        if reply.status != 200:
            raise self._agent.status_error(reply, what)
        if not reply.json():
            raise BackendUnavailable(f"{self.describe()} has no cluster leader")

    def describe(self) -> str:
        return self.settings.where

    def __repr__(self) -> str:
        return f"<ConsulBackend {self.describe()}>"

    def _check(self) -> None:
        if self._closed:
            raise Closed(f"{self.describe()} backend is closed")

    def _kv_path(self, key: str) -> str:
        return f"/v1/kv/{self.settings.root}{key}"

    def _lease_key(self, lease_id: int) -> str:
        return f"{self.settings.root}{LEASE_DIR}{lease_id:x}"

    def _txn(self, ops: list[dict[str, Any]], what: str) -> tuple[list[str], int]:
        """Run a transaction; return Consul's error messages (none if it committed) and its index."""
        reply = self._agent.call("PUT", "/v1/txn", what, body=json.dumps(ops), expect=(200, 409))
        if reply.status == 409:
            return _txn_errors(reply), 0
        results = (reply.json() or {}).get("Results") or ()
        return [], max((int(r["KV"].get("ModifyIndex", 0)) for r in results if r.get("KV")), default=0)

    # leases -----------------------------------------------------------------------------------
    def grant_lease(self, ttl: float, preferred_id: int | None = None) -> Lease:
        self._check()
        while True:
            lease_id = preferred_id or random_instance_id()
            session = self._create_session(lease_id, ttl)
            try:
                errors, _ = self._txn([_kv_op("check-not-exists", self._lease_key(lease_id)),
                                       _kv_op("lock", self._lease_key(lease_id), b"", session)],
                                      f"claiming instance id {lease_id:x}")
            except BaseException:
                self._destroy_quietly(session)
                raise
            if not errors:
                with self._lock:
                    self._sessions[lease_id] = session
                    self._lost.discard(lease_id)
                return Lease(lease_id, ttl)
            self._destroy_quietly(session)
            if not any("exists" in e for e in errors):
                raise WaypostError(f"{self.describe()} refused to claim instance id {lease_id:x}: {errors}")
            if preferred_id is not None:
                raise AlreadyRegistered(f"instance id {lease_id:x} is held by a live Runtime")

    def _create_session(self, lease_id: int, ttl: float) -> str:
        body = json.dumps({"Name": f"waypost/{lease_id:x}", "Behavior": "delete",
                           "TTL": _duration(ttl), "LockDelay": "0s"})
        reply = self._agent.call("PUT", "/v1/session/create", "creating a session", body=body, expect=(200, 500))
        if reply.status == 500:
            if "Session TTL" in reply.body:
                raise ConfigError(f"{self.describe()} refused ttl={ttl} s ({reply.body.strip()}): Consul's minimum "
                                  "is the agent's session_ttl_min, 10 s by default")
            raise self._agent.status_error(reply, "creating a session")
        return str(reply.json()["ID"])

    def _destroy_quietly(self, session: str) -> None:
        try:
            self._agent.call("PUT", f"/v1/session/destroy/{session}", "destroying a session")
        except WaypostError as exc:  # it expires on its own within 2 x ttl
            _log.debug("could not destroy session (%s)", exc)

    def _session_of(self, lease: Lease) -> str:
        with self._lock:
            session = self._sessions.get(lease.id)
        if session is None:
            raise LeaseLost(f"lease {lease.id:x} was not granted by this backend or was revoked")
        return session

    def keep_alive(self, lease: Lease) -> None:
        self._check()
        session = self._session_of(lease)
        reply = self._agent.call("PUT", f"/v1/session/renew/{session}", f"renewing lease {lease.id:x}",
                                 expect=(200, 404))
        if reply.status == 404:
            self._forget(lease.id, session)
            raise LeaseLost(f"Consul session of lease {lease.id:x} expired or was destroyed")

    def _forget(self, lease_id: int, session: str) -> None:
        with self._lock:
            if self._sessions.get(lease_id) == session:
                del self._sessions[lease_id]
                self._lost.add(lease_id)

    def revoke_lease(self, lease_id: int) -> None:
        self._check()
        with self._lock:
            session = self._sessions.pop(lease_id, None)
            if session is None and lease_id in self._lost:
                self._lost.discard(lease_id)
                return  # our session of that id is already gone; the id may be another Runtime's now
        if session is None:  # another Runtime's lease: its session holds the lease key
            reply = self._agent.call("GET", f"/v1/kv/{self._lease_key(lease_id)}", f"finding lease {lease_id:x}",
                                     expect=(200, 404))
            entries = reply.json() if reply.status == 200 else None
            session = entries[0].get("Session") if entries else None
        if session:
            self._agent.call("PUT", f"/v1/session/destroy/{session}", f"revoking lease {lease_id:x}")

    # keys ---------------------------------------------------------------------------------------
    def create(self, lease: Lease, key: str, value: bytes) -> None:
        self._check()
        full = self.settings.root + key
        session = self._session_of(lease)
        errors, index = self._txn([_kv_op("check-not-exists", full), _kv_op("lock", full, value, session)],
                                  f"registering {key}")
        if any("exists" in error for error in errors):
            # The same create retried after a lost reply finds its own write: not a conflict.
            mine = self._entry_if_held(key, session)
            if mine is not None and mine[1] == value:
                errors, index = [], mine[0]
        self._raise_txn(errors, lease, key)
        self._fence(key, index)

    def _entry_if_held(self, key: str, session: str) -> tuple[int, bytes] | None:
        """``(ModifyIndex, value)`` of ``key`` if ``session`` holds it, else ``None``."""
        reply = self._agent.call("GET", self._kv_path(key), f"reading {key}", expect=(200, 404))
        entries = reply.json() if reply.status == 200 else None
        entry = entries[0] if entries else None
        if entry is None or entry.get("Session") != session:
            return None
        raw = entry.get("Value")
        return int(entry.get("ModifyIndex", 0)), base64.b64decode(raw) if raw else b""

    def replace(self, lease: Lease, key: str, value: bytes) -> None:
        self._check()
        errors, index = self._txn([_kv_op("lock", self.settings.root + key, value, self._session_of(lease))],
                                  f"updating {key}")
        self._raise_txn(errors, lease, key)
        self._fence(key, index)

    def _raise_txn(self, errors: list[str], lease: Lease, key: str) -> None:
        if not errors:
            return
        text = "; ".join(errors)
        if "invalid session" in text:
            raise LeaseLost(f"Consul session of lease {lease.id:x} is gone")
        if "exists" in text or "already held" in text:
            raise AlreadyRegistered(f"{key} is already registered")
        raise WaypostError(f"{self.describe()} refused to write {key}: {text}")

    def delete(self, lease: Lease, key: str) -> None:
        self._check()
        with self._lock:
            session = self._sessions.get(lease.id)
        if session is None:
            return  # no session of ours: Consul deleted whatever it held (Behavior=delete)
        # Only while our session holds it: a key of the same name may belong to a newer lease
        # with the same instance id (ours was lost, another Runtime took the id over).
        full = self.settings.root + key
        errors, _ = self._txn([_kv_op("check-session", full, session=session), _kv_op("delete", full)],
                              f"unregistering {key}")
        if not errors:
            self._fence(key, None)
            return
        text = "; ".join(errors)
        if "doesn't exist" not in text and "failed session check" not in text:
            raise WaypostError(f"{self.describe()} refused to delete {key}: {text}")
        # Missing, or held by another session: not ours, nothing to do.

    def _fence(self, key: str, index: int | None) -> None:
        """Return once this backend's watches on ``key`` delivered our write (put at ``index``, or delete).

        Blocking queries return states, so two quick writes can reach a watch as
        one state and an intermediate one is lost (a key added and removed at
        once never shows). Waiting here keeps a process's own writes apart.
        """
        with self._lock:
            watches = [w for w in self._watches if key.startswith(w.prefix)]
        deadline = time.monotonic() + min(self.settings.timeout, _FENCE_MAX)
        for watch in watches:
            watch.wait_seen(key, index, deadline)

    def forget_watch(self, watch: _ConsulWatch) -> None:
        with self._lock:
            self._watches.discard(watch)

    def read_prefix(self, prefix: str, agent: _Agent | None = None, index: int | None = None) -> _Reply:
        """One recursive read of ``prefix``; a blocking query when ``index`` is given."""
        params = [("recurse", "1")]
        if self.settings.consistency != "default":
            params.append((self.settings.consistency, "1"))
        if index is not None:
            params += [("index", str(index)), ("wait", _duration(self.settings.watch_wait))]
        return (agent or self._agent).call("GET", self._kv_path(prefix), f"reading {prefix}", params=params,
                                           expect=(200, 404))

    def list(self, prefix: str) -> list[tuple[str, bytes]]:
        self._check()
        reply = self.read_prefix(prefix)
        entries = _decode_entries(reply.json() if reply.status == 200 else None, self.settings.root)
        return sorted((key, value) for key, (_, value) in entries.items())

    def watch(self, prefix: str, sink: WatchSink) -> WatchHandle:
        self._check()
        # The snapshot goes through the watch's own connection, so its first blocking query
        # leaves at once instead of after a (TLS) handshake, while changes may already happen.
        agent = _Agent(self.settings, interruptible=True)
        try:
            reply = self.read_prefix(prefix, agent)
            entries = _decode_entries(reply.json() if reply.status == 200 else None, self.settings.root)
            sink.reset(sorted((key, value) for key, (_, value) in entries.items()), None)
        except BaseException:
            agent.close()
            raise
        watch = _ConsulWatch(self, agent, prefix, sink, entries, reply.index or 1)
        with self._lock:
            self._watches.add(watch)
        return watch

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        with self._lock:
            watches = list(self._watches)
        for watch in watches:  # normally closed by the Runtime already; never leave threads behind
            watch.close()
        self._agent.close()


@hookimpl
def waypost_backend_class(scheme: str) -> type[Backend] | None:
    return ConsulBackend if scheme in ConsulBackend.schemes else None


@hookimpl
def waypost_backend(url: ParsedURL, options: Mapping[str, Any]) -> Backend | None:
    return ConsulBackend.from_url(url, options) if url.scheme in ConsulBackend.schemes else None
