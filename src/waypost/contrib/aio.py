"""waypost for asyncio: the same API as :mod:`waypost`, awaited.

Every name mirrors the synchronous API, so code moves between the two by
adding or removing ``await`` / ``async``::

    import asyncio

    import waypost


    async def main() -> None:
        async with waypost.aio.connect("memory://demo", ttl=5) as rt:   # a waypost.aio.Runtime
            ep = rt.namespace("dynamo").component("backend").endpoint("generate")   # handles: no await

            # serve an endpoint (leaving the block unregisters it)
            async with await ep.register(transport=waypost.TransportType.tcp("10.0.0.5:9000"),
                                         device_type="cuda", metadata={"model": "llama"}) as reg:
                print(reg.instance)

                # list: one store read, sorted
                print(await rt.namespace("dynamo").component("backend").list_instances())
                print(await rt.list_instances(waypost.Query.namespace("dynamo")))

                # find it: a live instance set with pickers (the picks are plain calls)
                async with ep.client() as client:
                    await client.wait_for_instances(timeout=5)
                    instance = client.round_robin()
                    client.report_instance_down(instance.instance_id)

                # watch: the snapshot as Added events, then changes
                async with rt.watch(waypost.Query.component("dynamo", "backend")) as events:
                    async for event in events:
                        print(event)                            # Added / Removed / Resynced / Interrupted
                        if isinstance(event, waypost.Added):
                            break
                    print(await events.get(timeout=0.5))        # None if nothing came in time
                    print(events.instances)                     # the watcher's current view
        # leaving the block unregistered everything and revoked the lease


    asyncio.run(main())

Shapes
    ``connect()``, ``Runtime.watch()``, ``Runtime.client()`` (and the same on
    namespaces, components and endpoints) return a :class:`Pending`: ``await``
    it to get the object (then close it with ``await obj.close()``), or use it
    directly in ``async with`` which opens it and closes it on exit.
    ``register()`` is a coroutine returning a :class:`Registration`, itself an
    async context manager (``async with await ep.register(...) as reg``).
    Handles (``namespace()``, ``component()``, ``endpoint()``) and the
    client's picks (``round_robin()``, ``random()``, ``direct()``,
    ``report_instance_down()``, ``instances()``) are plain calls: they never
    touch the store.

How it runs
    The core is synchronous and thread-safe. Every call that may reach the
    store (connect, register, unregister, list, opening and closing watches,
    clients and the Runtime) runs in the event loop's default executor, never
    on the loop. Watches and clients are fed by the core's watch machinery;
    their events are handed *into* the loop with
    ``loop.call_soon_threadsafe``, so waiting for an event holds no thread on
    the asyncio side. A watch or client belongs to the loop that opened it.

    If a task is cancelled while a Runtime, watch or client is being opened,
    the half-opened object is closed in the background: nothing leaks. A
    cancelled ``register()`` may still take effect (the store write was under
    way); it is owned by the Runtime and removed when the Runtime closes.

Errors
    Exactly the synchronous API's: every failure is a
    :class:`waypost.WaypostError` (``Closed``, ``NoInstances``,
    ``BackendUnavailable``, ``ConfigError``…), raised from the ``await``.

Interoperability
    ``Runtime(sync_runtime)`` wraps an existing :class:`waypost.Runtime`; each
    asyncio object exposes the synchronous object it wraps as ``.sync``.
"""

from __future__ import annotations

import asyncio
import contextvars
import functools
import logging
import threading
from collections.abc import Callable, Coroutine, Generator, Mapping
from types import TracebackType
from typing import Any, Generic, Protocol, TypeVar

from waypost.core._client import Client as _SyncClient
from waypost.core._errors import Closed, NoInstances, WaypostError
from waypost.core._events import Event
from waypost.core._instance import DeviceType, Instance, RequestPlaneCodec, TransportType
from waypost.core._names import EndpointId, service_name, validate_namespace, validate_segment
from waypost.core._query import Query
from waypost.core._runtime import Component as _SyncComponent
from waypost.core._runtime import Endpoint as _SyncEndpoint
from waypost.core._runtime import Namespace as _SyncNamespace
from waypost.core._runtime import Registration as _SyncRegistration
from waypost.core._runtime import Runtime as _SyncRuntime
from waypost.core._runtime import connect as _sync_connect
from waypost.core._spi import Backend, ParsedURL, WatchHandle
from waypost.core._watch import InstanceView
from waypost.core._watch import Watch as _SyncWatch

