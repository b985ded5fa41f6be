"""The backend kit: what every backend needs, written once.

A backend translates a handful of store operations (the SPI in
:mod:`waypost.core._spi`); the hard, shared parts live here so that each
backend keeps only what really differs between stores:

* :class:`WatchLoop` runs a watch: one thread, the snapshot, then the
  backend's ``follow``; it owns stopping, outage reporting, backoff,
  re-listing, a bounded join, and it never lets the thread die from data.
* :class:`Backoff` is the one retry schedule.
* :class:`WatchRegistry` remembers a backend's open watches and whether the
  backend is closed (the closed-guard).
* :func:`tls_options` / :func:`tls_files` are the one TLS option set
  (``ca_cert``, ``client_cert``, ``client_key``), validated once, at connect.
* :func:`prefix_option` is the one ``prefix`` option.
* :func:`hosts` parses ``host[:port][,host[:port]…]`` with default ports.

Lease and write semantics stay in each backend: they really differ.
"""

from __future__ import annotations

import abc
import logging
import os
import random
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Any, ClassVar, Generic, TypeVar

import msgspec

from ._config import parse_str
from ._errors import BackendUnavailable, Closed, ConfigError, WaypostError
from ._spi import EnvSpec, Option, ParsedURL, WatchSink

__all__ = [
    "Backoff",
    "HostPort",
    "Resync",
    "Silent",
    "TLSFiles",
    "WatchLoop",
    "WatchRegistry",
    "hosts",
    "prefix_option",
    "tls_files",
    "tls_options",
]

_log = logging.getLogger("waypost")


class Backoff:
    """Exponential backoff with jitter: ``initial``, doubling up to ``maximum`` seconds.

    Jitter (±25 %) keeps many watchers of one restarted store from retrying in step.
    """

    def __init__(self, initial: float = 0.05, maximum: float = 2.0) -> None:
        self.initial = initial
        self.maximum = maximum
        self._next = initial

    def next(self) -> float:
        """The delay before the next attempt; each call doubles the one after it."""
        delay, self._next = self._next, min(self._next * 2, self.maximum)
        return delay * random.uniform(0.75, 1.25)

    def reset(self) -> None:
        """Back to ``initial`` (after a success)."""
        self._next = self.initial


