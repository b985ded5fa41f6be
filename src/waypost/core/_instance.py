"""The Instance record and its wire codec (Dynamo-compatible, design §3).

A stored value is compact UTF-8 JSON with fields in Dynamo's order::

    {"type":"Endpoint","component":…,"endpoint":…,"namespace":…,
     "instance_id":…,"transport":{"tcp":…},"device_type":…,
     "request_plane_codec":…}

``device_type`` and ``request_plane_codec`` are written only when set, and so
is waypost's own ``metadata`` object. Readers ignore unknown fields and accept
``null`` for the optional ones.

Why msgspec
-----------
Listing and watching decode every value in a prefix, tens of thousands at a
time. :class:`Instance` and :class:`TransportType` are frozen ``msgspec.Struct``
types, so one C call parses a value *and* checks it against the types below:
required fields, strings, the ``type`` tag, ``instance_id >= 0`` as a JSON
integer (never a float or a bool), the enums, the transport's known kinds
(unknown ones are refused) and metadata being an object. Python code then
checks only what msgspec cannot express (see :func:`decode_batch`).

Both structs are ``gc=False``: the cyclic garbage collector never tracks them.
They hold only strings, ints, enums and JSON data, which cannot form a cycle
back to them. Tracked objects (the former dataclasses: two per value) count
towards collections, and once a list holds enough of them (100 000 values)
decoding it triggers full collections that walk every object alive, the
instances decoded so far included: the part of the cost that grew faster
than the list (``benchmarks/bench_codec.py`` measures it).

Construction from Python (``Instance(...)``) is checked in Python by a
metaclass ``__call__``: msgspec structs cannot define ``__init__``, and their
``__post_init__`` would also run on every decoded value, repeating in Python
what C has already checked.

Limits (what is allowed where)
------------------------------
- names: ``^[a-z0-9_-]{1,63}$``, a namespace is such parts joined by ``.``
  (no control character, NUL, surrogate or non-ASCII can pass).
- ``instance_id``: an ``int`` (not ``bool``, not ``float``) from 0 to 2**64-1.
- transport address: opaque, any string kept verbatim, except that a
  constructed one may not contain a lone surrogate (it cannot be encoded as
  UTF-8, so it could never be written) or NUL (it would be cut short by C
  APIs; it is a bug, never an address), and is at most 8192 characters. A
  stored address is not re-checked beyond what JSON itself allows: the reader
  keeps what another writer wrote.
- metadata: a JSON object nested at most 32 levels deep (the object itself is
  level 1; Dynamo's own reader, serde_json, gives up at 128), str keys;
  values null, bool, int, finite float, str, lists and objects; at most
  64 KiB when encoded. Tuples become lists. Reading checks the depth and the
  types but not the size: the store bounds a value's size.
- values: a stored value that is not UTF-8 (raw invalid bytes anywhere, even
  in an ignored field, or an escaped lone surrogate ``"\\ud800"``), not
  JSON, or nested deeper than the C
  decoder's recursion budget (the interpreter's recursion limit, about 1000
  levels, minus the current stack depth) is rejected with :class:`CodecError`.
  Unknown fields are ignored at any depth the decoder can skip.

Other record kinds
------------------
Dynamo stores other records next to endpoints (model cards, ``"type":"Model"``
under ``v1/mdc``). Every kind is a subclass of :class:`_Record`, told apart by
its ``type`` tag in C. A kind with its own codec (a later ``ModelCard``) is
added as another subclass with its own tag and decoder; today ``_ModelRecord``
stands in for it so that model cards are recognised without a second parse,
and so that the endpoint decoder, being a tagged union, requires the tag.
Readers skip such records quietly: :attr:`Rejected.foreign` says which
rejects they are, :func:`record_type` reads the tag of any stored value.
"""

from __future__ import annotations

import enum
import math
import re
from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, Annotated, Any, Literal, NamedTuple, Union

