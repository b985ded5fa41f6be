"""etcd backend: ``etcd://host:port[,host:port…]`` (``etcds://`` for TLS), Dynamo's default store.

URL grammar
    ``etcd://[user:password@]host[:port][,host[:port]…][?option=value&…]``.
    The default port is 2379. Several hosts are members of one cluster: the
    backend talks to one member at a time and moves to the next when it stops
    answering (refused, closed or timed-out calls, or a stalled watch).
    ``etcds://`` speaks TLS, trusting ``ca_cert`` (or the system's roots when
    it is not set). A URL naming no host (``etcd://``, ``etcd://?timeout=2``)
    takes its members from Dynamo's ``ETCD_ENDPOINTS``, else etcdctl's
    ``ETCDCTL_ENDPOINTS`` (``[http(s)://]host:port,…``; ``https://`` turns
    ``etcd://`` into ``etcds://``, while a member without a scheme stays plain
    text even where etcdctl would use TLS because a certificate is set); with
    neither set it is an error. Dynamo's ``DYN_DISCOVERY_BACKEND=etcd`` means
    ``etcd://``, with Dynamo's default ``127.0.0.1:2379``.

Options (keyword > URL > ``WAYPOST_*`` > Dynamo's ``ETCD_*`` > etcdctl's ``ETCDCTL_*`` > default)
    ``ttl``
        lease time-to-live in seconds (env ``WAYPOST_TTL``, then
        ``ETCD_LEASE_TTL``; default 10).
        etcd leases are whole seconds: the ttl is rounded up, and the server
        may raise it to its minimum (1.5 times its election timeout).
    ``timeout``
        seconds any single etcd operation may take, retries and fail-over
        included, before :class:`~waypost.BackendUnavailable` (default 5).
        A watch reports a silent (paused, partitioned) server within
        ``max(ttl, 1)`` seconds plus one round trip, and moves to the next
        member.
    ``ca_cert``, ``client_cert``, ``client_key``
        PEM files: the CA that signed the server certificate, and the client
        certificate and key for mutual TLS (env ``ETCD_AUTH_CA``,
        ``ETCD_AUTH_CLIENT_CERT``, ``ETCD_AUTH_CLIENT_KEY``, else etcdctl's
        ``ETCDCTL_CACERT``, ``ETCDCTL_CERT``, ``ETCDCTL_KEY``). They need
        ``etcds://``. (``cert_cert``/``cert_key`` are their former names.)
    ``user``, ``password``
        etcd user/password authentication (env ``ETCD_AUTH_USERNAME``,
        ``ETCD_AUTH_PASSWORD``, else etcdctl's ``ETCDCTL_USER=user:password``;
        each option takes the first variable set, and waypost never prompts
        for a password); may also be the URL's ``user:password@``
        (giving both, with different values, is an error). Works over
        ``etcd://`` too, where the password travels in clear text. The auth
        token is renewed transparently when etcd reports it invalid (expired
        after ``--auth-token-ttl``, or lost in a member restart) and when
        calls time out with it (a server that lost its data cannot honour a
        token from before).
    ``prefix``
        key prefix (default empty, so keys are exactly Dynamo's
        ``v1/instances/…``); a ``/`` is appended when missing. (``root`` is
        its former name.)

Semantics
    One etcd lease per Runtime; its id is the ``instance_id`` (after a lease
    loss the Runtime gets a new lease and so a new id, as Dynamo does; ids
    cannot be chosen). A registration is a transaction that puts the key,
    attached to the lease, only if it does not exist. ``list`` is one
    linearizable range read (responses up to 256 MiB, so 50k instances fit).
    A watch lists at revision R, then watches from R+1. After a short stream
    break (a member failing over) it resumes from the last revision it
    delivered (etcd's history), so nothing is missed and nothing re-listed;
    after an outage it reported as interrupted, after history was compacted,
    or when the store's revision went backwards (data replaced), it re-lists
    and the core emits the minimal diff with a ``Resynced`` notice.

Caveats
    Watches probe an idle stream with etcd progress requests (falling back to
    a one-key linearizable read, because etcd 3.5 defers progress answers
    while a watcher catches up) and ask the member to end the stream when it
    loses its leader. Every watch runs two threads (plus gRPC's own request
    thread). Lease grants are retried on timeouts, which can leave an unused
    lease behind until its ttl ends. Closing a Runtime while etcd is down
    takes up to ``timeout`` (the lease revoke is tried, then left to expire).

Implementation
    Built on the gRPC stubs that etcd-sdk-python (``pyetcd``) ships rather
    than its ``Etcd3Client``, which marks a member failed for 300 s after one
    error, cannot send watch progress requests or cancel a stalled watch,
    drops the server's error details, and sends auth tokens only as call
    credentials (refused by gRPC on plain-text channels).
"""