class Resync(Exception):
    """Raised by :meth:`WatchLoop.follow`: the store's history cannot continue the view; re-list."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class Silent(BackendUnavailable):
    """Raised by :meth:`WatchLoop.follow` when the store stopped answering (paused, partitioned).

    Unlike a broken connection, silence is never retried quietly: the watch
    reports :class:`~waypost.Interrupted` at once.
    """


class _Stopped(Exception):
    """The watch was closed: unwind its thread."""


class WatchLoop(abc.ABC):
    """A watch of one key prefix, run by one thread: the backend supplies ``snapshot`` and ``follow``.

    The kit calls :meth:`snapshot` (in the caller's thread when the watch
    starts, so an unreachable store raises from ``watch()``), hands it to the
    sink, then runs :meth:`follow` in the watch's thread. ``follow`` delivers
    changes with :meth:`put` and :meth:`delete` (or :meth:`state`, a complete
    current state that the core diffs), calls :meth:`caught_up` whenever it
    has a working connection, and returns or raises when its connection ends:

    * :class:`Resync` — history is gone (compacted, trimmed, data replaced):
      the kit re-lists and the sink emits the minimal diff plus ``Resynced``;
    * any :class:`~waypost.WaypostError` — an outage: the sink reports
      ``Interrupted`` (a :class:`Silent` store at once; a first break of a
      connection that was healthy for a second is retried quietly once, when
      the backend is :attr:`resumable`), the kit backs off and calls
      ``follow`` again. A resumable backend continues from its history and,
      once :meth:`caught_up`, the sink emits ``Resynced`` with nothing to
      change; any other backend re-lists;
    * anything else — a bug, or data the backend could not handle: logged with
      its traceback and treated like an outage that ends with a re-list (which
      gets past the data), so a watch thread never dies and never stalls.

    ``follow`` must notice a silent store within :attr:`silence_limit`
    seconds (raise :class:`Silent`), and return promptly after
    :meth:`interrupt`. Sink calls made after :meth:`close` began are dropped;
    none happens after ``close`` returns.
    """

    #: Name of the watch's thread.
    thread_name: ClassVar[str] = "waypost-watch"
    #: ``follow`` can continue from where it stopped after a broken connection (the store keeps
    #: a history); otherwise every outage ends with a re-list.
    resumable: ClassVar[bool] = False

    def __init__(self, prefix: str, sink: WatchSink, *, silence_limit: float = 10.0,
                 join_timeout: float = 5.0, on_close: Callable[[WatchLoop], None] | None = None) -> None:
        self.prefix = prefix
        self.silence_limit = silence_limit
        self._sink = sink
        self._join_timeout = join_timeout
        self._on_close = on_close
        self._stop = threading.Event()
        self._lock = threading.RLock()  # held around every sink call; close() takes it
        self._backoff = Backoff()
        self._outage: str | None = None  # why the watch is interrupted, until it is back
        self._healthy_since: float | None = None
        self._thread: threading.Thread | None = None

    # What a backend implements --------------------------------------------------------
    @abc.abstractmethod
    def snapshot(self) -> Iterable[tuple[str, bytes]]:
        """One consistent read of :attr:`prefix`; remember where the store's history continues."""

    @abc.abstractmethod
    def follow(self) -> None:
        """Deliver changes after the last snapshot or change, until the connection ends (see the class)."""

    def interrupt(self) -> None:  # noqa: B027 - optional: many follow() loops wake on their own
        """Make a blocked :meth:`follow` return soon (called by :meth:`close` from another thread)."""

    def release(self) -> None:  # noqa: B027 - optional: not every watch holds a connection
        """Free connections; called once, when the watch's thread ends (or its start failed)."""

    # What the kit gives a backend ------------------------------------------------------------
    @property
    def stopped(self) -> bool:
        return self._stop.is_set()

    def wait(self, seconds: float) -> bool:
        """Sleep ``seconds`` unless closed first; ``True`` if closed."""
        return self._stop.wait(seconds)

    def put(self, key: str, value: bytes) -> None:
        """``key`` now holds ``value`` (in store order)."""
        self._call(self._sink.put, key, value)

    def delete(self, key: str) -> None:
        """``key`` is gone (in store order)."""
        self._call(self._sink.delete, key)

    def state(self, items: Iterable[tuple[str, bytes]]) -> None:
        """The complete current state under the prefix; the core emits the minimal diff, no notice."""
        self._call(self._sink.reset, items, None)

    def caught_up(self) -> None:
        """``follow`` has a working connection: end an outage (resumable backends: nothing was missed)."""
        if self._outage is not None and self.resumable:
            reason, self._outage = f"reconnected after: {self._outage}", None
            self._call(self._sink.resumed, reason)
        if self._healthy_since is None:
            self._healthy_since = time.monotonic()
            self._backoff.reset()

    # The loop --------------------------------------------------------------------------------
    def start(self) -> None:
        """Take the snapshot and hand it over (raising what the store raised), then start the thread."""
        try:
            items = self.snapshot()
            self._sink.reset(items, None)
        except BaseException:
            self.release()
            raise
        with self._lock:  # a close() that came first wins: the thread never starts
            if self._stop.is_set():
                self.release()
                return
            self._thread = threading.Thread(target=self._run, name=self.thread_name, daemon=True)
            self._thread.start()

    def _run(self) -> None:
        resync: str | None = None  # why the next round must re-list first
        try:
            while not self._stop.is_set():
                try:
                    if resync is not None:
                        self._call(self._sink.reset, self.snapshot(), resync)
                        resync = self._outage = None
                        self._healthy_since = None
                    self.follow()
                except _Stopped:
                    return
                except Resync as exc:
                    resync = exc.reason
                except Closed:
                    return  # the backend was closed under the watch: nothing left to retry
                except WaypostError as exc:
                    if self._stop.is_set():
                        return
                    resync = self._outage_began(exc, resync)
                except Exception as exc:  # a bug, or data the backend could not handle
                    if self._stop.is_set():
                        return
                    _log.exception("watch of %s: unexpected error; it re-lists and carries on", self.prefix)
                    # Resuming would meet the same data again: re-list to get past it.
                    resync = self._outage_began(WaypostError(f"unexpected error in the watch: {exc!r}"), None) \
                        or f"recovered from an unexpected error: {exc!r}"
        finally:
            self.release()

    def _outage_began(self, exc: WaypostError, resync: str | None) -> str | None:
        """Report a failed ``follow`` and back off; return why the next round must re-list, if it must."""
        healthy_for = 0.0 if self._healthy_since is None else time.monotonic() - self._healthy_since
        self._healthy_since = None
        if self.resumable and self._outage is None and resync is None and not isinstance(exc, Silent) \
                and healthy_for >= 1.0:
            return None  # the first break of a healthy connection (a member failing over): resume at once
        self._outage = str(exc)
        self._call(self._sink.interrupted, self._outage)
        self.wait(self._backoff.next())
        if self.resumable and resync is None:
            return None  # continue from history; caught_up() ends the outage
        return resync or f"reconnected after: {exc}"

    def _call(self, method: Callable[..., None], *args: Any) -> None:
        with self._lock:
            if self._stop.is_set():
                raise _Stopped
            method(*args)

    def close(self) -> None:
        """Stop: no sink call after this returns; the thread is joined (bounded) and connections freed."""
        with self._lock:  # waits for a sink call in progress
            already = self._stop.is_set()
            self._stop.set()
        if already:
            return
        self.interrupt()
        thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(self._join_timeout)
            if thread.is_alive():
                _log.error("watch of %s did not stop within %.1f s; abandoning its thread", self.prefix,
                           self._join_timeout)
        if self._on_close is not None:
            self._on_close(self)