import msgspec
from msgspec import UNSET, UnsetType

from ._errors import CodecError, ConfigError, shorten
from ._names import EndpointId, dynamo_namespace_ok, dynamo_segment_ok, validate_namespace, validate_segment

__all__ = [
    "KEY_ROOT",
    "MAX_VALUE_BYTES",
    "DeviceType",
    "Instance",
    "RequestPlaneCodec",
    "Rejected",
    "TransportType",
    "decode_batch",
    "decode_entry",
    "instance_key",
    "parse_instance_key",
    "record_type",
]

KEY_ROOT = "v1/instances"
MAX_INSTANCE_ID = 2**64 - 1
MAX_ADDRESS_CHARS = 8192
MAX_METADATA_DEPTH = 32
MAX_METADATA_BYTES = 64 * 1024
#: Largest stored value a reader decodes (any record kind); a bigger one is rejected unread.
MAX_VALUE_BYTES = 256 * 1024
TransportKind = Literal["nats_tcp", "http", "tcp"]
_TRANSPORT_KINDS: tuple[TransportKind, ...] = ("nats_tcp", "http", "tcp")
_REASON_CHARS = 200  # a rejected value's reason is logged: keep it one short line


class DeviceType(enum.StrEnum):
    """Where an instance runs its work."""

    CPU = "cpu"
    CUDA = "cuda"


class RequestPlaneCodec(enum.StrEnum):
    """How an instance encodes request-plane messages."""

    MSGPACK = "msgpack"
    JSON = "json"


# -- the types msgspec checks in C ------------------------------------------------

# msgspec cannot bound an int above 2**63-1 (it refuses the constraint), so the
# upper bound of a u64 id is checked in Python after decoding.
_InstanceId = Annotated[int, msgspec.Meta(ge=0)]


# Metadata is decoded by msgspec as plain JSON data (dict, list, str, int,
# float, bool, None: nothing else can come out of JSON) and its depth checked
# in Python: a type spelling out 32 levels (Union[leaf, list[V], dict[str, V]])
# grows exponentially, so msgspec cannot bound the depth in C.
_Metadata = dict[str, Any]


class _TransportMeta(msgspec.StructMeta):
    """Checks ``TransportType(kind, address)``; decoding builds transports in C without it."""

    def __call__(cls, kind: object, address: object) -> Any:
        if not isinstance(kind, str) or kind not in _TRANSPORT_KINDS:
            raise ConfigError(f"invalid transport kind {shorten(kind)}: expected one of {', '.join(_TRANSPORT_KINDS)}")
        _check_address(address)
        return super().__call__(**{f"_{kind}": address})

    @property
    def __match_args__(cls) -> tuple[str, ...]:  # type: ignore[override]
        # msgspec makes it the fields (_nats_tcp, _http, _tcp), read-only on the
        # class; a metaclass property wins the lookup: ``case TransportType(kind, address)``.
        return ("kind", "address")


