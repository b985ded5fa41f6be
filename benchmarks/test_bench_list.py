"""List one component holding N = 10, 1 000 and 10 000 instances.

waypost: ``Component.list_instances()`` (decoded, validated, sorted Instances).
raw:     one prefix read of the same keys + ``json.loads`` of every value.
tooz:    ``get_members_with_capabilities(group)`` (tooz's one-round-trip list;
         ``get_members`` + ``get_member_capabilities`` per member would be N+1).

The N instances are written once per (backend, N), through the backend's own
SPI (``Backend.create`` under one long lease) so the layout is exactly the
backend's; tooz members are written in tooz's layout by ``ToozMember.populate``.

Two passes, as for register: ``test_list`` (pytest-benchmark, contiguous rounds
per implementation) and ``test_list_interleaved`` (implementations alternating
round by round; the report quotes these medians).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest
from _common import METRICS, NAMESPACE, encode, instance_dict, instance_ids, instance_key, interleaved
from _tooz import make_member

ENDPOINT = "generate"
SIZES = (10, 1000, 10000)


def component(n: int) -> str:
    return f"list{n}"


def entries(n: int) -> list[tuple[str, bytes]]:
    comp = component(n)
    return [(instance_key(NAMESPACE, comp, ENDPOINT, iid), encode(instance_dict(NAMESPACE, comp, ENDPOINT, iid)))
            for iid in instance_ids(n, seed=n % 97)]


class Populated:
    """Per session: (backend, impl, n) -> the handles keeping the data alive."""

    def __init__(self) -> None:
        self.done: dict[tuple[str, str, int], Any] = {}
        self.cleanups: list[Any] = []

    def waypost(self, target: Any, n: int) -> Any:
        key = (target.name, "waypost", n)
        if key not in self.done:
            rt = target.connect(ttl=3600)  # the data outlives the benchmark; nothing goes stale
            self.cleanups.append(rt.close)
            backend = rt.backend
            lease = backend.grant_lease(3600.0)
            self.cleanups.append(lambda: backend.revoke_lease(lease.id))
            items = entries(n)
            with ThreadPoolExecutor(16) as pool:
                list(pool.map(lambda kv: backend.create(lease, kv[0], kv[1]), items))
            got = rt.namespace(NAMESPACE).component(component(n)).list_instances()
            assert len(got) == n, f"populated {n}, listed {len(got)}"
            self.done[key] = rt
        return self.done[key]

    def raw(self, target: Any, n: int) -> Any:
        key = (target.name, "raw", n)
        if key not in self.done:
            store = target.raw()
            self.cleanups.append(store.close)
            if target.name == "memory":  # a private dict: fill it with the same entries
                for k, v in entries(n):
                    store.create(None, k, v)
            else:  # the same physical store: read what the backend wrote
                self.waypost(target, n)
            self.done[key] = store
        return self.done[key]

    def tooz(self, target: Any, n: int) -> Any:
        key = (target.name, "tooz", n)
        if key not in self.done:
            if target.tooz_url is None:
                pytest.skip(target.tooz_skip or "no tooz driver")
            member = make_member(target, f"bench-list-reader-{n}", ttl=3600)
            self.cleanups.append(member.stop)
            group = f"{NAMESPACE}.{component(n)}"
            member.ensure_group(group)
            comp = component(n)
            member.populate(group, {f"{iid:x}": instance_dict(NAMESPACE, comp, ENDPOINT, iid)
                                    for iid in instance_ids(n, seed=n % 97)})
            assert len(member.members(group)) == n
            self.done[key] = member
        return self.done[key]

    def close(self) -> None:
        for fn in reversed(self.cleanups):
            with contextlib.suppress(Exception):
                fn()


@pytest.fixture(scope="session")
def populated() -> Any:
    p = Populated()
    yield p
    p.close()


def _reader(target: Any, populated: Populated, impl: str, n: int) -> Callable[[], Any]:
    if impl == "waypost":
        return populated.waypost(target, n).namespace(NAMESPACE).component(component(n)).list_instances
    if impl == "raw":
        store = populated.raw(target, n)
        prefix = f"v1/instances/{NAMESPACE}/{component(n)}/"
        return lambda: store.list(prefix)
    member = populated.tooz(target, n)
    group = f"{NAMESPACE}.{component(n)}"
    return lambda: member.members(group)


def _list_rounds(mode: Any, n: int) -> int:
    return mode.rounds({10: 300, 1000: 60, 10000: 15}[n], 3)


@pytest.mark.parametrize("n", SIZES)
def test_list_interleaved(target: Any, mode: Any, populated: Populated, n: int) -> None:
    """All implementations alternating round by round (the figures the report quotes)."""
    if n not in mode.list_sizes:
        pytest.skip(f"N={n} is not measured in quick mode")
    target = target.variant(f"list{n}")
    impls = ["waypost", "raw"] + (["tooz"] if target.tooz_url else [])
    readers = {impl: _reader(target, populated, impl, n) for impl in impls}
    for impl, read in readers.items():
        assert len(read()) == n, impl
    samples = interleaved({impl: (None, read, None) for impl, read in readers.items()}, _list_rounds(mode, n),
                          warmup=1)
    for impl in impls:
        METRICS.median("list", target.name, impl, samples[impl], "s", n=n, note="interleaved")


@pytest.mark.parametrize("n", SIZES)
@pytest.mark.parametrize("impl", ["waypost", "raw", "tooz"])
def test_list(benchmark: Any, target: Any, mode: Any, populated: Populated, impl: str, n: int) -> None:
    if n not in mode.list_sizes:
        pytest.skip(f"N={n} is not measured in quick mode")
    benchmark.group = f"list[{target.name}] N={n}"
    benchmark.extra_info.update(op="list", backend=target.name, impl=impl, n=n)
    target = target.variant(f"list{n}")
    if impl == "tooz" and target.tooz_url is None:
        pytest.skip(target.tooz_skip or "no tooz driver")
    if impl == "tooz" and target.tooz_python:
        pytest.skip("tooz runs in another process here: timed in the interleaved pass only")
    read = _reader(target, populated, impl, n)
    result = benchmark.pedantic(read, rounds=_list_rounds(mode, n), warmup_rounds=1)
    assert len(result) == n
