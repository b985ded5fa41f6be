"""waypost: service discovery for distributed runtimes, Dynamo-compatible.

    import waypost

    with waypost.connect("file:///tmp/discovery") as rt:
        ep = rt.namespace("dynamo").component("backend").endpoint("generate")
        ep.register(transport=waypost.TransportType.tcp("10.0.0.5:9000"))
        print(ep.list_instances())

Everything public is importable from this module; ``waypost.aio`` is the
asyncio facade and ``waypost.core`` the backend SPI.
"""

from __future__ import annotations

import typing as _typing

from .core._client import Client
from .core._errors import (
    AlreadyRegistered,
    AuthenticationError,
    BackendNotInstalled,
    BackendUnavailable,
    Closed,
    CodecError,
    ConfigError,
    InvalidName,
    LeaseLost,
    NoInstances,
    NotFound,
    WaypostError,
)
from .core._events import Added, Event, Interrupted, RecordEvent, Removed, Resynced, Updated
from .core._handles import Component, Endpoint, Namespace
from .core._instance import DeviceType, Instance, RequestPlaneCodec, TransportType
from .core._names import EndpointId
from .core._plugins import register_plugin, unregister_plugin
from .core._query import Query
from .core._records import EventChannel, EventSource, ModelCard
from .core._runtime import Registration, Runtime, connect
from .core._spi import Capability
from .core._watch import Watch

if _typing.TYPE_CHECKING:
    from waypost import aio

    from .core.hookspecs import hookimpl

__version__ = "0.1.0"

__all__ = [
    "Added",
    "AlreadyRegistered",
    "AuthenticationError",
    "BackendNotInstalled",
    "BackendUnavailable",
    "Capability",
    "Client",
    "Closed",
    "CodecError",
    "Component",
    "ConfigError",
    "DeviceType",
    "Endpoint",
    "EndpointId",
    "Event",
    "EventChannel",
    "EventSource",
    "Instance",
    "Interrupted",
    "InvalidName",
    "LeaseLost",
    "ModelCard",
    "Namespace",
    "NoInstances",
    "NotFound",
    "Query",
    "RecordEvent",
    "Registration",
    "Removed",
    "RequestPlaneCodec",
    "Resynced",
    "Runtime",
    "TransportType",
    "Updated",
    "Watch",
    "WaypostError",
    "__version__",
    "aio",
    "connect",
    "hookimpl",
    "register_plugin",
    "unregister_plugin",
]


def __getattr__(name: str) -> _typing.Any:
    # Imported on first use, so that `import waypost` stays light: the asyncio facade, and pluggy.
    if name == "aio":
        import importlib

        return importlib.import_module("waypost.aio")
    if name == "hookimpl":
        from .core.hookspecs import hookimpl

        return hookimpl
    raise AttributeError(f"module 'waypost' has no attribute {name!r}")
