"""The other record kinds of Dynamo's discovery plane: model cards, event channels and event sources.

Read off a real ``ai-dynamo-runtime`` 1.6.1 (file store and etcd, byte for byte)::

    v1/mdc/{ns}/{comp}/{ep}/{instance_id:x}[/{lora slug}]
        {"type":"Model","namespace":…,"component":…,"endpoint":…,"instance_id":…,"card_json":{…}
         [,"model_suffix":"{lora slug}"]}
    v1/event_channels/namespace/{ns}/component/{comp}/endpoint/{ep}/topic/{topic}/{publisher_id:x}
        {"type":"EventChannel","scope":{"kind":"endpoint","endpoint":{"namespace":…,"component":…,"name":…}},
         "topic":…,"instance_id":{publisher id},"transport":{"kind":"Zmq","config":{"endpoint":…}}}
    v1/event_sources/…same key layout…
        {"type":"EventSource","scope":{…},"topic":…,"publisher_id":…,"metadata":{…}}

``card_json``, ``scope``, ``transport`` and ``metadata`` are kept as the exact
bytes they were read as (``msgspec.Raw``), so a record written by Dynamo
re-encodes byte for byte; accessors parse them when asked. Decoding is as
lenient and as strict as for endpoint instances: unknown fields are ignored,
names and ids are checked, the key must name the record.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from typing import Any, NamedTuple

import msgspec

from ._errors import CodecError, ConfigError, shorten
from ._instance import KEY_ROOT, MAX_INSTANCE_ID, MAX_VALUE_BYTES, Rejected, oversized, record_type
from ._names import validate_dynamo_namespace, validate_dynamo_segment, validate_namespace, validate_segment

__all__ = ["BUCKETS", "EventChannel", "EventSource", "ModelCard", "decode_records", "lora_slug"]

MODELS = "v1/mdc"
EVENT_CHANNELS = "v1/event_channels"
EVENT_SOURCES = "v1/event_sources"
#: Every key prefix of Dynamo's discovery plane, one per record kind (the file store's bucket directories).
BUCKETS = (KEY_ROOT, MODELS, EVENT_CHANNELS, EVENT_SOURCES)
RESERVED_TAINT_PREFIX = "dynamo.topology/"
_SLUG = re.compile(r"[a-z0-9_-]+")
_DECODE_ERRORS = (msgspec.MsgspecError, RecursionError, UnicodeError, TypeError)


def lora_slug(name: str) -> str:
    """Dynamo's slug of a model or LoRA name: lowercased, every character outside ``[a-z0-9-]`` → ``_``."""
    if not isinstance(name, str) or not name:
        raise ConfigError(f"invalid LoRA name {shorten(name)}: must be a non-empty str")
    return re.sub(r"[^a-z0-9-]", "_", name.lower())


def _json_object(value: msgspec.Raw | bytes | str | Mapping[str, Any], what: str) -> msgspec.Raw:
    """``value`` as the raw bytes of a JSON object (a mapping is encoded compactly, in its order)."""
    if isinstance(value, msgspec.Raw):
        raw = bytes(value)
    elif isinstance(value, bytes | str):
        try:
            raw = value.encode() if isinstance(value, str) else value
        except UnicodeEncodeError:
            raise ConfigError(f"{what} is not valid text (a lone surrogate?)") from None
    elif isinstance(value, Mapping):
        try:
            raw = msgspec.json.encode(value)
        except (TypeError, ValueError, OverflowError) as exc:
            raise ConfigError(f"{what} is not JSON data: {shorten(str(exc), 120)}") from None
    else:
        raise ConfigError(f"{what} must be a JSON object (a mapping, or its JSON text), got {type(value).__name__}")
    try:
        parsed = msgspec.json.decode(raw)
    except _DECODE_ERRORS as exc:
        raise ConfigError(f"{what} is not JSON: {shorten(str(exc), 120)}") from None
    if not isinstance(parsed, dict):
        raise ConfigError(f"{what} must be a JSON object, got a JSON {type(parsed).__name__}")
    return msgspec.Raw(raw.strip())


