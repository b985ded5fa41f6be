"""The Instance type and its wire format (Dynamo-compatible, design §3).

A stored value is compact UTF-8 JSON with fields in Dynamo's order::

    {"type":"Endpoint","component":…,"endpoint":…,"namespace":…,
     "instance_id":…,"transport":{"tcp":…},"device_type":…,
     "request_plane_codec":…}

``device_type`` and ``request_plane_codec`` are written only when set, and so
is waypost's own ``metadata`` object. Readers ignore unknown fields.
"""

from __future__ import annotations

import enum
import functools
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from ._errors import CodecError, ConfigError, InvalidName
from ._names import EndpointId, validate_namespace, validate_segment

__all__ = [
    "KEY_ROOT",
    "DeviceType",
    "Instance",
    "RequestPlaneCodec",
    "TransportType",
    "decode_entry",
    "instance_key",
    "parse_instance_key",
]

KEY_ROOT = "v1/instances"
MAX_INSTANCE_ID = 2**64 - 1
TransportKind = Literal["nats_tcp", "http", "tcp"]
_TRANSPORT_KINDS: tuple[TransportKind, ...] = ("nats_tcp", "http", "tcp")


class DeviceType(enum.StrEnum):
    """Where an instance runs its work."""

    CPU = "cpu"
    CUDA = "cuda"


class RequestPlaneCodec(enum.StrEnum):
    """How an instance encodes request-plane messages."""

    MSGPACK = "msgpack"
    JSON = "json"


@dataclass(frozen=True, slots=True)
class TransportType:
    """How to reach an instance; the address is opaque and kept verbatim."""

    kind: TransportKind
    address: str

    def __post_init__(self) -> None:
        if self.kind not in _TRANSPORT_KINDS:
            raise ConfigError(
                f"unknown transport kind {self.kind!r}: expected one of {', '.join(_TRANSPORT_KINDS)}"
            )
        if not isinstance(self.address, str):
            raise ConfigError(f"transport address must be a string, got {type(self.address).__name__}")

    @classmethod
    def tcp(cls, address: str) -> TransportType:
        return cls("tcp", address)

    @classmethod
    def http(cls, url: str) -> TransportType:
        return cls("http", url)

    @classmethod
    def nats_tcp(cls, subject: str) -> TransportType:
        return cls("nats_tcp", subject)

    def __str__(self) -> str:
        return f"{self.kind}:{self.address}"


def _enum_or_none(enum_type: type[enum.StrEnum], what: str, value: object) -> Any:
    if value is None or isinstance(value, enum_type):
        return value
    member = enum_type._value2member_map_.get(value) if isinstance(value, str) else None
    if member is None:
        allowed = ", ".join(repr(m.value) for m in enum_type)
        raise ConfigError(f"invalid {what} {value!r}: expected one of {allowed} or None")
    return member


@functools.total_ordering
@dataclass(frozen=True, eq=False, slots=True)
class Instance:
    """One process serving one endpoint, as stored in discovery.

    Instances compare equal when every field is equal and sort by ``str()``,
    which is ``namespace/component/endpoint/<decimal instance id>`` (to sort
    many, ``sorted(instances, key=str)`` builds each string once).
    """

    namespace: str
    component: str
    endpoint: str
    instance_id: int
    transport: TransportType
    device_type: DeviceType | None = None
    request_plane_codec: RequestPlaneCodec | None = None
    metadata: Mapping[str, Any] | None = field(default=None)

    def __post_init__(self) -> None:
        validate_namespace(self.namespace)
        validate_segment("component", self.component)
        validate_segment("endpoint", self.endpoint)
        _check_instance_id(self.instance_id)
        if not isinstance(self.transport, TransportType):
            raise ConfigError(f"transport must be a TransportType, got {type(self.transport).__name__}")
        object.__setattr__(self, "device_type", _enum_or_none(DeviceType, "device_type", self.device_type))
        object.__setattr__(
            self,
            "request_plane_codec",
            _enum_or_none(RequestPlaneCodec, "request_plane_codec", self.request_plane_codec),
        )
        if self.metadata is not None:
            object.__setattr__(self, "metadata", _check_metadata(self.metadata))

    # identity -----------------------------------------------------------
    def __str__(self) -> str:
        return f"{self.namespace}/{self.component}/{self.endpoint}/{self.instance_id}"

    def _fields(self) -> tuple[object, ...]:
        return (self.namespace, self.component, self.endpoint, self.instance_id, self.transport,
                self.device_type, self.request_plane_codec, self.metadata)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Instance):
            return NotImplemented
        return self._fields() == other._fields()

    def __hash__(self) -> int:
        return hash((self.namespace, self.component, self.endpoint, self.instance_id))

    def __lt__(self, other: object) -> bool:
        if not isinstance(other, Instance):
            return NotImplemented
        return str(self) < str(other)

    def endpoint_id(self) -> EndpointId:
        return EndpointId(self.namespace, self.component, self.endpoint)

    def endpoint_instance_id(self) -> str:
        """``ns/comp/ep/<id>``, Dynamo's unique name of this instance."""
        return str(self)

    @property
    def key(self) -> str:
        """The store key, relative to the backend's root (design §3)."""
        return instance_key(self.namespace, self.component, self.endpoint, self.instance_id)

    # wire ---------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        value: dict[str, Any] = {
            "type": "Endpoint",
            "component": self.component,
            "endpoint": self.endpoint,
            "namespace": self.namespace,
            "instance_id": self.instance_id,
            "transport": {self.transport.kind: self.transport.address},
        }
        if self.device_type is not None:
            value["device_type"] = self.device_type.value
        if self.request_plane_codec is not None:
            value["request_plane_codec"] = self.request_plane_codec.value
        if self.metadata is not None:
            value["metadata"] = self.metadata
        return value

    def to_json(self) -> bytes:
        """Compact UTF-8 JSON exactly as Dynamo writes it."""
        return json.dumps(self.to_dict(), separators=(",", ":"), ensure_ascii=False).encode()

    @classmethod
    def from_json(cls, data: bytes | str) -> Instance:
        """Decode a stored value; raise :class:`CodecError` if it is not an endpoint instance."""
        try:
            # Decoding first skips json's encoding sniffing: a measurable cost on 10k-instance lists.
            value = json.loads(data.decode() if isinstance(data, bytes) else data)
        except (ValueError, UnicodeDecodeError) as exc:
            raise CodecError(f"value is not UTF-8 JSON: {exc}") from exc
        return cls.from_dict(value)

    @classmethod
    def from_dict(cls, value: object) -> Instance:
        """Build from a decoded JSON object, checking it as strictly as the constructor does."""
        if not isinstance(value, dict):
            raise CodecError(f"value is a JSON {type(value).__name__}, expected an object")
        if value.get("type") != "Endpoint":
            raise CodecError(f"value has type {value.get('type')!r}, not 'Endpoint'")
        try:
            namespace = validate_namespace(_required_str(value, "namespace"))
            component = validate_segment("component", _required_str(value, "component"))
            endpoint = validate_segment("endpoint", _required_str(value, "endpoint"))
            instance_id = value.get("instance_id")
            _check_instance_id(instance_id)
            metadata = value.get("metadata")
            if metadata is not None and not isinstance(metadata, dict):  # JSON object keys are strings
                raise ConfigError(f"metadata must be a JSON object, got {metadata!r}")
            return cls._trusted(
                namespace, component, endpoint, instance_id,
                _decode_transport(value.get("transport")),
                _enum_or_none(DeviceType, "device_type", value.get("device_type")),
                _enum_or_none(RequestPlaneCodec, "request_plane_codec", value.get("request_plane_codec")),
                metadata,
            )
        except (ConfigError, InvalidName) as exc:
            raise CodecError(str(exc)) from exc

    @classmethod
    def _trusted(cls, *fields: Any) -> Instance:
        """Skip ``__post_init__`` for fields already checked (decoding thousands of values)."""
        instance = object.__new__(cls)
        for name, field_value in zip(_FIELD_NAMES, fields, strict=True):
            object.__setattr__(instance, name, field_value)
        return instance


