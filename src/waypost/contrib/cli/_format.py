"""Turning instances and events into terminal lines and JSON lines."""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from typing import Any

from waypost import (
    Added,
    EventChannel,
    EventSource,
    Instance,
    Interrupted,
    ModelCard,
    RecordEvent,
    Removed,
    Resynced,
    Updated,
)

__all__ = ["clock", "event_json", "event_line", "instance_table", "json_line", "printable",
           "record_json", "record_table", "short_id", "transport_text"]

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
    """Compact JSON, UTF-8 kept, but every character a terminal could act on escaped (C1 controls too)."""
    text = json.dumps(value, separators=(",", ":"), ensure_ascii=False)
    if text.isprintable():
        return text
    # Only inside strings can such characters occur; \uXXXX is the same string to any JSON reader.
    return "".join(c if c.isprintable() else json.dumps(c)[1:-1] for c in text)


def record_json(record: Any) -> dict[str, Any]:
    """A record as JSON data: an instance as :meth:`~waypost.Instance.to_dict`, another kind as Dynamo stores it."""
    if isinstance(record, Instance):
        return record.to_dict()
    value: dict[str, Any] = json.loads(record.to_json())
    return value


def event_json(event: RecordEvent[Any], now: float | None = None) -> dict[str, Any]:
    """An event as a JSON object: ``{"time": …, "event": "added", "key": …, "instance": {…}}``.

    Records of every kind sit under ``"instance"`` (the events' field name);
    an ``updated`` event also carries ``"previous"``.
    """
    now = time.time() if now is None else now
    stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(now)) + f".{int(now % 1 * 1000):03d}Z"
    body: dict[str, Any] = {"time": stamp, "event": type(event).__name__.lower()}
    if isinstance(event, Added | Updated | Removed):
        body["key"] = event.instance.key
        body["instance"] = record_json(event.instance)
        if isinstance(event, Updated):
            body["previous"] = record_json(event.previous)
    elif isinstance(event, Resynced):
        body.update(reason=event.reason, added=event.added, removed=event.removed, updated=event.updated)
    else:
        body["reason"] = event.reason
    return body


def _summary(record: Any, detailed: bool) -> str:
    """``dynamo/backend/generate  3fa2…  tcp:…`` for an instance; the model or topic for other kinds."""
    if isinstance(record, Instance):
        where = f"{record.namespace}/{record.component}/{record.endpoint}"
        extra = f"  {_compact(record.metadata)}" if record.metadata and detailed else ""
        return f"{where}  {short_id(record.instance_id)}  {transport_text(record)}{extra}"
    if isinstance(record, ModelCard):
        where = f"{record.namespace}/{record.component}/{record.endpoint}"
        lora = f"  lora={record.lora}" if record.lora else ""
        taints = f"  taints={','.join(record.taints)}" if record.taints else ""
        return printable(f"{where}  {short_id(record.instance_id)}  model={_model_name(record)}{lora}{taints}")
    publisher = record.instance_id if isinstance(record, EventChannel) else record.publisher_id
    where = "/".join(part for part in (record.namespace, record.component, record.endpoint) if part)
    address = f"  {record.address}" if isinstance(record, EventChannel) and record.address else ""
    return printable(f"{where}  topic={record.topic}  {short_id(publisher)}{address}")


def _model_name(card: ModelCard) -> str:
    return card.display_name or card.slug or "?"


def event_line(event: RecordEvent[Any], now: float | None = None) -> str:
    """One human-readable line: ``14:03:07.512  + dynamo/backend/generate  3fa2…  tcp:…``.

    ``+`` added, ``*`` updated, ``-`` removed, ``~`` resynced, ``!`` interrupted.
    """
    stamp = clock(now)
    if isinstance(event, Added | Updated | Removed):
        sign = "+" if isinstance(event, Added) else "*" if isinstance(event, Updated) else "-"
        return f"{stamp}  {sign} {_summary(event.instance, not isinstance(event, Removed))}"
    if isinstance(event, Resynced):
        updated = f", {event.updated} updated" if event.updated else ""
        return (f"{stamp}  ~ resynced ({printable(event.reason)}): {event.added} added, "
                f"{event.removed} removed{updated}")
    assert isinstance(event, Interrupted)
    return f"{stamp}  ! interrupted: {printable(event.reason)}"


MODEL_HEADERS = ("NAMESPACE", "COMPONENT", "ENDPOINT", "INSTANCE", "MODEL", "LORA", "TYPE", "TAINTS")
EVENT_HEADERS = ("NAMESPACE", "COMPONENT", "ENDPOINT", "TOPIC", "PUBLISHER", "TRANSPORT")


def model_row(card: ModelCard) -> tuple[str, ...]:
    return (card.namespace, card.component, card.endpoint, short_id(card.instance_id),
            printable(_model_name(card)), card.lora or "-", printable(card.model_type or "-"),
            printable(",".join(card.taints)) or "-")


def event_row(record: EventChannel | EventSource) -> tuple[str, ...]:
    publisher = record.instance_id if isinstance(record, EventChannel) else record.publisher_id
    transport = (record.address or record.transport_kind or "-") if isinstance(record, EventChannel) else "-"
    return (record.namespace, record.component or "-", record.endpoint or "-", printable(record.topic),
            short_id(publisher), printable(transport))


def record_table(records: Sequence[Any]) -> str:
    """A table of records of one kind: instances, model cards, or event channels/sources."""
    if all(isinstance(r, Instance) for r in records):
        return instance_table(records)
    if all(isinstance(r, ModelCard) for r in records):
        return table(MODEL_HEADERS, [model_row(r) for r in records])
    return table(EVENT_HEADERS, [event_row(r) for r in records])
