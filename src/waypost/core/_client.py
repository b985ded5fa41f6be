"""Client: a live, watch-fed set of one endpoint's instances, with pickers."""

from __future__ import annotations

import itertools
import random as _random
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

from ._config import check_timeout
from ._errors import Closed, NoInstances, NotFound
from ._events import Added, Event, Removed
from ._instance import Instance
from ._names import EndpointId
from ._query import Query
from ._watch import InstanceView

if TYPE_CHECKING:
    from ._spi import WatchHandle

__all__ = ["Client"]


class Client:
    """The live instances of one endpoint, fed by a watch.

    Picks skip instances reported down (for ``down_period`` seconds). If the
    watch fails, the client keeps serving its last snapshot. The set is always
    current (a client never lags behind its watch). ``notify`` (if given) is
    called from the watch's thread whenever the set changed or the client
    closed: the seam the asyncio twin uses.
    """

    def __init__(
        self,
        endpoint_id: EndpointId,
        start: Callable[[InstanceView[Instance]], WatchHandle],
        down_period: float = 5.0,
        on_close: Callable[[Client], None] | None = None,
        notify: Callable[[], None] | None = None,
    ) -> None:
        self.endpoint_id = endpoint_id
        self.down_period = down_period
        self._changed = threading.Condition()
        self._down_until: dict[int, float] = {}
        self._counter = itertools.count()
        self._on_close = on_close
        self._notify = notify
        self._closed = False
        self._view: InstanceView[Instance] = InstanceView(Query.from_endpoint_id(endpoint_id), self._on_events)
        self._by_key: dict[str, Instance] = {}
        self._instances: list[Instance] = []
        self._handle = start(self._view)

    def _on_events(self, events: list[Event]) -> None:
        with self._changed:
            for event in events:
                if isinstance(event, Added):
                    self._by_key[event.instance.key] = event.instance
                elif isinstance(event, Removed):
                    self._by_key.pop(event.instance.key, None)
            self._instances = sorted(self._by_key.values(), key=str)
            self._changed.notify_all()
        if self._notify is not None:
            self._notify()

    # reading ----------------------------------------------------------------
    def instances(self) -> list[Instance]:
        """All known instances, sorted (including those reported down)."""
        with self._changed:
            return list(self._instances)

    def instance_ids(self) -> list[int]:
        return [i.instance_id for i in self.instances()]

    def available(self) -> list[Instance]:
        """Instances not currently reported down."""
        now = time.monotonic()
        with self._changed:
            return [i for i in self._instances if self._down_until.get(i.instance_id, 0.0) <= now]

    def wait_for_instances(self, timeout: float | None = None, count: int = 1) -> list[Instance]:
        """Block until at least ``count`` instances are known; raise :class:`NoInstances` on timeout."""
        deadline = check_timeout(timeout, "timeout")
        with self._changed:
            while (ready := self.poll_instances(count)) is None:
                left = None if deadline is None else deadline - time.monotonic()
                if left is not None and left <= 0:
                    raise NoInstances(
                        f"{self.endpoint_id}: {len(self._instances)} instance(s) after {timeout} s, wanted {count}"
                    )
                self._changed.wait(left)
            return ready

    def poll_instances(self, count: int = 1) -> list[Instance] | None:
        """The instances if at least ``count`` are known, ``None`` if not yet (never blocks).

        Raises :class:`Closed` or :class:`NoInstances` when they never will be
        (the client is closed, or the watch feeding it failed).
        """
        with self._changed:
            if len(self._instances) >= count:
                return list(self._instances)
            if self._closed:
                raise Closed(f"client of {self.endpoint_id} is closed")
            if self._view.error is not None:  # no more updates will come: say why
                raise NoInstances(
                    f"{self.endpoint_id}: the watch feeding this client failed: {self._view.error}"
                ) from self._view.error
            return None

    # picking ----------------------------------------------------------------
    def _pickable(self) -> list[Instance]:
        candidates = self.available()
        if not candidates:
            raise NoInstances(f"no available instance of {self.endpoint_id}")
        return candidates

    def round_robin(self) -> Instance:
        candidates = self._pickable()
        return candidates[next(self._counter) % len(candidates)]

    def random(self) -> Instance:
        return _random.choice(self._pickable())

    def direct(self, instance_id: int) -> Instance:
        """The instance with this id (down or not); :class:`NotFound` if none is known."""
        with self._changed:
            for instance in self._instances:
                if instance.instance_id == instance_id:
                    return instance
        shown = f"{instance_id:x}" if isinstance(instance_id, int) else repr(instance_id)[:40]
        raise NotFound(f"instance {shown} of {self.endpoint_id} is not known")

    def report_instance_down(self, instance_id: int) -> None:
        """Exclude ``instance_id`` from picks for ``down_period`` seconds."""
        with self._changed:
            self._down_until[instance_id] = time.monotonic() + self.down_period

    # lifecycle ----------------------------------------------------------------
    def close(self) -> None:
        with self._changed:
            if self._closed:
                return
            self._closed = True
        try:
            self._handle.close()
        finally:
            with self._changed:
                self._changed.notify_all()
            if self._notify is not None:
                self._notify()
            if self._on_close is not None:
                self._on_close(self)

    @property
    def closed(self) -> bool:
        return self._closed

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<Client {self.endpoint_id} instances={len(self._instances)}>"