class TransportType(msgspec.Struct, frozen=True, gc=False, omit_defaults=True, forbid_unknown_fields=True,
                    metaclass=_TransportMeta):
    """How to reach an instance; the address is opaque and kept verbatim.

    On the wire it is externally tagged: ``{"tcp": address}``. Each kind is a
    field of its own, so msgspec decodes that object in C and refuses unknown
    kinds; exactly one must be set (checked after decoding).
    """

    _nats_tcp: str | UnsetType = msgspec.field(default=UNSET, name="nats_tcp")
    _http: str | UnsetType = msgspec.field(default=UNSET, name="http")
    _tcp: str | UnsetType = msgspec.field(default=UNSET, name="tcp")

    if TYPE_CHECKING:
        def __init__(self, kind: TransportKind, address: str) -> None: ...

    @classmethod
    def tcp(cls, address: str) -> TransportType:
        return cls("tcp", address)

    @classmethod
    def http(cls, url: str) -> TransportType:
        return cls("http", url)

    @classmethod
    def nats_tcp(cls, subject: str) -> TransportType:
        return cls("nats_tcp", subject)

    @property
    def kind(self) -> TransportKind:
        if self._tcp is not UNSET:
            return "tcp"
        return "http" if self._http is not UNSET else "nats_tcp"

    @property
    def address(self) -> str:
        for address in (self._tcp, self._http, self._nats_tcp):
            if address is not UNSET:
                return address
        raise AttributeError("address")  # unreachable: every transport has exactly one kind

    def __str__(self) -> str:
        return f"{self.kind}:{self.address}"

    def __repr__(self) -> str:
        return f"TransportType(kind={self.kind!r}, address={self.address!r})"

    def __reduce__(self) -> tuple[Any, ...]:
        return TransportType, (self.kind, self.address)

    def __replace__(self, **changes: Any) -> TransportType:
        """``copy.replace(transport, address=...)`` (Python 3.13): through the checks."""
        fields = {"kind": self.kind, "address": self.address, **changes}
        return TransportType(**fields)


def _kinds_set(transport: TransportType) -> int:
    return (transport._tcp is not UNSET) + (transport._http is not UNSET) + (transport._nats_tcp is not UNSET)


class _Record(msgspec.Struct, tag_field="type", frozen=True, gc=False, omit_defaults=True):
    """Base of the record kinds sharing the store, told apart by their ``type`` tag (in C)."""


class _InstanceMeta(msgspec.StructMeta):
    """Checks ``Instance(...)`` as strictly as decoding does; decoding builds instances in C without it."""

    def __call__(cls, namespace: object, component: object, endpoint: object, instance_id: object,
                 transport: object, device_type: object = None, request_plane_codec: object = None,
                 metadata: object = None) -> Any:
        validate_namespace(namespace)
        validate_segment("component", component)
        validate_segment("endpoint", endpoint)
        _check_instance_id(instance_id)
        if not isinstance(transport, TransportType):
            raise ConfigError(f"invalid transport {shorten(transport)}: must be a TransportType "
                              f"(e.g. TransportType.tcp('host:port')), got {type(transport).__name__}")
        return super().__call__(
            namespace, component, endpoint, instance_id, transport,
            _enum_or_none(DeviceType, "device_type", device_type),
            _enum_or_none(RequestPlaneCodec, "request_plane_codec", request_plane_codec),
            None if metadata is None else _check_metadata(metadata),
        )

    def _unchecked(cls, fields: tuple[Any, ...]) -> Any:
        """Rebuild from fields already checked (unpickling a decoded instance must not re-judge it)."""
        return super().__call__(*fields)


