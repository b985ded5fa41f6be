"""waypost's core: names, the Instance wire format, queries, events, errors,
the backend SPI, the backend kit and the Runtime. It imports nothing from
``backends`` or ``contrib``. Backend authors import the SPI and the kit from
here (see ``docs/writing-a-backend.md``)."""

import importlib
from typing import TYPE_CHECKING, Any

from . import faults
from ._config import (
    Setting,
    check_timeout,
    explain_options,
    explain_url,
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
from ._handles import HandleCache, Operations
from ._instance import (
    KEY_ROOT,
    MAX_VALUE_BYTES,
    Rejected,
    decode_batch,
    decode_entry,
    instance_key,
    parse_instance_key,
    record_type,
)
from ._plugins import (
    BackendEntry,
    backend_class,
    installed_backends,
    missing_requirements,
    plugin_manager,
    register_backend,
    register_plugin,
    unregister_plugin,
)
from ._records import BUCKETS, decode_records
from ._runtime import RUNTIME_OPTIONS, random_instance_id
from ._spi import Backend, Capability, Env, Lease, Option, ParsedURL, URLEnv, WatchHandle, WatchSink
from ._watch import skip_value

if TYPE_CHECKING:  # imported on first use (PEP 562): `import waypost` needs neither the kit nor pluggy
    from ._kit import (
        Backoff,
        HostPort,
        Resync,
        Silent,
        TLSFiles,
        WatchLoop,
        WatchRegistry,
        hosts,
        prefix_option,
        tls_files,
        tls_options,
    )
    from .hookspecs import hookimpl

_LAZY = dict.fromkeys(("Backoff", "HostPort", "Resync", "Silent", "TLSFiles", "WatchLoop", "WatchRegistry", "hosts",
                       "prefix_option", "tls_files", "tls_options"), "._kit")
_LAZY["hookimpl"] = ".hookspecs"


def __getattr__(name: str) -> Any:
    if name not in _LAZY:
        raise AttributeError(f"module 'waypost.core' has no attribute {name!r}")
    value = getattr(importlib.import_module(_LAZY[name], __name__), name)
    globals()[name] = value
    return value

__all__ = [
    "AlreadyRegistered",
    "AuthenticationError",
    "BUCKETS",
    "Backend",
    "BackendEntry",
    "BackendNotInstalled",
    "BackendUnavailable",
    "Backoff",
    "Capability",
    "Closed",
    "CodecError",
    "ConfigError",
    "Env",
    "HandleCache",
    "HostPort",
    "InvalidName",
    "KEY_ROOT",
    "Lease",
    "LeaseLost",
    "MAX_VALUE_BYTES",
    "NoInstances",
    "NotFound",
    "Operations",
    "Option",
    "ParsedURL",
    "RUNTIME_OPTIONS",
    "Rejected",
    "Resync",
    "Setting",
    "Silent",
    "TLSFiles",
    "URLEnv",
    "WatchHandle",
    "WatchLoop",
    "WatchRegistry",
    "WatchSink",
    "WaypostError",
    "backend_class",
    "check_timeout",
    "decode_batch",
    "decode_entry",
    "decode_records",
    "explain_options",
    "explain_url",
    "faults",
    "hookimpl",
    "hosts",
    "installed_backends",
    "instance_key",
    "missing_requirements",
    "parse_bool",
    "parse_choice",
    "parse_float",
    "parse_instance_key",
    "parse_int",
    "parse_str",
    "parse_url",
    "plugin_manager",
    "prefix_option",
    "random_instance_id",
    "record_type",
    "register_backend",
    "register_plugin",
    "resolve_options",
    "resolve_url",
    "skip_value",
    "tls_files",
    "tls_options",
    "unregister_plugin",
]
