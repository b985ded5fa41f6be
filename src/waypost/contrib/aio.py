"""waypost for asyncio (the implementation of :mod:`waypost.aio`).

Everything without I/O (names, handles, queries, validation, caches) exists
once, in the core: a Namespace, Component or Endpoint of an asyncio Runtime is
the same class as the synchronous one, and its I/O methods return what this
Runtime's do (coroutines, or :class:`Pending` openers). Only the four objects
that do I/O have twins here, each wrapping its synchronous original through
public seams: :class:`Runtime`, :class:`Registration`, :class:`Watch` (fed by
the core watch's ``notify`` callback) and :class:`Client` (likewise). Every
call that may reach the store runs in the loop's default executor; events are
handed into the loop with ``call_soon_threadsafe``, so waiting for one holds
no thread.

See :mod:`waypost.aio` for the user's manual.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import functools
import logging
import threading
from collections.abc import Callable, Coroutine, Generator, Iterable, Mapping
from types import TracebackType
from typing import Any, Generic, Protocol, TypeAlias, TypeVar

import waypost
from waypost import (
    Closed,
    DeviceType,
    Endpoint,
    EndpointId,
    EventChannel,
    EventSource,
    Instance,
    ModelCard,
    Namespace,
    NoInstances,
    Query,
    RecordEvent,
    RequestPlaneCodec,
    TransportType,
)
from waypost.core import Backend, HandleCache, Lease, ParsedURL, check_timeout

__all__ = ["Client", "Pending", "Registration", "Runtime", "Watch", "connect"]

_log = logging.getLogger("waypost")

T = TypeVar("T")


class _AsyncClosable(Protocol):
    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None: ...


R = TypeVar("R", bound=_AsyncClosable)
Rec = TypeVar("Rec")


class _Opener(Protocol[Rec]):
    """``waypost.Runtime.watch`` and its siblings for other record kinds."""

    def __call__(self, runtime: waypost.Runtime, query: Query | str | None, /, *,
                 notify: Callable[[], None] | None = None) -> waypost.Watch[Rec]: ...


# helpers ---------------------------------------------------------------------------------------
async def _off_loop(fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
    """Run a blocking call in the loop's default executor (keeps contextvars)."""
    loop = asyncio.get_running_loop()
    call = functools.partial(contextvars.copy_context().run, fn, *args, **kwargs)
    return await loop.run_in_executor(None, call)


async def _open_off_loop(factory: Callable[[], T], close: Callable[[T], None]) -> T:
    """Run ``factory`` off the loop; if the awaiting task is cancelled, ``close`` what it built.

    The hand-over is guarded by a lock so an object built around the moment of
    cancellation is either returned or closed, never lost.
    """
    lock = threading.Lock()
    state: dict[str, Any] = {"abandoned": False}

    def build() -> T:
        obj = factory()
        with lock:
            if not state["abandoned"]:
                state["built"] = obj
                return obj
        close(obj)  # the awaiting task is gone: nobody will ever see obj
        return obj

    try:
        return await _off_loop(build)
    except asyncio.CancelledError:
        with lock:
            state["abandoned"] = True
            built = state.get("built")
        if built is not None:
            threading.Thread(target=close, args=(built,), name="waypost-aio-cleanup", daemon=True).start()
        raise


def _waker(loop: asyncio.AbstractEventLoop, event: asyncio.Event) -> Callable[[], None]:
    """A callback for any thread that sets ``event`` in ``loop`` (dropped once the loop is closed)."""

    def wake() -> None:
        with contextlib.suppress(RuntimeError):  # the loop is closed: nobody is listening any more
            loop.call_soon_threadsafe(event.set)

    return wake


class Pending(Generic[R]):
    """Something being opened: ``await`` it, or use it in ``async with``.

    ``obj = await pending`` returns the opened object (close it yourself with
    ``await obj.close()``); ``async with pending as obj:`` opens it and closes
    it when the block ends. Returned by :func:`connect`, ``watch()`` and
    ``client()``. Like a coroutine, it can be awaited once; a ``Pending`` never
    awaited does nothing (Python warns that its coroutine was never awaited).
    """

    __slots__ = ("_coro", "_value")

    def __init__(self, coro: Coroutine[Any, Any, R]) -> None:
        self._coro = coro
        self._value: R | None = None

    def __await__(self) -> Generator[Any, None, R]:
        return self._coro.__await__()

    async def __aenter__(self) -> R:
        self._value = await self._coro
        return self._value

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        value, self._value = self._value, None
        if value is not None:
            await value.__aexit__(exc_type, exc, tb)

    def __repr__(self) -> str:
        return f"<Pending {getattr(self._coro, '__qualname__', self._coro)}>"


