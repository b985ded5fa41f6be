"""Watch events.

A watch yields ``Added`` for every record of its first snapshot, then, in
store order, ``Added`` (for endpoint instances an upsert: new or changed),
``Updated`` (model cards and event records: a record that changed, with what
it was) and ``Removed``. When the store loses history or the connection
drops, the watch re-lists, emits the minimal diff as ordinary events and then
a ``Resynced`` notice; while the store is unreachable it emits
``Interrupted`` once, so a stalled watch is never silent.

The events are generic in the record they carry: ``Added[Instance]`` from
:meth:`waypost.Runtime.watch`, ``Added[ModelCard]`` from
:meth:`waypost.Runtime.watch_models`, and so on.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Generic, TypeAlias, TypeVar, Union

import msgspec

if TYPE_CHECKING:
    from ._instance import Instance

__all__ = ["Added", "Event", "Interrupted", "RecordEvent", "Removed", "Resynced", "Updated"]

R = TypeVar("R")


class Added(msgspec.Struct, Generic[R], frozen=True, gc=False):
    """A record appeared (or, for endpoint instances, its value changed)."""

    instance: R

    @property
    def record(self) -> R:
        """The record (the same object as ``instance``, under the name that fits every kind)."""
        return self.instance


class Updated(msgspec.Struct, Generic[R], frozen=True, gc=False):
    """A record changed (e.g. a model card's taints); ``previous`` is what it was."""

    instance: R
    previous: R

    @property
    def record(self) -> R:
        return self.instance


class Removed(msgspec.Struct, Generic[R], frozen=True, gc=False):
    """A record is gone (unregistered, closed, expired or reaped)."""

    instance: R

    @property
    def record(self) -> R:
        return self.instance


class Resynced(msgspec.Struct, frozen=True, gc=False):
    """The watch re-listed after lost history or a reconnect, or its consumer caught up.

    The events that bring the watcher's view up to date come just before this
    notice; ``added``/``removed``/``updated`` count them.
    """

    reason: str
    added: int = 0
    removed: int = 0
    updated: int = 0


class Interrupted(msgspec.Struct, frozen=True, gc=False):
    """The store stopped answering; the watch keeps retrying and resyncs later."""

    reason: str


#: What a watch of any record kind yields.
RecordEvent: TypeAlias = Union[Added[R], Updated[R], Removed[R], Resynced, Interrupted]  # noqa: UP007
#: What a watch of endpoint instances yields.
Event: TypeAlias = Union[Added["Instance"], Updated["Instance"], Removed["Instance"], Resynced, Interrupted]  # noqa: UP007
