"""The Dynamo wire format (design §3), including property-based tests."""

from __future__ import annotations

import contextlib
import copy
import gc
import json
import pickle
from collections.abc import Callable

import pytest
from hypothesis import given
from hypothesis import strategies as st

from waypost import CodecError, ConfigError, DeviceType, EndpointId, Instance, InvalidName, TransportType
from waypost.core import MAX_VALUE_BYTES, decode_entry, instance_key, parse_instance_key
from waypost.core._errors import shorten
from waypost.core._instance import decode_batch, record_type

DYNAMO_VALUE = (
    b'{"type":"Endpoint","component":"backend","endpoint":"generate","namespace":"dynamo",'
    b'"instance_id":8026718667892531462,"transport":{"tcp":"127.0.0.1:42043/6f64a219dfbb2106/dynamo/backend/'
    b'generate"},"device_type":"cuda","request_plane_codec":"msgpack"}'
)


def test_dynamo_value_round_trips_byte_for_byte() -> None:
    instance = Instance.from_json(DYNAMO_VALUE)
    assert instance.instance_id == 8026718667892531462
    assert instance.device_type is DeviceType.CUDA
    assert instance.transport == TransportType.tcp("127.0.0.1:42043/6f64a219dfbb2106/dynamo/backend/generate")
    assert instance.to_json() == DYNAMO_VALUE
    assert instance.key == "v1/instances/dynamo/backend/generate/6f64a219dfbb2106"
    assert str(instance) == "dynamo/backend/generate/8026718667892531462"


def test_optional_fields_absent_or_null_and_unknown_fields_ignored() -> None:
    value = {"type": "Endpoint", "component": "c", "endpoint": "e", "namespace": "n", "instance_id": 2**64 - 1,
             "transport": {"nats_tcp": "subj"}, "device_type": None, "future_field": [1]}
    instance = Instance.from_json(json.dumps(value))
    assert instance.device_type is None and instance.request_plane_codec is None
    assert instance.to_json() == (b'{"type":"Endpoint","component":"c","endpoint":"e","namespace":"n",'
                                  b'"instance_id":18446744073709551615,"transport":{"nats_tcp":"subj"}}')


def test_metadata_written_only_when_set() -> None:
    plain = Instance("n", "c", "e", 1, TransportType.http("http://x"))
    assert b"metadata" not in plain.to_json()
    rich = Instance("n", "c", "e", 1, TransportType.http("http://x"), metadata={"k": "ü"})
    assert rich.to_json().endswith(b',"metadata":{"k":"\xc3\xbc"}}')
    assert Instance.from_json(rich.to_json()) == rich


@pytest.mark.parametrize("value", [
    b"", b"null", b"[]", b'"x"', b"{", b'{"type":"Model"}',
    b'{"type":"Endpoint"}',
    b'{"type":"Endpoint","component":"c","endpoint":"e","namespace":"n","instance_id":-1,"transport":{"tcp":"x"}}',
    b'{"type":"Endpoint","component":"c","endpoint":"e","namespace":"n","instance_id":1.5,"transport":{"tcp":"x"}}',
    b'{"type":"Endpoint","component":"c","endpoint":"e","namespace":"n","instance_id":18446744073709551616,'
    b'"transport":{"tcp":"x"}}',
    b'{"type":"Endpoint","component":"c","endpoint":"e","namespace":"n","instance_id":1,"transport":{"udp":"x"}}',
    b'{"type":"Endpoint","component":"C D","endpoint":"e","namespace":"n","instance_id":1,"transport":{"tcp":"x"}}',
    b'{"type":"Endpoint","component":"c","endpoint":"e","namespace":"n","instance_id":1,"transport":{"tcp":"x"},'
    b'"device_type":"tpu"}',
    b"\xff\xfe",
])
def test_invalid_values_raise_codec_error(value: bytes) -> None:
    with pytest.raises(CodecError):
        Instance.from_json(value)


def test_key_must_match_value() -> None:
    instance = Instance.from_json(DYNAMO_VALUE)
    assert decode_entry(instance.key, DYNAMO_VALUE) == instance
    with pytest.raises(CodecError, match="does not match"):
        decode_entry("v1/instances/dynamo/backend/generate/1", DYNAMO_VALUE)


@pytest.mark.parametrize("key", ["v1/instances/a/b/c/0F", "v1/instances/a/b/c/00f", "v1/instances/a/b/c",
                                 "v2/instances/a/b/c/f", "v1/instances/a/b/c/xyz"])