# connect + Runtime -------------------------------------------------------------------------------
def connect(url: str | None = None, **options: Any) -> Pending[Runtime]:
    """Connect to a discovery store; the asyncio twin of :func:`waypost.connect` (same URL and options)."""

    async def _connect() -> Runtime:
        return Runtime(await _open_off_loop(lambda: waypost.connect(url, **options), waypost.Runtime.close))

    return Pending(_connect())


class Runtime:
    """A process's connection to discovery (asyncio): one lease, its registrations, watches, clients.

    Made by :func:`connect`, or wraps an existing synchronous Runtime:
    ``waypost.aio.Runtime(waypost.connect(url))``. Closing either closes both.
    """

    def __init__(self, sync: waypost.Runtime) -> None:
        #: The synchronous :class:`waypost.Runtime` underneath.
        self.sync = sync
        self._handles: HandleCache[_Registering, _Listing, Pending[Watch[Instance]], Pending[Client]] = (
            HandleCache(self))

    @property
    def instance_id(self) -> int:
        """This process's instance id (the lease id); changes if the lease is lost and re-granted."""
        return self.sync.instance_id

    @property
    def closed(self) -> bool:
        return self.sync.closed

    @property
    def url(self) -> ParsedURL:
        return self.sync.url

    @property
    def ttl(self) -> float:
        return self.sync.ttl

    @property
    def backend(self) -> Backend:
        """The backend plugin object (its calls block: run them off the loop)."""
        return self.sync.backend

    @property
    def lease(self) -> Lease:
        return self.sync.lease

    @property
    def on_lease_lost(self) -> str:
        return self.sync.on_lease_lost

    @property
    def max_queued(self) -> int:
        return self.sync.max_queued

    @property
    def keepalive_interval(self) -> float:
        return self.sync.keepalive_interval

    def __repr__(self) -> str:
        return f"<aio.Runtime {self.url.redacted} instance_id={self.instance_id:x}{' closed' if self.closed else ''}>"

    # handles: the core's, bound to this Runtime --------------------------------------------
    def namespace(self, name: str) -> AsyncNamespace:
        """The namespace ``name`` (``parent.child`` for a child); the same object for the same name."""
        return self._handles.namespace(name)

    def endpoint(self, endpoint_id: EndpointId | str) -> AsyncEndpoint:
        """The endpoint named by an :class:`EndpointId` or its text (``dyn://ns.comp.ep``, ``ns/comp/ep``)."""
        return self._handles.endpoint(endpoint_id)

    # I/O ---------------------------------------------------------------------------------------
    async def register(
        self,
        endpoint_id: EndpointId | str,
        transport: TransportType,
        device_type: DeviceType | str | None = None,
        request_plane_codec: RequestPlaneCodec | str | None = None,
        metadata: Mapping[str, Any] | None = None,
    ) -> Registration:
        """Register (create-only) or, if this Runtime already serves it, update ``endpoint_id``."""
        sync = await _off_loop(self.sync.register, endpoint_id, transport, device_type, request_plane_codec,
                               metadata)
        return Registration(self, sync)

    async def register_model(self, endpoint_id: EndpointId | str, card: Mapping[str, Any] | bytes | str, *,
                             lora: str | None = None) -> Registration:
        """Publish a model card for ``endpoint_id``; see :meth:`waypost.Runtime.register_model`."""
        return Registration(self, await _off_loop(self.sync.register_model, endpoint_id, card, lora=lora))

    def registrations(self) -> list[Registration]:
        """This Runtime's active registrations (a snapshot; no store access)."""
        return [Registration(self, r) for r in self.sync.registrations()]

    async def list_instances(self, query: Query | str | None = None) -> list[Instance]:
        """Every instance matching ``query`` (default: all), sorted; one store read."""
        return await _off_loop(self.sync.list_instances, query)

    async def list_models(self, query: Query | str | None = None) -> list[ModelCard]:
        """Every model card of the endpoints ``query`` names, sorted; one store read."""
        return await _off_loop(self.sync.list_models, query)

    async def list_event_channels(self, query: Query | str | None = None) -> list[EventChannel]:
        """Every event channel scoped to what ``query`` names, sorted; one store read."""
        return await _off_loop(self.sync.list_event_channels, query)

    async def list_event_sources(self, query: Query | str | None = None) -> list[EventSource]:
        """Every event source scoped to what ``query`` names, sorted; one store read."""
        return await _off_loop(self.sync.list_event_sources, query)

    def watch(self, query: Query | str | None = None) -> Pending[Watch[Instance]]:
        """Watch ``query`` (default: all): ``async with rt.watch(q) as events: async for event in events``."""
        return Pending(Watch._open(self, query, waypost.Runtime.watch))

    def watch_models(self, query: Query | str | None = None) -> Pending[Watch[ModelCard]]:
        """Watch the model cards of ``query``: ``Added``, ``Updated`` (e.g. taints), ``Removed``."""
        return Pending(Watch._open(self, query, waypost.Runtime.watch_models))

    def watch_event_channels(self, query: Query | str | None = None) -> Pending[Watch[EventChannel]]:
        """Watch the event channels scoped to what ``query`` names."""
        return Pending(Watch._open(self, query, waypost.Runtime.watch_event_channels))

    def watch_event_sources(self, query: Query | str | None = None) -> Pending[Watch[EventSource]]:
        """Watch the event sources scoped to what ``query`` names."""
        return Pending(Watch._open(self, query, waypost.Runtime.watch_event_sources))

    def client(self, endpoint_id: EndpointId | str, down_period: float = 5.0) -> Pending[Client]:
        """A live, watch-fed instance set of ``endpoint_id`` with pickers; see :class:`Client`."""
        return Pending(Client._open(self, endpoint_id, down_period))

    async def close(self) -> None:
        """Remove every registration, revoke the lease, close watches and clients. Idempotent."""
        await _off_loop(self.sync.close)

    async def __aenter__(self) -> Runtime:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()