_FIELD_NAMES = ("namespace", "component", "endpoint", "instance_id", "transport", "device_type",
                "request_plane_codec", "metadata")


def _required_str(value: dict[str, Any], name: str) -> str:
    field_value = value.get(name)
    if not isinstance(field_value, str):
        raise CodecError(f"field {name!r} must be a string, got {field_value!r}")
    return field_value


def _decode_transport(value: object) -> TransportType:
    if not isinstance(value, dict) or len(value) != 1:
        raise CodecError(f"transport must be an object with one of {_TRANSPORT_KINDS}, got {value!r}")
    ((kind, address),) = value.items()
    if kind not in _TRANSPORT_KINDS or not isinstance(address, str):
        raise CodecError(f"transport must be one of {_TRANSPORT_KINDS} with a string, got {value!r}")
    transport = object.__new__(TransportType)  # checked just above: skip __post_init__
    object.__setattr__(transport, "kind", kind)
    object.__setattr__(transport, "address", address)
    return transport


def _check_instance_id(instance_id: object) -> None:
    if type(instance_id) is not int or not 0 <= instance_id <= MAX_INSTANCE_ID:
        raise ConfigError(f"invalid instance_id {instance_id!r}: must be an integer from 0 to 2**64-1")


def _check_metadata(metadata: object) -> Mapping[str, Any]:
    if not isinstance(metadata, Mapping) or not all(isinstance(k, str) for k in metadata):
        raise ConfigError(f"metadata must be a mapping with string keys, got {metadata!r}")
    try:
        # Round-trip through JSON: it proves the value is storable and freezes a copy.
        return json.loads(json.dumps(metadata, allow_nan=False))  # type: ignore[no-any-return]
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"metadata must be JSON-serializable: {exc}") from None


def instance_key(namespace: str, component: str, endpoint: str, instance_id: int) -> str:
    return f"{KEY_ROOT}/{namespace}/{component}/{endpoint}/{instance_id:x}"


def parse_instance_key(key: str) -> tuple[str, str, str, int]:
    """Split an instance key into ``(namespace, component, endpoint, instance_id)``."""
    parts = key.split("/")
    if len(parts) != 6 or "/".join(parts[:2]) != KEY_ROOT:
        raise CodecError(f"key {key!r} is not {KEY_ROOT}/<ns>/<comp>/<ep>/<hex id>")
    hex_id = parts[5]
    if not hex_id or hex_id != hex_id.lower() or (hex_id.startswith("0") and hex_id != "0"):
        raise CodecError(f"key {key!r} does not end in a lowercase unpadded hex instance id")
    try:
        instance_id = int(hex_id, 16)
    except ValueError:
        raise CodecError(f"key {key!r} does not end in a hex instance id") from None
    return parts[2], parts[3], parts[4], instance_id


def decode_entry(key: str, value: bytes) -> Instance:
    """Decode a stored ``(key, value)``; the key must name the value's instance."""
    instance = Instance.from_json(value)
    if instance.key != key:
        raise CodecError(f"key {key!r} does not match its value's instance {instance.key!r}")
    return instance
