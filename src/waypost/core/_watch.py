"""Turning a backend's raw changes into typed events (one implementation for all backends)."""

from __future__ import annotations

import logging
import threading
import time
from collections import OrderedDict, deque
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import TYPE_CHECKING, Any, Generic, TypeVar

from ._config import check_timeout
from ._errors import Closed, WaypostError
from ._events import Added, Interrupted, RecordEvent, Removed, Resynced, Updated
from ._instance import KEY_ROOT, decode_batch
from ._plugins import notify
from ._query import Query
from ._records import decode_records

if TYPE_CHECKING:
    from ._spi import WatchHandle

__all__ = ["MAX_QUEUED", "InstanceView", "Watch", "decode_items", "skip_value"]

_log = logging.getLogger("waypost")


R = TypeVar("R")
_Events = list[RecordEvent[Any]]


def decode_items(items: Iterable[tuple[str, bytes]], query: Query, bucket: str = KEY_ROOT) -> dict[str, Any]:
    """Decode the ``bucket`` records under ``query``, skipping (with a warning) what does not decode."""
    prefix = query.prefix_of(bucket)
    if bucket == KEY_ROOT:
        decoded, rejected = decode_batch(items, prefix)
    else:
        decoded, rejected = decode_records(bucket, items, prefix)
    for bad in rejected:
        # Another Dynamo record kind (e.g. a Model) is expected, not worth a warning.
        skip_value(bad.key, bad.value, bad.reason, quietly=bad.foreign)
    return decoded


def decode_or_warn(key: str, value: bytes, query: Query, bucket: str = KEY_ROOT) -> Any:
    return decode_items(((key, value),), query, bucket).get(key)


def skip_value(key: str, value: bytes, reason: str, *, quietly: bool = False) -> None:
    """Report a stored key or value that is skipped: one warning per (key, value), and the hook every time.

    Backends call it for what they cannot even hand to the core (a key that is
    not UTF-8, a foreign entry in a change log); ``key`` is shown shortened.
    """
    shown = key if len(key) <= 200 else key[:200] + "…"
    if _first_sighting(key, value):
        (_log.debug if quietly else _log.warning)("skipping %s: %s", ascii(shown)[1:-1], reason)
    notify("waypost_on_value_skipped", key=shown, reason=reason)


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


