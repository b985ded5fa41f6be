"""Namespace → Component → Endpoint: the handles, written once for the sync and the asyncio API.

A handle holds names and its runtime; it never touches the store itself.
Its I/O methods hand the call to the runtime, so what they return is what the
runtime returns: a :class:`~waypost.Registration` from :class:`waypost.Runtime`,
a coroutine from :class:`waypost.aio.Runtime`. The four type parameters say
which (registration, instance list, watch, client).
"""

from __future__ import annotations

import threading
from collections.abc import Mapping
from typing import Any, Generic, Protocol, TypeVar

from ._instance import DeviceType, RequestPlaneCodec, TransportType
from ._names import EndpointId, service_name, validate_namespace, validate_segment
from ._query import Query

__all__ = ["Component", "Endpoint", "HandleCache", "Namespace", "Operations"]

RegT = TypeVar("RegT")
ListT = TypeVar("ListT")
WatchT = TypeVar("WatchT")
ClientT = TypeVar("ClientT")
_RegT_co = TypeVar("_RegT_co", covariant=True)
_ListT_co = TypeVar("_ListT_co", covariant=True)
_WatchT_co = TypeVar("_WatchT_co", covariant=True)
_ClientT_co = TypeVar("_ClientT_co", covariant=True)


class Operations(Protocol[_RegT_co, _ListT_co, _WatchT_co, _ClientT_co]):
    """What a runtime does for its handles (both :class:`waypost.Runtime` and :class:`waypost.aio.Runtime`)."""

    def register(
        self,
        endpoint_id: EndpointId | str,
        transport: TransportType,
        device_type: DeviceType | str | None = None,
        request_plane_codec: RequestPlaneCodec | str | None = None,
        metadata: Mapping[str, Any] | None = None,
    ) -> _RegT_co: ...

    def register_model(self, endpoint_id: EndpointId | str, card: Mapping[str, Any] | bytes | str, *,
                       lora: str | None = None) -> _RegT_co: ...

    def list_instances(self, query: Query | str | None = None) -> _ListT_co: ...

    def watch(self, query: Query | str | None = None) -> _WatchT_co: ...

    def client(self, endpoint_id: EndpointId | str, down_period: float = 5.0) -> _ClientT_co: ...


class HandleCache(Generic[RegT, ListT, WatchT, ClientT]):
    """A runtime's namespaces, cached by name (thread-safe): the same name gives the same object."""

    def __init__(self, runtime: Operations[RegT, ListT, WatchT, ClientT]) -> None:
        self._runtime = runtime
        self._lock = threading.Lock()
        self._namespaces: dict[str, Namespace[RegT, ListT, WatchT, ClientT]] = {}

    def namespace(self, name: str) -> Namespace[RegT, ListT, WatchT, ClientT]:
        validate_namespace(name)
        with self._lock:
            ns = self._namespaces.get(name)
            if ns is None:
                ns = self._namespaces[name] = Namespace(self, name)
            return ns

    def endpoint(self, endpoint_id: EndpointId | str) -> Endpoint[RegT, ListT, WatchT, ClientT]:
        eid = endpoint_id if isinstance(endpoint_id, EndpointId) else EndpointId.parse(endpoint_id)
        return self.namespace(eid.namespace).component(eid.component).endpoint(eid.name)

    @property
    def runtime(self) -> Operations[RegT, ListT, WatchT, ClientT]:
        return self._runtime


class _Scope(Generic[RegT, ListT, WatchT, ClientT]):
    """What Namespace, Component and Endpoint share: the instances their query names."""

    @property
    def runtime(self) -> Operations[RegT, ListT, WatchT, ClientT]:
        raise NotImplementedError

    @property
    def query(self) -> Query:
        raise NotImplementedError

    def list_instances(self) -> ListT:
        """Every instance under this handle, sorted; one store read."""
        return self.runtime.list_instances(self.query)

    def watch(self) -> WatchT:
        """Watch the instances under this handle: the current ones as ``Added``, then changes."""
        return self.runtime.watch(self.query)