class _Kind(msgspec.Struct, tag_field="type", frozen=True, gc=False, omit_defaults=True):
    """Base of the record kinds of this module."""

    def to_json(self) -> bytes:
        """Compact UTF-8 JSON, the fields in Dynamo's order."""
        return msgspec.json.encode(self)


class ModelCard(_Kind, tag="Model", frozen=True, gc=False, omit_defaults=True):
    """A model served by an endpoint instance (Dynamo's model deployment card, ``v1/mdc``).

    ``card_json`` is the card itself, kept as the exact JSON it was read or
    given as; the accessors below read the fields a router needs. ``lora`` is
    the LoRA adapter's slug (``None`` for the base model). Cards are attached
    to their Runtime's lease like instances.
    """

    namespace: str
    component: str
    endpoint: str
    instance_id: int
    card_json: msgspec.Raw
    model_suffix: str | None = None

    @property
    def lora(self) -> str | None:
        """The LoRA adapter's slug, ``None`` for a base model."""
        return self.model_suffix

    @property
    def key(self) -> str:
        suffix = f"/{self.model_suffix}" if self.model_suffix is not None else ""
        return f"{MODELS}/{self.namespace}/{self.component}/{self.endpoint}/{self.instance_id:x}{suffix}"

    @property
    def card(self) -> dict[str, Any]:
        """``card_json`` parsed (a new dict each time)."""
        value: dict[str, Any] = msgspec.json.decode(self.card_json)
        return value

    def _field(self, name: str) -> Any:
        return self.card.get(name)

    def _text(self, name: str) -> str | None:
        value = self._field(name)
        return value if isinstance(value, str) else None

    @property
    def display_name(self) -> str | None:
        return self._text("display_name")

    @property
    def slug(self) -> str | None:
        return self._text("slug")

    @property
    def model_type(self) -> str | None:
        return self._text("model_type")

    @property
    def model_input(self) -> str | None:
        return self._text("model_input")

    @property
    def worker_type(self) -> str | None:
        return self._text("worker_type")

    @property
    def context_length(self) -> int | None:
        value = self._field("context_length")
        return value if isinstance(value, int) and not isinstance(value, bool) else None

    @property
    def taints(self) -> tuple[str, ...]:
        """``card_json.runtime_config.taints`` (what Dynamo's ``update_model_taints`` sets), sorted."""
        runtime_config = self._field("runtime_config")
        taints = runtime_config.get("taints") if isinstance(runtime_config, dict) else None
        return tuple(t for t in taints if isinstance(t, str)) if isinstance(taints, list) else ()

    def with_taints(self, taints: Iterable[str]) -> ModelCard:
        """This card with ``runtime_config.taints`` set to ``sorted(taints)``.

        The card is re-encoded compactly (as Dynamo does): its fields keep their order and values, and
        only ``runtime_config.taints`` changes.
        """
        if isinstance(taints, str):
            raise ConfigError(f"taints must be an iterable of strings, not one string: {shorten(taints)}")
        values = list(taints)
        if not all(isinstance(t, str) and t and t.isprintable() for t in values):
            raise ConfigError(f"taints must be non-empty printable strings, got {shorten(values)}")
        values = sorted(set(values))
        reserved = [t for t in values if t.startswith(RESERVED_TAINT_PREFIX)]
        if reserved:  # Dynamo's update_model_taints refuses these too: Dynamo itself sets them
            raise ConfigError(f"taint {reserved[0]!r} uses the reserved prefix {RESERVED_TAINT_PREFIX!r}")
        card = self.card
        runtime_config = card.get("runtime_config")
        card["runtime_config"] = {**(runtime_config if isinstance(runtime_config, dict) else {}), "taints": values}
        return _fits(msgspec.structs.replace(self, card_json=msgspec.Raw(msgspec.json.encode(card))))

    def __str__(self) -> str:
        suffix = f"/{self.model_suffix}" if self.model_suffix is not None else ""
        return f"{self.namespace}/{self.component}/{self.endpoint}/{self.instance_id}{suffix}"