def test_bad_keys_are_rejected(key: str) -> None:
    with pytest.raises(CodecError):
        parse_instance_key(key)


segments = st.from_regex(r"[a-z0-9_-]{1,63}", fullmatch=True)
namespaces = st.lists(segments, min_size=1, max_size=3).map(".".join)
# Any text but control characters, which a constructed address and metadata keys refuse (metadata text
# may hold tabs and line breaks); st.text() generates no surrogates.
addresses = st.text(st.characters(blacklist_categories=["Cc", "Cs"]))
keys = st.text(st.characters(blacklist_categories=["Cc", "Cs"]))
texts = st.text(st.characters(blacklist_categories=["Cc", "Cs"]) | st.sampled_from("\t\n\r"))
transports = st.builds(TransportType, st.sampled_from(["tcp", "http", "nats_tcp"]), addresses)
json_leaf = st.none() | st.booleans() | st.integers(-(2**53), 2**53) | texts
metadata = st.none() | st.dictionaries(keys, st.recursive(json_leaf, lambda c: st.lists(c) | st.dictionaries(
    keys, c), max_leaves=8), max_size=4)
instances = st.builds(
    Instance, namespaces, segments, segments, st.integers(0, 2**64 - 1), transports,
    st.sampled_from([None, "cpu", "cuda"]), st.sampled_from([None, "msgpack", "json"]), metadata)


@given(instances)
def test_any_instance_round_trips(instance: Instance) -> None:
    data = instance.to_json()
    assert Instance.from_json(data) == instance
    assert Instance.from_json(data).to_json() == data
    assert parse_instance_key(instance.key) == (instance.namespace, instance.component, instance.endpoint,
                                                instance.instance_id)
    assert instance.key == instance_key(instance.namespace, instance.component, instance.endpoint,
                                        instance.instance_id)


@given(st.binary(max_size=300))
def test_garbage_bytes_never_crash_the_decoder(data: bytes) -> None:
    with contextlib.suppress(CodecError):
        Instance.from_json(data)


@given(st.recursive(json_leaf, lambda c: st.lists(c) | st.dictionaries(st.text(), c), max_leaves=20))
def test_garbage_json_never_crashes_the_decoder(value: object) -> None:
    with contextlib.suppress(CodecError):
        Instance.from_dict(value)


def test_instances_sort_by_their_string() -> None:
    a = Instance("n", "c", "e", 10, TransportType.tcp("x"))
    b = Instance("n", "c", "e", 9, TransportType.tcp("x"))
    assert sorted([b, a]) == [a, b]  # "…/10" < "…/9"


# -- Instance is a fast immutable object with the same API -------------------------------------------------------

def test_instance_keeps_its_api() -> None:
    t = TransportType.tcp("h:1")
    a = Instance("ns", "comp", "ep", 7, t, "cuda", "json", {"k": [1]})
    b = Instance(namespace="ns", component="comp", endpoint="ep", instance_id=7, transport=t,
                 device_type=DeviceType.CUDA, request_plane_codec="json", metadata={"k": [1]})
    assert a == b and hash(a) == hash(b) and len({a, b}) == 1
    assert (a.namespace, a.component, a.endpoint, a.instance_id, a.transport) == ("ns", "comp", "ep", 7, t)
    assert a.device_type is DeviceType.CUDA and a.request_plane_codec == "json"
    assert a != Instance("ns", "comp", "ep", 7, t, "cuda", "json", {"k": [2]})  # equality covers every field
    assert a != Instance("ns", "comp", "ep", 7, TransportType.http("h:1"), "cuda", "json", {"k": [1]})
    assert (t.kind, t.address, str(t)) == ("tcp", "h:1", "tcp:h:1") and t == TransportType("tcp", "h:1")
    assert str(a) == a.endpoint_instance_id() == "ns/comp/ep/7" and a.endpoint_id() == EndpointId("ns", "comp", "ep")
    assert repr(a).startswith("Instance(namespace='ns', component='comp', endpoint='ep', instance_id=7, ")
    assert repr(t) == "TransportType(kind='tcp', address='h:1')"
    for obj, attr in ((a, "namespace"), (a, "metadata"), (t, "address"), (t, "kind")):
        with pytest.raises(AttributeError):
            setattr(obj, attr, "x")
    assert pickle.loads(pickle.dumps(a)) == a and copy.deepcopy(a) == a and copy.copy(a) == a
    assert pickle.loads(pickle.dumps(t)) == t
    match a:
        case Instance(ns, comp, ep, iid, TransportType(kind, address)):
            assert (ns, comp, ep, iid, kind, address) == ("ns", "comp", "ep", 7, "tcp", "h:1")
        case _:
            pytest.fail("positional pattern did not match")