class Registration:
    """One endpoint served by a Runtime (asyncio). ``await unregister()`` or leaving ``async with`` removes it."""

    def __init__(self, runtime: Runtime, sync: waypost.Registration) -> None:
        self.runtime = runtime
        #: The synchronous :class:`waypost.Registration`.
        self.sync = sync

    @property
    def endpoint_id(self) -> EndpointId:
        return self.sync.endpoint_id

    @property
    def fields(self) -> dict[str, Any]:
        return self.sync.fields

    @property
    def kind(self) -> str:
        return self.sync.kind

    @property
    def lora(self) -> str | None:
        return self.sync.lora

    @property
    def slot(self) -> tuple[str, EndpointId, str | None]:
        return self.sync.slot

    @property
    def record(self) -> Instance | ModelCard:
        return self.sync.record

    @property
    def instance(self) -> Instance:
        """The registered instance, under the Runtime's current instance id."""
        return self.sync.instance

    @property
    def model(self) -> ModelCard:
        """The registered model card, under the Runtime's current instance id."""
        return self.sync.model

    @property
    def active(self) -> bool:
        return self.sync.active

    async def update_taints(self, taints: Iterable[str]) -> None:
        """Set a model card's taints; see :meth:`waypost.Registration.update_taints`."""
        await _off_loop(self.sync.update_taints, taints)

    async def unregister(self) -> None:
        """Remove the registration from the store now (no-op if already removed)."""
        await _off_loop(self.sync.unregister)

    async def __aenter__(self) -> Registration:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self.active:
            await self.unregister()

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Registration) and other.sync is self.sync

    def __hash__(self) -> int:
        return hash(id(self.sync))

    def __repr__(self) -> str:
        return f"<aio.Registration {self.endpoint_id} {'active' if self.active else 'removed'}>"


class Watch(Generic[Rec]):
    """Events for a query (asyncio): the snapshot as ``Added`` events, then live changes.

    The core :class:`waypost.Watch` underneath keeps the queue (bounded, with
    the same lag handling); its ``notify`` callback wakes this one in the loop.
    """

    def __init__(self, sync: waypost.Watch[Rec], ready: asyncio.Event) -> None:
        #: The core :class:`waypost.Watch` (do not read events from it: they come here).
        self.sync = sync
        self._ready = ready

    @classmethod
    async def _open(cls, runtime: Runtime, query: Query | str | None, opener: _Opener[Rec]) -> Watch[Rec]:
        ready = asyncio.Event()
        wake = _waker(asyncio.get_running_loop(), ready)
        sync = await _open_off_loop(lambda: opener(runtime.sync, query, notify=wake), waypost.Watch.close)
        return cls(sync, ready)

    @property
    def query(self) -> Query:
        return self.sync.query

    @property
    def instances(self) -> list[Rec]:
        """The watcher's current view, sorted (it may be ahead of the events consumed so far)."""
        return self.sync.instances

    @property
    def closed(self) -> bool:
        return self.sync.closed

    async def get(self, timeout: float | None = None) -> RecordEvent[Rec] | None:
        """Next event, or ``None`` if none came within ``timeout`` seconds (``None``: wait for one).

        Raises :class:`waypost.Closed` once the watch is closed and drained, or
        the error that ended it, exactly as :meth:`waypost.Watch.get` does.
        """
        check_timeout(timeout, "timeout")
        try:
            async with asyncio.timeout(timeout):
                while True:
                    self._ready.clear()  # cleared before looking: no wake-up can be missed
                    event = self.sync.get(timeout=0)
                    if event is not None:
                        return event
                    await self._ready.wait()
        except TimeoutError:
            return None

    async def wait_for(self, predicate: Callable[[RecordEvent[Rec]], bool],
                       timeout: float) -> RecordEvent[Rec] | None:
        """Consume events until one satisfies ``predicate``; ``None`` on timeout."""
        check_timeout(timeout, "timeout")
        try:
            async with asyncio.timeout(timeout):
                while True:
                    event = await self.get()
                    if event is not None and predicate(event):
                        return event
        except TimeoutError:
            return None

    def __aiter__(self) -> Watch[Rec]:
        return self

    async def __anext__(self) -> RecordEvent[Rec]:
        while True:
            try:
                event = await self.get()
            except Closed:
                raise StopAsyncIteration from None
            if event is not None:
                return event

    async def close(self) -> None:
        """Stop the watch and release its thread and connection; ``async for`` then ends. Idempotent."""
        if not self.sync.closed:
            await _off_loop(self.sync.close)

    async def __aenter__(self) -> Watch[Rec]:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()

    def __repr__(self) -> str:
        return f"<aio.Watch {self.query} {'closed' if self.closed else 'open'}>"