class _Scope(msgspec.Struct, frozen=True, gc=False):
    namespace: str
    component: str | None = None
    name: str | None = None


class _ScopeEnvelope(msgspec.Struct, frozen=True, gc=False):
    kind: str
    endpoint: _Scope | None = None
    component: _Scope | None = None
    namespace: str | _Scope | None = None


_SCOPE_DECODER = msgspec.json.Decoder(_ScopeEnvelope)


class _EventRecord(_Kind, frozen=True, gc=False, omit_defaults=True):
    def _scope(self) -> tuple[str, str | None, str | None]:
        scope: Any = getattr(self, "scope")  # noqa: B009 - declared by each subclass, in Dynamo's order
        envelope = _SCOPE_DECODER.decode(scope)
        inner = envelope.endpoint or envelope.component
        if inner is not None:
            return inner.namespace, inner.component, inner.name
        namespace = envelope.namespace
        if isinstance(namespace, _Scope):
            return namespace.namespace, None, None
        if isinstance(namespace, str):
            return namespace, None, None
        raise CodecError(f"event scope of kind {envelope.kind!r} names no namespace")

    @property
    def namespace(self) -> str:
        return self._scope()[0]

    @property
    def component(self) -> str | None:
        return self._scope()[1]

    @property
    def endpoint(self) -> str | None:
        return self._scope()[2]

    def _key(self, bucket: str, publisher_id: int) -> str:
        namespace, component, endpoint = self._scope()
        path = f"namespace/{namespace}" + (f"/component/{component}" if component else "") + (
            f"/endpoint/{endpoint}" if endpoint else "")
        topic: str = getattr(self, "topic")  # noqa: B009
        return f"{bucket}/{path}/topic/{topic}/{publisher_id:x}"


class EventChannel(_EventRecord, tag="EventChannel", frozen=True, gc=False, omit_defaults=True):
    """Where a publisher's events can be read (``v1/event_channels``): topic, scope and transport."""

    scope: msgspec.Raw
    topic: str
    instance_id: int  # the publisher's id
    transport: msgspec.Raw

    @property
    def key(self) -> str:
        return self._key(EVENT_CHANNELS, self.instance_id)

    @property
    def transport_kind(self) -> str | None:
        """The transport's ``kind`` (``Zmq``…), if it is a string."""
        value = msgspec.json.decode(self.transport)
        kind = value.get("kind") if isinstance(value, dict) else None
        return kind if isinstance(kind, str) else None

    @property
    def address(self) -> str | None:
        """The transport's ``config.endpoint`` (e.g. ``tcp://127.0.0.1:5555`` for ZMQ), if it is a string."""
        value = msgspec.json.decode(self.transport)
        config = value.get("config") if isinstance(value, dict) else None
        address = config.get("endpoint") if isinstance(config, dict) else None
        return address if isinstance(address, str) else None


class EventSource(_EventRecord, tag="EventSource", frozen=True, gc=False, omit_defaults=True):
    """A publisher of events (``v1/event_sources``): topic, scope, publisher id and its metadata."""

    scope: msgspec.Raw
    topic: str
    publisher_id: int
    metadata: msgspec.Raw = msgspec.Raw(b"{}")

    @property
    def key(self) -> str:
        return self._key(EVENT_SOURCES, self.publisher_id)


class _Decoded(NamedTuple):
    decoder: msgspec.json.Decoder[Any]
    check: Any


def _require_object(raw: msgspec.Raw, what: str) -> None:
    """A kept-raw part must decode, all of it, to a JSON object: the accessors then never fail."""
    if not isinstance(msgspec.json.decode(raw), dict):
        raise CodecError(f"{what} is not a JSON object")


def _check_model(card: ModelCard) -> None:
    validate_dynamo_namespace(card.namespace)
    validate_dynamo_segment("component", card.component)
    validate_dynamo_segment("endpoint", card.endpoint)
    if not 0 <= card.instance_id <= MAX_INSTANCE_ID:
        raise CodecError(f"instance_id {card.instance_id} is outside 0..2**64-1")
    _require_object(card.card_json, "card_json")
    if card.model_suffix is not None and _SLUG.fullmatch(card.model_suffix) is None:
        raise CodecError(f"model_suffix {shorten(card.model_suffix)} is not a slug")