class Namespace(_Scope[RegT, ListT, WatchT, ClientT]):
    """A group of components. ``component(name)`` returns the same object for the same name."""

    def __init__(self, cache: HandleCache[RegT, ListT, WatchT, ClientT], name: str) -> None:
        self._cache = cache
        self.name = validate_namespace(name)
        self._components: dict[str, Component[RegT, ListT, WatchT, ClientT]] = {}
        self._lock = threading.Lock()

    @property
    def runtime(self) -> Operations[RegT, ListT, WatchT, ClientT]:
        return self._cache.runtime

    def namespace(self, child: str) -> Namespace[RegT, ListT, WatchT, ClientT]:
        """The child namespace ``{self.name}.{child}``."""
        validate_segment("namespace", child)
        return self._cache.namespace(f"{self.name}.{child}")

    def component(self, name: str) -> Component[RegT, ListT, WatchT, ClientT]:
        validate_segment("component", name)
        with self._lock:
            component = self._components.get(name)
            if component is None:
                component = self._components[name] = Component(self, name)
            return component

    @property
    def query(self) -> Query:
        return Query.namespace(self.name)

    def __repr__(self) -> str:
        return f"<Namespace {self.name}>"


class Component(_Scope[RegT, ListT, WatchT, ClientT]):
    """A named service in a namespace that hosts endpoints."""

    def __init__(self, namespace: Namespace[RegT, ListT, WatchT, ClientT], name: str) -> None:
        self.namespace = namespace
        self.name = validate_segment("component", name)

    @property
    def runtime(self) -> Operations[RegT, ListT, WatchT, ClientT]:
        return self.namespace.runtime

    def service_name(self) -> str:
        """Dynamo's service name: the slug of ``{namespace}_{component}``."""
        return service_name(self.namespace.name, self.name)

    def endpoint(self, name: str) -> Endpoint[RegT, ListT, WatchT, ClientT]:
        return Endpoint(self, name)

    @property
    def query(self) -> Query:
        return Query.component(self.namespace.name, self.name)

    def __repr__(self) -> str:
        return f"<Component {self.namespace.name}/{self.name}>"


class Endpoint(_Scope[RegT, ListT, WatchT, ClientT]):
    """A named entry point of a component; ``register()`` serves it, ``client()`` finds it."""

    def __init__(self, component: Component[RegT, ListT, WatchT, ClientT], name: str) -> None:
        self.component = component
        # A handle is for serving: waypost's own rule (EndpointId alone also takes the names Dynamo writes).
        self.id = EndpointId(component.namespace.name, component.name, validate_segment("endpoint", name))

    @property
    def name(self) -> str:
        return self.id.name

    @property
    def runtime(self) -> Operations[RegT, ListT, WatchT, ClientT]:
        return self.component.runtime

    def register(
        self,
        transport: TransportType,
        device_type: DeviceType | str | None = None,
        request_plane_codec: RequestPlaneCodec | str | None = None,
        metadata: Mapping[str, Any] | None = None,
    ) -> RegT:
        """Serve this endpoint (create-only; an update if this Runtime serves it already)."""
        return self.runtime.register(self.id, transport, device_type, request_plane_codec, metadata)

    def register_model(self, card: Mapping[str, Any] | bytes | str, *, lora: str | None = None) -> RegT:
        """Publish a model card served by this endpoint (``lora``: a LoRA adapter's name); see the Runtime's."""
        return self.runtime.register_model(self.id, card, lora=lora)

    def client(self, down_period: float = 5.0) -> ClientT:
        """A live, watch-fed set of this endpoint's instances, with pickers."""
        return self.runtime.client(self.id, down_period=down_period)

    @property
    def query(self) -> Query:
        return Query.from_endpoint_id(self.id)

    def __repr__(self) -> str:
        return f"<Endpoint {self.id}>"