from __future__ import annotations

import contextlib
import logging
import math
import queue
import random
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar

from waypost.core import (
    KEY_ROOT,
    AlreadyRegistered,
    AuthenticationError,
    Backend,
    BackendUnavailable,
    Backoff,
    Capability,
    Closed,
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
    parse_float,
    parse_str,
    prefix_option,
    tls_files,
    tls_options,
)

try:
    import grpc
    from pyetcd import etcdrpc
except ImportError:  # the class stays importable: connect() names the extra to install
    grpc = etcdrpc = None

__all__ = ["EtcdBackend"]

_log = logging.getLogger("waypost.etcd")

DEFAULT_PORT = 2379
_MAX_MESSAGE = 256 * 1024 * 1024
_CHANNEL_OPTIONS = (
    ("grpc.max_receive_message_length", _MAX_MESSAGE),
    ("grpc.max_send_message_length", _MAX_MESSAGE),
    # gRPC's default reconnect backoff grows to 120 s: a restarted member would
    # stay unused for minutes. Keep it short; our own retries are bounded anyway.
    ("grpc.initial_reconnect_backoff_ms", 100),
    ("grpc.min_reconnect_backoff_ms", 100),
    ("grpc.max_reconnect_backoff_ms", 1000),
)

def _retryable(code: Any) -> bool:
    """After these status codes another attempt (maybe on another member) can succeed."""
    return code in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED)

Invoke = Callable[["_Stubs", float, Any], Any]  # (stubs, attempt timeout, call metadata) -> response


# ----------------------------------------------------------------------------------------------
# settings
# ----------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class _Settings:
    targets: tuple[str, ...]
    tls: TLSFiles | None
    user: str | None
    password: str | None = field(repr=False)
    timeout: float
    prefix: str

    @property
    def where(self) -> str:
        return f"{'etcds' if self.tls else 'etcd'}://{','.join(self.targets)}"


def _settings(url: ParsedURL, options: Mapping[str, Any]) -> _Settings:
    """Validate the URL and options together; every message is free of secrets."""
    targets = tuple(str(h) for h in hosts(url, DEFAULT_PORT, default_host=None))
    tls = tls_files(url, options, tls=url.scheme == "etcds")
    user = _one_of(url.username, options["user"], "user")
    password = _one_of(url.password, options["password"], "password")
    if (user is None) != (password is None):
        raise ConfigError("etcd authentication needs both user and password")
    return _Settings(targets, tls, user, password, options["timeout"], options["prefix"])


def _one_of(from_url: str | None, from_option: str | None, name: str) -> str | None:
    if from_url is not None and from_option is not None and from_url != from_option:
        raise ConfigError(f"etcd {name} is given both in the URL and as an option, with different values")
    return from_url if from_url is not None else from_option


def _channel_credentials(files: TLSFiles) -> Any:
    ca, cert, key = files.read()
    return grpc.ssl_channel_credentials(root_certificates=ca, private_key=key, certificate_chain=cert)


# ----------------------------------------------------------------------------------------------
# the one error boundary
# ----------------------------------------------------------------------------------------------

