"""waypost's pluggy hook specifications: the plugin manual.

Two kinds of plugin attach here:

* **Backends** are distributions that declare an entry point in group
  ``waypost.backends`` whose *name is a URL scheme* and whose value is a module
  (or object) implementing :func:`waypost_backend` and
  :func:`waypost_backend_class`. Only the plugin for the scheme in use is
  imported, so a backend may import its client library at module level.
* **Observers** (metrics, logging, tracing) implement any of the
  ``waypost_on_*`` hooks and are registered with :func:`waypost.register_plugin`
  or through an entry point in group ``waypost.plugins``. Observer hooks are
  called synchronously from waypost's threads: keep them fast and never raise
  (exceptions are logged and swallowed).

Implement hooks with ``waypost.hookimpl``::

    import waypost

    @waypost.hookimpl
    def waypost_on_lease_lost(runtime, old_instance_id, new_instance_id, reason):
        print("lease lost", reason)
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import pluggy

if TYPE_CHECKING:
    from ._instance import Instance
    from ._query import Query
    from ._runtime import Runtime
    from ._spi import Backend, ParsedURL

PROJECT = "waypost"
hookspec = pluggy.HookspecMarker(PROJECT)
hookimpl = pluggy.HookimplMarker(PROJECT)


@hookspec(firstresult=True)
def waypost_backend(url: ParsedURL, options: Mapping[str, Any]) -> Backend | None:
    """Return a connected backend for ``url`` if this plugin owns ``url.scheme``.

    :param url: the parsed discovery URL (credentials inside; never log it,
        use ``url.redacted``).
    :param options: every option the backend class declares, already parsed
        with the precedence keyword > URL query > environment > default.
    :return: a :class:`waypost.core.Backend`, or ``None`` for other schemes.

    The first non-``None`` result wins. Raise :class:`waypost.ConfigError` for
    bad options and :class:`waypost.BackendUnavailable` when the store cannot
    be reached within the timeout.
    """


@hookspec(firstresult=True)
def waypost_backend_class(scheme: str) -> type[Backend] | None:
    """Return the :class:`waypost.core.Backend` subclass serving ``scheme``, or ``None``.

    waypost reads its ``capabilities``, ``options`` and docstring without
    connecting (``waypost backends``, option validation).
    """


@hookspec
def waypost_on_registered(runtime: Runtime, instance: Instance) -> None:
    """An endpoint instance was registered (or re-registered) by ``runtime``."""


@hookspec
def waypost_on_unregistered(runtime: Runtime, instance: Instance) -> None:
    """``runtime`` removed one of its endpoint instances."""


@hookspec
def waypost_on_lease_lost(
    runtime: Runtime, old_instance_id: int, new_instance_id: int | None, reason: str
) -> None:
    """``runtime`` lost its lease.

    ``new_instance_id`` is the id of the replacement lease once everything was
    re-registered, or ``None`` when the Runtime shuts down instead
    (``on_lease_lost="shutdown"``).
    """


@hookspec
def waypost_on_watch_resynced(query: Query, reason: str, added: int, removed: int) -> None:
    """A watch re-listed (lost history, reconnect) and emitted a diff."""


@hookspec
def waypost_on_watch_interrupted(query: Query, reason: str) -> None:
    """A watch lost its store; it keeps retrying and will resync."""


@hookspec
def waypost_on_watch_failed(query: Query, error: BaseException) -> None:
    """A watch ended for good (not a transient outage); clients keep their last snapshot."""


@hookspec
def waypost_on_value_skipped(key: str, reason: str) -> None:
    """A stored value under ``v1/instances`` did not decode and was skipped."""
