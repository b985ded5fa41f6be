"""Consul backend: ``consul://host:port`` (``consuls://`` for HTTPS), Consul ≥ 1.8.

URL grammar
    ``consul://host[:port][?option=value&…]``: the HTTP API of one Consul
    agent (usually the local client agent, which forwards to the servers).
    The default port is 8500; ``consuls://`` speaks HTTPS and defaults to
    8501. A URL naming no host (``consul://``, ``consul://?dc=dc2``) takes the
    agent from ``CONSUL_HTTP_ADDR`` (``[http(s)://]host[:port]``, as the
    ``consul`` command reads it; ``https://`` or ``CONSUL_HTTP_SSL=true`` turn
    ``consul://`` into ``consuls://``; a missing port is 8500 or 8501, not the
    443 the ``consul`` command would use after ``https://``; ``unix://``
    sockets are refused), else it is ``127.0.0.1``. A URL naming a host keeps
    its scheme whatever the variables say. The URL carries no credentials:
    the ACL token is the ``token`` option (or ``CONSUL_HTTP_TOKEN_FILE``,
    ``CONSUL_HTTP_TOKEN``), never ``user:password@``.

Options (keyword > URL query > ``WAYPOST_*`` > Consul's ``CONSUL_*`` > default)
    ``ttl``
        lease time-to-live in seconds (default 10). It becomes the Consul
        session TTL. Consul refuses TTLs below the agent's ``session_ttl_min``,
        which is **10 s unless the agent configures it lower** (tests use
        ``session_ttl_min = "1s"``); a refused TTL is a ``ConfigError``.
    ``timeout``
        seconds any single HTTP call may take before
        :class:`~waypost.BackendUnavailable` (default 5).
    ``token``
        ACL token (env ``CONSUL_HTTP_TOKEN_FILE``, a file holding it, then
        ``CONSUL_HTTP_TOKEN``: the file wins, as with the ``consul`` command;
        an unreadable file is an error naming the file), sent as
        ``X-Consul-Token``; never shown in ``repr``, logs or errors. A request
        the ACLs deny is an :class:`~waypost.AuthenticationError`.
    ``ca_cert``, ``client_cert``, ``client_key``
        PEM files (env ``CONSUL_CACERT``, ``CONSUL_CLIENT_CERT``,
        ``CONSUL_CLIENT_KEY``): the CA that signed the agent's certificate
        (default: the system's roots) and a client certificate and key for
        ``verify_incoming_https``. They need ``consuls://``. (``cert_cert``
        and ``cert_key`` are their former names.)
    ``tls_verify``
        ``false`` (env ``CONSUL_HTTP_SSL_VERIFY=false``) skips verifying the
        agent's certificate *and* its name: anyone on the path can then
        impersonate the agent and read the token. Default ``true``; ignored
        without TLS.
    ``tls_server_name``
        the name sent as SNI and checked against the agent's certificate
        instead of the URL's host (env ``CONSUL_TLS_SERVER_NAME``), for an
        agent addressed by IP or through a tunnel. Ignored without TLS.
    ``prefix``
        key prefix (default empty, so keys are exactly Dynamo's
        ``v1/instances/…``); a ``/`` is appended when missing. (``root`` is
        its former name.)
    ``dc``
        datacenter to address (default: the agent's own).
    ``consistency``
        read mode of ``list`` and watches: ``default`` (the leader answers,
        Consul's default), ``consistent`` (the leader first confirms it still
        leads: one more quorum round trip per read) or ``stale`` (any server).
    ``watch_wait``
        seconds a watch's blocking query waits for a change before asking
        again (default: ``max(ttl, 1) / 2``, at most 5). With it the backend
        notices a silent agent within ``max(ttl, 1)`` seconds.
    ``watch_rate``
        bytes per second a watched prefix may take from the agent (default
        1 MiB, in bursts of the same size; ``0``: unlimited; else at least
        1 024). Consul answers
        every change with the whole prefix, so a busy prefix of 1 000 keys
        makes the agent send ~300 KB to every watching process per change;
        above this rate the next blocking query waits, and the changes of that
        moment arrive as one state. A small prefix is never held back; a big
        one under churn gets a new state every ``size / watch_rate`` seconds,
        at most ``watch_wait`` apart.

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
    A watch lists the prefix, then follows blocking queries on it
    (``?recurse&index=N&wait=watch_wait``). Every watch of the same prefix
    in a process (whichever Runtime opened it) shares **one** blocking query:
    a feed with one thread and one connection fans each answer out to the
    watches' own threads. Consul returns the whole current state, not a
    history, and the core diffs consecutive states (re-decoding only
    changed values). Each feed reads at most ``watch_rate`` bytes per
    second, so 20 processes watching a 1 000-key prefix under churn do not
    saturate the agent (measured: 20 watchers on 200 Runtimes x 5 endpoints
    took a 2-core host's agent and watchers to 100 % CPU without it).
    Another process's changes that come and go between two answers are not
    seen (hence no ``watch-history`` capability), but the watch's state
    always converges to the store's. A process's own writes are fenced:
    ``register``/``unregister`` return once this process's watches covering
    the key have delivered the change (at most ``min(timeout, 1 s)`` later;
    a fenced write sends the next query at once, whatever ``watch_rate``
    says), so they are never merged. After an error
    the watch reports itself interrupted, retries with backoff and re-lists
    (``Resynced``); when the index goes backwards with different data (the
    servers lost their state, e.g. a dev agent restarted) it re-lists too.
    A silent agent (paused, partitioned) is noticed within ``max(ttl, 1)``
    seconds. Closing the last watch of a prefix aborts its blocking query at
    once.

Connections
    A default agent accepts 200 concurrent HTTP connections per client
    address (``limits.http_max_conns_per_client``). Every Runtime of a
    process that talks to the same agent shares one pool of at most 16
    connections for its calls (sessions, writes, lists), plus one connection
    per distinct prefix watched: a process uses at most ``16 + prefixes``
    connections however many Runtimes and watches it has (1 000 Runtimes in
    one process work on a default agent).

ACL policy
    The token needs ``session_prefix "" { policy = "write" }`` and write on
    ``key_prefix "<root>v1/instances/"`` and ``key_prefix "<root>waypost/leases/"``;
    publishing model cards needs write on ``key_prefix "<root>v1/mdc/"``, and
    reading event channels and sources read on ``"<root>v1/event_channels/"``
    and ``"<root>v1/event_sources/"``. A write the token may not make is an
    ``AuthenticationError``.

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
import json
import logging
import socket
import threading
import time
import weakref
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar

import msgspec

from waypost.core import (
    AlreadyRegistered,
    AuthenticationError,
    Backend,
    BackendUnavailable,
    Backoff,
    Capability,
    ConfigError,
    Env,
    Lease,
    LeaseLost,
    Option,
    ParsedURL,
    Resync,
    Silent,
    TLSFiles,
    URLEnv,
    WatchHandle,
    WatchLoop,
    WatchRegistry,
    WatchSink,
    WaypostError,
    hosts,
    parse_bool,
    parse_choice,
    parse_float,
    parse_str,
    prefix_option,
    random_instance_id,
    tls_files,
    tls_options,
)

try:
    import consul
    import consul.std
    from requests.adapters import HTTPAdapter
    from urllib3.connectionpool import HTTPConnectionPool, HTTPSConnectionPool
except ImportError:  # the class stays importable: connect() names the extra to install
    if not TYPE_CHECKING:
        consul = HTTPAdapter = HTTPConnectionPool = HTTPSConnectionPool = None

__all__ = ["ConsulBackend"]

_log = logging.getLogger("waypost.consul")

DEFAULT_PORTS = {"consul": 8500, "consuls": 8501}
LEASE_DIR = "waypost/leases/"
POOL_SIZE = 16  # connections per agent per process for calls (blocking queries have their own)
_FENCE_MAX = 1.0  # longest a write waits for this process's watches to see it
DEFAULT_WATCH_RATE = 1 << 20  # bytes/s of answers per watched prefix (see the watch_rate option)


def _parse_watch_rate(value: Any) -> float:
    rate = parse_float(0.0, 1e12)(value)
    if 0 < rate < 1024:
        raise ValueError("expected 0 (unlimited) or a number of bytes per second from 1024 to 1e12")
    return rate


OPTIONS = (
    Option("timeout", parse_float(0.1, 3600.0), 5.0, "seconds a single Consul HTTP call may take"),
    Option("token", parse_str, None, "ACL token",
           env=(Env("CONSUL_HTTP_TOKEN_FILE", file=True), "CONSUL_HTTP_TOKEN"), secret=True),
    *tls_options(ca_env="CONSUL_CACERT", cert_env="CONSUL_CLIENT_CERT", key_env="CONSUL_CLIENT_KEY"),
    Option("tls_verify", parse_bool, True, "verify the agent's certificate and name (false: skip; insecure)",
           env="CONSUL_HTTP_SSL_VERIFY"),
    Option("tls_server_name", parse_str, None, "name sent as SNI and verified in the agent's certificate "
           "(default: the URL's host)", env="CONSUL_TLS_SERVER_NAME"),
    prefix_option(help="key prefix (default none: keys are exactly Dynamo's v1/instances/...)"),
    Option("dc", parse_str, None, "datacenter (default: the agent's)"),
    Option("consistency", parse_choice("default", "consistent", "stale"), "default",
           "read mode of list and watch: default, consistent or stale"),
    Option("watch_wait", parse_float(0.1, 600.0), None,
           "seconds a watch's blocking query waits for a change (default: max(ttl, 1)/2, at most 5)"),
    Option("watch_rate", _parse_watch_rate, float(DEFAULT_WATCH_RATE),
           "bytes per second a watched prefix may read from the agent (bursts of the same size; 0: unlimited; "
           "else at least 1024)"),
)
# A URL naming no host: the agent the consul command would use.
URL_ENV = URLEnv(hosts=("CONSUL_HTTP_ADDR",), tls=("CONSUL_HTTP_SSL",), tls_scheme="consuls")


# ----------------------------------------------------------------------------------------------
# settings
# ----------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class _Settings:
    scheme: str
    host: str
    port: int
    timeout: float
    token: str | None = field(repr=False)
    tls: TLSFiles | None
    verify: bool  # the agent's certificate and name (with TLS)
    server_name: str | None  # SNI and the name verified, instead of host (with TLS)
    prefix: str
    dc: str | None
    consistency: str
    watch_wait: float | None
    watch_rate: float  # bytes/s a feed may read (0: unlimited)

    @classmethod
    def from_url(cls, url: ParsedURL, options: Mapping[str, Any]) -> _Settings:
        if url.username is not None or url.password is not None:
            raise ConfigError(f"{url.scheme}:// URLs carry no credentials: give the ACL token as the `token` "
                              "option or CONSUL_HTTP_TOKEN")
        (address,) = hosts(url, DEFAULT_PORTS[url.scheme], most=1, hint="give one Consul agent (it forwards to "
                           "the servers)")
        if url.path.strip("/"):
            raise ConfigError(f"{url.redacted}: a consul URL has no path; use the `prefix` option for a key prefix")
        return cls(
            scheme=url.scheme, host=address.host, port=address.port, timeout=options["timeout"],
            token=options["token"] or None, tls=tls_files(url, options, tls=url.scheme == "consuls"),
            verify=options["tls_verify"], server_name=options["tls_server_name"] or None,
            prefix=options["prefix"], dc=options["dc"], consistency=options["consistency"],
            watch_wait=options["watch_wait"], watch_rate=options["watch_rate"],
        )

    @property
    def where(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{self.scheme}://{host}:{self.port}"

    @property
    def agent(self) -> tuple[Any, ...]:
        """What identifies a connection pool: the agent and how we talk to it (not the token)."""
        return self.scheme, self.host, self.port, self.tls, self.verify, self.server_name, self.timeout

    def headers(self) -> dict[str, str]:
        return {"X-Consul-Token": self.token} if self.token else {}


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


class _Pool:
    """HTTP connections to one Consul agent (a py-consul client), shared by this process's backends.

    ``size`` bounds the connections (callers wait for a free one); a feed's pool
    holds the one connection of its blocking query and can abort it.
    """

    def __init__(self, settings: _Settings, *, size: int = POOL_SIZE, read_margin: float | None = None,
                 interruptible: bool = False) -> None:
        self.settings = settings
        tls = settings.tls
        # py-consul adds a blocking query's wait to the read timeout; ``read_margin`` is the rest.
        self._client: Any = consul.Consul(
            host=settings.host, port=settings.port, scheme="https" if tls else "http",
            verify=(settings.verify and (tls.ca_cert or True)) if tls else True,
            cert=tls.client_pair if tls else None, connections_timeout=read_margin or settings.timeout)
        self._client.token = None  # py-consul would send CONSUL_HTTP_TOKEN itself; tokens are per call here
        session = self._client.http.session
        for prefix in ("http://", "https://"):
            adapter = HTTPAdapter(pool_connections=1, pool_maxsize=size, pool_block=True)
            if tls and settings.server_name and prefix == "https://":  # urllib3 sends and checks this name
                adapter.poolmanager.connection_pool_kw["server_hostname"] = settings.server_name
            session.mount(prefix, adapter)
        self._abort = _track_connections(session) if interruptible else None

    def call(self, method: str, path: str, what: str, *, headers: Mapping[str, str],
             params: Sequence[tuple[str, str]] = (), body: str | bytes = "", expect: Iterable[int] = (200,),
             redact: str | None = None) -> _Reply:
        """Send one request; return the reply if its status is expected, else raise a waypost error."""
        http = self._client.http
        try:
            if method == "GET":
                response = http.get(_raw, path, params=list(params), headers=headers)
            elif method == "PUT":
                response = http.put(_raw, path, params=list(params), headers=headers, data=body)
            else:
                response = http.delete(_raw, path, params=list(params), headers=headers)
        except consul.std.requests.exceptions.SSLError as exc:
            raise self._tls_error(exc, what) from exc
        except (consul.std.requests.exceptions.ReadTimeout, TimeoutError) as exc:
            raise Silent(f"{self.settings.where} did not answer in time while {what}") from exc
        except (consul.std.requests.exceptions.RequestException, OSError, consul.ConsulException) as exc:
            raise BackendUnavailable(f"{self.settings.where} unreachable while {what} "
                                     f"({type(exc).__name__})") from exc
        index = response.headers.get("X-Consul-Index")
        reply = _Reply(int(response.code), int(index) if index and index.isdigit() else None, str(response.body))
        if reply.status in expect:
            return reply
        raise self.status_error(reply, what, redact)

    def _tls_error(self, exc: BaseException, what: str) -> WaypostError:
        # A certificate problem will not go away by retrying; an EOF in the handshake (agent restarting) may.
        if "certificate" in str(exc).lower():
            return AuthenticationError(f"TLS handshake with {self.settings.where} failed while {what}: check "
                                       "ca_cert / client_cert / client_key / tls_server_name")
        return BackendUnavailable(f"TLS connection to {self.settings.where} failed while {what}")

    def status_error(self, reply: _Reply, what: str, redact: str | None = None) -> WaypostError:
        body = reply.body.strip()
        detail = (body.replace(redact, "***") if redact else body)[:200]
        if reply.status in (401, 403):
            return AuthenticationError(f"{self.settings.where} denied {what}: {detail or 'ACL permission denied'} "
                                       "(check the ACL token and its policy)")
        if reply.status >= 500:
            return BackendUnavailable(f"{self.settings.where} failed {what}: HTTP {reply.status} {detail}")
        return WaypostError(f"{self.settings.where} refused {what}: HTTP {reply.status} {detail}")

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
    blocked read return at once (closing a watch must be prompt).
    """
    connections: weakref.WeakSet[Any] = weakref.WeakSet()

    def factory(base: type[Any]) -> Callable[..., Any]:
        def make(host: str, port: int, **kwargs: Any) -> Any:
            pool = base(host, port, **kwargs)
            new_conn = getattr(pool, "_new_conn", None)
            if new_conn is None:  # another urllib3: closing then waits for the query's end instead
                return pool

            def tracked() -> Any:
                conn = new_conn()
                connections.add(conn)
                return conn

            pool._new_conn = tracked
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