def _status(exc: BaseException) -> tuple[Any, str]:
    """``(grpc status code or None, message)`` of any exception."""
    error: Any = exc  # grpc.RpcError subclasses carry code()/details(); others don't
    code = error.code() if callable(getattr(error, "code", None)) else None
    details = error.details() if callable(getattr(error, "details", None)) else None
    return code, details or str(exc)


def translate(exc: BaseException, what: str, where: str, secret: str | None = None) -> WaypostError:
    """Map a gRPC/pyetcd exception to waypost's tree (the caller chains it as the cause).

    Used through :meth:`_Connection.error` only.
    """
    if isinstance(exc, WaypostError):
        return exc
    code, details = _status(exc)
    if secret:
        details = details.replace(secret, "***")
    if code is grpc.StatusCode.NOT_FOUND and "lease not found" in details:
        return LeaseLost(f"etcd lease not found during {what} on {where}: it expired or was revoked")
    if code in (grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.PERMISSION_DENIED) or (
        code is grpc.StatusCode.INVALID_ARGUMENT and ("authentication failed" in details or "user name" in details)
    ):
        return AuthenticationError(f"etcd at {where} refused {what}: {details}")
    if code is grpc.StatusCode.DEADLINE_EXCEEDED:
        return BackendUnavailable(f"etcd at {where} did not answer {what} in time")
    if isinstance(exc, ValueError) and "closed channel" in details:
        return Closed(f"the backend for {where} is closed")
    name = getattr(code, "name", type(exc).__name__)
    return BackendUnavailable(f"etcd {what} failed on {where}: {name}: {details}")


def _is_invalid_token(exc: BaseException) -> bool:
    code, details = _status(exc)
    return code is grpc.StatusCode.UNAUTHENTICATED and "auth token" in details


# ----------------------------------------------------------------------------------------------
# connection: channels to the members, fail-over, auth token
# ----------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class _Stubs:
    channel: Any
    kv: Any
    lease: Any
    watch: Any
    auth: Any