def _check_event(record: EventChannel | EventSource) -> None:
    namespace, component, endpoint = record._scope()
    validate_dynamo_namespace(namespace)
    if component is not None:
        validate_dynamo_segment("component", component)
    if endpoint is not None:
        validate_dynamo_segment("endpoint", endpoint)
    _require_object(record.transport if isinstance(record, EventChannel) else record.metadata,
                    "transport" if isinstance(record, EventChannel) else "metadata")
    publisher = record.instance_id if isinstance(record, EventChannel) else record.publisher_id
    if not 0 <= publisher <= MAX_INSTANCE_ID:
        raise CodecError(f"publisher id {publisher} is outside 0..2**64-1")
    if not record.topic or "/" in record.topic or not record.topic.isprintable():
        raise CodecError(f"topic {shorten(record.topic)} cannot be part of a key")


_KINDS: dict[str, _Decoded] = {
    MODELS: _Decoded(msgspec.json.Decoder(ModelCard), _check_model),
    EVENT_CHANNELS: _Decoded(msgspec.json.Decoder(EventChannel), _check_event),
    EVENT_SOURCES: _Decoded(msgspec.json.Decoder(EventSource), _check_event),
}


def decode_records(bucket: str, items: Iterable[tuple[str, bytes]],
                   prefix: str) -> tuple[dict[str, Any], list[Rejected]]:
    """Decode the stored ``(key, value)`` pairs of ``bucket`` whose key starts with ``prefix``.

    Like :func:`~waypost.core.decode_batch` for endpoint instances: a bad value
    is rejected on its own (a value of another ``type`` quietly: ``foreign``),
    and the key must be exactly the record's key.
    """
    kind = _KINDS[bucket]
    decoded: dict[str, Any] = {}
    rejected: list[Rejected] = []
    for key, value in items:
        if not key.startswith(prefix):
            continue
        if len(value) > MAX_VALUE_BYTES:
            rejected.append(Rejected(key, value, oversized(len(value)), False))
            continue
        try:
            if not value.isascii():
                value.decode()  # msgspec does not check the UTF-8 of the bytes it keeps raw
            record = kind.decoder.decode(value)
            kind.check(record)
            if record.key != key:
                raise CodecError(f"key {shorten(key, 120)} does not match its value's {shorten(record.key, 120)}")
        except (*_DECODE_ERRORS, ValueError) as exc:
            tag = record_type(value)
            foreign = tag is not None and tag != kind.decoder.type.__struct_config__.tag
            rejected.append(Rejected(key, value, shorten(str(exc), 200), foreign))
            continue
        decoded[key] = record
    return decoded, rejected


def model_card(namespace: str, component: str, endpoint: str, instance_id: int,
               card: msgspec.Raw | bytes | str | Mapping[str, Any], lora: str | None) -> ModelCard:
    """A checked card for writing (``lora`` is the LoRA's name; its slug names the record)."""
    validate_namespace(namespace)  # what waypost writes keeps waypost's (stricter) naming rule
    validate_segment("component", component)
    validate_segment("endpoint", endpoint)
    suffix = None if lora is None else lora_slug(lora)
    made = ModelCard(namespace, component, endpoint, instance_id, _json_object(card, "a model card"), suffix)
    try:
        _check_model(made)
    except CodecError as exc:
        raise ConfigError(str(exc)) from None
    return _fits(made)


def _fits(card: ModelCard) -> ModelCard:
    """``card``, if every reader will read it: its stored value must not exceed ``MAX_VALUE_BYTES``."""
    size = len(card.to_json())
    if size > MAX_VALUE_BYTES:
        raise ConfigError(f"the model card's stored value would have {size} bytes, more than the "
                          f"{MAX_VALUE_BYTES} readers accept (waypost.core.MAX_VALUE_BYTES)")
    return card
