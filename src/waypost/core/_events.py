"""Watch events.

A watch yields ``Added`` for every instance of its first snapshot, then, in
store order, ``Added`` (an upsert: new or changed instance) and ``Removed``.
When the store loses history or the connection drops, the watch re-lists, emits
the minimal diff as ordinary ``Added``/``Removed`` events and then a
``Resynced`` notice; while the store is unreachable it emits ``Interrupted``
once, so a stalled watch is never silent.
"""

from __future__ import annotations

import msgspec

from ._instance import Instance

__all__ = ["Added", "Event", "Interrupted", "Removed", "Resynced"]


class Added(msgspec.Struct, frozen=True, gc=False):
    """An instance appeared, or its value changed."""

    instance: Instance


class Removed(msgspec.Struct, frozen=True, gc=False):
    """An instance is gone (unregistered, closed, expired or reaped)."""

    instance: Instance


class Resynced(msgspec.Struct, frozen=True, gc=False):
    """The watch re-listed after lost history or a reconnect.

    The ``Added``/``Removed`` events that bring the watcher's view up to date
    come just before this notice; ``added``/``removed`` count them.
    """

    reason: str
    added: int = 0
    removed: int = 0


class Interrupted(msgspec.Struct, frozen=True, gc=False):
    """The store stopped answering; the watch keeps retrying and resyncs later."""

    reason: str


Event = Added | Removed | Resynced | Interrupted