class _Connection:
    """gRPC channels to the cluster members, the member in use, and the auth token."""

    def __init__(self, settings: _Settings) -> None:
        self.settings = settings
        self.timeout = settings.timeout
        self.where = settings.where
        self._credentials = _channel_credentials(settings.tls) if settings.tls else None
        self._stubs: list[_Stubs | None] = [None] * len(settings.targets)
        # Start on a random member so that many clients spread over the cluster.
        self._current = random.randrange(len(settings.targets))
        self._lock = threading.Lock()
        self._auth_lock = threading.Lock()
        self._token: str | None = None
        self.closed = threading.Event()

    # members ----------------------------------------------------------------------------------
    def current(self) -> int:
        with self._lock:
            return self._current

    def stubs(self, index: int) -> _Stubs:
        with self._lock:
            if self.closed.is_set():
                raise Closed(f"the backend for {self.where} is closed")
            stubs = self._stubs[index]
            if stubs is None:
                stubs = self._stubs[index] = self._make_stubs(self.settings.targets[index])
            return stubs

    def _make_stubs(self, target: str) -> _Stubs:
        if self._credentials is not None:
            channel = grpc.secure_channel(target, self._credentials, options=_CHANNEL_OPTIONS)
        else:
            channel = grpc.insecure_channel(target, options=_CHANNEL_OPTIONS)
        return _Stubs(channel, etcdrpc.KVStub(channel), etcdrpc.LeaseStub(channel), etcdrpc.WatchStub(channel),
                      etcdrpc.AuthStub(channel))

    def fail_over(self, index: int) -> None:
        """The member at ``index`` failed: use the next one (if it was the one in use)."""
        targets = self.settings.targets
        with self._lock:
            if self._current == index and len(targets) > 1:
                self._current = (index + 1) % len(targets)
                _log.info("etcd member %s failed; using %s", targets[index], targets[self._current])

    # auth -------------------------------------------------------------------------------------
    @property
    def token(self) -> str | None:
        return self._token

    def metadata(self) -> tuple[tuple[str, str], ...] | None:
        token = self._token
        return (("token", token),) if token else None

    def authenticate(self, deadline: float | None = None, stale: str | None = None) -> None:
        """Get a fresh auth token, unless another thread already replaced ``stale``."""
        user, password = self.settings.user, self.settings.password
        if user is None or password is None:
            return
        with self._auth_lock:
            if stale is not None and self._token != stale:
                return
            request = etcdrpc.AuthenticateRequest(name=user, password=password)
            response = self.call("authentication", lambda s, t, _: s.auth.Authenticate(request, timeout=t),
                                 deadline=deadline, renew=False)
            self._token = response.token
            _log.debug("authenticated to %s as %s", self.where, user)

    # calls --------------------------------------------------------------------------------------
    def call(self, what: str, invoke: Invoke, *, deadline: float | None = None, renew: bool = True) -> Any:
        """Run ``invoke`` on the member in use, failing over and retrying until the deadline.

        An invalid auth token is renewed once. Errors leave through :meth:`error`.
        """
        deadline = time.monotonic() + self.timeout if deadline is None else deadline
        attempt, backoff = 0, Backoff(maximum=0.5)
        while True:
            index = self.current()
            token = self._token
            try:
                return invoke(self.stubs(index), self._attempt_timeout(deadline), self.metadata())
            except Exception as exc:
                timed_out = _status(exc)[0] is grpc.StatusCode.DEADLINE_EXCEEDED
                if renew and (_is_invalid_token(exc) or (token and timed_out)):
                    # An invalid token, or calls that time out with one: after a server lost its data a
                    # token from before names a revision it will never reach, and it waits for it.
                    renew = False
                    self.authenticate(deadline, stale=token)
                    continue
                retryable = _retryable(_status(exc)[0])
                if retryable:
                    self.fail_over(index)  # even when out of time: the next call starts elsewhere
                if not retryable or time.monotonic() >= deadline or self.closed.is_set():
                    raise self.error(exc, what) from exc
                attempt += 1
                if attempt % len(self.settings.targets) == 0:  # every member tried once more: wait a little
                    self.closed.wait(min(backoff.next(), max(deadline - time.monotonic(), 0.0)))

    def error(self, exc: BaseException, what: str) -> WaypostError:
        """The one way out for client-library errors: translated, password scrubbed."""
        return translate(exc, what, self.where, self.settings.password)

    def _attempt_timeout(self, deadline: float) -> float:
        remaining = max(deadline - time.monotonic(), 0.001)
        members = len(self.settings.targets)
        # With several members, leave time to try another one after a silent member.
        return remaining if members == 1 else max(remaining / members, min(remaining / 2, 1.0))

    def close(self) -> None:
        with self._lock:
            self.closed.set()
            stubs, self._stubs = self._stubs, [None] * len(self._stubs)
        for item in stubs:
            if item is not None:
                item.channel.close()


def _first_response(stream: Any) -> Any:
    """The first response of a streaming call; the stream is cancelled afterwards."""
    try:
        for response in stream:
            return response
    finally:
        stream.cancel()
    raise BackendUnavailable("etcd closed the stream without answering")


def _range_end(key: bytes) -> bytes:
    """The end of the key range holding every key that starts with ``key``."""
    end = bytearray(key)
    while end:
        if end[-1] < 0xFF:
            end[-1] += 1
            return bytes(end)
        end.pop()
    return b"\0"  # every key


# ----------------------------------------------------------------------------------------------
# watch
# ----------------------------------------------------------------------------------------------

class _StreamLost(BackendUnavailable):
    """The watch stream ended (the member closed or broke it)."""


class _Silent(_StreamLost, Silent):
    """The member stopped answering (paused, partitioned)."""


_TIMEOUT = object()