class Instance(_Record, tag="Endpoint", frozen=True, gc=False, metaclass=_InstanceMeta):
    """One process serving one endpoint, as stored in discovery.

    ``Instance(namespace, component, endpoint, instance_id, transport,
    device_type=None, request_plane_codec=None, metadata=None)``. Immutable;
    instances compare equal when every field is equal, hash by their identity
    (``namespace/component/endpoint/instance_id``) and sort by ``str()``,
    which is ``namespace/component/endpoint/<decimal instance id>`` (to sort
    many, ``sorted(instances, key=str)`` builds each string once).
    """

    # The constructor's order (decoding does not care: JSON objects are keyed);
    # encoding goes through _EndpointWire, which has Dynamo's order.
    namespace: str
    component: str
    endpoint: str
    instance_id: _InstanceId
    transport: TransportType
    device_type: DeviceType | None = None
    request_plane_codec: RequestPlaneCodec | None = None
    metadata: _Metadata | None = None

    if TYPE_CHECKING:
        def __init__(self, namespace: str, component: str, endpoint: str, instance_id: int,
                     transport: TransportType, device_type: DeviceType | str | None = None,
                     request_plane_codec: RequestPlaneCodec | str | None = None,
                     metadata: Mapping[str, Any] | None = None) -> None: ...

    # identity -----------------------------------------------------------
    def __str__(self) -> str:
        return f"{self.namespace}/{self.component}/{self.endpoint}/{self.instance_id}"

    def __repr__(self) -> str:
        return (f"Instance(namespace={self.namespace!r}, component={self.component!r}, "
                f"endpoint={self.endpoint!r}, instance_id={self.instance_id!r}, transport={self.transport!r}, "
                f"device_type={self.device_type!r}, request_plane_codec={self.request_plane_codec!r}, "
                f"metadata={self.metadata!r})")

    def __hash__(self) -> int:
        return hash((self.namespace, self.component, self.endpoint, self.instance_id))

    # Equality (every field) is msgspec's, in C. Ordering is by str(), as
    # functools.total_ordering derived it from __lt__ and __eq__ before.
    def __lt__(self, other: object) -> bool:
        if not isinstance(other, Instance):
            return NotImplemented
        return str(self) < str(other)

    def __le__(self, other: object) -> bool:
        if not isinstance(other, Instance):
            return NotImplemented
        return str(self) < str(other) or self == other

    def __gt__(self, other: object) -> bool:
        if not isinstance(other, Instance):
            return NotImplemented
        return not str(self) < str(other) and self != other

    def __ge__(self, other: object) -> bool:
        if not isinstance(other, Instance):
            return NotImplemented
        return not str(self) < str(other)

    def __replace__(self, **changes: Any) -> Instance:
        """``copy.replace(instance, ...)`` (Python 3.13): through the checks, unlike msgspec's default."""
        fields = {name: getattr(self, name) for name in self.__struct_fields__}
        return Instance(**{**fields, **changes})

    def __reduce__(self) -> tuple[Any, ...]:
        # Not through Instance(): a decoded instance may hold what only a
        # writer is refused (e.g. metadata over 64 KiB); it must still unpickle.
        return _restore_instance, (msgspec.structs.astuple(self),)

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
    def _wire(self) -> _EndpointWire:
        return _EndpointWire(self.component, self.endpoint, self.namespace, self.instance_id, self.transport,
                             self.device_type, self.request_plane_codec, self.metadata)

    def to_dict(self) -> dict[str, Any]:
        """The JSON object of :meth:`to_json`, as Python data (a fresh copy)."""
        return msgspec.to_builtins(self._wire())  # type: ignore[no-any-return]

    def to_json(self) -> bytes:
        """Compact UTF-8 JSON exactly as Dynamo writes it."""
        return _ENCODER.encode(self._wire())

    @classmethod
    def from_json(cls, data: bytes | str) -> Instance:
        """Decode a stored value; raise :class:`CodecError` if it is not a valid endpoint instance."""
        if not isinstance(data, bytes | bytearray | memoryview | str):
            raise CodecError(f"value must be bytes or str, got {type(data).__name__}")
        if len(data) > MAX_VALUE_BYTES:
            raise CodecError(oversized(len(data)))
        try:
            record = _ENDPOINT_DECODER.decode(data)
        except _DECODE_ERRORS as exc:
            raise CodecError(_decode_failure(exc)) from None
        return _checked(record, data)

    @classmethod
    def from_dict(cls, value: object) -> Instance:
        """Build from a decoded JSON object, checking it as strictly as decoding does."""
        try:
            record = msgspec.convert(value, _ENDPOINT_TYPE)
        except (msgspec.ValidationError, RecursionError) as exc:
            raise CodecError(_decode_failure(exc)) from None
        instance = _checked(record, None)
        if instance.metadata is not None:  # Python data, unlike decoded JSON, may hold anything: copy it as JSON
            try:
                metadata = _json_copy(instance.metadata, 1)
            except _NotJson as exc:
                raise CodecError(f"value is not a valid Endpoint record: metadata: {exc}") from None
            instance = msgspec.structs.replace(instance, metadata=metadata)
        return instance