def test_instances_order_by_their_string_like_total_ordering_did() -> None:
    a, b = Instance("n", "c", "e", 10, TransportType.tcp("x")), Instance("n", "c", "e", 9, TransportType.tcp("x"))
    twin = Instance("n", "c", "e", 10, TransportType.tcp("other"))  # same str, different transport
    assert a < b and a <= b and b > a and b >= a and not a > b
    # total_ordering's quirks for equal strings but unequal fields, kept: > is "not < and !=", >= is "not <".
    assert not a < twin and not twin < a and a >= twin and not a <= twin and a > twin and twin > a and a != twin


def test_instances_are_invisible_to_the_cyclic_gc() -> None:
    """Big lists of instances must cost the collector nothing (it walked them all, superlinearly)."""
    built = Instance("n", "c", "e", 1, TransportType.tcp("x"), metadata={"k": 1})
    decoded = Instance.from_json(DYNAMO_VALUE)
    batch, _ = decode_batch([(decoded.key, DYNAMO_VALUE)], "v1/instances/")
    for obj in (built, built.transport, decoded, decoded.transport, *batch.values()):
        assert not gc.is_tracked(obj)


@given(instances)
def test_encoding_is_byte_for_byte_the_previous_json(instance: Instance) -> None:
    """Dynamo's field order, compact separators, raw UTF-8: exactly what json.dumps wrote before."""
    assert instance.to_json() == json.dumps(instance.to_dict(), separators=(",", ":"), ensure_ascii=False).encode()
    assert list(instance.to_dict())[:6] == ["type", "component", "endpoint", "namespace", "instance_id", "transport"]


# -- the batch decoder --------------------------------------------------------------------------------------------

def _value(**changes: object) -> bytes:
    value = json.loads(DYNAMO_VALUE)
    value.update(changes)
    return json.dumps(value, separators=(",", ":")).encode()


GOOD_KEY = "v1/instances/dynamo/backend/generate/6f64a219dfbb2106"


def test_decode_batch_rejects_values_one_by_one() -> None:
    other = Instance("dynamo", "backend", "generate", 5, TransportType.http("http://h"))
    items = [
        (GOOD_KEY, DYNAMO_VALUE),
        (other.key, other.to_json()),
        ("v1/instances/dynamo/backend/generate/1", DYNAMO_VALUE),  # key and value disagree
        ("v1/instances/dynamo/backend/generate/2", b"[1, 2"),
        ("v1/instances/dynamo/backend/generate/3", b'{"type":"Model","namespace":"dynamo","card_json":{"a":[1]}}'),
        ("v1/instances/dynamo/backend/generate/4", b'{"type":"EventChannel"}'),
        ("v1/instances/dynamo/backend/generate/5", _value(transport={})),
        ("v1/instances/dynamo/backend/generate/6", b'{"no":"type"}'),
        ("v1/instances/other/backend/generate/7", b"not even looked at"),  # outside the prefix: skipped
    ]
    decoded, rejected = decode_batch(items, "v1/instances/dynamo/")
    assert decoded == {GOOD_KEY: Instance.from_json(DYNAMO_VALUE), other.key: other}
    by_key = {r.key.rsplit("/", 1)[1]: r for r in rejected}
    assert sorted(by_key) == ["1", "2", "3", "4", "5", "6"]
    assert "does not match" in by_key["1"].reason
    assert [k for k, r in sorted(by_key.items()) if r.foreign] == ["3", "4"]  # other record kinds: skip quietly
    assert "exactly one" in by_key["5"].reason
    assert all(r.value == dict(items)[r.key] for r in rejected)


def test_record_type_tells_other_kinds_from_corrupt_values() -> None:
    assert record_type(DYNAMO_VALUE) == "Endpoint"
    assert record_type(b'{"card_json":{},"type":"Model"}') == "Model"
    for corrupt in (b"", b"[", b"[]", b'"Model"', b'{"type":1}', b'{"type":"Model"', b"[" * 5000, b"\xff"):
        assert record_type(corrupt) is None


entries = st.one_of(
    instances.map(lambda i: (i.key, i.to_json())),
    st.tuples(instances, instances).map(lambda pair: (pair[0].key, pair[1].to_json())),  # mostly mismatched
    st.tuples(instances, st.binary(max_size=40)).map(lambda p: (p[0].key, p[0].to_json()[: len(p[1])] + p[1])),
)