_W = TypeVar("_W", bound=WatchLoop)


class WatchRegistry(Generic[_W]):
    """A backend's open watches, and whether the backend is closed.

    ``open(watch)`` starts a watch and remembers it; ``close()`` marks the
    backend closed and closes every watch still open. ``check_open()`` is the
    closed-guard every backend call starts with.
    """

    def __init__(self, describe: Callable[[], str]) -> None:
        self._describe = describe
        self._lock = threading.Lock()
        self._watches: set[_W] = set()
        self.closed = False

    def check_open(self) -> None:
        if self.closed:
            raise Closed(f"the {self._describe()} backend is closed")

    def open(self, watch: _W) -> _W:
        """Start ``watch`` (its snapshot is delivered before this returns) and remember it."""
        self.check_open()
        with self._lock:
            self._watches.add(watch)
        try:
            watch.start()
        except BaseException:
            self.forget(watch)
            raise
        return watch

    def forget(self, watch: WatchLoop) -> None:
        with self._lock:
            self._watches.discard(watch)

    def __iter__(self) -> Iterator[_W]:
        with self._lock:
            return iter(list(self._watches))

    def close(self) -> bool:
        """Close every open watch; ``False`` if the backend was closed already."""
        with self._lock:
            if self.closed:
                return False
            self.closed = True
            watches = list(self._watches)
        for watch in watches:
            watch.close()
        return True


# Options every network backend shares -----------------------------------------------------

class TLSFiles(msgspec.Struct, frozen=True, gc=False):
    """PEM files: the CA that verifies the server (``None``: the system's roots) and a client certificate."""

    ca_cert: str | None = None
    client_cert: str | None = None
    client_key: str | None = None

    @property
    def client_pair(self) -> tuple[str, str] | None:
        return (self.client_cert, self.client_key) if self.client_cert and self.client_key else None

    def read(self) -> tuple[bytes | None, bytes | None, bytes | None]:
        """The three files' contents (``None`` where not set): CA, client certificate, client key."""
        return _read(self.ca_cert), _read(self.client_cert), _read(self.client_key)


def _read(path: str | None) -> bytes | None:
    if path is None:
        return None
    with open(path, "rb") as file:
        return file.read()


