"""Turning instances and events into terminal lines and JSON lines."""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from typing import Any

from waypost import Added, Event, Instance, Interrupted, Removed, Resynced

__all__ = ["clock", "event_json", "event_line", "instance_table", "json_line", "printable", "short_id",
           "transport_text"]

INSTANCE_HEADERS = ("NAMESPACE", "COMPONENT", "ENDPOINT", "INSTANCE", "TRANSPORT", "DEVICE", "METADATA")


def clock(now: float | None = None) -> str:
    """Local wall-clock time with milliseconds, e.g. ``14:03:07.512``."""
    now = time.time() if now is None else now
    return time.strftime("%H:%M:%S", time.localtime(now)) + f".{int(now % 1 * 1000):03d}"


def short_id(instance_id: int) -> str:
    """The instance id as in its store key: lowercase hex."""
    return f"{instance_id:x}"


def printable(text: str) -> str:
    """``text`` safe for a terminal line: control and other invisible characters escaped.

    Stored text comes from whoever can write the store: a raw escape sequence
    could rewrite the terminal, a newline could forge table rows.
    """
    if text.isprintable():
        return text
    return "".join(c if c.isprintable() else c.encode("unicode_escape").decode("ascii") for c in text)


def transport_text(instance: Instance) -> str:
    return printable(f"{instance.transport.kind}:{instance.transport.address}")


def _compact(value: Any) -> str:
    return printable(json.dumps(value, separators=(",", ":"), ensure_ascii=False, sort_keys=True))


def instance_row(instance: Instance) -> tuple[str, ...]:
    return (
        instance.namespace,
        instance.component,
        instance.endpoint,
        short_id(instance.instance_id),
        transport_text(instance),
        instance.device_type.value if instance.device_type else "-",
        _compact(instance.metadata) if instance.metadata else "-",
    )


def table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """Left-aligned columns separated by two spaces; the last column is not padded."""
    widths = [max(len(str(cell)) for cell in column) for column in zip(headers, *rows, strict=False)]
    lines = []
    for row in (headers, *rows):
        cells = [str(cell).ljust(width) for cell, width in zip(row[:-1], widths, strict=False)]
        lines.append("  ".join([*cells, str(row[-1])]))
    return "\n".join(lines)


def instance_table(instances: Sequence[Instance]) -> str:
    return table(INSTANCE_HEADERS, [instance_row(i) for i in instances])


def json_line(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False)


def event_json(event: Event, now: float | None = None) -> dict[str, Any]:
    """An event as a JSON object: ``{"time": …, "event": "added", "instance": {…}}``."""
    now = time.time() if now is None else now
    stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(now)) + f".{int(now % 1 * 1000):03d}Z"
    body: dict[str, Any] = {"time": stamp, "event": type(event).__name__.lower()}
    if isinstance(event, Added | Removed):
        body["key"] = event.instance.key
        body["instance"] = event.instance.to_dict()
    elif isinstance(event, Resynced):
        body.update(reason=event.reason, added=event.added, removed=event.removed)
    else:
        body["reason"] = event.reason
    return body


def event_line(event: Event, now: float | None = None) -> str:
    """One human-readable line: ``14:03:07.512  + dynamo/backend/generate  3fa2…  tcp:…``."""
    stamp = clock(now)
    if isinstance(event, Added | Removed):
        sign = "+" if isinstance(event, Added) else "-"
        instance = event.instance
        where = f"{instance.namespace}/{instance.component}/{instance.endpoint}"
        extra = f"  {_compact(instance.metadata)}" if instance.metadata and isinstance(event, Added) else ""
        return f"{stamp}  {sign} {where}  {short_id(instance.instance_id)}  {transport_text(instance)}{extra}"
    if isinstance(event, Resynced):
        return f"{stamp}  ~ resynced ({printable(event.reason)}): {event.added} added, {event.removed} removed"
    assert isinstance(event, Interrupted)
    return f"{stamp}  ! interrupted: {printable(event.reason)}"