class InstanceView(Generic[R]):
    """The WatchSink of the core: keeps the current records of one bucket and emits events.

    ``deliver`` receives each batch of events, in order, under the view's lock,
    so batches never interleave. An ``Interrupted`` is emitted once per outage
    and the outage lasts until the next ``reset`` (a re-list) or ``resumed``.
    A changed endpoint instance is an ``Added`` (an upsert, as Dynamo has it);
    a changed record of another kind an ``Updated``.
    """

    def __init__(self, query: Query, deliver: Callable[[_Events], None], bucket: str = KEY_ROOT) -> None:
        self.query = query
        self.bucket = bucket
        self._updates = bucket != KEY_ROOT
        self._deliver = deliver
        self._lock = threading.Lock()
        self._instances: dict[str, R] = {}
        self._raw: dict[str, bytes] = {}  # the stored value of each instance: unchanged values are not decoded again
        self._interruption: str | None = None  # the outage in progress, if any
        self.error: BaseException | None = None

    def instances(self) -> list[R]:
        with self._lock:
            return sorted(self._instances.values(), key=str)

    def changes(self, old: Mapping[str, R], new: Mapping[str, R]) -> _Events:
        """The events from ``old`` to ``new``: removals, then additions and changes, each by key."""
        events: _Events = [Removed(value) for key, value in sorted(old.items()) if key not in new]
        for key, value in sorted(new.items()):
            before = old.get(key)
            if before is None:
                events.append(Added(value))
            elif before != value:
                events.append(Updated(value, before) if self._updates else Added(value))
        return events

    def with_state(self, use: Callable[[Mapping[str, R], str | None], None]) -> None:
        """Call ``use(instances by key, outage in progress)`` with no change delivered meanwhile."""
        with self._lock:
            use(self._instances, self._interruption)

    # WatchSink -----------------------------------------------------------
    def reset(self, items: Iterable[tuple[str, bytes]], reason: str | None) -> None:
        fresh, raw = self._decode_state(items)
        with self._lock:
            events = self.changes(self._instances, fresh)
            self._instances, self._raw = fresh, raw
            notice = None
            if reason is not None:
                self._interruption = None
                notice = _notice(reason, events)
                events.append(notice)
            if events:
                self._deliver(events)
        if notice is not None:
            self._report_resync(notice)

    def _decode_state(self, items: Iterable[tuple[str, bytes]]) -> tuple[dict[str, R], dict[str, bytes]]:
        # Stores that answer with whole states (Consul, a polled directory) repeat mostly unchanged
        # values: reuse what they decoded to before instead of decoding every value again.
        with self._lock:
            known, known_raw = self._instances, self._raw
        fresh: dict[str, R] = {}
        raw: dict[str, bytes] = {}
        changed: dict[str, bytes] = {}
        for key, value in items:
            old = known.get(key)
            if old is not None and known_raw.get(key) == value:
                fresh[key], raw[key] = old, value
            else:
                changed[key] = value
        for key, instance in decode_items(changed.items(), self.query, self.bucket).items():
            fresh[key], raw[key] = instance, changed[key]
        return fresh, raw

    def _report_resync(self, notice: Resynced) -> None:
        _log.info("watch %s resynced (%s): %d added, %d removed, %d updated", self.query, notice.reason,
                  notice.added, notice.removed, notice.updated)
        notify("waypost_on_watch_resynced", query=self.query, reason=notice.reason, added=notice.added,
               removed=notice.removed)

    def put(self, key: str, value: bytes) -> None:
        with self._lock:
            if self._raw.get(key) == value:
                return  # unchanged (a repeated notification)
        record = decode_or_warn(key, value, self.query, self.bucket)
        with self._lock:
            if record is None:
                # A foreign value replaced a record we knew: it is gone as a record.
                self._raw.pop(key, None)
                old = self._instances.pop(key, None)
                if old is not None:
                    self._deliver([Removed(old)])
                return
            self._raw[key] = value
            before = self._instances.get(key)
            if before == record:
                return
            self._instances[key] = record
            self._deliver(self.changes({key: before} if before is not None else {}, {key: record}))

    def delete(self, key: str) -> None:
        with self._lock:
            self._raw.pop(key, None)
            old = self._instances.pop(key, None)
            if old is not None:
                self._deliver([Removed(old)])

    def interrupted(self, reason: str) -> None:
        with self._lock:
            if self._interruption is not None:
                return
            self._interruption = reason
            self._deliver([Interrupted(reason)])
        _log.warning("watch %s interrupted: %s", self.query, reason)
        notify("waypost_on_watch_interrupted", query=self.query, reason=reason)

    def resumed(self, reason: str) -> None:
        with self._lock:
            if self._interruption is None:
                return
            self._interruption = None
            notice = Resynced(reason)
            self._deliver([notice])
        self._report_resync(notice)

    def failed(self, error: BaseException) -> None:
        _log.error("watch %s failed: %s", self.query, error)
        with self._lock:
            self.error = error
            self._deliver([])
        notify("waypost_on_watch_failed", query=self.query, error=error)


#: Default bound of a watch's event queue (Dynamo's channel size).
MAX_QUEUED = 4096


def _key(record: Any) -> str:
    key: str = record.key  # every record kind knows its store key
    return key


def _notice(reason: str, events: _Events) -> Resynced:
    counts = {kind: sum(isinstance(e, kind) for e in events) for kind in (Added, Removed, Updated)}
    return Resynced(reason, counts[Added], counts[Removed], counts[Updated])


