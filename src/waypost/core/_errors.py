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
    ├── NoInstances                              a Client had nothing to pick
    │   └── NotFound                             no such instance (``Client.direct``)
    └── Closed                                   the Runtime, watch or client is closed

Messages never contain credentials: backends build them from redacted URLs.
Messages never embed a huge or unprintable value either: :func:`shorten` cuts
any value quoted in a message to about 80 printable characters.
"""

from __future__ import annotations

import reprlib

SHORT = 80
"""About how many characters of a bad value an error message quotes."""


def _short_repr(limit: int) -> reprlib.Repr:
    # reprlib bounds the work as well as the text: it slices strings before
    # repr'ing them and stops descending containers, so a 100 MB string or a
    # 10 000-level list costs no more than a short one.
    r = reprlib.Repr()
    r.maxlevel = 2
    r.maxstring = r.maxother = r.maxlong = limit
    r.maxdict = r.maxlist = r.maxtuple = r.maxset = r.maxfrozenset = r.maxdeque = r.maxarray = 4
    return r


def shorten(value: object, limit: int = SHORT) -> str:
    """``repr(value)`` cut to at most ``limit`` characters, for error messages.

    Never raises and never builds a huge string: a message about a bad value
    must not fail (``repr`` of an int over 4300 digits raises ``ValueError``;
    a user's ``__repr__`` may raise anything) nor carry megabytes into a log.
    ``repr`` escapes control characters and lone surrogates, so the result is
    always printable.
    """
    if type(value) is str:  # the common case; keep its start (reprlib would cut the middle)
        text = repr(value[:limit])
    elif isinstance(value, int) and not isinstance(value, bool) and value.bit_length() > 3 * limit:
        return f"<int of {value.bit_length()} bits>"  # its repr would be > limit digits (or raise)
    else:
        try:
            text = _short_repr(limit).repr(value)
        except Exception:  # a broken __repr__: name the type instead
            text = f"<{type(value).__name__} object>"
    if len(text) > limit:
        text = text[: limit - 3] + "..."
    return text


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


class NoInstances(WaypostError):
    """A Client was asked to pick an instance but none is available."""


class NotFound(NoInstances):
    """The instance asked for by id is not known (``Client.direct``); a :class:`NoInstances` too."""


class Closed(WaypostError):
    """The Runtime, watch or client has been closed."""
