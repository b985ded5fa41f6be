"""waypost's pluggy hook specifications: the observer manual.

Observers (metrics, logging, tracing) implement any of the ``waypost_on_*``
hooks below and are registered with :func:`waypost.register_plugin` or
through an entry point in group ``waypost.plugins``. Observer hooks are called
synchronously from waypost's threads: keep them fast and never raise
(exceptions are logged and swallowed). With no observer registered, a hook
costs nothing.

Implement hooks with ``waypost.hookimpl``::

    import waypost

    @waypost.hookimpl
    def waypost_on_lease_lost(runtime, old_instance_id, new_instance_id, reason):
        print("lease lost", reason)

    waypost.register_plugin(__import__(__name__))

Backends are not pluggy plugins: a backend is a :class:`waypost.core.Backend`
subclass published under its URL schemes in the entry-point group
``waypost.backends`` (``myscheme = "mypackage.backend:MyBackend"``); see
``docs/writing-a-backend.md``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import pluggy

if TYPE_CHECKING:
    from ._instance import Instance
    from ._query import Query
    from ._runtime import Runtime

PROJECT = "waypost"
hookspec = pluggy.HookspecMarker(PROJECT)
hookimpl = pluggy.HookimplMarker(PROJECT)


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