class _EndpointWire(_Record, tag="Endpoint", frozen=True, gc=False):
    """An Instance's fields in Dynamo's order, which msgspec encodes in (only for encoding)."""

    component: str
    endpoint: str
    namespace: str
    instance_id: int
    transport: TransportType
    device_type: DeviceType | None = None
    request_plane_codec: RequestPlaneCodec | None = None
    metadata: _Metadata | None = None


def _restore_instance(fields: tuple[Any, ...]) -> Instance:
    return Instance._unchecked(fields)  # type: ignore[no-any-return]


class _ModelRecord(_Record, tag="Model", frozen=True, gc=False):
    """Stand-in for Dynamo's model card (``v1/mdc``) until it gets a codec of its own.

    Listed in the endpoint decoder's union, it makes that decoder a tagged
    union (which, unlike a lone tagged struct, requires ``"type"``) and lets
    model cards be recognised in C. Its fields are not decoded.
    """


_ENDPOINT_TYPE = Union[Instance, _ModelRecord]  # noqa: UP007
_ENDPOINT_DECODER = msgspec.json.Decoder(_ENDPOINT_TYPE)
_ENCODER = msgspec.json.Encoder()
# What decoding a hostile value may raise (TypeError: not bytes). msgspec raises RecursionError (from
# the interpreter's recursion check, before any harm) for deep nesting.
_DECODE_ERRORS = (msgspec.MsgspecError, RecursionError, UnicodeError, TypeError)


class _Envelope(msgspec.Struct, gc=False):
    type: str | None = None


_ENVELOPE_DECODER = msgspec.json.Decoder(_Envelope)


def record_type(value: bytes | str) -> str | None:
    """The ``type`` tag of a stored JSON object (``"Endpoint"``, ``"Model"``…), or None.

    None when the value is not a JSON object with a string ``type``: it is
    corrupt rather than another record kind. For telling, among rejected
    values, the records of other kinds (skipped quietly) from corrupt ones.
    """
    try:
        return _ENVELOPE_DECODER.decode(value).type
    except _DECODE_ERRORS:
        return None


class Rejected(NamedTuple):
    """A stored value :func:`decode_batch` did not decode as an endpoint instance."""

    key: str
    value: bytes
    reason: str
    foreign: bool
    """True if it is a record of another kind (e.g. a model card): skip it quietly."""


def oversized(size: int) -> str:
    """Why a stored value of ``size`` bytes is refused unread (every decoder checks the bound first)."""
    return f"value is {size} bytes, more than the {MAX_VALUE_BYTES} a value may have"