class Watch(Generic[R]):
    """Events for a query: the snapshot as ``Added`` events, then live changes.

    Iterate it (blocking), or poll with :meth:`get`. A context manager; closing
    it stops its thread and connection and ends iteration.

    The queue of undelivered events is bounded (``max_queued``). A consumer
    that falls further behind loses the backlog, never the truth: the watch
    keeps its view current, and the consumer's next :meth:`get` starts the
    minimal diff from what it had consumed to now, followed by a ``Resynced``
    notice. ``notify`` (if given) is called from the watch's thread whenever
    events were queued or the watch ended: the seam the asyncio twin uses.
    """

    def __init__(self, query: Query, start: Callable[[InstanceView[R]], WatchHandle],
                 on_close: Callable[[Watch[R]], None] | None = None, *,
                 notify: Callable[[], None] | None = None, max_queued: int = MAX_QUEUED,
                 bucket: str = KEY_ROOT) -> None:
        self.query = query
        self._cond = threading.Condition()
        self._queue: deque[RecordEvent[R]] = deque()
        self._max_queued = max_queued
        self._lagging = False  # the backlog was dropped: the next get() catches up
        self._consumed: dict[str, R] = {}  # what the events handed out so far add up to
        self._ended = False
        self._notify = notify
        self._view: InstanceView[R] = InstanceView(query, self._enqueue, bucket)
        self._on_close = on_close
        self._closed = False
        self._close_lock = threading.Lock()
        self._handle = start(self._view)

    def _enqueue(self, events: _Events) -> None:
        # Called under the view's lock, in order.
        with self._cond:
            if not self._lagging:
                if len(self._queue) + len(events) > self._max_queued:
                    self._lagging = True
                    self._queue.clear()
                else:
                    self._queue.extend(events)
            if self._view.error is not None:
                self._ended = True
            self._cond.notify_all()
        if self._notify is not None:
            self._notify()

    @property
    def instances(self) -> list[R]:
        """The watcher's current view, sorted (it may be ahead of the events consumed so far)."""
        return self._view.instances()

    def get(self, timeout: float | None = None) -> RecordEvent[R] | None:
        """Next event, or ``None`` if none came within ``timeout`` seconds (``None``: wait for one).

        Raises :class:`Closed` once the watch is closed and drained, or the
        error that ended it.
        """
        deadline = check_timeout(timeout, "timeout")
        while True:
            with self._cond:
                while not self._queue and not self._lagging:
                    if self._ended:
                        self._raise_end()
                    left = None if deadline is None else deadline - time.monotonic()
                    if left is not None and left <= 0:
                        return None
                    self._cond.wait(left)
                if self._queue:
                    return self._hand_out(self._queue.popleft())
            self._catch_up()

    def _hand_out(self, event: RecordEvent[R]) -> RecordEvent[R]:
        if isinstance(event, Added | Updated):
            self._consumed[_key(event.instance)] = event.instance
        elif isinstance(event, Removed):
            del self._consumed[_key(event.instance)]
        return event

    def _catch_up(self) -> None:
        """Queue the minimal diff from what the consumer has to the current view, then ``Resynced``."""

        def diff(current: Mapping[str, R], outage: str | None) -> None:
            with self._cond:
                if not self._lagging:
                    return
                events = self._view.changes(self._consumed, current)
                notice = _notice(f"the consumer fell behind by more than {self._max_queued} events", events)
                self._queue.extend([*events, notice, *([Interrupted(outage)] if outage else [])])
                self._lagging = False
            self._view._report_resync(notice)

        self._view.with_state(diff)

    def _raise_end(self) -> None:
        error = self._view.error
        if error is None:
            raise Closed(f"watch {self.query} is closed")
        if isinstance(error, WaypostError):
            raise error
        raise WaypostError(f"watch {self.query} failed: {error}") from error

    def wait_for(self, predicate: Callable[[RecordEvent[R]], bool], timeout: float) -> RecordEvent[R] | None:
        """Consume events until one satisfies ``predicate``; ``None`` on timeout."""
        deadline = check_timeout(timeout, "timeout")
        while True:
            left = None if deadline is None else deadline - time.monotonic()
            if left is not None and left <= 0:
                return None
            event = self.get(timeout=left)
            if event is not None and predicate(event):
                return event

    def __iter__(self) -> Iterator[RecordEvent[R]]:
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
            with self._cond:
                self._ended = True
                self._cond.notify_all()
            if self._notify is not None:
                self._notify()
            if self._on_close is not None:
                self._on_close(self)

    @property
    def closed(self) -> bool:
        return self._closed

    def __enter__(self) -> Watch[R]:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<Watch {self.query} {'closed' if self._closed else 'open'}>"