__all__ = [
    "Client",
    "Component",
    "Endpoint",
    "Namespace",
    "Pending",
    "Registration",
    "Runtime",
    "Watch",
    "connect",
]

_log = logging.getLogger("waypost")

T = TypeVar("T")


class _AsyncClosable(Protocol):
    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None: ...


R = TypeVar("R", bound=_AsyncClosable)


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


def _call_in_loop(loop: asyncio.AbstractEventLoop, callback: Callable[..., None], *args: Any) -> None:
    """Schedule ``callback(*args)`` in ``loop`` from any thread; a closed loop drops it."""
    try:
        loop.call_soon_threadsafe(callback, *args)
    except RuntimeError:  # the loop is closed: nobody is listening any more
        _log.debug("waypost.aio: event loop closed, dropped a watch delivery")


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
    """Connect to a discovery store; the asyncio twin of :func:`waypost.connect`.

    ``async with waypost.aio.connect(url, ttl=5) as rt:`` closes the Runtime
    (unregistering everything, revoking the lease) when the block ends;
    ``rt = await waypost.aio.connect(url)`` leaves closing to ``await rt.close()``.
    URL and options are exactly :func:`waypost.connect`'s; errors
    (:class:`waypost.ConfigError`, :class:`waypost.BackendUnavailable`…) are
    raised from the ``await`` / ``async with``.
    """

    async def _connect() -> Runtime:
        sync = await _open_off_loop(lambda: _sync_connect(url, **options), _SyncRuntime.close)
        return Runtime(sync)

    return Pending(_connect())


class Runtime:
    """A process's connection to discovery (asyncio): one lease, its registrations, watches, clients.

    Made by :func:`connect`, or wraps an existing synchronous Runtime:
    ``waypost.aio.Runtime(waypost.connect(url))``. Closing either closes both.
    """

    def __init__(self, sync: _SyncRuntime) -> None:
        #: The synchronous :class:`waypost.Runtime` underneath.
        self.sync = sync
        self._namespaces: dict[str, Namespace] = {}

    # identity -------------------------------------------------------------------------------
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

    def __repr__(self) -> str:
        return f"<aio.Runtime {self.sync.url.redacted} instance_id={self.instance_id:x}" \
               f"{' closed' if self.closed else ''}>"

    # handles -------------------------------------------------------------------------------
    def namespace(self, name: str) -> Namespace:
        """The namespace ``name`` (``parent.child`` for a child); the same object for the same name."""
        ns = self._namespaces.get(name)
        if ns is None:
            ns = self._namespaces.setdefault(name, Namespace(self, name))
        return ns

    def endpoint(self, endpoint_id: EndpointId | str) -> Endpoint:
        """The endpoint named by an :class:`EndpointId` or its text (``dyn://ns.comp.ep``, ``ns/comp/ep``)."""
        eid = endpoint_id if isinstance(endpoint_id, EndpointId) else EndpointId.parse(endpoint_id)
        return self.namespace(eid.namespace).component(eid.component).endpoint(eid.name)

    # registration ----------------------------------------------------------------------------
    async def register(
        self,
        endpoint_id: EndpointId,
        transport: TransportType,
        device_type: DeviceType | str | None = None,
        request_plane_codec: RequestPlaneCodec | str | None = None,
        metadata: Mapping[str, Any] | None = None,
    ) -> Registration:
        """Register (create-only) or, if this Runtime already serves it, update ``endpoint_id``.

        Raises :class:`waypost.AlreadyRegistered` if another Runtime holds the key.
        """
        sync = await _off_loop(self.sync.register, endpoint_id, transport, device_type,
                               request_plane_codec, metadata)
        return Registration(self, sync)

    def registrations(self) -> list[Registration]:
        """This Runtime's active registrations (a snapshot; no store access)."""
        # A lock-free copy: the core's lock is held across store writes and must not stall the loop.
        return [Registration(self, r) for r in list(self.sync._registrations.values())]

    # reading ----------------------------------------------------------------------------------
    async def list_instances(self, query: Query | None = None) -> list[Instance]:
        """Every instance matching ``query`` (default: all), sorted; one store read."""
        return await _off_loop(self.sync.list_instances, query)

    def watch(self, query: Query | None = None) -> Pending[Watch]:
        """Watch ``query`` (default: all): the current instances as ``Added``, then changes.

        ``async with rt.watch(q) as events: async for event in events: ...``
        """
        return Pending(Watch(self, query or Query.all())._open())

    def client(self, endpoint_id: EndpointId, down_period: float = 5.0) -> Pending[Client]:
        """A live, watch-fed instance set of ``endpoint_id`` with pickers; see :class:`Client`."""
        return Pending(Client(self, endpoint_id, down_period)._open())

    # lifecycle --------------------------------------------------------------------------------
    async def close(self) -> None:
        """Remove every registration, revoke the lease, close watches and clients. Idempotent."""
        await _off_loop(self.sync.close)

    async def __aenter__(self) -> Runtime:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()