def _clip(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _decode_failure(exc: BaseException) -> str:
    if isinstance(exc, RecursionError):
        return "value is nested too deeply to decode"
    # msgspec's message may quote a bad value: a megabyte "type" must not reach the log whole.
    return f"value is not an Endpoint record: {_clip(str(exc), _REASON_CHARS)}"


# Valid names seen in decoded values: names repeat across thousands of values,
# and a set lookup is the cheapest check the hot path can do. Bounded, like
# the validators' own caches, so hostile stores cannot grow them.
_KNOWN_SEGMENTS: set[str] = set()
_KNOWN_NAMESPACES: set[str] = set()
_KNOWN_MAX = 4096


def _utf8_ok(value: bytes | bytearray | memoryview | str | None) -> bool:
    """True unless ``value`` holds bytes that are not UTF-8.

    msgspec checks the UTF-8 of the strings it decodes, not of the fields it
    skips: an unknown field holding raw ``\xff`` or an encoded surrogate
    would pass. ``isascii`` (a word-at-a-time C scan) clears almost every
    value; only the others are decoded to be sure.
    """
    if value is None or isinstance(value, str):  # a str cannot hold bad bytes (surrogates fail its encoding)
        return True
    data = value if isinstance(value, bytes) else bytes(value)
    if data.isascii():
        return True
    try:
        data.decode()
    except UnicodeDecodeError:
        return False
    return True


def _problem(record: Instance, value: bytes | bytearray | memoryview | str | None) -> str | None:
    """What msgspec could not check about a decoded instance (from ``value``), or None if it is valid."""
    if not _utf8_ok(value):
        return "value is not UTF-8"
    if record.instance_id > MAX_INSTANCE_ID:
        return f"instance_id {shorten(record.instance_id)} is above 2**64-1"
    kinds = _kinds_set(record.transport)
    if kinds != 1:
        return f"transport must name exactly one of {', '.join(_TRANSPORT_KINDS)}, got {kinds}"
    namespace, component, endpoint = record.namespace, record.component, record.endpoint
    if namespace not in _KNOWN_NAMESPACES:
        if not dynamo_namespace_ok(namespace):  # read what Dynamo writes; Instance() checks waypost's rule
            return f"invalid namespace name {shorten(namespace)}"
        if len(_KNOWN_NAMESPACES) < _KNOWN_MAX:
            _KNOWN_NAMESPACES.add(namespace)
    for kind, name in (("component", component), ("endpoint", endpoint)):
        if name not in _KNOWN_SEGMENTS:
            if not dynamo_segment_ok(name):
                return f"invalid {kind} name {shorten(name)}"
            if len(_KNOWN_SEGMENTS) < _KNOWN_MAX:
                _KNOWN_SEGMENTS.add(name)
    if record.metadata is not None and not _depth_ok(record.metadata, 1):
        return f"metadata nests containers more than {MAX_METADATA_DEPTH} levels deep"
    return None


def _checked(record: Instance | _ModelRecord, value: bytes | bytearray | memoryview | str | None) -> Instance:
    if type(record) is not Instance:
        raise CodecError(f"value is a {record.__struct_config__.tag} record, not an Endpoint")
    problem = _problem(record, value)
    if problem is not None:
        raise CodecError(f"value is not a valid Endpoint record: {problem}")
    return record


def decode_batch(items: Iterable[tuple[str, bytes]], prefix: str) -> tuple[dict[str, Instance], list[Rejected]]:
    """Decode the stored ``(key, value)`` pairs whose key starts with ``prefix``.

    Returns the instances by key and the rejected values, one by one (a bad
    value never fails the batch); keys outside ``prefix`` are skipped
    silently. A value is an instance if it decodes and its key is exactly
    ``instance.key``.

    The loop is the hot path of every list and watch: per value, one C call
    decodes and checks it, then Python does only what msgspec cannot: the key
    comparison (one f-string; building it is cheaper than parsing the key),
    the u64 upper bound, exactly one transport kind, the names (looked up in
    sets of names already validated), the metadata depth (when there is
    metadata) and UTF-8 in skipped fields (``bytes.isascii``). Anything
    unusual leaves the fast path for :func:`_problem`, which names the fault.
    """
    decoded: dict[str, Instance] = {}
    rejected: list[Rejected] = []
    decode = _ENDPOINT_DECODER.decode
    known_segments, known_namespaces = _KNOWN_SEGMENTS, _KNOWN_NAMESPACES
    unset, max_id = UNSET, MAX_INSTANCE_ID
    for key, value in items:
        if not key.startswith(prefix):
            continue
        if len(value) > MAX_VALUE_BYTES:
            rejected.append(Rejected(key, value, oversized(len(value)), False))
            continue
        try:
            record = decode(value)
        except _DECODE_ERRORS as exc:
            tag = record_type(value)
            rejected.append(Rejected(key, value, _decode_failure(exc), tag is not None and tag != "Endpoint"))
            continue
        if type(record) is not Instance:
            rejected.append(Rejected(key, value, f"value is a {record.__struct_config__.tag} record", True))
            continue
        transport = record.transport
        instance_id = record.instance_id
        if (
            instance_id <= max_id
            and record.namespace in known_namespaces
            and record.component in known_segments
            and record.endpoint in known_segments
            and (transport._tcp is unset) + (transport._http is unset) + (transport._nats_tcp is unset) == 2
            and (record.metadata is None or _depth_ok(record.metadata, 1))
            and (value.isascii() or _utf8_ok(value))
        ):
            if key == f"v1/instances/{record.namespace}/{record.component}/{record.endpoint}/{instance_id:x}":
                decoded[key] = record
                continue
        else:
            problem = _problem(record, value)
            if problem is not None:
                rejected.append(Rejected(key, value, f"value is not a valid Endpoint record: {problem}", False))
                continue
            if key == record.key:
                decoded[key] = record
                continue
        rejected.append(Rejected(key, value, _mismatch(key, record), False))
    return decoded, rejected


def _mismatch(key: str, instance: Instance) -> str:
    return f"key {shorten(key)} does not match its value's instance {shorten(instance.key)}"


# What a writer may not put in a transport address or a metadata key (C0, DEL and C1 controls), and in
# metadata text (the same, but tabs and line breaks). Readers keep what other writers stored.
_CONTROL = re.compile("[\x00-\x1f\x7f-\x9f]")
_TEXT_CONTROL = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f]")


