"""Differential tests: the msgspec codec against a slow, obviously correct reference decoder.

The reference is ``json.loads`` plus explicit checks written straight from
the rules in ``waypost.core._instance`` (design §3 and the documented limits).
For every generated stored value (valid Dynamo values and mutations of them,
random JSON, unknown fields, nulls, big ids, bad enums, surrogates, invalid
UTF-8, deep nesting) both must agree: the same instance, or both reject; and
they must agree on which rejects are records of another kind.

Where json.loads and a C decoder legitimately differ, the reference says what
the codec promises instead: numbers out of range (``1e400``, 5000-digit
integers) are refused where they are decoded (id, metadata) and ignored in
unknown fields; nesting beyond the interpreter's recursion budget is refused
(the strategies stay clear of the budget's fuzzy edge: at most 40 levels, or
at least 3000).
"""

from __future__ import annotations

import json
import math
import re
from typing import Any

from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from hypothesis.control import currently_in_test_context

from waypost import CodecError, Instance
from waypost.core._instance import decode_batch

PREFIX = "v1/instances/"
MAX_ID = 2**64 - 1
def _dynamo_segment(name: str) -> bool:
    """What Dynamo accepts in a name, stated independently of waypost's regex: 1..255 of '!'..'~' but '.' and '/'."""
    return 1 <= len(name) <= 255 and all("!" <= c <= "~" and c not in "./" for c in name)
KINDS = ("nats_tcp", "http", "tcp")
DEVICE_TYPES = (None, "cpu", "cuda")
CODECS = (None, "msgpack", "json")
MAX_METADATA_DEPTH = 32

Fields = tuple[str, str, str, int, str, str, "str | None", "str | None", "dict[str, Any] | None"]


# -- the reference ------------------------------------------------------------------------------------------------

class _OutOfRange:
    """A JSON number Python cannot hold as the codec would (an int of > 4300 digits, a float overflowing)."""


OUT_OF_RANGE = _OutOfRange()


class _Object(dict[str, Any]):
    """A decoded JSON object that remembers its ``type`` keys (json.loads keeps only the last)."""

    types: list[Any]


def _object(pairs: list[tuple[str, Any]]) -> _Object:
    obj = _Object(pairs)
    obj.types = [v for k, v in pairs if k == "type"]
    return obj


def _parse_int(text: str) -> object:
    return OUT_OF_RANGE if len(text) > 4300 else int(text)


def _parse_float(text: str) -> object:
    value = float(text)
    return value if math.isfinite(value) else OUT_OF_RANGE


def _no_constants(text: str) -> object:
    raise ValueError(f"{text} is not JSON")


def _strings_and_numbers(doc: object) -> tuple[bool, bool]:
    """(holds a lone surrogate anywhere, holds an out-of-range number anywhere) — iteratively."""
    surrogate = out_of_range = False
    stack = [doc]
    while stack:
        item = stack.pop()
        if isinstance(item, str):
            surrogate = surrogate or any("\ud800" <= ch <= "\udfff" for ch in item)
        elif item is OUT_OF_RANGE:
            out_of_range = True
        elif isinstance(item, dict):
            stack.extend(item.keys())
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)
    return surrogate, out_of_range


def _depth(value: object) -> int:
    """Containers nested in ``value`` (a scalar is 0), iteratively."""
    deepest = 0
    stack = [(value, 1)]
    while stack:
        item, level = stack.pop()
        if isinstance(item, dict | list):
            deepest = max(deepest, level)
            stack.extend((child, level + 1) for child in (item.values() if isinstance(item, dict) else item))
    return deepest


def parse(value: bytes) -> Any:
    """The JSON document in ``value``, or raise ValueError: what any strict JSON reader accepts."""
    try:
        text = value.decode("utf-8")  # strict: no invalid bytes, no encoded surrogates, no overlong forms
        doc = json.loads(text, object_pairs_hook=_object, parse_int=_parse_int, parse_float=_parse_float,
                         parse_constant=_no_constants)
    except (UnicodeDecodeError, RecursionError) as exc:
        raise ValueError(str(exc)) from None
    if _strings_and_numbers(doc)[0]:
        raise ValueError("lone surrogate")
    return doc


def record_kind(value: bytes) -> str | None:
    """The ``type`` of a well-formed JSON object record, else None."""
    try:
        doc = parse(value)
    except ValueError:
        return None
    if not isinstance(doc, dict) or not doc.types or len(set(map(repr, doc.types))) != 1:
        return None
    return doc.types[0] if isinstance(doc.types[0], str) else None