# handles ---------------------------------------------------------------------------------------
class _Scope:
    """What Namespace, Component and Endpoint share: the instances their query names."""

    @property
    def runtime(self) -> Runtime:
        raise NotImplementedError

    @property
    def query(self) -> Query:
        raise NotImplementedError

    async def list_instances(self) -> list[Instance]:
        return await self.runtime.list_instances(self.query)

    def watch(self) -> Pending[Watch]:
        return self.runtime.watch(self.query)


class Namespace(_Scope):
    """A group of components (asyncio). ``component(name)`` returns the same object for the same name."""

    def __init__(self, runtime: Runtime, name: str) -> None:
        self._runtime = runtime
        self.name = validate_namespace(name)
        self._components: dict[str, Component] = {}

    @property
    def runtime(self) -> Runtime:
        return self._runtime

    @property
    def sync(self) -> _SyncNamespace:
        """The synchronous :class:`waypost.Namespace` (an escape hatch: it takes the core's lock)."""
        return self.runtime.sync.namespace(self.name)

    def namespace(self, child: str) -> Namespace:
        """The child namespace ``{self.name}.{child}``."""
        validate_segment("namespace", child)
        return self.runtime.namespace(f"{self.name}.{child}")

    def component(self, name: str) -> Component:
        component = self._components.get(name)
        if component is None:
            component = self._components.setdefault(name, Component(self, name))
        return component

    @property
    def query(self) -> Query:
        return Query.namespace(self.name)

    def __repr__(self) -> str:
        return f"<aio.Namespace {self.name}>"


class Component(_Scope):
    """A named service in a namespace that hosts endpoints (asyncio)."""

    def __init__(self, namespace: Namespace, name: str) -> None:
        self.namespace = namespace
        self.name = validate_segment("component", name)

    @property
    def runtime(self) -> Runtime:
        return self.namespace.runtime

    @property
    def sync(self) -> _SyncComponent:
        """The synchronous :class:`waypost.Component`."""
        return self.namespace.sync.component(self.name)

    def service_name(self) -> str:
        """Dynamo's service name: the slug of ``{namespace}_{component}``."""
        return service_name(self.namespace.name, self.name)

    def endpoint(self, name: str) -> Endpoint:
        return Endpoint(self, name)

    @property
    def query(self) -> Query:
        return Query.component(self.namespace.name, self.name)

    def __repr__(self) -> str:
        return f"<aio.Component {self.namespace.name}/{self.name}>"


class Endpoint(_Scope):
    """A named entry point of a component (asyncio): ``await register()`` serves it, ``client()`` finds it."""

    def __init__(self, component: Component, name: str) -> None:
        self.component = component
        self.id = EndpointId(component.namespace.name, component.name, name)

    @property
    def name(self) -> str:
        return self.id.name

    @property
    def runtime(self) -> Runtime:
        return self.component.runtime

    @property
    def sync(self) -> _SyncEndpoint:
        """The synchronous :class:`waypost.Endpoint`."""
        return self.component.sync.endpoint(self.name)

    async def register(
        self,
        transport: TransportType,
        device_type: DeviceType | str | None = None,
        request_plane_codec: RequestPlaneCodec | str | None = None,
        metadata: Mapping[str, Any] | None = None,
    ) -> Registration:
        """Serve this endpoint; see :meth:`Runtime.register`."""
        return await self.runtime.register(self.id, transport, device_type, request_plane_codec, metadata)

    def client(self, down_period: float = 5.0) -> Pending[Client]:
        """``async with ep.client() as client`` or ``client = await ep.client()``."""
        return self.runtime.client(self.id, down_period=down_period)

    @property
    def query(self) -> Query:
        return Query.from_endpoint_id(self.id)

    def __repr__(self) -> str:
        return f"<aio.Endpoint {self.id}>"