def _check_address(address: object) -> None:
    if not isinstance(address, str):
        raise ConfigError(f"invalid transport address {shorten(address)}: must be a str, "
                          f"got {type(address).__name__}")
    if len(address) > MAX_ADDRESS_CHARS:
        raise ConfigError(f"invalid transport address {shorten(address)}: {len(address)} characters, "
                          f"more than the {MAX_ADDRESS_CHARS} allowed")
    if (bad := _CONTROL.search(address)) is not None:
        raise ConfigError(f"invalid transport address {shorten(address)}: must not contain control characters "
                          f"(found {bad.group()!r})")
    try:
        address.encode()
    except UnicodeEncodeError:
        raise ConfigError(f"invalid transport address {shorten(address)}: must be valid Unicode "
                          "(it contains a lone surrogate, which UTF-8 cannot encode)") from None


def _enum_or_none(enum_type: type[enum.StrEnum], what: str, value: object) -> Any:
    if value is None or isinstance(value, enum_type):
        return value
    member = enum_type._value2member_map_.get(value) if isinstance(value, str) else None
    if member is None:
        allowed = ", ".join(repr(m.value) for m in enum_type)
        raise ConfigError(f"invalid {what} {shorten(value)}: expected one of {allowed} or None")
    return member


def _check_instance_id(instance_id: object) -> None:
    if type(instance_id) is not int or not 0 <= instance_id <= MAX_INSTANCE_ID:
        got = "" if type(instance_id) is int else f", got {type(instance_id).__name__}"
        raise ConfigError(f"invalid instance_id {shorten(instance_id)}: must be an int from 0 to 2**64-1{got}")


_METADATA_RULE = (f"metadata must be a JSON object (str keys; null, bool, int, finite float, str, list, object "
                  f"values) at most {MAX_METADATA_DEPTH} levels deep and {MAX_METADATA_BYTES} bytes as JSON")


class _NotJson(Exception):
    """Why a metadata value is not storable (internal: becomes a ConfigError or a CodecError)."""