@given(st.lists(entries, max_size=8))
def test_decode_batch_agrees_with_decode_entry(items: list[tuple[str, bytes]]) -> None:
    decoded, rejected = decode_batch(items, "v1/instances/")
    expected: dict[str, Instance] = {}
    bad = 0
    for key, value in items:
        try:
            expected[key] = decode_entry(key, value)
        except CodecError:
            bad += 1
    assert decoded == expected
    assert len(rejected) == bad


# -- hostile stored values ----------------------------------------------------------------------------------------

def _with(extra: bytes) -> bytes:
    """DYNAMO_VALUE with ``extra`` (raw JSON text: ``,"field":…``) inserted before its closing brace."""
    return DYNAMO_VALUE[:-1] + extra + b"}"


def _nested(depth: int) -> bytes:
    return b"[" * depth + b"]" * depth


@pytest.mark.parametrize("depth", [1000, 100_000])
@pytest.mark.parametrize("where", ["unknown", "metadata", "metadata_key", "transport"])
def test_deeply_nested_values_are_codec_errors_not_recursion_errors(where: str, depth: int) -> None:
    value = {
        "unknown": _with(b',"future":' + _nested(depth)),
        "metadata": _with(b',"metadata":{"k":' + _nested(depth) + b"}"),
        "metadata_key": _with(b',"metadata":' + b'{"k":' * depth + b"1" + b"}" * depth),
        "transport": DYNAMO_VALUE.replace(b'"transport":{', b'"transport":{"x":' + _nested(depth) + b",", 1),
    }[where]
    reason = "nested too deeply" if where != "transport" else "unknown field"  # refused before descending
    if len(value) > MAX_VALUE_BYTES:
        reason = "a value may have"  # refused before decoding at all
    with pytest.raises(CodecError, match=reason):
        Instance.from_json(value)
    decoded, rejected = decode_batch([(GOOD_KEY, value), (GOOD_KEY + "0", DYNAMO_VALUE)], "v1/instances/")
    assert not decoded and len(rejected) == 2 and reason in rejected[0].reason
    with pytest.raises(CodecError):
        Instance.from_dict(_deep_python(depth))


def _deep_python(depth: int) -> dict[str, object]:
    value = json.loads(DYNAMO_VALUE)
    inner: list[object] = []
    value["metadata"] = {"k": inner}
    for _ in range(depth):
        inner.append([])
        inner = inner[0]  # type: ignore[assignment]
    return value


def test_an_unknown_field_nested_within_the_decoders_budget_is_ignored() -> None:
    """Decided: unknown fields are skipped at any depth the C decoder can skip (~1000 levels, less the stack)."""
    assert Instance.from_json(_with(b',"future":' + _nested(100))) == Instance.from_json(DYNAMO_VALUE)


def test_metadata_nests_at_most_32_levels_on_read() -> None:
    ok = _with(b',"metadata":{"k":' + _nested(31) + b"}")  # the metadata object + 31 lists = 32 levels
    assert Instance.from_json(ok).metadata is not None
    with pytest.raises(CodecError, match="32 levels"):
        Instance.from_json(_with(b',"metadata":{"k":' + _nested(32) + b"}"))
    with pytest.raises(CodecError, match="32 levels"):
        decode_entry(GOOD_KEY, _with(b',"metadata":' + b'{"k":' * 33 + b"1" + b"}" * 33))


@pytest.mark.parametrize("value", [
    DYNAMO_VALUE.replace(b'"backend"', b'"back\\ud800end"'),                 # escaped lone surrogate in a name
    DYNAMO_VALUE.replace(b'"127.0.0.1', b'"\\udc00127.0.0.1'),               # ... in the address (low half)
    DYNAMO_VALUE.replace(b'"127.0.0.1', b'"\\ud800\\u0041127.0.0.1'),        # high half, then not a low half
    _with(b',"metadata":{"k":"\\ud800"}'),                                   # ... in metadata
    _with(b',"metadata":{"\\ud800":1}'),                                     # ... in a metadata key
    _with(b',"future":"\\ud800"}'[:-1]),                                     # ... in an ignored field
    DYNAMO_VALUE.replace(b'"127.0.0.1', b'"\xed\xa0\x80127.0.0.1'),           # a surrogate encoded as UTF-8 bytes
    DYNAMO_VALUE.replace(b'"127.0.0.1', b'"\xff127.0.0.1'),                   # raw invalid UTF-8
    _with(b',"future":"\xc0\xaf"'),                                          # overlong UTF-8 in an ignored field
    _with(b',"future":"\xed\xb0\x80"'),                                      # encoded surrogate in an ignored field
])
def test_surrogates_and_invalid_utf8_in_stored_values_are_codec_errors(value: bytes) -> None:
    with pytest.raises(CodecError):
        Instance.from_json(value)
    with pytest.raises(CodecError):
        decode_entry(GOOD_KEY, value)
    decoded, rejected = decode_batch([(GOOD_KEY, value)], "v1/instances/")
    assert not decoded and len(rejected) == 1 and not rejected[0].foreign


