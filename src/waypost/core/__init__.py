"""waypost's core: names, the Instance wire format, queries, events, errors,
the backend SPI and the Runtime. It imports nothing from ``backends`` or
``contrib``. Backend authors import the SPI from here."""

from ._config import (
    parse_bool,
    parse_choice,
    parse_float,
    parse_int,
    parse_str,
    parse_url,
    resolve_options,
    resolve_url,
)
from ._errors import (
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
from ._instance import KEY_ROOT, decode_entry, instance_key, parse_instance_key
from ._plugins import (
    BackendEntry,
    backend_class,
    installed_backends,
    plugin_manager,
    register_plugin,
    unregister_plugin,
)
from ._runtime import RUNTIME_OPTIONS, random_instance_id
from ._spi import Backend, Capability, Lease, Option, ParsedURL, WatchHandle, WatchSink
from .hookspecs import hookimpl

__all__ = [
    "AlreadyRegistered",
    "AuthenticationError",
    "Backend",
    "BackendEntry",
    "BackendNotInstalled",
    "BackendUnavailable",
    "Capability",
    "Closed",
    "CodecError",
    "ConfigError",
    "InvalidName",
    "KEY_ROOT",
    "Lease",
    "LeaseLost",
    "NoInstances",
    "NotFound",
    "Option",
    "ParsedURL",
    "RUNTIME_OPTIONS",
    "WatchHandle",
    "WatchSink",
    "WaypostError",
    "backend_class",
    "decode_entry",
    "hookimpl",
    "installed_backends",
    "instance_key",
    "parse_bool",
    "parse_choice",
    "parse_float",
    "parse_instance_key",
    "parse_int",
    "parse_str",
    "parse_url",
    "plugin_manager",
    "random_instance_id",
    "register_plugin",
    "resolve_options",
    "resolve_url",
    "unregister_plugin",
]