class _Stream:
    """One gRPC Watch stream: requests through a queue, responses read by a thread."""

    def __init__(self, conn: _Connection, index: int) -> None:
        self._conn = conn
        self.token = conn.token  # the token the stream was opened with
        self._requests: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._responses: queue.SimpleQueue[tuple[Any, BaseException | None]] = queue.SimpleQueue()
        try:
            # "hasleader": the member ends the stream when it loses its leader, instead of
            # keeping a partitioned watch open that answers progress requests but sees no change.
            metadata = (*(conn.metadata() or ()), ("hasleader", "true"))
            self.call = conn.stubs(index).watch.Watch(self._request_iterator(), metadata=metadata)
        except Exception as exc:
            raise conn.error(exc, "watch") from exc
        self._reader = threading.Thread(target=self._read, name="waypost-etcd-watch-stream", daemon=True)
        self._reader.start()

    def _request_iterator(self) -> Iterator[Any]:
        while (request := self._requests.get()) is not None:
            yield request

    def _read(self) -> None:
        try:
            for response in self.call:
                self._responses.put((response, None))
            self._responses.put((None, _StreamLost("etcd closed the watch stream")))
        except Exception as exc:  # handed to the watch thread, translated there
            self._responses.put((None, exc))

    def send(self, request: Any) -> None:
        self._requests.put(request)

    def next(self, timeout: float) -> Any:
        """The next response, or ``_TIMEOUT``; raise :class:`_StreamLost` once the stream ended."""
        try:
            response, error = self._responses.get(timeout=max(timeout, 0.0))
        except queue.Empty:
            return _TIMEOUT
        if error is None:
            return response
        self._responses.put((None, error))  # later calls fail the same way
        if isinstance(error, _StreamLost):
            raise error
        if _is_invalid_token(error):
            self._conn.authenticate(stale=self.token)
        raise _StreamLost(str(self._conn.error(error, "watch"))) from error

    def close(self) -> None:
        # Cancel first, then end the request iterator gRPC's own thread consumes: ending it
        # first half-closes the stream, and etcd's reply to that races with the cancel.
        self.call.cancel()
        self._requests.put(None)
        if self._reader is not threading.current_thread():
            self._reader.join(self._conn.timeout)  # a cancelled call ends at once; never hang on it
            if self._reader.is_alive():
                _log.warning("etcd watch stream reader did not stop after cancel; leaving it behind")