def _parse_pem_path(value: Any) -> str:
    path = os.path.expanduser(parse_str(value))
    if not path:
        raise ValueError("expected the path of a PEM file")
    return path


def tls_options(*, ca_env: EnvSpec = None, cert_env: EnvSpec = None, key_env: EnvSpec = None) -> tuple[Option, ...]:
    """The TLS options: ``ca_cert``, ``client_cert``, ``client_key`` (PEM files), with environment names."""
    return (
        Option("ca_cert", _parse_pem_path, None, "PEM file of the CA that signed the server's certificate "
               "(default: the system's roots)", env=ca_env, aliases=("ssl_ca_certs",)),
        Option("client_cert", _parse_pem_path, None, "PEM client certificate, for mutual TLS", env=cert_env,
               aliases=("cert_cert", "ssl_certfile")),
        Option("client_key", _parse_pem_path, None, "PEM key of the client certificate", env=key_env,
               aliases=("cert_key", "ssl_keyfile")),
    )


def tls_files(url: ParsedURL, options: Mapping[str, Any], *, tls: bool) -> TLSFiles | None:
    """The TLS files for ``url`` (``None`` without TLS), checked once, at connect.

    TLS options on a plain scheme, a certificate without its key (or the
    reverse) and unreadable files are :class:`~waypost.ConfigError`.
    """
    files = TLSFiles(options.get("ca_cert"), options.get("client_cert"), options.get("client_key"))
    given = [name for name in ("ca_cert", "client_cert", "client_key") if getattr(files, name)]
    if not tls:
        if given:
            raise ConfigError(f"{', '.join(given)}: TLS options need the TLS scheme ({url.scheme}s://…)")
        return None
    if bool(files.client_cert) != bool(files.client_key):
        raise ConfigError("client_cert and client_key go together: a client certificate and its key")
    for name in given:
        path = getattr(files, name)
        if not os.path.isfile(path) or not os.access(path, os.R_OK):
            raise ConfigError(f"{name}: no such file, or not readable: {path!r}")
    return files


def prefix_option(default: str = "", *, separator: str = "/", allow_empty: bool = True, help: str = "") -> Option:
    """The ``prefix`` option: every key the backend uses starts with it (``root`` is its old name).

    A non-empty prefix gets ``separator`` appended when it does not end with it.
    """

    def parse(value: Any) -> str:
        prefix = parse_str(value).lstrip("/") if separator == "/" else parse_str(value)
        if not prefix and not allow_empty:
            raise ValueError(f"expected a non-empty key prefix, e.g. {default!r}")
        if prefix and separator and not prefix.endswith(separator):
            prefix += separator
        return prefix

    return Option("prefix", parse, default, help or "prefix of every key the backend uses; Runtimes see each "
                  "other only with the same prefix", aliases=("root",))


class HostPort(msgspec.Struct, frozen=True, gc=False):
    host: str
    port: int

    def __str__(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host  # an IPv6 literal
        return f"{host}:{self.port}"


def hosts(url: ParsedURL, default_port: int, *, default_host: str | None = "127.0.0.1",
          most: int | None = None, hint: str = "") -> tuple[HostPort, ...]:
    """The URL's hosts with default ports; ``default_host`` when it names none (``None``: required).

    More than ``most`` hosts is a :class:`~waypost.ConfigError` ending with ``hint``.
    """
    found = tuple(HostPort(host or (default_host or ""), port or default_port) for host, port in url.hosts)
    if not found:
        if default_host is None:
            raise ConfigError(f"{url.scheme}:// URL needs at least one host, e.g. {url.scheme}://127.0.0.1:"
                              f"{default_port}")
        found = (HostPort(default_host, default_port),)
    if any(not h.host for h in found):
        raise ConfigError(f"empty host in {url.redacted}")
    if most is not None and len(found) > most:
        raise ConfigError(f"{url.redacted}: takes {'one host' if most == 1 else f'at most {most} hosts'}, "
                          f"got {len(found)}{'; ' + hint if hint else ''}")
    return found
