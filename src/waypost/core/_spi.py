"""The backend SPI: what a discovery store plugin implements.

A backend is a thin translation of a few store operations; the Runtime owns
everything above them (the keepalive thread, re-registration after lease loss,
decoding, diffing, events, hooks), so every backend gets the same semantics.

Keys passed to a backend are relative to its root and look like
``v1/instances/{ns}/{comp}/{ep}/{instance_id:x}``; values are the encoded
:class:`~waypost.Instance` bytes. Prefixes always end with ``/``.

Rules every backend follows (the conformance suite checks them):

* Translate client-library errors into :mod:`waypost.core` errors at one
  boundary, chaining the cause; never put credentials in messages.
* Every call is bounded in time: an unreachable store raises
  :class:`BackendUnavailable` within the backend's timeout.
* Methods are called from several threads at once.
"""

from __future__ import annotations

import abc
import enum
from collections.abc import Callable, Iterable, Mapping
from typing import Any, ClassVar, Protocol

import msgspec

__all__ = [
    "Backend",
    "Capability",
    "Env",
    "Lease",
    "Option",
    "ParsedURL",
    "URLEnv",
    "WatchHandle",
    "WatchSink",
]


class Capability(enum.StrEnum):
    """What a backend can do; the conformance suite skips only what is not declared."""

    #: Runtimes in other processes on the same host see each other.
    CROSS_PROCESS = "cross-process"
    #: Runtimes on other hosts see each other.
    CROSS_HOST = "cross-host"
    #: A crashed Runtime's registrations expire even when no other Runtime is alive.
    SERVER_EXPIRY = "server-expiry"
    #: ``connect(..., instance_id=N)`` is honoured (otherwise the store picks ids).
    CHOSEN_INSTANCE_ID = "chosen-instance-id"
    #: Speaks TLS to the store.
    TLS = "tls"
    #: Authenticates to the store (password, token or client certificate).
    AUTH = "auth"
    #: Watches resume from history after a reconnect instead of re-listing.
    WATCH_HISTORY = "watch-history"


class Lease(msgspec.Struct, frozen=True, gc=False):
    """A Runtime's lease. ``id`` is also its instance id (a non-zero u64)."""

    id: int
    ttl: float


class Env(msgspec.Struct, frozen=True):
    """An environment variable an :class:`Option` reads in a special way (a plain name is read as it is).

    ``file``: the variable names a file; the value is the file's text, without
    surrounding whitespace (``CONSUL_HTTP_TOKEN_FILE``). ``split``: the value is
    part ``part`` (0 or 1) of the text split once at ``split``
    (``ETCDCTL_USER=user:password``). An empty value or a missing part counts
    as unset.
    """

    name: str
    file: bool = False
    split: str | None = None
    part: int = 0


#: What :attr:`Option.env` holds: a variable's name, an :class:`Env`, a tuple of them, or ``None``.
EnvSpec = str | Env | tuple[str | Env, ...] | None


class Option(msgspec.Struct, frozen=True):
    """A backend (or Runtime) option accepted in the URL query or as a keyword.

    ``parse`` turns a URL query string (or a keyword value) into the option's
    value and raises ``ValueError`` naming what is allowed. ``env`` is the
    environment variable read when neither the keyword nor the URL sets it: a
    name, an :class:`Env`, or a tuple of them, the first one set winning
    (waypost's own ``WAYPOST_*`` first, then Dynamo's, then the tools').
    ``secret`` options are never shown in ``repr``, logs or errors.
    ``aliases`` are former names, still accepted (with a ``DeprecationWarning``).
    """

    name: str
    parse: Callable[[Any], Any]
    default: Any = None
    help: str = ""
    env: EnvSpec = None
    secret: bool = False
    aliases: tuple[str, ...] = ()

    @property
    def env_vars(self) -> tuple[Env, ...]:
        """``env`` as a tuple of :class:`Env`, in precedence order."""
        given = () if self.env is None else self.env if isinstance(self.env, tuple) else (self.env,)
        return tuple(Env(item) if isinstance(item, str) else item for item in given)


class URLEnv(msgspec.Struct, frozen=True):
    """Where a URL of a backend's scheme that names no host (``consul://``) takes its host from.

    ``hosts``: variables holding ``[http(s)://]host[:port][,…]``, the first one
    set winning; ``https://`` in it asks for TLS. ``tls``: boolean variables
    (``true``/``false``) asking for TLS. ``tls_scheme``: the scheme the URL
    becomes with TLS (``consuls``). A URL that names a host is left alone.
    """

    hosts: tuple[str, ...] = ()
    tls: tuple[str, ...] = ()
    tls_scheme: str | None = None


class ParsedURL(msgspec.Struct, frozen=True):
    """A discovery URL split into parts. The password and the query's values are never shown in ``repr``."""

    scheme: str
    hosts: tuple[tuple[str, int | None], ...] = ()
    path: str = ""
    username: str | None = None
    password: str | None = None
    query: Mapping[str, str] = msgspec.field(default_factory=dict)
    raw_netloc: str = ""

    def __repr__(self) -> str:
        # The query may hold secret options (password=, token=): only their names are shown.
        user = "" if self.username is None else f", username={self.username!r}"
        return (f"ParsedURL(scheme={self.scheme!r}, hosts={self.hosts!r}, path={self.path!r}{user}, "
                f"query={sorted(self.query)!r})")

    @property
    def redacted(self) -> str:
        """The URL with any password replaced by ``***`` and the query dropped."""
        auth = ""
        if self.username is not None or self.password is not None:
            auth = (self.username or "") + (":***" if self.password is not None else "") + "@"
        hosts = ",".join(h if p is None else f"{h}:{p}" for h, p in self.hosts)
        return f"{self.scheme}://{auth}{hosts}{self.path}"

    def __str__(self) -> str:
        return self.redacted