class _EtcdWatch(WatchLoop):
    """A watch of one prefix: a range read at revision R, then a stream from R+1 (resumed after breaks).

    The stream goes to the member in use; an idle stream is probed with etcd
    progress requests (falling back to a one-key linearizable read, because
    etcd 3.5 defers progress answers while a watcher catches up), so a silent
    member is left for the next one within ``silence_limit``.
    """

    thread_name = "waypost-etcd-watch"
    resumable = True

    def __init__(self, backend: EtcdBackend, prefix: str, sink: WatchSink) -> None:
        super().__init__(prefix, sink, silence_limit=backend.silence_limit, join_timeout=backend.conn.timeout * 3,
                         on_close=backend._watches.forget)
        self._backend = backend
        self._conn = backend.conn
        self._key = backend._key(prefix)
        self._lock_stream = threading.Lock()
        self._stream: _Stream | None = None
        self._probe_interval = self.silence_limit / 2
        self._revision = 0

    def snapshot(self) -> list[tuple[str, bytes]]:
        items, self._revision = self._backend._range(self.prefix)
        return items

    def follow(self) -> None:
        """Open a stream from the next revision and deliver its events until it breaks."""
        index = self._conn.current()
        try:
            stream = self._open(index)
            self._pump(stream, index)
        except _StreamLost:
            if not self.stopped:
                self._conn.fail_over(index)
            raise
        finally:
            self._drop_stream()

    def _pump(self, stream: _Stream, index: int) -> None:
        # A progress request right away: its answer (or the first events) shows the stream really
        # continues from our revision; a compacted start shows up as a cancel instead.
        stream.send(etcdrpc.WatchRequest(progress_request=etcdrpc.WatchProgressRequest()))
        pending_since: float | None = time.monotonic()  # when the unanswered progress request was sent
        last_seen = time.monotonic()
        while not self.stopped:
            response = stream.next(self._probe_interval if pending_since is None else self._probe_interval / 2)
            if response is not _TIMEOUT:
                pending_since, last_seen = None, time.monotonic()
                self._deliver(response)
                self.caught_up()
            elif pending_since is None:
                if time.monotonic() - last_seen >= self._probe_interval:
                    stream.send(etcdrpc.WatchRequest(progress_request=etcdrpc.WatchProgressRequest()))
                    pending_since = time.monotonic()
            else:
                self._probe(index)
                pending_since, last_seen = None, time.monotonic()

    def _open(self, index: int) -> _Stream:
        stream = _Stream(self._conn, index)
        with self._lock_stream:  # interrupt() reads _stream under the lock: it cancels this one or sees the stop
            stopped = self.stopped
            if not stopped:
                self._stream = stream
        if stopped:
            stream.close()
            raise Closed("watch closed")
        create = etcdrpc.WatchCreateRequest(key=self._key, range_end=_range_end(self._key),
                                            start_revision=self._revision + 1)
        stream.send(etcdrpc.WatchRequest(create_request=create))
        response = stream.next(min(self._conn.timeout, self.silence_limit))
        if response is _TIMEOUT:
            raise _Silent(f"etcd at {self._conn.where} did not open a watch in time")
        self._check_created(response, stream.token)
        return stream

    def _check_created(self, response: Any, token: str | None) -> None:
        if response.compact_revision:
            raise Resync(f"etcd history was compacted past revision {self._revision}")
        if response.canceled or not response.created:
            reason = response.cancel_reason or "not created"
            if "permission denied" in reason or "auth" in reason:
                self._conn.authenticate(stale=token)  # a stale token shows up as "permission denied"
            raise _StreamLost(f"etcd refused the watch: {reason}")
        if response.header.revision < self._revision:
            raise Resync("the etcd store's revision went backwards (its data was replaced)")

    def _probe(self, index: int) -> None:
        """A progress request went unanswered: is the member alive? (a one-key linearizable read)"""
        request = etcdrpc.RangeRequest(key=self._key, count_only=True)
        token = self._conn.token
        try:
            self._conn.stubs(index).kv.Range(request, timeout=self._probe_interval / 2,
                                             metadata=self._conn.metadata())
        except Exception as exc:
            if _is_invalid_token(exc):
                self._conn.authenticate(stale=token)
                return
            cause = self._conn.error(exc, "a liveness probe")
            raise _Silent(f"etcd at {self._conn.where} stopped answering ({cause})") from exc

    def _deliver(self, response: Any) -> None:
        if response.compact_revision:
            raise Resync(f"etcd history was compacted past revision {self._revision}")
        if response.canceled:
            raise _StreamLost(f"etcd canceled the watch: {response.cancel_reason}")
        for event in response.events:
            key = self._backend._unkey(event.kv.key)
            if key is None:
                continue  # not a key of ours (not UTF-8): nothing an instance could be
            if event.type == event.PUT:
                self.put(key, event.kv.value)
            else:
                self.delete(key)
            self._revision = event.kv.mod_revision
        if not response.events and not response.created:
            # A progress notification: every change up to header.revision was delivered.
            self._revision = max(self._revision, response.header.revision)

    def _drop_stream(self) -> None:
        """Close the current stream (outside the lock: closing joins its reader)."""
        with self._lock_stream:
            stream, self._stream = self._stream, None
        if stream is not None:
            stream.close()

    def interrupt(self) -> None:
        with self._lock_stream:
            stream = self._stream
        if stream is not None:
            stream.call.cancel()  # wakes the watch's thread; it closes the stream itself


# ----------------------------------------------------------------------------------------------
# the backend
# ----------------------------------------------------------------------------------------------