def reference(key: str, value: bytes) -> Fields | None:
    """The instance ``(key, value)`` stores, as plain fields, or None if it is not one."""
    try:
        doc = parse(value)
    except ValueError:
        return None
    if not isinstance(doc, dict) or record_kind(value) != "Endpoint":
        return None
    namespace, component, endpoint = doc.get("namespace"), doc.get("component"), doc.get("endpoint")
    if not isinstance(namespace, str) or not all(_dynamo_segment(part) for part in namespace.split(".")):
        return None
    if not all(isinstance(name, str) and _dynamo_segment(name) for name in (component, endpoint)):
        return None
    instance_id = doc.get("instance_id")
    if type(instance_id) is not int or not 0 <= instance_id <= MAX_ID:
        return None
    transport = doc.get("transport")
    if not isinstance(transport, dict) or len(transport) != 1:
        return None
    ((kind, address),) = transport.items()
    if kind not in KINDS or not isinstance(address, str):
        return None
    device_type, codec = doc.get("device_type"), doc.get("request_plane_codec")
    if device_type not in DEVICE_TYPES or codec not in CODECS:
        return None
    metadata = doc.get("metadata")
    if metadata is not None and (not isinstance(metadata, dict) or _depth(metadata) > MAX_METADATA_DEPTH
                                 or _strings_and_numbers(metadata)[1]):
        return None
    if key != f"v1/instances/{namespace}/{component}/{endpoint}/{instance_id:x}":
        return None
    return (namespace, component, endpoint, instance_id, kind, address, device_type, codec,
            None if metadata is None else json.loads(json.dumps(metadata)))  # plain dicts


def fields_of(instance: Instance) -> Fields:
    return (instance.namespace, instance.component, instance.endpoint, instance.instance_id,
            instance.transport.kind, instance.transport.address,
            None if instance.device_type is None else instance.device_type.value,
            None if instance.request_plane_codec is None else instance.request_plane_codec.value,
            instance.metadata)


def check(key: str, value: bytes) -> None:
    """The codec and the reference agree on ``(key, value)``."""
    expected = reference(key, value)
    decoded, rejected = decode_batch([(key, value)], PREFIX)
    if currently_in_test_context():
        event("accepted" if expected is not None else "rejected")  # shown by --hypothesis-show-statistics
    if expected is None:
        assert not decoded and len(rejected) == 1, (key, value[:300], decoded)
        try:
            value.decode()
        except UnicodeDecodeError:
            return  # a record of another kind is recognised by its tag alone (its skipped bytes are not read)
        kind = record_kind(value)
        assert rejected[0].foreign == (kind is not None and kind != "Endpoint"), (value[:300], rejected[0])
    else:
        assert not rejected, (key, value[:300], rejected)
        assert fields_of(decoded[key]) == expected
        assert Instance.from_json(value) == decoded[key]
        assert Instance.from_json(decoded[key].to_json()) == decoded[key]


# -- strategies ---------------------------------------------------------------------------------------------------

segments = st.text(st.sampled_from("abcxyz0189_-"), min_size=1, max_size=63)  # faster than from_regex
near_names = st.text(st.sampled_from("abAZ09_-.\n /\x00é~+%"), max_size=70) | segments
any_text = st.text(st.characters(codec=None), max_size=20)  # surrogates included
json_leaf = (st.none() | st.booleans() | st.integers(-(2**70), 2**70) | st.floats(allow_nan=False, allow_infinity=False)
             | any_text)
json_values = st.recursive(json_leaf, lambda c: st.lists(c, max_size=4) | st.dictionaries(any_text, c, max_size=4),
                           max_leaves=12)
ids = st.sampled_from([0, 1, 2**63 - 1, 2**63, MAX_ID, MAX_ID + 1, -1, 2**80]) | st.integers(0, MAX_ID)


def _nest(depth: int, leaf: object, as_object: bool) -> object:
    if depth > 100:  # json.dumps cannot write it: a placeholder that encode() swaps for the raw text
        return f"@@deep:{depth}:{'o' if as_object else 'a'}@@"
    value = leaf
    for _ in range(depth):
        value = {"k": value} if as_object else [value]
    return value


def _deep_text(match: re.Match[bytes]) -> bytes:
    depth, kind = int(match[1]), match[2]
    return (b'{"k":' * depth + b"1" + b"}" * depth) if kind == b"o" else (b"[" * depth + b"]" * depth)


nests = st.builds(_nest, st.integers(0, 40) | st.integers(3000, 4000), json_leaf, st.booleans())


