"""Property-based fuzzing of everything a caller or a store can hand to waypost (issue 9).

Over 10 000 generated cases (fixed seed, bounded time) across names, ids, transports, metadata, URLs,
options, queries, timeouts, stored values and the CLI: only waypost's documented exception types come
out, and nothing hangs.
"""

from __future__ import annotations

import json
import math
import threading
from collections import Counter
from collections.abc import Callable
from typing import Any

import pytest
from click.testing import CliRunner
from hypothesis import HealthCheck, given, seed, settings
from hypothesis import strategies as st

import waypost
from waypost import ConfigError, EndpointId, Instance, Query, TransportType
from waypost.contrib.cli import cli
from waypost.core import (
    RUNTIME_OPTIONS,
    backend_class,
    check_timeout,
    decode_batch,
    installed_backends,
    parse_url,
    resolve_options,
)

CASES: Counter[str] = Counter()
FUZZ = settings(max_examples=1500, deadline=None, derandomize=True, database=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much])
SEED = 20261201

anything = st.one_of(st.none(), st.booleans(), st.integers(-(2**70), 2**70), st.floats(allow_nan=True),
                     st.text(max_size=40), st.binary(max_size=40), st.lists(st.integers(), max_size=3),
                     st.dictionaries(st.text(max_size=5), st.integers(), max_size=3))
hostile_text = st.text(alphabet=st.characters(codec=None, categories=None), max_size=70) | st.sampled_from(
    ["\ud800", "a\x00b", "ns\n", "x" * 64, "", "-", "a.b", "a..b", ".a", "A", "é", "\u202e", "ns/c"])
name_like = hostile_text | anything


def within(seconds: float, call: Callable[[], Any]) -> Any:
    """``call()`` in a thread; a hang (not returning within ``seconds``) fails the test."""
    outcome: list[Any] = []

    def run() -> None:
        try:
            outcome.append(("ok", call()))
        except BaseException as exc:  # handed back to the test thread
            outcome.append(("raised", exc))

    worker = threading.Thread(target=run, daemon=True)
    worker.start()
    worker.join(seconds)
    assert not worker.is_alive(), f"hung for {seconds} s"
    kind, value = outcome[0]
    if kind == "raised":
        raise value
    return value


def documented(call: Callable[[], Any], *allowed: type[BaseException], counter: str) -> Any:
    """Run ``call``; only waypost's documented exceptions may come out of it."""
    CASES[counter] += 1
    try:
        return within(5.0, call)
    except allowed:
        return None


@seed(SEED)
@FUZZ
@given(namespace=name_like, component=name_like, endpoint=name_like)
def test_names(namespace: Any, component: Any, endpoint: Any) -> None:
    eid = documented(lambda: EndpointId(namespace, component, endpoint), ConfigError, counter="names")
    documented(lambda: EndpointId.parse(namespace), ConfigError, counter="names")
    if eid is not None:
        assert EndpointId.parse(str(eid)) == eid


@seed(SEED)
@FUZZ
@given(instance_id=anything | st.sampled_from([math.inf, -math.inf, math.nan, 10**400, 2**64, 2**64 - 1, -1, 0]),
       kind=st.sampled_from(["tcp", "http", "nats_tcp"]) | hostile_text | anything, address=hostile_text | anything)
def test_ids_and_transports(instance_id: Any, kind: Any, address: Any) -> None:
    transport = documented(lambda: TransportType(kind, address), ConfigError, counter="transports")
    transport = transport or TransportType.tcp("h:1")
    made = documented(lambda: Instance("ns", "c", "e", instance_id, transport), ConfigError, counter="ids")
    if made is not None:
        assert Instance.from_json(made.to_json()) == made


json_values = st.recursive(st.none() | st.booleans() | st.integers(-(2**70), 2**70) | st.floats() | hostile_text,
                           lambda inner: st.lists(inner, max_size=4) | st.dictionaries(hostile_text, inner, max_size=4),
                           max_leaves=30)


def _deep(levels: int) -> Any:
    value: Any = 1
    for _ in range(levels):
        value = {"a": value}
    return value


@seed(SEED)
@FUZZ
@given(metadata=st.dictionaries(hostile_text | st.integers() | st.none() | st.binary(max_size=5),
                                json_values | anything, max_size=5)
       | st.integers(0, 3000).map(_deep) | anything)
def test_metadata(metadata: Any) -> None:
    made = documented(lambda: Instance("ns", "c", "e", 1, TransportType.tcp("h:1"), metadata=metadata), ConfigError,
                      counter="metadata")
    if made is not None:
        assert Instance.from_json(made.to_json()) == made


url_parts = st.sampled_from(["", "redis", "etcd", "etcds", "consul", "memory", "file", "x", "redis+sentinel"])
url_text = st.text(alphabet="abc:/@?#[]%=&,.-_0123456789\x00é ²", max_size=40)


