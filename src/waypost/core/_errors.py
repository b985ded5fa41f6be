"""The exception tree.

Every error waypost raises on purpose is a :class:`WaypostError`; client
libraries' exceptions are translated at each backend's boundary and chained
as ``__cause__``, so callers never catch a client library's types::

    WaypostError
    ├── ConfigError            (also ValueError)  bad URL, option or environment
    │   └── InvalidName        (also ValueError)  a name breaks the naming rule
    ├── CodecError             (also ValueError)  a stored value does not decode
    ├── BackendUnavailable                       the store cannot be reached in time
    │   └── BackendNotInstalled                  no plugin / missing extra for a scheme
    ├── AuthenticationError                      the store refused our credentials
    ├── LeaseLost                                the Runtime's lease is gone
    ├── AlreadyRegistered                        create-only registration found a key
    ├── NotFound                                 no such registration / instance
    ├── NoInstances                              a Client had nothing to pick
    └── Closed                                   the Runtime, watch or client is closed

Messages never contain credentials: backends build them from redacted URLs.
"""

from __future__ import annotations


class WaypostError(Exception):
    """Base class of every error raised by waypost."""


class ConfigError(WaypostError, ValueError):
    """A URL, option or environment variable is invalid or unknown."""


class InvalidName(ConfigError):
    """A namespace, component or endpoint name breaks the naming rule."""


class CodecError(WaypostError, ValueError):
    """A stored value is not a valid waypost/Dynamo endpoint instance."""


class BackendUnavailable(WaypostError):
    """The discovery store could not be reached within the timeout."""


class BackendNotInstalled(BackendUnavailable):
    """No plugin serves the URL's scheme, or its client library is missing."""


class AuthenticationError(WaypostError):
    """The discovery store rejected the credentials or certificate."""


class LeaseLost(WaypostError):
    """The Runtime's lease expired or was revoked."""


class AlreadyRegistered(WaypostError):
    """A create-only registration found the key held by another Runtime."""


class NotFound(WaypostError):
    """The registration or instance does not exist."""


class NoInstances(WaypostError):
    """A Client was asked to pick an instance but none is available."""


class Closed(WaypostError):
    """The Runtime, watch or client has been closed."""
