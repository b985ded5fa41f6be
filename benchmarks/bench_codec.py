"""Time the wire codec: decoding, encoding and how decoding scales with the list size.

    PYTHONPATH=src python benchmarks/bench_codec.py [--n 10000] [--rounds 7] [--sizes 1000,10000,100000]

Standalone (no server, no pytest). The values are Dynamo endpoint records like
``DYNAMO_VALUE`` in tests/test_codec.py, with random u64 ids (half of them above
2**63) and names varying over 4 namespaces x 5 components x 3 endpoints.

It compares, per value:

- ``json.loads``: parsing alone, no checks (the floor of any pure-json codec);
- ``old``: the decoder waypost had before msgspec (copied below, verbatim in
  substance: ``json.loads``, Python checks, a slotted dataclass), called per
  entry as ``decode_items`` did;
- ``new entry``: :func:`waypost.core.decode_entry` per entry;
- ``new batch``: :func:`waypost.core._instance.decode_batch` on the whole list;
- encoding with the old and the new ``to_json``.

Then the scaling of a list decode at each size, with the garbage collector
enabled as in production, reporting the time per value (flat = linear) and the
full (generation 2) collections one decode triggered, with their time (ms per
decode). Rounds alternate between implementations (and sizes) so that a noisy
neighbour hurts them alike; the table reports the best round.
"""

from __future__ import annotations

import argparse
import enum
import functools
import gc
import json
import random
import re
import sys
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "src"))

from waypost import Instance
from waypost.core import decode_entry
from waypost.core._instance import decode_batch

NAMESPACES = ("dynamo", "prod.llm", "staging", "team-a.batch")
COMPONENTS = ("backend", "prefill", "decode", "router", "frontend")
ENDPOINTS = ("generate", "clear_kv_blocks", "load_metrics")


# -- the old decoder (waypost before msgspec), the baseline ------------------------------

class OldCodecError(ValueError):
    pass


_OLD_SEGMENT = re.compile(r"[a-z0-9_-]{1,63}")


@functools.lru_cache(maxsize=4096)
def _old_segment_ok(value: str) -> bool:
    return _OLD_SEGMENT.fullmatch(value) is not None


@functools.lru_cache(maxsize=4096)
def _old_namespace_ok(value: str) -> bool:
    return all(_old_segment_ok(part) for part in value.split("."))


def _old_validate_segment(kind: str, value: object) -> str:
    if not isinstance(value, str) or not _old_segment_ok(value):
        raise OldCodecError(f"invalid {kind} name {value!r}")
    return value


def _old_validate_namespace(value: object) -> str:
    if not isinstance(value, str) or not value or not _old_namespace_ok(value):
        raise OldCodecError(f"invalid namespace name {value!r}")
    return value


class OldDeviceType(enum.StrEnum):
    CPU = "cpu"
    CUDA = "cuda"


class OldRequestPlaneCodec(enum.StrEnum):
    MSGPACK = "msgpack"
    JSON = "json"


_KINDS = ("nats_tcp", "http", "tcp")


@dataclass(frozen=True, slots=True)
class OldTransportType:
    kind: Literal["nats_tcp", "http", "tcp"]
    address: str


def _old_enum_or_none(enum_type: type[enum.StrEnum], what: str, value: object) -> Any:
    if value is None or isinstance(value, enum_type):
        return value
    member = enum_type._value2member_map_.get(value) if isinstance(value, str) else None
    if member is None:
        raise OldCodecError(f"invalid {what} {value!r}")
    return member


def _old_check_instance_id(instance_id: object) -> None:
    if type(instance_id) is not int or not 0 <= instance_id <= 2**64 - 1:
        raise OldCodecError(f"invalid instance_id {instance_id!r}")