def _json_copy(value: object, level: int) -> Any:
    """A copy of ``value`` as plain JSON data; ``level`` is where a container would sit (1 = metadata).

    Recursive, but never deeper than MAX_METADATA_DEPTH frames: deeper
    containers, cycles included, are refused before descending.
    """
    if isinstance(value, str):
        if (bad := _TEXT_CONTROL.search(value)) is not None:
            raise _NotJson(f"text {shorten(value, 40)} contains the control character {bad.group()!r}")
        return value
    if value is None or isinstance(value, int):  # bool is an int
        return value
    if isinstance(value, float):
        if not math.isfinite(value):  # JSON has no inf or nan (msgspec would write null)
            raise _NotJson(f"{value!r} is not a finite number")
        return value
    if level > MAX_METADATA_DEPTH:
        raise _NotJson(f"it nests containers more than {MAX_METADATA_DEPTH} levels deep")
    if isinstance(value, Mapping):
        copy = {}
        for key, item in value.items():
            if not isinstance(key, str):
                raise _NotJson(f"key {shorten(key, 40)} is a {type(key).__name__}, not a str")
            if _CONTROL.search(key) is not None:
                raise _NotJson(f"key {shorten(key, 40)} contains a control character")
            copy[key] = _json_copy(item, level + 1)
        return copy
    if isinstance(value, list | tuple):
        return [_json_copy(item, level + 1) for item in value]
    raise _NotJson(f"{shorten(value, 40)} is a {type(value).__name__}, not JSON data")


def _depth_ok(container: dict[str, Any] | list[Any], level: int) -> bool:
    """True if decoded JSON data nests no more than MAX_METADATA_DEPTH containers (metadata = level 1).

    Plain loops, no generators: it runs on every decoded value that has metadata.
    """
    if level > MAX_METADATA_DEPTH:
        return False
    for item in container.values() if isinstance(container, dict) else container:
        if isinstance(item, dict | list) and not _depth_ok(item, level + 1):
            return False
    return True


def _check_metadata(metadata: object) -> dict[str, Any]:
    """A checked copy of ``metadata`` (the caller's object may change later; ours does not)."""
    if not isinstance(metadata, Mapping):
        raise ConfigError(f"invalid metadata {shorten(metadata)}: got {type(metadata).__name__}; {_METADATA_RULE}")
    try:
        copy: dict[str, Any] = _json_copy(metadata, 1)
        size = len(_ENCODER.encode(copy))
    except _NotJson as exc:
        raise ConfigError(f"invalid metadata: {exc}; {_METADATA_RULE}") from None
    except UnicodeEncodeError as exc:
        bad = shorten(exc.object[exc.start:exc.end], 20)
        raise ConfigError(f"invalid metadata: a str holds {bad}, a lone surrogate (not valid Unicode); "
                          f"{_METADATA_RULE}") from None
    except ValueError as exc:  # msgspec cannot write it, e.g. an int of more than 4300 digits
        raise ConfigError(f"invalid metadata: {_clip(str(exc), 80)}; {_METADATA_RULE}") from None
    if size > MAX_METADATA_BYTES:
        raise ConfigError(f"invalid metadata: {size} bytes as JSON; {_METADATA_RULE}")
    return copy


def instance_key(namespace: str, component: str, endpoint: str, instance_id: int) -> str:
    return f"{KEY_ROOT}/{namespace}/{component}/{endpoint}/{instance_id:x}"


_HEX_ID = re.compile(r"0|[1-9a-f][0-9a-f]{0,15}")


def parse_instance_key(key: str) -> tuple[str, str, str, int]:
    """Split an instance key into ``(namespace, component, endpoint, instance_id)``."""
    if not isinstance(key, str):
        raise CodecError(f"key {shorten(key)} is not a str")
    parts = key.split("/")
    if len(parts) != 6 or "/".join(parts[:2]) != KEY_ROOT:
        raise CodecError(f"key {shorten(key)} is not {KEY_ROOT}/<ns>/<comp>/<ep>/<hex id>")
    hex_id = parts[5]
    if _HEX_ID.fullmatch(hex_id) is None:  # int(…, 16) alone would take "F", "0f", " f", "+f" and "f_1"
        raise CodecError(f"key {shorten(key)} does not end in a lowercase unpadded hex u64 instance id")
    return parts[2], parts[3], parts[4], int(hex_id, 16)


def decode_entry(key: str, value: bytes) -> Instance:
    """Decode a stored ``(key, value)``; the key must name the value's instance."""
    instance = Instance.from_json(value)
    if instance.key != key:
        raise CodecError(_mismatch(key, instance))
    return instance