class Registration:
    """One endpoint served by a Runtime (asyncio). ``await unregister()`` or leaving ``async with`` removes it."""

    def __init__(self, runtime: Runtime, sync: _SyncRegistration) -> None:
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
    def instance(self) -> Instance:
        """The registered instance, under the Runtime's current instance id."""
        return self.sync.instance

    @property
    def active(self) -> bool:
        return self.sync.active

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


# watches -----------------------------------------------------------------------------------------
class _End:
    """Queue marker: the watch ended (closed, or failed with ``error``)."""

    __slots__ = ()


_END = _End()
_Push = Callable[[list[Event], bool, BaseException | None], None]


def _track(runtime: _SyncRuntime, watch: _SyncWatch | _SyncClient) -> None:
    """Let ``runtime.close()`` close ``watch`` too, as ``Runtime.watch()``/``client()`` do."""
    runtime._track(watch)


class _LoopWatch(_SyncWatch):
    """The core Watch, delivering into an event loop instead of its own queue."""

    def __init__(self, query: Query, start: Callable[[InstanceView], WatchHandle],
                 on_close: Callable[[_SyncWatch], None], loop: asyncio.AbstractEventLoop, push: _Push) -> None:
        self._loop = loop
        self._push = push
        super().__init__(query, start, on_close=on_close)

    def _enqueue(self, events: list[Event]) -> None:
        # Called under the view's lock, in order: deliveries reach the loop in the same order.
        error = self._view.error
        _call_in_loop(self._loop, self._push, list(events), error is not None, error)

    def close(self) -> None:
        if self._closed:
            return
        try:
            super().close()
        finally:
            _call_in_loop(self._loop, self._push, [], True, None)