@st.composite
def dynamo_dicts(draw: st.DrawFn) -> dict[str, Any]:
    """A valid Dynamo endpoint value, as a dict."""
    value: dict[str, Any] = {
        "type": "Endpoint",
        "component": draw(segments),
        "endpoint": draw(segments),
        "namespace": ".".join(draw(st.lists(segments, min_size=1, max_size=3))),
        "instance_id": draw(st.integers(0, MAX_ID)),
        "transport": {draw(st.sampled_from(KINDS)): draw(st.text(max_size=60))},
    }
    for name, choices in (("device_type", DEVICE_TYPES), ("request_plane_codec", CODECS)):
        choice = draw(st.sampled_from(choices))
        if choice is not None or draw(st.booleans()):
            value[name] = choice  # absent, null or set
    if draw(st.booleans()):
        value["metadata"] = draw(st.dictionaries(st.text(max_size=8), json_values, max_size=3))
    return value


MUTATIONS: dict[str, Any] = {
    "type": st.sampled_from(["Model", "endpoint", "Endpoint ", "", None, 1]) | any_text,
    "component": near_names | json_leaf,
    "endpoint": near_names | json_leaf,
    "namespace": near_names | json_leaf,
    "instance_id": ids | json_leaf,
    "transport": (st.dictionaries(st.sampled_from([*KINDS, "udp", "TCP"]), st.text(max_size=5) | json_leaf,
                                  max_size=3) | json_values),
    "device_type": st.sampled_from(["cpu", "cuda", "CPU", "tpu", "", None]) | json_leaf,
    "request_plane_codec": st.sampled_from(["msgpack", "json", "JSON", "xml", None]) | json_leaf,
    "metadata": json_values | nests.map(lambda n: {"k": n}) | st.just({"k": "\ud800"}),
}


@st.composite
def mutated_dicts(draw: st.DrawFn) -> dict[str, Any]:
    value = draw(dynamo_dicts())
    for name in draw(st.lists(st.sampled_from(sorted(MUTATIONS)), max_size=3, unique=True)):
        if draw(st.booleans()):
            value.pop(name, None)
        else:
            value[name] = draw(MUTATIONS[name])
    for _ in range(draw(st.integers(0, 2))):  # unknown fields, possibly deep, possibly hostile
        value[draw(st.sampled_from(["future", "card_json", "x", "\ud800"]))] = draw(json_values | nests)
    return value


BOUNDARIES: dict[str, list[Any]] = {
    "instance_id": [0, 1, 2**63 - 1, 2**63, MAX_ID, MAX_ID + 1, 2**80, -1, True, False, 1.0, "1", None, [1]],
    "transport": [{}, {"tcp": "a", "http": "b"}, {"tcp": "a", "http": "b", "nats_tcp": "c"}, {"udp": "x"},
                  {"TCP": "x"}, {"tcp": None}, {"tcp": 1}, {"tcp": ["x"]}, {"tcp": "a", "x": 1}, ["tcp", "x"],
                  "tcp:x", None, {"http": ""}, {"nats_tcp": "\x00\n"}],
    "namespace": ["a" * 63, "a" * 64, "a" * 255, "a" * 256, "a.b", "a..b", ".a", "a.", "A", "a\n", "",
                  "a" * 63 + "." + "b" * 63, 5],
    "component": ["a" * 63, "a" * 64, "a" * 255, "a" * 256, "a.b", "-", "_", "A", "~+!", "a\n", "\na", "",
                  "é", "a\x7f", None],
    "endpoint": ["a" * 63, "a" * 64, "a/b", "0", "a b", "", "Gen+1", ["a"]],
    "device_type": ["cpu", "cuda", None, "CPU", "gpu", "", 0, True, ["cpu"]],
    "request_plane_codec": ["msgpack", "json", None, "Msgpack", "xml", 1],
    "type": ["Endpoint", "Model", "endpoint", None, 1, ["Endpoint"]],
    "metadata": [*({"k": _nest(depth, 1, as_object)} for depth in (30, 31, 32, 33) for as_object in (False, True)),
                 {}, None, [], "m", 1, {"": None}, {"k": -0.0}, {"k": 1e308}, {"k": 2**70}],
}


@st.composite
def boundary_dicts(draw: st.DrawFn) -> dict[str, Any]:
    """A valid value with one field set to a value on or just past the edge of a rule."""
    value = draw(dynamo_dicts())
    name = draw(st.sampled_from(sorted(BOUNDARIES)))
    value[name] = draw(st.sampled_from(BOUNDARIES[name]))
    return value


def encode(value: object, ascii_only: bool) -> bytes:
    # ensure_ascii=False leaves lone surrogates raw: "surrogatepass" turns them into invalid UTF-8 bytes.
    data = json.dumps(value, separators=(",", ":"), ensure_ascii=ascii_only).encode("utf-8", "surrogatepass")
    return re.sub(rb'"@@deep:(\d+):([oa])@@"', _deep_text, data)