_OPTIONS = (
    Option("timeout", parse_float(0.1, 3600.0), 5.0,
           "seconds an etcd operation may take (retries and fail-over included)"),
    *tls_options(ca_env=("ETCD_AUTH_CA", "ETCDCTL_CACERT"), cert_env=("ETCD_AUTH_CLIENT_CERT", "ETCDCTL_CERT"),
                 key_env=("ETCD_AUTH_CLIENT_KEY", "ETCDCTL_KEY")),
    Option("user", parse_str, None, "etcd user name",
           env=("ETCD_AUTH_USERNAME", Env("ETCDCTL_USER", split=":", part=0))),
    Option("password", parse_str, None, "etcd password",
           env=("ETCD_AUTH_PASSWORD", Env("ETCDCTL_USER", split=":", part=1)), secret=True),
    prefix_option(help="key prefix (default none: keys are exactly Dynamo's v1/instances/...)"),
)
# A URL naming no host: Dynamo's variable, then etcdctl's.
_URL_ENV = URLEnv(hosts=("ETCD_ENDPOINTS", "ETCDCTL_ENDPOINTS"), tls_scheme="etcds")


class EtcdBackend(Backend):
    __doc__ = __doc__
    schemes: ClassVar[tuple[str, ...]] = ("etcd", "etcds")
    capabilities: ClassVar[frozenset[Capability]] = frozenset({
        Capability.CROSS_PROCESS, Capability.CROSS_HOST, Capability.SERVER_EXPIRY,
        Capability.TLS, Capability.AUTH, Capability.WATCH_HISTORY,
    })
    options: ClassVar[tuple[Option, ...]] = _OPTIONS
    runtime_option_env: ClassVar[Mapping[str, str]] = {"ttl": "ETCD_LEASE_TTL"}
    url_env: ClassVar[URLEnv | None] = _URL_ENV
    min_ttl: ClassVar[float] = 1.0
    requires: ClassVar[tuple[str, ...]] = ("grpc", "pyetcd")
    extra: ClassVar[str | None] = "etcd"

    def __init__(self, settings: _Settings) -> None:
        self.settings = settings
        self._prefix = settings.prefix.encode()
        self.conn = _Connection(settings)
        self.silence_limit = 10.0  # max(ttl, 1 s) once a lease is granted
        self._watches: WatchRegistry[_EtcdWatch] = WatchRegistry(self.describe)

    @classmethod
    def from_url(cls, url: ParsedURL, options: Mapping[str, Any]) -> EtcdBackend:
        backend = cls(_settings(url, options))
        try:
            if backend.settings.user is not None:
                backend.conn.authenticate()
            else:
                # Lease grants need no auth in etcd: without this read, a store that
                # requires auth would only refuse at the first registration.
                request = etcdrpc.RangeRequest(key=backend._key(KEY_ROOT + "/"), count_only=True)
                backend.conn.call("a read", lambda s, t, m: s.kv.Range(request, timeout=t, metadata=m))
        except BaseException:
            backend.close()
            raise
        return backend

    def describe(self) -> str:
        return self.settings.where

    def __repr__(self) -> str:
        return f"<EtcdBackend {self.settings.where}>"

    # keys ---------------------------------------------------------------------------------------
    def _key(self, key: str) -> bytes:
        return self._prefix + key.encode()

    def _unkey(self, key: bytes) -> str | None:
        """The key relative to the prefix, or ``None`` if it is not UTF-8 (no key of ours is not)."""
        try:
            return key[len(self._prefix):].decode("utf-8")
        except UnicodeDecodeError:
            return None

    # leases ---------------------------------------------------------------------------------------
    def grant_lease(self, ttl: float, preferred_id: int | None = None) -> Lease:
        # etcd picks lease ids; like Dynamo, a lost lease is replaced by one with a new id.
        self.silence_limit = max(ttl, 1.0)
        request = etcdrpc.LeaseGrantRequest(TTL=max(1, math.ceil(ttl)))
        response = self.conn.call("lease grant", lambda s, t, m: s.lease.LeaseGrant(request, timeout=t, metadata=m))
        if response.error:
            raise BackendUnavailable(f"etcd at {self.describe()} refused a lease: {response.error}")
        return Lease(int(response.ID), float(response.TTL))

    def keep_alive(self, lease: Lease) -> None:
        request = etcdrpc.LeaseKeepAliveRequest(ID=lease.id)
        # A keepalive stuck on a silent member for the whole timeout could outlast a short
        # lease; half the ttl leaves time to retry on another member.
        deadline = time.monotonic() + min(self.conn.timeout, max(lease.ttl / 2, 0.5))
        response = self.conn.call("lease keepalive", lambda s, t, m: _first_response(
            s.lease.LeaseKeepAlive(iter((request,)), timeout=t, metadata=m)), deadline=deadline)
        if response.TTL <= 0:
            raise LeaseLost(f"etcd lease {lease.id:x} has expired or was revoked")

    def revoke_lease(self, lease_id: int) -> None:
        request = etcdrpc.LeaseRevokeRequest(ID=lease_id)
        with contextlib.suppress(LeaseLost):  # already gone: nothing to do
            self.conn.call("lease revoke", lambda s, t, m: s.lease.LeaseRevoke(request, timeout=t, metadata=m))

    # keys ---------------------------------------------------------------------------------------
    def create(self, lease: Lease, key: str, value: bytes) -> None:
        raw = self._key(key)
        request = etcdrpc.TxnRequest(
            compare=[etcdrpc.Compare(result=etcdrpc.Compare.EQUAL, target=etcdrpc.Compare.CREATE, key=raw,
                                     create_revision=0)],
            success=[etcdrpc.RequestOp(request_put=etcdrpc.PutRequest(key=raw, value=value, lease=lease.id))],
            failure=[etcdrpc.RequestOp(request_range=etcdrpc.RangeRequest(key=raw, keys_only=True))],
        )
        response = self.conn.call("register", lambda s, t, m: s.kv.Txn(request, timeout=t, metadata=m))
        if response.succeeded:
            return
        existing = response.responses[0].response_range.kvs
        if existing and existing[0].lease == lease.id:
            # Our own earlier attempt landed but its answer was lost (a retried timeout).
            self.replace(lease, key, value)
            return
        owner = f"lease {existing[0].lease:x}" if existing else "another writer"
        raise AlreadyRegistered(f"{key} is already registered in etcd ({owner})")

    def replace(self, lease: Lease, key: str, value: bytes) -> None:
        request = etcdrpc.PutRequest(key=self._key(key), value=value, lease=lease.id)
        self.conn.call("register", lambda s, t, m: s.kv.Put(request, timeout=t, metadata=m))

    def delete(self, lease: Lease, key: str) -> None:
        # Only while the key is still on our lease: never remove what another Runtime wrote since.
        raw = self._key(key)
        request = etcdrpc.TxnRequest(
            compare=[etcdrpc.Compare(result=etcdrpc.Compare.EQUAL, target=etcdrpc.Compare.LEASE, key=raw,
                                     lease=lease.id)],
            success=[etcdrpc.RequestOp(request_delete_range=etcdrpc.DeleteRangeRequest(key=raw))],
        )
        self.conn.call("unregister", lambda s, t, m: s.kv.Txn(request, timeout=t, metadata=m))

    def _range(self, prefix: str) -> tuple[list[tuple[str, bytes]], int]:
        """Every ``(key, value)`` under ``prefix`` and the store revision they were read at."""
        raw = self._key(prefix)
        request = etcdrpc.RangeRequest(key=raw, range_end=_range_end(raw))
        response = self.conn.call("list", lambda s, t, m: s.kv.Range(request, timeout=t, metadata=m))
        unkey = self._unkey
        items = [(unkey(kv.key), kv.value) for kv in response.kvs]
        return [(key, value) for key, value in items if key is not None], int(response.header.revision)

    def list(self, prefix: str) -> list[tuple[str, bytes]]:
        return self._range(prefix)[0]

    # watches ----------------------------------------------------------------------------------------
    def watch(self, prefix: str, sink: WatchSink) -> WatchHandle:
        return self._watches.open(_EtcdWatch(self, prefix, sink))

    def close(self) -> None:
        self._watches.close()
        self.conn.close()