class _Shared:
    """This process's pools (one per agent) and feeds (one per watched prefix), counted by their users."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.pools: dict[tuple[Any, ...], list[Any]] = {}  # key -> [pool, users]
        self.feeds: dict[tuple[Any, ...], _Feed] = {}

    def pool(self, settings: _Settings) -> _Pool:
        with self.lock:
            entry = self.pools.get(settings.agent)
            if entry is None:
                entry = self.pools[settings.agent] = [_Pool(settings), 0]
            entry[1] += 1
            pool: _Pool = entry[0]
            return pool

    def release_pool(self, settings: _Settings) -> None:
        with self.lock:
            entry = self.pools.get(settings.agent)
            if entry is None:
                return
            entry[1] -= 1
            if entry[1] > 0:
                return
            del self.pools[settings.agent]
        entry[0].close()

    def feed(self, settings: _Settings, prefix: str, wait: float) -> _Feed:
        key = (settings.agent, settings.token, settings.dc, settings.consistency, prefix, wait, settings.watch_rate)
        with self.lock:
            feed = self.feeds.get(key)
            if feed is None or feed.stopped:
                feed = self.feeds[key] = _Feed(settings, prefix, wait, key)
            feed.users += 1
            return feed

    def release_feed(self, feed: _Feed) -> None:
        with self.lock:
            feed.users -= 1
            if feed.users > 0:
                return
            if self.feeds.get(feed.key) is feed:
                del self.feeds[feed.key]
        feed.stop()

    def feeds_covering(self, key: str) -> list[_Feed]:
        with self.lock:
            return [feed for feed in self.feeds.values() if key.startswith(feed.prefix)]


_shared = _Shared()


# ----------------------------------------------------------------------------------------------
# KV helpers
# ----------------------------------------------------------------------------------------------

_Entries = dict[str, tuple[int, bytes]]  # relative key -> (ModifyIndex, value)


def _decode_entries(payload: Any, prefix: str) -> _Entries:
    entries: _Entries = {}
    for item in payload or ():
        try:
            key = str(item["Key"])
            raw = item.get("Value")
            value = base64.b64decode(raw) if raw else b""
            index = int(item.get("ModifyIndex", 0))
        except (KeyError, TypeError, ValueError, AttributeError):
            continue  # not a KV entry as Consul sends them: nothing a watch could use
        if key.startswith(prefix):
            entries[key[len(prefix):]] = (index, value)
    return entries


def _read_prefix(pool: _Pool, settings: _Settings, prefix: str, index: int | None = None,
                 wait: float | None = None) -> _Reply:
    """One recursive read of ``prefix``; a blocking query when ``index`` is given."""
    params = [("recurse", "1"), *([("dc", settings.dc)] if settings.dc else [])]
    if settings.consistency != "default":
        params.append((settings.consistency, "1"))
    if index is not None and wait is not None:
        params += [("index", str(index)), ("wait", _duration(wait))]
    return pool.call("GET", f"/v1/kv/{settings.prefix}{prefix}", f"reading {prefix}", headers=settings.headers(),
                     params=params, expect=(200, 404), redact=settings.token)


class _KV(msgspec.Struct):
    """One entry of a KV read as Consul sends it; ``Value`` is base64 in the JSON, decoded in C."""

    Key: str
    ModifyIndex: int = 0
    Value: bytes | None = None


_KV_LIST = msgspec.json.Decoder(list[_KV])


def _fast_entries(body: str, prefix: str) -> _Entries | None:
    """The entries of a well-formed reply in one C call; ``None`` to take the lenient path."""
    try:
        kvs = _KV_LIST.decode(body)
    except msgspec.DecodeError:
        return None  # something unusual in it: _decode_entries skips the bad entries one by one
    cut = len(prefix)
    return {kv.Key[cut:]: (kv.ModifyIndex, kv.Value or b"") for kv in kvs if kv.Key.startswith(prefix)}


def _items(reply: _Reply, settings: _Settings) -> tuple[_Entries, list[tuple[str, bytes]]]:
    entries = _fast_entries(reply.body, settings.prefix) if reply.status == 200 else {}
    if entries is None:  # also an empty body (no key under the prefix): the lenient path reads it as none
        entries = _decode_entries(reply.json(), settings.prefix)
    return entries, sorted((key, value) for key, (_, value) in entries.items())


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


# ----------------------------------------------------------------------------------------------
# watch: one feed per prefix, fanned out to the watches
# ----------------------------------------------------------------------------------------------

_Answer = tuple[int, _Entries, list[tuple[str, bytes]]] | WaypostError  # (index, entries, items) or an error


class _ReadBudget:
    """A token bucket of bytes: how long a feed waits before its next query (``rate`` 0: never).

    It holds at most one second of ``rate``, so an idle feed answers a change at
    once, and a busy one settles at ``rate`` bytes per second. It never owes
    more than the answer just read (answers fetched early, for a fenced write,
    do not pile up into a long silence), and never asks to wait longer than
    ``longest``, so the feed keeps noticing the agent and others' changes.
    """

    def __init__(self, rate: float, longest: float) -> None:
        self.rate = rate
        self.longest = longest
        self._tokens = rate
        self._at = time.monotonic()

    def spend(self, size: int) -> float:
        """Take ``size`` bytes; the seconds to wait before the next read."""
        if self.rate <= 0:
            return 0.0
        now = time.monotonic()
        self._tokens = max(min(self.rate, self._tokens + (now - self._at) * self.rate) - size, -size)
        self._at = now
        return min(max(0.0, -self._tokens / self.rate), self.longest)


class _Feed:
    """One blocking query on a prefix, shared by every watch of that prefix in this process.

    Its thread sends the queries on a connection of its own; each answer is a
    complete state, handed to every subscribed watch (each keeps only the
    newest, so a slow watch skips states, never falls behind). Writers fence
    on the feed: they wait until every subscribed watch applied their change.
    """

    def __init__(self, settings: _Settings, prefix: str, wait: float, key: tuple[Any, ...]) -> None:
        self.settings = settings
        self.prefix = prefix
        self.key = key
        self.users = 0
        self._stop = threading.Event()
        self._hurry = threading.Event()  # set: send the next query now, whatever the read budget says
        self._wait = wait
        # A silent agent must time the read out well within the watch's silence limit.
        self._pool = _Pool(settings, size=1, interruptible=True, read_margin=min(settings.timeout, wait / 2 + 0.2))
        self._cond = threading.Condition()
        self._watches: list[_ConsulWatch] = []
        self._thread = threading.Thread(target=self._run, name="waypost-consul-watch", daemon=True)
        self._started = False

    def subscribe(self, watch: _ConsulWatch) -> None:
        with self._cond:
            self._watches.append(watch)
            if not self._started:
                self._started = True
                self._thread.start()

    def unsubscribe(self, watch: _ConsulWatch) -> None:
        with self._cond:
            if watch in self._watches:
                self._watches.remove(watch)
            self._cond.notify_all()

    def _run(self) -> None:
        backoff = Backoff()
        budget = _ReadBudget(self.settings.watch_rate, longest=self._wait)
        index: int | None = None
        try:
            while not self.stopped:
                try:
                    reply = _read_prefix(self._pool, self.settings, self.prefix, index=index, wait=self._wait)
                    entries, items = _items(reply, self.settings)
                except Exception as exc:  # the feed must outlive anything: its watches re-list
                    if self._stop.is_set():
                        return
                    if not isinstance(exc, WaypostError):
                        _log.exception("Consul watch feed of %s: unexpected error; it re-reads", self.prefix)
                        exc = WaypostError(f"unexpected error in the Consul watch feed: {exc!r}")
                    self._hand_out(exc)
                    index = None  # re-read without blocking once the agent answers again
                    self._stop.wait(backoff.next())
                    continue
                backoff.reset()
                self._hand_out((reply.index or 0, entries, items))
                # Follow the index even when it went backwards (Consul's advice): watches resync.
                index = max(reply.index or 1, 1)
                # Past the budget, hold the next query back: the agent sends the whole prefix per change.
                # A write of this process fenced on the feed (or stop()) cuts the wait short.
                self._hurry.wait(budget.spend(len(reply.body)))
                self._hurry.clear()
        finally:
            self._pool.close()

    def _hand_out(self, answer: _Answer) -> None:
        with self._cond:
            watches = list(self._watches)
        for watch in watches:
            watch.offer(answer)

    def applied(self) -> None:
        """A watch applied an answer: wake the writers fenced on this feed."""
        with self._cond:
            self._cond.notify_all()

    def fence(self, key: str, index: int | None, deadline: float) -> None:
        """Wait until every watch applied a state at or after a write: put at ``index``, or delete (``None``)."""
        def seen() -> bool:
            return all(w.has_seen(key, index) for w in self._watches)

        with self._cond:
            if not seen():  # only a write not seen yet may skip the read budget
                self._hurry.set()
                self._cond.wait_for(seen, max(deadline - time.monotonic(), 0.0))

    @property
    def stopped(self) -> bool:
        return self._stop.is_set()

    def stop(self) -> None:
        self._stop.set()
        self._hurry.set()
        self._pool.abort()
        if self._started and self._thread is not threading.current_thread():
            self._thread.join(self.settings.timeout)


class _ConsulWatch(WatchLoop):
    """A watch of one prefix: its own snapshot, then the states of the prefix's shared feed."""

    thread_name = "waypost-consul-watch-apply"

    def __init__(self, backend: ConsulBackend, prefix: str, sink: WatchSink) -> None:
        super().__init__(prefix, sink, silence_limit=backend.silence_limit, join_timeout=backend.settings.timeout,
                         on_close=backend._watches.forget)
        self._backend = backend
        self._feed = _shared.feed(backend.settings, prefix, backend.watch_wait)
        self._slot = threading.Condition()
        self._answer: _Answer | None = None  # the newest answer not applied yet
        self._index = 0
        self._entries: _Entries = {}
        self._applied: tuple[int, frozenset[str]] | None = None  # for writers' fences; None while broken
        self._applier: threading.Thread | None = None

    def snapshot(self) -> list[tuple[str, bytes]]:
        reply = _read_prefix(self._backend._pool, self._backend.settings, self.prefix)
        entries, items = _items(reply, self._backend.settings)
        self._index, self._entries = reply.index or 0, entries
        self._publish_applied()
        self._feed.subscribe(self)
        return items

    def offer(self, answer: _Answer) -> None:
        with self._slot:
            self._answer = answer
            self._slot.notify_all()

    def follow(self) -> None:
        self._applier = threading.current_thread()
        while not self.stopped:
            with self._slot:
                self._slot.wait_for(lambda: self._answer is not None or self.stopped, self.silence_limit)
                answer, self._answer = self._answer, None
            if answer is None:
                continue  # the feed reports silence itself, within the limit
            if isinstance(answer, WaypostError):
                self._applied = None
                self._feed.applied()
                raise answer
            self._apply(*answer)

    def _apply(self, index: int, entries: _Entries, items: list[tuple[str, bytes]]) -> None:
        if index < self._index and entries != self._entries:
            raise Resync(f"the Consul index went backwards ({self._index} -> {index}): the servers' state was "
                         "replaced")
        if index >= self._index or entries != self._entries:  # an older index with the same data: tombstones
            self.state(items)
        self._index, self._entries = index, entries
        self._publish_applied()
        self.caught_up()

    def _publish_applied(self) -> None:
        self._applied = (self._index, frozenset(self._entries))
        self._feed.applied()

    def has_seen(self, key: str, index: int | None) -> bool:
        if self.stopped or self._applied is None or threading.current_thread() is self._applier:
            return True  # broken or closed: nothing to wait for; inside a sink call: waiting would deadlock
        seen_index, keys = self._applied
        return seen_index >= index if index is not None else key not in keys

    def interrupt(self) -> None:
        with self._slot:
            self._slot.notify_all()

    def release(self) -> None:
        self._feed.unsubscribe(self)
        _shared.release_feed(self._feed)


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
    url_env: ClassVar[URLEnv | None] = URL_ENV
    #: Consul's own floor is the agent's session_ttl_min (10 s unless configured lower).
    min_ttl: ClassVar[float] = 1.0
    requires: ClassVar[tuple[str, ...]] = ("consul",)
    extra: ClassVar[str | None] = "consul"

    def __init__(self, settings: _Settings) -> None:
        self.settings = settings
        self._pool = _shared.pool(settings)
        self._lock = threading.Lock()
        self._sessions: dict[int, str] = {}  # our leases: instance id -> session id
        # Ids whose session we held and lost: revoking one of them must not reach whoever holds the id now.
        self._lost: set[int] = set()
        self._watches: WatchRegistry[_ConsulWatch] = WatchRegistry(self.describe)
        self.silence_limit = 10.0  # max(ttl, 1 s) once a lease is granted

    @property
    def watch_wait(self) -> float:
        wait = self.settings.watch_wait
        return wait if wait is not None else min(5.0, self.silence_limit / 2)

    @classmethod
    def from_url(cls, url: ParsedURL, options: Mapping[str, Any]) -> ConsulBackend:
        backend = cls(_Settings.from_url(url, options))
        try:
            backend._check_leader()
        except BaseException:
            backend.close()
            raise
        return backend

    def _call(self, method: str, path: str, what: str, *, body: str | bytes = "",
              expect: Iterable[int] = (200,)) -> _Reply:
        params = [("dc", self.settings.dc)] if self.settings.dc else []
        return self._pool.call(method, path, what, headers=self.settings.headers(), params=params, body=body,
                               expect=expect, redact=self.settings.token)

    def _check_leader(self) -> None:
        what = "asking for the cluster leader"
        reply = self._call("GET", "/v1/status/leader", what, expect=(200, 500))
        if reply.status == 500 and "No path to datacenter" in reply.body:
            raise ConfigError(f"{self.describe()} knows no datacenter {self.settings.dc!r} (option dc)")
        if reply.status != 200:
            raise self._pool.status_error(reply, what, self.settings.token)
        if not reply.json():
            raise BackendUnavailable(f"{self.describe()} has no cluster leader")

    def describe(self) -> str:
        return self.settings.where

    def __repr__(self) -> str:
        return f"<ConsulBackend {self.describe()}>"

    def _check(self) -> None:
        self._watches.check_open()

    def _kv_path(self, key: str) -> str:
        return f"/v1/kv/{self.settings.prefix}{key}"

    def _lease_key(self, lease_id: int) -> str:
        return f"{self.settings.prefix}{LEASE_DIR}{lease_id:x}"

    def _txn(self, ops: list[dict[str, Any]], what: str) -> tuple[list[str], int]:
        """Run a transaction; return Consul's error messages (none if it committed) and its index."""
        reply = self._call("PUT", "/v1/txn", what, body=json.dumps(ops), expect=(200, 409))
        if reply.status == 409:
            return _txn_errors(reply), 0
        results = (reply.json() or {}).get("Results") or ()
        return [], max((int(r["KV"].get("ModifyIndex", 0)) for r in results if r.get("KV")), default=0)

    # leases -----------------------------------------------------------------------------------
    def grant_lease(self, ttl: float, preferred_id: int | None = None) -> Lease:
        self._check()
        self.silence_limit = max(ttl, 1.0)
        expired = 0
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
            if any("invalid session" in e for e in errors):
                # The session expired before the claim used it (a process starved for 2 x ttl, or an
                # agent that lost it): claim again with a new one.
                expired += 1
                if expired < 3:
                    continue
                raise BackendUnavailable(f"{self.describe()}: three new sessions expired before they could claim an "
                                         f"instance id (ttl {ttl:g} s): the agent or this process is overloaded")
            if not any("exists" in e for e in errors):
                raise WaypostError(f"{self.describe()} refused to claim instance id {lease_id:x}: {errors}")
            if preferred_id is not None:
                raise AlreadyRegistered(f"instance id {lease_id:x} is held by a live Runtime")

    def _create_session(self, lease_id: int, ttl: float) -> str:
        body = json.dumps({"Name": f"waypost/{lease_id:x}", "Behavior": "delete",
                           "TTL": _duration(ttl), "LockDelay": "0s"})
        reply = self._call("PUT", "/v1/session/create", "creating a session", body=body, expect=(200, 500))
        if reply.status == 500:
            if "Session TTL" in reply.body:
                raise ConfigError(f"{self.describe()} refused ttl={ttl} s ({reply.body.strip()}): Consul's minimum "
                                  "is the agent's session_ttl_min, 10 s by default")
            raise self._pool.status_error(reply, "creating a session", self.settings.token)
        return str(reply.json()["ID"])

    def _destroy_quietly(self, session: str) -> None:
        try:
            self._call("PUT", f"/v1/session/destroy/{session}", "destroying a session")
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
        reply = self._call("PUT", f"/v1/session/renew/{session}", f"renewing lease {lease.id:x}",
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
            reply = self._call("GET", f"/v1/kv/{self._lease_key(lease_id)}", f"finding lease {lease_id:x}",
                                     expect=(200, 404))
            entries = reply.json() if reply.status == 200 else None
            session = entries[0].get("Session") if entries else None
        if session:
            self._call("PUT", f"/v1/session/destroy/{session}", f"revoking lease {lease_id:x}")

    # keys ---------------------------------------------------------------------------------------
    def create(self, lease: Lease, key: str, value: bytes) -> None:
        self._check()
        full = self.settings.prefix + key
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
        reply = self._call("GET", self._kv_path(key), f"reading {key}", expect=(200, 404))
        entries = reply.json() if reply.status == 200 else None
        entry = entries[0] if entries else None
        if entry is None or entry.get("Session") != session:
            return None
        raw = entry.get("Value")
        return int(entry.get("ModifyIndex", 0)), base64.b64decode(raw) if raw else b""

    def replace(self, lease: Lease, key: str, value: bytes) -> None:
        self._check()
        errors, index = self._txn([_kv_op("lock", self.settings.prefix + key, value, self._session_of(lease))],
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
        if "Permission denied" in text:
            raise AuthenticationError(f"{self.describe()}: the ACL token may not write {key}; see the ACL policy "
                                      "in the consul backend docs")
        raise WaypostError(f"{self.describe()} refused to write {key}: {text}")

    def delete(self, lease: Lease, key: str) -> None:
        self._check()
        with self._lock:
            session = self._sessions.get(lease.id)
        if session is None:
            return  # no session of ours: Consul deleted whatever it held (Behavior=delete)
        # Only while our session holds it: a key of the same name may belong to a newer lease
        # with the same instance id (ours was lost, another Runtime took the id over).
        full = self.settings.prefix + key
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
        """Return once this process's watches on ``key`` delivered our write (put at ``index``, or delete).

        Blocking queries return states, so two quick writes can reach a watch as
        one state and an intermediate one is lost (a key added and removed at
        once never shows). Waiting here keeps a process's own writes apart.
        """
        deadline = time.monotonic() + min(self.settings.timeout, _FENCE_MAX)
        for feed in _shared.feeds_covering(key):
            feed.fence(key, index, deadline)

    def list(self, prefix: str) -> list[tuple[str, bytes]]:
        self._check()
        return _items(_read_prefix(self._pool, self.settings, prefix), self.settings)[1]

    def watch(self, prefix: str, sink: WatchSink) -> WatchHandle:
        return self._watches.open(_ConsulWatch(self, prefix, sink))

    def close(self) -> None:
        if self._watches.close():  # normally closed by the Runtime already; never leave threads behind
            _shared.release_pool(self.settings)