def key_for(value: object) -> str:
    if isinstance(value, dict):
        try:
            names = f"{value['namespace']}/{value['component']}/{value['endpoint']}"
            return f"v1/instances/{names}/{value['instance_id']:x}"
        except (KeyError, TypeError, ValueError):
            pass
    return "v1/instances/n/c/e/1"


RAW_NUMBERS = [b"1e400", b"-1e400", b"-0", b"1.0", b"1E2", b"18446744073709551616", b"1" + b"0" * 5000, b"NaN",
               b"Infinity", b"0x10", b"01", b"+1", b"1_0"]


@st.composite
def raw_edits(draw: st.DrawFn) -> tuple[str, bytes]:
    """A serialized value edited as bytes: truncated, spliced, a number or a field swapped for raw text."""
    value = draw(dynamo_dicts())
    key = key_for(value)
    data = encode(value, draw(st.booleans()))
    edit = draw(st.sampled_from(["truncate", "insert", "flip", "number_id", "number_unknown", "number_metadata"]))
    if edit == "truncate":
        data = data[: draw(st.integers(0, len(data)))]
    elif edit == "insert":
        at = draw(st.integers(0, len(data)))
        data = data[:at] + draw(st.binary(min_size=1, max_size=6)) + data[at:]
    elif edit == "flip":
        at = draw(st.integers(0, len(data) - 1))
        data = data[:at] + bytes([draw(st.integers(0, 255))]) + data[at + 1:]
    else:
        number = draw(st.sampled_from(RAW_NUMBERS))
        if edit == "number_id":
            data = re.sub(rb'"instance_id":\d+', b'"instance_id":' + number, data)
            if number.isdigit() and len(number) < 100:
                key = key_for({**value, "instance_id": int(number)})
        elif edit == "number_unknown":
            data = data[:-1] + b',"future":[' + number + b"]}"
        else:
            data = data[:-1] + b',"metadata":{"n":' + number + b"}}"
    return key, data


def _keys_for(value: dict[str, Any]) -> st.SearchStrategy[str]:
    good = key_for(value)
    head, _, hex_id = good.rpartition("/")
    return st.sampled_from([good, good, good, f"{head}/{hex_id.upper()}", f"{head}/0{hex_id}", f"{head}/1",
                            good.replace("v1/instances/", "v1/instances/x.", 1), good + "/extra"])


SETTINGS = settings(max_examples=500, deadline=None, suppress_health_check=[HealthCheck.too_slow,
                                                                            HealthCheck.data_too_large])


# -- the tests ----------------------------------------------------------------------------------------------------

@settings(SETTINGS, max_examples=300)
@given(st.data())
def test_valid_dynamo_values_agree(data: st.DataObject) -> None:
    value = data.draw(dynamo_dicts())
    check(data.draw(_keys_for(value)), encode(value, data.draw(st.booleans())))


@settings(SETTINGS, max_examples=700)
@given(st.data())
def test_mutated_dynamo_values_agree(data: st.DataObject) -> None:
    value = data.draw(mutated_dicts())
    check(data.draw(_keys_for(value) if isinstance(value, dict) else st.just(key_for(value))),
          encode(value, data.draw(st.booleans())))


@settings(SETTINGS, max_examples=600)
@given(boundary_dicts(), st.booleans())
def test_values_on_the_edge_of_a_rule_agree(value: dict[str, Any], ascii_only: bool) -> None:
    check(key_for(value), encode(value, ascii_only))


@SETTINGS
@given(raw_edits())
def test_values_edited_as_bytes_agree(entry: tuple[str, bytes]) -> None:
    check(*entry)


@settings(max_examples=400, deadline=None)
@given(json_values | nests, st.booleans())
def test_random_json_agrees(value: object, ascii_only: bool) -> None:
    check(key_for(value), encode(value, ascii_only))


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=200))
def test_random_bytes_agree(data: bytes) -> None:
    check("v1/instances/n/c/e/1", data)


def test_the_reference_is_not_vacuous() -> None:
    """Both accept the canonical value and both refuse a lone surrogate, a NaN and a deep value."""
    good = (b'{"type":"Endpoint","component":"backend","endpoint":"generate","namespace":"dynamo",'
            b'"instance_id":1,"transport":{"tcp":"h:1"},"device_type":"cuda"}')
    key = "v1/instances/dynamo/backend/generate/1"
    assert reference(key, good) is not None
    check(key, good)
    for bad in (good.replace(b"h:1", b"\\ud800"), good[:-1] + b',"n":NaN}', good[:-1] + b',"d":' + b"[" * 5000 +
                b"]" * 5000 + b"}"):
        assert reference(key, bad) is None
        check(key, bad)
        try:
            Instance.from_json(bad)
        except CodecError:
            continue
        raise AssertionError(bad[:100])