class WatchSink(Protocol):
    """Where a backend delivers a watch's changes (implemented by the core).

    A backend calls ``reset`` with the complete current state under the
    prefix: first with the initial snapshot, then whenever it had to re-list
    (compaction, reconnect, trimmed history) with the ``reason``, which the
    core turns into the minimal diff plus a ``Resynced`` notice. ``reset`` with
    ``reason=None`` at any later time is a complete state too, delivered as
    the minimal diff without a notice (stores that answer with states rather
    than histories). Between resets it calls ``put``/``delete`` in store order
    with nothing missed. While the store is unreachable it calls
    ``interrupted`` (once per outage is enough) and keeps retrying; when the
    store is back and its history covered the gap it calls ``resumed``
    (a ``Resynced`` notice with nothing to change). ``failed`` ends the watch
    for good. :class:`waypost.core.WatchLoop` makes all of these calls for a
    backend.
    """

    def reset(self, items: Iterable[tuple[str, bytes]], reason: str | None) -> None: ...
    def put(self, key: str, value: bytes) -> None: ...
    def delete(self, key: str) -> None: ...
    def interrupted(self, reason: str) -> None: ...
    def resumed(self, reason: str) -> None: ...
    def failed(self, error: BaseException) -> None: ...


class WatchHandle(Protocol):
    """A running backend watch."""

    def close(self) -> None:
        """Stop; release threads and connections; no sink call after it returns."""


class Backend(abc.ABC):
    """Base class of discovery backends. Subclass it in a plugin.

    A plugin publishes the class under its URL schemes in the entry-point
    group ``waypost.backends`` (``etcd = "waypost.backends.etcd:EtcdBackend"``);
    waypost imports it only when a URL of one of those schemes is used. The
    module must import without its client library (``requires``), so that
    ``waypost backends`` can show the class's manual and ``connect()`` can say
    which extra to install.
    """

    #: URL schemes served (the entry-point names in group ``waypost.backends``).
    schemes: ClassVar[tuple[str, ...]] = ()
    #: Modules the backend needs at run time (checked before ``from_url``), e.g. ``("redis",)``.
    requires: ClassVar[tuple[str, ...]] = ()
    #: The pip extra that installs them, e.g. ``"redis"`` for ``pip install 'waypost[redis]'``.
    extra: ClassVar[str | None] = None
    #: The distribution that ships the backend (for install hints).
    distribution: ClassVar[str] = "waypost"
    capabilities: ClassVar[frozenset[Capability]] = frozenset()
    #: Backend-specific options (URL query or keyword arguments).
    options: ClassVar[tuple[Option, ...]] = ()
    #: Environment variables for Runtime options, e.g. ``{"ttl": "ETCD_LEASE_TTL"}`` (read after the
    #: option's own ``WAYPOST_*`` variable).
    runtime_option_env: ClassVar[Mapping[str, str]] = {}
    #: The variables that fill in a URL of these schemes naming no host (``etcd://``); ``None``: none do.
    url_env: ClassVar[URLEnv | None] = None
    #: Smallest ttl the store supports, in seconds.
    min_ttl: ClassVar[float] = 1.0

    @classmethod
    @abc.abstractmethod
    def from_url(cls, url: ParsedURL, options: Mapping[str, Any]) -> Backend:
        """Build a connected backend; ``options`` holds every declared option, parsed."""

    @abc.abstractmethod
    def grant_lease(self, ttl: float, preferred_id: int | None = None) -> Lease:
        """Grant a lease; honour ``preferred_id`` if the store lets callers pick ids.

        Raise :class:`AlreadyRegistered` if ``preferred_id`` is held by a live lease.
        """

    @abc.abstractmethod
    def keep_alive(self, lease: Lease) -> None:
        """Refresh the lease; raise :class:`LeaseLost` if it no longer exists."""

    @abc.abstractmethod
    def revoke_lease(self, lease_id: int) -> None:
        """Delete the lease and every key attached to it now. Idempotent."""

    @abc.abstractmethod
    def create(self, lease: Lease, key: str, value: bytes) -> None:
        """Store ``key`` attached to ``lease`` only if absent, else :class:`AlreadyRegistered`.

        Raise :class:`LeaseLost` if the lease is gone.
        """

    @abc.abstractmethod
    def replace(self, lease: Lease, key: str, value: bytes) -> None:
        """Overwrite a key this lease already owns (re-registration in one Runtime)."""

    @abc.abstractmethod
    def delete(self, lease: Lease, key: str) -> None:
        """Delete a key this lease owns; a missing key is not an error."""

    @abc.abstractmethod
    def list(self, prefix: str) -> list[tuple[str, bytes]]:
        """Return every ``(key, value)`` under ``prefix``: one consistent snapshot."""

    @abc.abstractmethod
    def watch(self, prefix: str, sink: WatchSink) -> WatchHandle:
        """Start watching ``prefix``.

        Deliver the initial snapshot through ``sink.reset(items, None)`` before
        returning (raise :class:`BackendUnavailable` if that is not possible in
        time), then changes from a background thread, gap-free.
        """

    @abc.abstractmethod
    def close(self) -> None:
        """Release connections and threads. Idempotent."""

    def describe(self) -> str:
        """A redacted, human-readable address of the store for logs and errors."""
        return type(self).__name__