def test_a_str_value_with_a_lone_surrogate_is_a_codec_error() -> None:
    with pytest.raises(CodecError):
        Instance.from_json(DYNAMO_VALUE.decode().replace("127.0.0.1", "\ud800"))


@pytest.mark.parametrize("field", ["type", "device_type", "request_plane_codec", "component", "instance_id"])
def test_huge_stored_values_give_short_reasons(field: str) -> None:
    value = _value(**{field: "x" * 1_000_000})
    with pytest.raises(CodecError) as info:
        Instance.from_json(value)
    assert len(str(info.value)) < 300
    (rejected,) = decode_batch([(GOOD_KEY, value)], "v1/instances/")[1]
    assert len(rejected.reason) < 300


def test_stored_addresses_are_kept_verbatim_even_with_controls_and_nul() -> None:
    """Decided: a reader keeps what another writer stored (NUL included); only our writer refuses NUL."""
    address = "h:1/\t\n\x7f\u2028\U0001f600\x00end"
    value = _value(transport={"tcp": address})
    assert Instance.from_json(value).transport.address == address


# -- hostile arguments --------------------------------------------------------------------------------------------

def _message(exc_type: type[Exception], fn: Callable[[], object]) -> str:
    with pytest.raises(exc_type) as info:
        fn()
    message = str(info.value)
    assert len(message) < 400 and message.isprintable(), message[:500]
    return message


def _short_id(value: object) -> str:
    return shorten(value, 30)


@pytest.mark.parametrize("bad", [1.5, True, False, float("inf"), float("nan"), 10**400, 10**5000, -1, 2**64, "1",
                                 None, 1 + 0j], ids=_short_id)
def test_bad_instance_ids_name_the_argument_and_the_rule(bad: object) -> None:
    message = _message(ConfigError, lambda: Instance("n", "c", "e", bad, TransportType.tcp("x")))  # type: ignore[arg-type]
    assert "instance_id" in message and "0 to 2**64-1" in message


@pytest.mark.parametrize(("kwargs", "argument", "error"), [
    ({"namespace": 5}, "namespace", InvalidName),
    ({"namespace": b"ns"}, "namespace", InvalidName),
    ({"component": None}, "component", InvalidName),
    ({"endpoint": ["e"]}, "endpoint", InvalidName),
    ({"namespace": "n\ud800"}, "namespace", InvalidName),
    ({"component": "c\x00"}, "component", InvalidName),
    ({"endpoint": "e\n"}, "endpoint", InvalidName),
    ({"transport": "tcp:x"}, "transport", ConfigError),
    ({"transport": None}, "transport", ConfigError),
    ({"device_type": 5}, "device_type", ConfigError),
    ({"device_type": ["cpu"]}, "device_type", ConfigError),
    ({"request_plane_codec": "xml"}, "request_plane_codec", ConfigError),
    ({"metadata": [1]}, "metadata", ConfigError),
    ({"metadata": "k=v"}, "metadata", ConfigError),
])
def test_bad_arguments_name_the_argument(kwargs: dict[str, object], argument: str, error: type[Exception]) -> None:
    fields: dict[str, object] = {"namespace": "n", "component": "c", "endpoint": "e", "instance_id": 1,
                                 "transport": TransportType.tcp("x"), **kwargs}
    assert argument in _message(error, lambda: Instance(**fields))  # type: ignore[arg-type]


@pytest.mark.parametrize("address", ["a\ud800b", "\udfff", "a\x00b", 5, None, b"host:1", "x" * 10_000], ids=_short_id)
def test_bad_addresses_are_refused_at_construction(address: object) -> None:
    assert "address" in _message(ConfigError, lambda: TransportType.tcp(address))  # type: ignore[arg-type]