@seed(SEED)
@FUZZ
@given(scheme=url_parts, rest=url_text | hostile_text, extra=anything)
def test_urls(scheme: str, rest: str, extra: Any) -> None:
    for url in (f"{scheme}://{rest}", rest, extra):
        parsed = documented(lambda u=url: parse_url(u), ConfigError, counter="urls")
        if parsed is not None:
            assert "password" not in repr(parsed) or parsed.password is None or parsed.password not in repr(parsed)


SCHEMES = sorted({entry.scheme for entry in installed_backends()})


@pytest.mark.filterwarnings("ignore:.*is now called:DeprecationWarning")
@seed(SEED)
@FUZZ
@given(scheme=st.sampled_from(SCHEMES), kwargs=st.dictionaries(st.sampled_from(
    ["ttl", "timeout", "prefix", "instance_id", "max_queued", "ca_cert", "client_cert", "stale_after", "history",
     "watch_wait", "consistency", "watcher", "password", "token", "user", "root", "nope"]), anything, max_size=4),
    query=st.dictionaries(st.sampled_from(["ttl", "timeout", "prefix", "history", "nope"]), hostile_text, max_size=3))
def test_options(scheme: str, kwargs: dict[str, Any], query: dict[str, str]) -> None:
    cls = backend_class(scheme)
    documented(lambda: resolve_options((*RUNTIME_OPTIONS, *cls.options), kwargs, query, environ={},
                                       where=f"{scheme}://"), ConfigError, counter="options")


@seed(SEED)
@FUZZ
@given(text=hostile_text | anything, levels=st.lists(name_like, max_size=5))
def test_queries(text: Any, levels: list[Any]) -> None:
    parsed = documented(lambda: Query.parse(text), ConfigError, counter="queries")
    documented(lambda: Query(*levels), ConfigError, counter="queries")
    if parsed is not None:
        assert Query.parse(str(parsed)) == parsed if parsed.levels else True


@pytest.fixture(scope="module")
def runtime() -> Any:
    with waypost.connect("memory://fuzz", ttl=30) as rt:
        yield rt


@seed(SEED)
@settings(FUZZ, max_examples=500)
@given(timeout=anything | st.sampled_from([1e-9, 0, -0.0, math.inf, math.nan, -1, 1e-300, 0.001]))
def test_timeouts(runtime: Any, timeout: Any) -> None:
    documented(lambda: check_timeout(timeout), ConfigError, counter="timeouts")
    finite = isinstance(timeout, int | float) and not isinstance(timeout, bool) and 0 <= timeout <= 0.01
    if finite or (timeout is not None and not isinstance(timeout, int | float)):
        with runtime.watch("ns") as watch:
            documented(lambda: watch.get(timeout=timeout), ConfigError, counter="timeouts")
        with runtime.endpoint("ns.c.e").client() as client:
            documented(lambda: client.wait_for_instances(timeout=timeout), ConfigError, waypost.NoInstances,
                       counter="timeouts")


DYNAMO = json.loads(b'{"type":"Endpoint","component":"backend","endpoint":"generate","namespace":"dynamo",'
                    b'"instance_id":8026718667892531462,"transport":{"tcp":"127.0.0.1:42043"},'
                    b'"device_type":"cuda","request_plane_codec":"msgpack"}')


@seed(SEED)
@FUZZ
@given(value=st.binary(max_size=300) | json_values.map(lambda v: json.dumps(v).encode())
       | st.dictionaries(st.sampled_from(list(DYNAMO)), json_values | anything.filter(
           lambda x: not isinstance(x, bytes)), max_size=4).map(lambda d: json.dumps({**DYNAMO, **d}).encode()),
       key=st.sampled_from(["v1/instances/dynamo/backend/generate/6f64a219dfbb2106", "v1/instances/x"]) | hostile_text)
def test_stored_values(value: bytes, key: str) -> None:
    decoded, rejected = documented(lambda: decode_batch([(key, value)], "v1/instances/"), counter="stored values")
    assert len(decoded) + len(rejected) <= 1


cli_words = st.sampled_from(["list", "watch", "register", "backends", "doctor", "--json", "--url", "--transport",
                             "--metadata", "--ttl", "memory://fuzz-cli", "file:///", "redis://:pw", "etcd://h:²",
                             "ns.c.e", "ns", "Bad", "tcp://h:1", "k=v", "k", "-1", "nan", "--help", "\x1b[2J"])


@seed(SEED)
@settings(FUZZ, max_examples=300)
@given(args=st.lists(cli_words | hostile_text, min_size=1, max_size=6))
def test_cli_arguments(args: list[str]) -> None:
    if "watch" in args or "register" in args:
        args = [a for a in args if a not in ("watch", "register")] or ["list"]  # these run until Ctrl-C
    CASES["cli"] += 1
    result = within(20.0, lambda: CliRunner().invoke(cli, args, catch_exceptions=True))
    assert result.exit_code in (0, 1, 2), (args, result.output)
    assert result.exception is None or isinstance(result.exception, SystemExit), (args, result.exception)
    assert "Traceback" not in result.output


def test_zz_the_fuzzing_ran_enough_cases() -> None:
    total = sum(CASES.values())
    print(f"fuzz cases: {total} ({dict(CASES)})")
    assert total >= 10_000, CASES