class Client:
    """The live instances of one endpoint, fed by a watch (asyncio).

    Only :meth:`wait_for_instances` and :meth:`close` are awaited; reading and
    picking are plain calls on the in-memory set of the core
    :class:`waypost.Client` underneath.
    """

    def __init__(self, sync: waypost.Client, changed: asyncio.Event) -> None:
        #: The core :class:`waypost.Client` holding the instance set.
        self.sync = sync
        self._changed = changed

    @classmethod
    async def _open(cls, runtime: Runtime, endpoint_id: EndpointId | str, down_period: float) -> Client:
        changed = asyncio.Event()
        wake = _waker(asyncio.get_running_loop(), changed)
        sync = await _open_off_loop(lambda: runtime.sync.client(endpoint_id, down_period, notify=wake),
                                    waypost.Client.close)
        return cls(sync, changed)

    @property
    def endpoint_id(self) -> EndpointId:
        return self.sync.endpoint_id

    @property
    def down_period(self) -> float:
        return self.sync.down_period

    @property
    def closed(self) -> bool:
        return self.sync.closed

    def instances(self) -> list[Instance]:
        """All known instances, sorted (including those reported down)."""
        return self.sync.instances()

    def instance_ids(self) -> list[int]:
        return self.sync.instance_ids()

    def available(self) -> list[Instance]:
        """Instances not currently reported down."""
        return self.sync.available()

    async def wait_for_instances(self, timeout: float | None = None, count: int = 1) -> list[Instance]:
        """Wait until at least ``count`` instances are known and return them.

        Raises exactly what :meth:`waypost.Client.wait_for_instances` raises:
        :class:`waypost.NoInstances` after ``timeout`` seconds or once the
        watch feeding the client failed, :class:`waypost.Closed` if it closes.
        """
        check_timeout(timeout, "timeout")
        try:
            async with asyncio.timeout(timeout):
                while True:
                    self._changed.clear()  # cleared before looking: no wake-up can be missed
                    ready = self.sync.poll_instances(count)
                    if ready is not None:
                        return ready
                    await self._changed.wait()
        except TimeoutError:
            have = len(self.sync.instances())
            raise NoInstances(f"{self.endpoint_id}: {have} instance(s) after {timeout} s, wanted {count}") from None

    def round_robin(self) -> Instance:
        """The next available instance in turn; :class:`waypost.NoInstances` if none."""
        return self.sync.round_robin()

    def random(self) -> Instance:
        """A random available instance; :class:`waypost.NoInstances` if none."""
        return self.sync.random()

    def direct(self, instance_id: int) -> Instance:
        """The instance with ``instance_id``; :class:`waypost.NoInstances` if it is not known."""
        return self.sync.direct(instance_id)

    def report_instance_down(self, instance_id: int) -> None:
        """Exclude ``instance_id`` from picks for ``down_period`` seconds."""
        self.sync.report_instance_down(instance_id)

    async def close(self) -> None:
        """Stop the client's watch and release its thread; waiters get :class:`waypost.Closed`. Idempotent."""
        if not self.sync.closed:
            await _off_loop(self.sync.close)

    async def __aenter__(self) -> Client:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()

    def __repr__(self) -> str:
        return f"<aio.Client {self.endpoint_id} instances={len(self.sync.instances())}>"


# What the core handles return when they belong to an asyncio Runtime.
_Registering: TypeAlias = Coroutine[Any, Any, Registration]
_Listing: TypeAlias = Coroutine[Any, Any, list[Instance]]
AsyncNamespace: TypeAlias = Namespace[_Registering, _Listing, Pending[Watch[Instance]], Pending[Client]]
AsyncEndpoint: TypeAlias = Endpoint[_Registering, _Listing, Pending[Watch[Instance]], Pending[Client]]
