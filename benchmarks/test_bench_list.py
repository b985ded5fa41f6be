"""List one component holding N = 10, 1 000 and 10 000 instances (and 100 000 on etcd and Redis, full mode).

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

``test_list_big`` (full mode, etcd and Redis): N = 100 000, waypost and raw
only (tooz's layout would take minutes to write there), time (interleaved) and
peak memory of one list, each implementation in a fresh process
(``_worker.py listmem``): the peak RSS above the process's RSS just before the
call (``/proc/self/clear_refs`` resets the high-water mark; C allocations such
as gRPC's reply buffers count) and the tracemalloc peak (Python objects only).
The 100 000 keys are revoked right after, so later benchmarks see the store as
before.
"""

from __future__ import annotations

import contextlib
import json
import subprocess
import sys
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest
from _common import (
    BENCH_DIR,
    METRICS,
    NAMESPACE,
    Metric,
    encode,
    instance_dict,
    instance_ids,
    instance_key,
    interleaved,
    python_env,
)
from _tooz import make_member

ENDPOINT = "generate"
SIZES = (10, 1000, 10000)
BIG_N = 100_000


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
        self.leases: dict[tuple[str, str, int], tuple[Any, int]] = {}
        self.cleanups: list[Any] = []

    def waypost(self, target: Any, n: int) -> Any:
        key = (target.name, "waypost", n)
        if key not in self.done:
            # The data outlives the benchmark: nothing goes stale. A 100 000 list may outlast the 5 s default
            # timeout on a loaded machine (etcd and Redis take `timeout`).
            rt = target.connect(ttl=3600, **({"timeout": 60.0} if n > max(SIZES) else {}))
            self.cleanups.append(rt.close)
            backend = rt.backend
            lease = backend.grant_lease(3600.0)
            self.leases[key] = (backend, lease.id)
            self.cleanups.append(lambda: self.drop(key))
            items = entries(n)
            with ThreadPoolExecutor(16) as pool:
                list(pool.map(lambda kv: backend.create(lease, kv[0], kv[1]), items))
            got = rt.namespace(NAMESPACE).component(component(n)).list_instances()
            assert len(got) == n, f"populated {n}, listed {len(got)}"
            self.done[key] = rt
        return self.done[key]

    def drop(self, key: tuple[str, str, int]) -> None:
        """Revoke the lease holding a population (its keys go with it); idempotent."""
        held = self.leases.pop(key, None)
        if held is not None:
            backend, lease_id = held
            backend.revoke_lease(lease_id)
        self.done.pop(key, None)
        self.done.pop((key[0], "raw", key[2]), None)

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


# tooz 8.1 on Consul lists with N + 1 HTTP requests (~0.8 s at N = 1 000, ~8 s at 10 000 on a quiet machine):
# it takes part in one round of this many, so that the pass stays within its time limit.
REMOTE_TOOZ_EVERY = {10: 1, 1000: 6, 10000: 5}


@pytest.mark.timeout(1200)
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
    every = {"tooz": REMOTE_TOOZ_EVERY[n]} if target.tooz_python and not mode.quick else None
    samples = interleaved({impl: (None, read, None) for impl, read in readers.items()}, _list_rounds(mode, n),
                          warmup=1, every=every)
    for impl in impls:
        METRICS.median("list", target.name, impl, samples[impl], "s", n=n, note="interleaved")


@pytest.mark.timeout(900)
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


def _list_memory(target: Any, impl: str, n: int) -> dict[str, Any]:
    """One list of ``n`` in a fresh process (``_worker.py listmem``): its time, peak RSS and tracemalloc peak."""
    argv = [sys.executable, str(BENCH_DIR / "_worker.py"), "listmem", "--impl", impl, "--backend", target.name,
            "--url", target.url, "--raw-options", json.dumps(target.raw_options), "--component", component(n),
            "--count", str(n)]
    proc = subprocess.run(argv, capture_output=True, text=True, env=python_env(), timeout=600, check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"listmem {impl} failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    result: dict[str, Any] = json.loads(proc.stdout.strip().splitlines()[-1])
    return result


@pytest.mark.timeout(1800)
def test_list_big(target: Any, mode: Any, populated: Populated) -> None:
    """N = 100 000 on etcd and Redis (full mode): time (interleaved), peak memory; the data is dropped after."""
    if target.name not in mode.big_list_backends:
        pytest.skip(f"N={BIG_N} is measured on {', '.join(mode.big_list_backends) or 'no backend'} in "
                    f"{'quick' if mode.quick else 'full'} mode")
    n = mode.big_n  # BIG_N unless --big-list-n says otherwise (dev runs)
    try:
        readers = {impl: _reader(target, populated, impl, n) for impl in ("waypost", "raw")}
        for impl, read in readers.items():
            assert len(read()) == n, impl
        samples = interleaved({impl: (None, read, None) for impl, read in readers.items()}, mode.rounds(7, 2),
                              warmup=1)
        for impl in readers:
            METRICS.median("list", target.name, impl, samples[impl], "s", n=n, note="interleaved")
        del readers
        for impl in ("waypost", "raw"):
            mem = _list_memory(target, impl, n)
            assert mem["count"] == n, mem
            METRICS.add(Metric("list_rss", target.name, impl, mem["rss_peak"], "B", n,
                               note="peak RSS above the RSS before the call, fresh process"))
            METRICS.add(Metric("list_pymem", target.name, impl, mem["tracemalloc_peak"], "B", n,
                               note="tracemalloc peak of the call"))
            METRICS.add(Metric("list_held", target.name, impl, mem["tracemalloc_held"], "B", n,
                               note="tracemalloc: what the returned list holds"))
    finally:
        populated.drop((target.name, "waypost", n))