class Watch:
    """Events for a query (asyncio): the snapshot as ``Added`` events, then live changes.

    Opened by ``rt.watch(query)`` (or ``.watch()`` of a namespace, component or
    endpoint). Iterate it with ``async for`` (ends when the watch is closed),
    or poll with :meth:`get`. Events arrive in the loop through
    ``call_soon_threadsafe``: waiting holds no thread.
    """

    def __init__(self, runtime: Runtime, query: Query) -> None:
        self.runtime = runtime
        self.query = query
        self._queue: asyncio.Queue[Event | _End] = asyncio.Queue()
        self._error: BaseException | None = None
        self._ended = False
        self._sync: _LoopWatch | None = None

    async def _open(self) -> Watch:
        loop = asyncio.get_running_loop()
        runtime = self.runtime.sync

        def build() -> _LoopWatch:
            runtime._check_open()
            watch = _LoopWatch(self.query, runtime._start_watch(self.query), runtime._forget, loop, self._push)
            _track(runtime, watch)
            return watch

        self._sync = await _open_off_loop(build, _LoopWatch.close)
        return self

    def _push(self, events: list[Event], end: bool, error: BaseException | None) -> None:
        # Runs in the loop. Nothing is queued after the end marker: a reader sees
        # every event delivered before the end, then the end, for good.
        if self._ended:
            return
        for event in events:
            self._queue.put_nowait(event)
        if end:
            self._ended = True
            self._error = error
            self._queue.put_nowait(_END)

    @property
    def sync(self) -> _SyncWatch:
        """The core :class:`waypost.Watch` feeding this one (do not iterate it: its events come here)."""
        if self._sync is None:
            raise Closed(f"watch {self.query} was never opened")
        return self._sync

    @property
    def instances(self) -> list[Instance]:
        """The watcher's current view, sorted (may be ahead of the events consumed so far)."""
        return [] if self._sync is None else self._sync.instances

    @property
    def closed(self) -> bool:
        return self._sync is None or self._sync.closed

    async def get(self, timeout: float | None = None) -> Event | None:
        """Next event, or ``None`` if none came within ``timeout`` seconds (``None``: wait forever).

        Raises :class:`waypost.Closed` once the watch is closed and drained, or
        the error that ended it (a :class:`waypost.WaypostError`).
        """
        if timeout is None:
            item = await self._queue.get()
        elif timeout <= 0:
            try:
                item = self._queue.get_nowait()
            except asyncio.QueueEmpty:
                return None
        else:
            try:
                async with asyncio.timeout(timeout):
                    item = await self._queue.get()
            except TimeoutError:
                return None
        if isinstance(item, _End):
            self._queue.put_nowait(item)  # keep later calls ending too
            error = self._error
            if error is None:
                raise Closed(f"watch {self.query} is closed")
            if isinstance(error, WaypostError):
                raise error
            raise WaypostError(f"watch {self.query} failed: {error}") from error
        return item

    async def wait_for(self, predicate: Callable[[Event], bool], timeout: float) -> Event | None:
        """Consume events until one satisfies ``predicate``; ``None`` on timeout."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while (left := deadline - loop.time()) > 0:
            event = await self.get(timeout=left)
            if event is not None and predicate(event):
                return event
        return None

    def __aiter__(self) -> Watch:
        return self

    async def __anext__(self) -> Event:
        while True:
            try:
                event = await self.get()
            except Closed:
                raise StopAsyncIteration from None
            if event is not None:
                return event

    async def close(self) -> None:
        """Stop the watch and release its thread and connection; ``async for`` then ends. Idempotent."""
        if self._sync is not None and not self._sync.closed:
            await _off_loop(self._sync.close)

    async def __aenter__(self) -> Watch:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()

    def __repr__(self) -> str:
        return f"<aio.Watch {self.query} {'closed' if self.closed else 'open'}>"


# clients -----------------------------------------------------------------------------------------
class _LoopClient(_SyncClient):
    """The core Client, also waking an event loop when its instance set changes."""

    def __init__(self, endpoint_id: EndpointId, start: Callable[[InstanceView], WatchHandle],
                 down_period: float, on_close: Callable[[_SyncClient], None],
                 loop: asyncio.AbstractEventLoop, wake: Callable[[], None]) -> None:
        self._loop = loop
        self._wake = wake
        super().__init__(endpoint_id, start, down_period=down_period, on_close=on_close)

    def _on_events(self, events: list[Event]) -> None:
        super()._on_events(events)
        _call_in_loop(self._loop, self._wake)

    def close(self) -> None:
        if self._closed:
            return
        try:
            super().close()
        finally:
            _call_in_loop(self._loop, self._wake)


class Client:
    """The live instances of one endpoint, fed by a watch (asyncio).

    Opened by ``ep.client()``. Only :meth:`wait_for_instances` and
    :meth:`close` are awaited; reading and picking are plain calls on the
    in-memory set. Picks skip instances reported down for ``down_period``
    seconds. If the watch fails, the client keeps serving its last snapshot.
    """

    def __init__(self, runtime: Runtime, endpoint_id: EndpointId, down_period: float = 5.0) -> None:
        self.runtime = runtime
        self.endpoint_id = endpoint_id
        self.down_period = down_period
        self._changed = asyncio.Event()
        self._sync: _LoopClient | None = None

    async def _open(self) -> Client:
        loop = asyncio.get_running_loop()
        runtime = self.runtime.sync
        query = Query.from_endpoint_id(self.endpoint_id)

        def build() -> _LoopClient:
            runtime._check_open()
            client = _LoopClient(self.endpoint_id, runtime._start_watch(query), self.down_period,
                                 runtime._forget, loop, self._changed.set)
            _track(runtime, client)
            return client

        self._sync = await _open_off_loop(build, _LoopClient.close)
        return self

    @property
    def sync(self) -> _SyncClient:
        """The core :class:`waypost.Client` holding the instance set."""
        if self._sync is None:
            raise Closed(f"client of {self.endpoint_id} was never opened")
        return self._sync

    @property
    def closed(self) -> bool:
        return self._sync is None or self._sync._closed

    # reading ----------------------------------------------------------------------------------
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

        Raises :class:`waypost.NoInstances` after ``timeout`` seconds (``None``:
        wait forever) and :class:`waypost.Closed` if the client closes first.
        """
        try:
            async with asyncio.timeout(timeout):
                while True:
                    self._changed.clear()  # cleared before reading: no wake-up can be missed
                    instances = self.sync.instances()
                    if len(instances) >= count:
                        return instances
                    if self.closed:
                        raise Closed(f"client of {self.endpoint_id} is closed")
                    await self._changed.wait()
        except TimeoutError:
            have = len(self.sync.instances())
            raise NoInstances(f"{self.endpoint_id}: {have} instance(s) after {timeout} s, wanted {count}") from None

    # picking ----------------------------------------------------------------------------------
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

    # lifecycle --------------------------------------------------------------------------------
    async def close(self) -> None:
        """Stop the client's watch and release its thread; waiters get :class:`waypost.Closed`. Idempotent."""
        if self._sync is not None and not self._sync._closed:
            await _off_loop(self._sync.close)
        self._changed.set()

    async def __aenter__(self) -> Client:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()

    def __repr__(self) -> str:
        count = 0 if self._sync is None else len(self._sync.instances())
        return f"<aio.Client {self.endpoint_id} instances={count}>"
