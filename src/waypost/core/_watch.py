"""Turning a backend's raw changes into typed events (one implementation for all backends)."""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable, Iterator
from typing import TYPE_CHECKING

from ._errors import Closed, CodecError, WaypostError
from ._events import Added, Event, Interrupted, Removed, Resynced
from ._instance import Instance, decode_entry
from ._plugins import notify
from ._query import Query

if TYPE_CHECKING:
    from ._spi import WatchHandle

__all__ = ["InstanceView", "Watch", "decode_items"]

_log = logging.getLogger("waypost")


def decode_items(items: Iterable[tuple[str, bytes]], query: Query) -> dict[str, Instance]:
    """Decode ``(key, value)`` pairs under ``query``, skipping (with a warning) what does not decode."""
    decoded: dict[str, Instance] = {}
    for key, value in items:
        instance = decode_or_warn(key, value, query)
        if instance is not None:
            decoded[key] = instance
    return decoded


def decode_or_warn(key: str, value: bytes, query: Query) -> Instance | None:
    if not query.matches_key(key):
        return None
    try:
        return decode_entry(key, value)
    except CodecError as exc:
        if _first_sighting(key, value):
            if b'"type":"Endpoint"' in value or not value.lstrip().startswith(b"{"):
                _log.warning("skipping undecodable value at %s: %s", key, exc)
            else:  # another Dynamo record type (e.g. a Model): expected, not worth a warning
                _log.debug("skipping non-endpoint value at %s: %s", key, exc)
        notify("waypost_on_value_skipped", key=key, reason=str(exc))
        return None


_seen_bad: OrderedDict[tuple[str, int], None] = OrderedDict()
_seen_bad_lock = threading.Lock()


def _first_sighting(key: str, value: bytes) -> bool:
    """True the first time this bad value is met, so pollers warn once, not on every read."""
    marker = (key, hash(value))
    with _seen_bad_lock:
        if marker in _seen_bad:
            _seen_bad.move_to_end(marker)
            return False
        _seen_bad[marker] = None
        if len(_seen_bad) > 4096:
            _seen_bad.popitem(last=False)
        return True


class InstanceView:
    """The WatchSink of the core: keeps the current instances and emits events.

    ``deliver`` receives each batch of events, in order, under the view's lock,
    so batches never interleave.
    """

    def __init__(self, query: Query, deliver: Callable[[list[Event]], None]) -> None:
        self.query = query
        self._deliver = deliver
        self._lock = threading.Lock()
        self._instances: dict[str, Instance] = {}
        self._interrupted = False
        self.error: BaseException | None = None

    def instances(self) -> list[Instance]:
        with self._lock:
            return sorted(self._instances.values(), key=str)

    # WatchSink -----------------------------------------------------------
    def reset(self, items: Iterable[tuple[str, bytes]], reason: str | None) -> None:
        fresh = decode_items(items, self.query)
        with self._lock:
            events: list[Event] = [Removed(old) for key, old in sorted(self._instances.items()) if key not in fresh]
            events += [Added(new) for key, new in sorted(fresh.items()) if self._instances.get(key) != new]
            self._instances = fresh
            self._interrupted = False
            notice = None
            if reason is not None:
                removed = sum(isinstance(e, Removed) for e in events)
                notice = Resynced(reason, len(events) - removed, removed)
                events.append(notice)
            self._deliver(events)
        if notice is not None:
            _log.info("watch %s resynced (%s): %d added, %d removed", self.query, reason, notice.added,
                      notice.removed)
            notify("waypost_on_watch_resynced", query=self.query, reason=notice.reason, added=notice.added,
                   removed=notice.removed)

    def put(self, key: str, value: bytes) -> None:
        instance = decode_or_warn(key, value, self.query)
        with self._lock:
            self._interrupted = False
            if instance is None:
                # A foreign value replaced an instance we knew: it is gone as an instance.
                old = self._instances.pop(key, None)
                if old is not None:
                    self._deliver([Removed(old)])
                return
            if self._instances.get(key) == instance:
                return
            self._instances[key] = instance
            self._deliver([Added(instance)])

    def delete(self, key: str) -> None:
        with self._lock:
            self._interrupted = False
            old = self._instances.pop(key, None)
            if old is not None:
                self._deliver([Removed(old)])

    def interrupted(self, reason: str) -> None:
        with self._lock:
            if self._interrupted:
                return
            self._interrupted = True
            self._deliver([Interrupted(reason)])
        _log.warning("watch %s interrupted: %s", self.query, reason)
        notify("waypost_on_watch_interrupted", query=self.query, reason=reason)

    def failed(self, error: BaseException) -> None:
        _log.error("watch %s failed: %s", self.query, error)
        with self._lock:
            self.error = error
            self._deliver([])
        notify("waypost_on_watch_failed", query=self.query, error=error)


_CLOSED = object()


class Watch:
    """Events for a query: the snapshot as ``Added`` events, then live changes.

    Iterate it (blocking), or poll with :meth:`get`. A context manager; closing
    it stops its thread and connection and ends iteration.
    """

    def __init__(self, query: Query, start: Callable[[InstanceView], WatchHandle],
                 on_close: Callable[[Watch], None] | None = None) -> None:
        self.query = query
        self._queue: queue.SimpleQueue[Event | object] = queue.SimpleQueue()
        self._view = InstanceView(query, self._enqueue)
        self._on_close = on_close
        self._closed = False
        self._close_lock = threading.Lock()
        self._handle = start(self._view)

    def _enqueue(self, events: list[Event]) -> None:
        for event in events:
            self._queue.put(event)
        if self._view.error is not None:
            self._queue.put(_CLOSED)

    @property
    def instances(self) -> list[Instance]:
        """The watcher's current view, sorted."""
        return self._view.instances()

    def get(self, timeout: float | None = None) -> Event | None:
        """Next event, or ``None`` if none came within ``timeout`` seconds.

        Raises :class:`Closed` once the watch is closed and drained, or the
        error that ended it.
        """
        try:
            item = self._queue.get(timeout=timeout) if timeout is None or timeout > 0 else self._queue.get_nowait()
        except queue.Empty:
            return None
        if item is _CLOSED:
            self._queue.put(_CLOSED)  # keep later calls ending too
            if self._view.error is not None:
                error = self._view.error
                if isinstance(error, WaypostError):
                    raise error
                raise WaypostError(f"watch {self.query} failed: {error}") from error
            raise Closed(f"watch {self.query} is closed")
        return item  # type: ignore[return-value]

    def wait_for(self, predicate: Callable[[Event], bool], timeout: float) -> Event | None:
        """Consume events until one satisfies ``predicate``; ``None`` on timeout."""
        deadline = time.monotonic() + timeout
        while (left := deadline - time.monotonic()) > 0:
            event = self.get(timeout=left)
            if event is not None and predicate(event):
                return event
        return None

    def __iter__(self) -> Iterator[Event]:
        while True:
            try:
                event = self.get()
            except Closed:
                return
            if event is not None:
                yield event

    def close(self) -> None:
        with self._close_lock:
            if self._closed:
                return
            self._closed = True
        try:
            self._handle.close()
        finally:
            self._queue.put(_CLOSED)
            if self._on_close is not None:
                self._on_close(self)

    @property
    def closed(self) -> bool:
        return self._closed

    def __enter__(self) -> Watch:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<Watch {self.query} {'closed' if self._closed else 'open'}>"