@functools.total_ordering
@dataclass(frozen=True, eq=False, slots=True)
class OldInstance:
    namespace: str
    component: str
    endpoint: str
    instance_id: int
    transport: OldTransportType
    device_type: OldDeviceType | None = None
    request_plane_codec: OldRequestPlaneCodec | None = None
    metadata: Mapping[str, Any] | None = field(default=None)

    def __str__(self) -> str:
        return f"{self.namespace}/{self.component}/{self.endpoint}/{self.instance_id}"

    def __lt__(self, other: object) -> bool:
        if not isinstance(other, OldInstance):
            return NotImplemented
        return str(self) < str(other)

    @property
    def key(self) -> str:
        return f"v1/instances/{self.namespace}/{self.component}/{self.endpoint}/{self.instance_id:x}"

    def to_dict(self) -> dict[str, Any]:
        value: dict[str, Any] = {
            "type": "Endpoint", "component": self.component, "endpoint": self.endpoint,
            "namespace": self.namespace, "instance_id": self.instance_id,
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
        return json.dumps(self.to_dict(), separators=(",", ":"), ensure_ascii=False).encode()

    @classmethod
    def from_json(cls, data: bytes) -> OldInstance:
        try:
            value = json.loads(data.decode())
        except (ValueError, UnicodeDecodeError) as exc:
            raise OldCodecError(str(exc)) from exc
        if not isinstance(value, dict) or value.get("type") != "Endpoint":
            raise OldCodecError("not an Endpoint")
        namespace = _old_validate_namespace(_old_required_str(value, "namespace"))
        component = _old_validate_segment("component", _old_required_str(value, "component"))
        endpoint = _old_validate_segment("endpoint", _old_required_str(value, "endpoint"))
        instance_id = value.get("instance_id")
        _old_check_instance_id(instance_id)
        metadata = value.get("metadata")
        if metadata is not None and not isinstance(metadata, dict):
            raise OldCodecError("metadata must be an object")
        instance = object.__new__(cls)
        for name, field_value in zip(
            ("namespace", "component", "endpoint", "instance_id", "transport", "device_type", "request_plane_codec",
             "metadata"),
            (namespace, component, endpoint, instance_id, _old_decode_transport(value.get("transport")),
             _old_enum_or_none(OldDeviceType, "device_type", value.get("device_type")),
             _old_enum_or_none(OldRequestPlaneCodec, "request_plane_codec", value.get("request_plane_codec")),
             metadata),
            strict=True,
        ):
            object.__setattr__(instance, name, field_value)
        return instance


def _old_required_str(value: dict[str, Any], name: str) -> str:
    field_value = value.get(name)
    if not isinstance(field_value, str):
        raise OldCodecError(f"field {name!r} must be a string")
    return field_value


def _old_decode_transport(value: object) -> OldTransportType:
    if not isinstance(value, dict) or len(value) != 1:
        raise OldCodecError("bad transport")
    ((kind, address),) = value.items()
    if kind not in _KINDS or not isinstance(address, str):
        raise OldCodecError("bad transport")
    transport = object.__new__(OldTransportType)
    object.__setattr__(transport, "kind", kind)
    object.__setattr__(transport, "address", address)
    return transport


def old_decode_entry(key: str, value: bytes) -> OldInstance:
    instance = OldInstance.from_json(value)
    if instance.key != key:
        raise OldCodecError("key mismatch")
    return instance


def old_decode_items(items: Iterable[tuple[str, bytes]], prefix: str) -> dict[str, OldInstance]:
    """``decode_items`` as it was: one decode_entry per value, errors skipped."""
    decoded: dict[str, OldInstance] = {}
    for key, value in items:
        if not key.startswith(prefix):
            continue
        try:  # noqa: SIM105 (as decode_or_warn did; contextlib.suppress costs more)
            decoded[key] = old_decode_entry(key, value)
        except OldCodecError:
            pass
    return decoded


# -- data ---------------------------------------------------------------------------------

def make_items(n: int, seed: int = 1) -> list[tuple[str, bytes]]:
    """``n`` (key, value) pairs of distinct Dynamo endpoint records, names and ids varying."""
    rng = random.Random(seed)
    ids: set[int] = set()
    items = []
    while len(items) < n:
        instance_id = rng.getrandbits(64) | 1
        if instance_id in ids:
            continue
        ids.add(instance_id)
        ns, comp, ep = rng.choice(NAMESPACES), rng.choice(COMPONENTS), rng.choice(ENDPOINTS)
        value = {
            "type": "Endpoint", "component": comp, "endpoint": ep, "namespace": ns, "instance_id": instance_id,
            "transport": {"tcp": f"127.0.0.1:{rng.randrange(1024, 65536)}/{instance_id:x}/{ns}/{comp}/{ep}"},
            "device_type": "cuda", "request_plane_codec": "msgpack",
        }
        items.append((f"v1/instances/{ns}/{comp}/{ep}/{instance_id:x}",
                      json.dumps(value, separators=(",", ":")).encode()))
    return items


# -- timing -------------------------------------------------------------------------------

class GcWatch:
    """Counts full (generation 2) collections and the time they take, through gc.callbacks."""

    def __init__(self) -> None:
        self.full = 0
        self.seconds = 0.0
        self._start = 0.0

    def __call__(self, phase: str, info: dict[str, Any]) -> None:
        if info["generation"] != 2:
            return
        if phase == "start":
            self._start = time.perf_counter()
        else:
            self.full += 1
            self.seconds += time.perf_counter() - self._start


def best_of(fns: dict[str, Callable[[], object]], rounds: int) -> dict[str, float]:
    """Best wall time of each function over ``rounds``, the functions alternating round by round."""
    best = dict.fromkeys(fns, float("inf"))
    for _ in range(rounds):
        for name, fn in fns.items():
            gc.collect()
            t0 = time.perf_counter()
            fn()
            best[name] = min(best[name], time.perf_counter() - t0)
    return best


def per_item(seconds: float, n: int) -> str:
    return f"{seconds / n * 1e9:9.0f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=10_000)
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--sizes", default="1000,10000,100000")
    args = parser.parse_args()

    items = make_items(args.n)
    prefix = "v1/instances/"
    assert len(decode_batch(items, prefix)[0]) == len(old_decode_items(items, prefix)) == args.n
    new_instances = [Instance.from_json(v) for _, v in items]
    old_instances = [OldInstance.from_json(v) for _, v in items]
    assert all(a.to_json() == b.to_json() == v for a, b, (_, v) in zip(new_instances, old_instances, items,
                                                                           strict=True))

    def new_entries() -> None:
        for key, value in items:
            decode_entry(key, value)

    decode = best_of({
        "json.loads": lambda: [json.loads(v) for _, v in items],
        "old": lambda: old_decode_items(items, prefix),
        "new entry": new_entries,
        "new batch": lambda: decode_batch(items, prefix),
    }, args.rounds)
    encode = best_of({
        "old to_json": lambda: [i.to_json() for i in old_instances],
        "new to_json": lambda: [i.to_json() for i in new_instances],
    }, args.rounds)

    print(f"Python {sys.version.split()[0]}, {args.n} Dynamo endpoint values, best of {args.rounds} rounds\n")
    print(f"{'decode':<14}{'ns/value':>9}  {'vs json.loads':>13}")
    floor = decode["json.loads"]
    for name, seconds in decode.items():
        print(f"{name:<14}{per_item(seconds, args.n)}  {seconds / floor:12.2f}x")
    print(f"\n{'encode':<14}{'ns/value':>9}")
    for name, seconds in encode.items():
        print(f"{name:<14}{per_item(seconds, args.n)}")

    print("\nlist decode scaling (gc enabled; ns/value flat = linear)")
    print(f"{'n':>8}  {'old ns/value':>12} {'full gcs':>8} {'gc ms':>7}   {'new ns/value':>12} {'full gcs':>8} "
          f"{'gc ms':>7}   {'old/new':>7}")
    sizes = [int(size) for size in args.sizes.split(",")]
    lists = {n: make_items(n, seed=n) for n in sizes}
    decoders = {"old": old_decode_items, "new": decode_batch}
    best: dict[tuple[int, str], tuple[float, float, float]] = {}
    for _ in range(args.rounds):  # sizes and decoders alternate round by round, as above
        for n, big in lists.items():
            for name, decoder in decoders.items():
                repeat = max(1, 100_000 // n)  # ~the same work per measurement at every size
                watch = GcWatch()
                gc.collect()
                gc.callbacks.append(watch)
                t0 = time.perf_counter()
                for _ in range(repeat):
                    result = decoder(big, prefix)
                    del result
                elapsed = (time.perf_counter() - t0) / repeat
                gc.callbacks.remove(watch)
                if elapsed < best.get((n, name), (float("inf"), 0.0, 0.0))[0]:
                    best[n, name] = (elapsed, watch.full / repeat, watch.seconds / repeat)
    for n in sizes:
        (old_s, old_full, old_gc), (new_s, new_full, new_gc) = best[n, "old"], best[n, "new"]
        print(f"{n:>8}  {per_item(old_s, n):>12} {old_full:8.2f} {old_gc * 1e3:7.1f}   {per_item(new_s, n):>12} "
              f"{new_full:8.2f} {new_gc * 1e3:7.1f}   {old_s / new_s:6.1f}x")

if __name__ == "__main__":
    main()