@pytest.mark.parametrize("kind", ["udp", "TCP", None, 5, "x" * 1_000_000], ids=_short_id)
def test_bad_transport_kinds_are_refused(kind: object) -> None:
    assert "transport kind" in _message(ConfigError, lambda: TransportType(kind, "x"))  # type: ignore[arg-type]


@pytest.mark.parametrize("control", ["\t", "\r", "\n", "\x1b", "\x7f", "\x85", "\x00"])
def test_control_characters_are_refused_in_addresses_and_metadata_keys_before_anything_is_written(
        control: str) -> None:
    with pytest.raises(ConfigError, match="control character"):
        TransportType.tcp(f"h:1/{control}[0m")
    with pytest.raises(ConfigError, match="control character"):
        Instance("n", "c", "e", 1, TransportType.tcp("h:1"), metadata={f"k{control}": 1})


def test_addresses_stored_by_others_are_read_verbatim() -> None:
    address = "h:1/\t\r\n\x1b[0m\x7f\u2028\ufeff"
    stored = json.dumps({"type": "Endpoint", "component": "c", "endpoint": "e", "namespace": "n", "instance_id": 1,
                         "transport": {"nats_tcp": address}}).encode()
    assert Instance.from_json(stored).transport.address == address
    metadata = {"text": "line one\nline two\ttab"}  # text may hold tabs and line breaks
    assert Instance("n", "c", "e", 1, TransportType.tcp("h:1"), metadata=metadata).metadata == metadata


def _cyclic() -> dict[str, object]:
    value: dict[str, object] = {}
    value["self"] = value
    return value


def _deep_list(depth: int) -> list[object]:
    top: list[object] = []
    inner = top
    for _ in range(depth):
        inner.append([])
        inner = inner[0]  # type: ignore[assignment]
    return top


@pytest.mark.parametrize("metadata", [
    {"k": _deep_list(32)},           # 33 levels
    {"k": _deep_list(100_000)},      # would be a RecursionError in json.dumps
    _cyclic(),
    {"k": "x" * (64 * 1024)},        # over 64 KiB as JSON
    {"k": ["x" * 1000] * 100},
    {"k": float("nan")},
    {"k": [float("inf")]},
    {1: "int key"},
    {"k": object()},
    {"k": {1, 2}},
    {"k": b"bytes"},
    {"k": 10**5000},                 # json cannot carry it (and its repr raises ValueError)
    {"k": "\ud800"},
    {"\udc00": 1},
    [("k", "v")],
    "x" * 1_000_000,
], ids=_short_id)
def test_bad_metadata_is_refused_with_a_short_message(metadata: object) -> None:
    message = _message(ConfigError, lambda: Instance("n", "c", "e", 1, TransportType.tcp("x"), metadata=metadata))
    assert "metadata" in message


def test_metadata_within_the_limits_is_copied_as_json() -> None:
    source = {"k": ("a", 1, 2.5, None, True, {"n": [[]]}), "deep": _deep_list(30)}
    instance = Instance("n", "c", "e", 1, TransportType.tcp("x"), metadata=source)
    source["k"] = "changed"
    assert instance.metadata == {"k": ["a", 1, 2.5, None, True, {"n": [[]]}], "deep": _deep_list(30)}
    assert Instance.from_json(instance.to_json()) == instance
    big = {"k": "x" * (64 * 1024 - 12)}  # {"k":"…"} is exactly 64 KiB
    assert len(Instance("n", "c", "e", 1, TransportType.tcp("x"), metadata=big).to_json()) > 64 * 1024


@pytest.mark.parametrize("key", ["v1/instances/a/b/c/f_1", "v1/instances/a/b/c/+f", "v1/instances/a/b/c/ f",
                                 "v1/instances/a/b/c/1" + "0" * 16, "v1/instances/a/b/c/", "v1/instances/a/b/c/0x1"])
def test_hex_ids_in_keys_are_parsed_strictly(key: str) -> None:
    with pytest.raises(CodecError):
        parse_instance_key(key)


def test_replace_goes_through_the_checks() -> None:
    """copy.replace (Python 3.13) calls __replace__; msgspec's default would skip validation."""
    instance = Instance("n", "c", "e", 1, TransportType.tcp("x"))
    assert instance.__replace__(instance_id=2) == Instance("n", "c", "e", 2, TransportType.tcp("x"))
    assert instance.transport.__replace__(address="y") == TransportType.tcp("y")
    with pytest.raises(ConfigError):
        instance.__replace__(instance_id=-1)
    with pytest.raises(ConfigError):
        instance.transport.__replace__(address="\x00")
