"""The Dynamo wire format (design §3), including property-based tests."""

from __future__ import annotations

import contextlib
import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from waypost import CodecError, DeviceType, Instance, TransportType
from waypost.core import decode_entry, instance_key, parse_instance_key

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
    b'{"type":"Endpoint","component":"C","endpoint":"e","namespace":"n","instance_id":1,"transport":{"tcp":"x"}}',
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
transports = st.builds(TransportType, st.sampled_from(["tcp", "http", "nats_tcp"]), st.text())
json_leaf = st.none() | st.booleans() | st.integers(-(2**53), 2**53) | st.text()
metadata = st.none() | st.dictionaries(st.text(), st.recursive(json_leaf, lambda c: st.lists(c) | st.dictionaries(
    st.text(), c), max_leaves=8), max_size=4)
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
