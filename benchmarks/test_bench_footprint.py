"""Footprint: ``import waypost`` time and memory per instance held by a ``Client``.

Import time: ``python -X importtime -c "import waypost"`` in a fresh
interpreter, the cumulative time of the top-level ``waypost`` import; median of
several runs. Compared with ``import tooz.coordination`` (the module a tooz user
imports) and, as "raw", with the client library the backend needs
(``pyetcd``, ``redis``; nothing for memory/file).

Client memory: N = 1 000 instances of one endpoint are written (backend SPI,
one lease); ``tracemalloc`` measures what ``Endpoint.client()`` holds once it
has seen all N, divided by N. raw = a dict key -> ``json.loads(value)`` of the
same listing; tooz = the ``get_members_with_capabilities`` result.
"""

from __future__ import annotations

import gc
import subprocess
import sys
import tracemalloc
from typing import Any

import pytest
from _common import METRICS, NAMESPACE, Metric, encode, instance_dict, instance_ids, instance_key, python_env
from _tooz import ToozMember, tooz_error

MEM_N = 1000
RAW_MODULES = {"etcd": "pyetcd", "redis": "redis", "consul": "consul", "file": "", "memory": ""}


def import_time(module: str, runs: int) -> list[float]:
    """Cumulative import time of ``module`` (seconds) over ``runs`` fresh interpreters."""
    samples = []
    for _ in range(runs):
        proc = subprocess.run([sys.executable, "-X", "importtime", "-c", f"import {module}"],
                              capture_output=True, text=True, env=python_env(), timeout=120, check=True)
        for line in proc.stderr.splitlines():
            parts = [p.strip() for p in line.split("|")]
            if len(parts) == 3 and parts[2] == module:
                samples.append(int(parts[1]) / 1e6)
    assert samples, f"no importtime line for {module}"
    return samples


def test_import_time(mode: Any) -> None:
    runs = mode.rounds(15, 3)
    METRICS.median("import", "any", "waypost", import_time("waypost", runs), "s",
                   note="python -X importtime, cumulative")
    for backend, module in RAW_MODULES.items():
        if module:
            METRICS.median("import", backend, "raw", import_time(module, runs), "s", note=f"import {module}")
    err = tooz_error()
    if err is None:
        METRICS.median("import", "any", "tooz", import_time("tooz.coordination", runs), "s",
                       note="import tooz.coordination")
    else:
        METRICS.note(f"tooz import time not measured: {err}")


def _held(fn: Any) -> tuple[Any, int]:
    gc.collect()
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        obj = fn()
        gc.collect()
        after = tracemalloc.get_traced_memory()[0]
    finally:
        tracemalloc.stop()
    return obj, after - before


@pytest.mark.parametrize("impl", ["waypost", "raw", "tooz"])
def test_client_memory(target: Any, mode: Any, impl: str) -> None:
    target = target.variant("clientmem")
    component, endpoint = "clientmem", "generate"
    ids = instance_ids(MEM_N, seed=7)
    entries = [(instance_key(NAMESPACE, component, endpoint, i),
                encode(instance_dict(NAMESPACE, component, endpoint, i))) for i in ids]
    if impl == "tooz":
        if target.tooz_url is None:
            pytest.skip(target.tooz_skip or "no tooz driver")
        if target.tooz_python:
            pytest.skip("tooz runs in another interpreter here (tooz 8.1 on Consul): no in-process memory figure")
        member = ToozMember(target.tooz_url, "clientmem-reader", ttl=3600)
        group = f"{NAMESPACE}.{component}"
        member.ensure_group(group)
        member.populate(group, {f"{i:x}": instance_dict(NAMESPACE, component, endpoint, i) for i in ids})
        try:
            result, held = _held(lambda: member.members(group))
            assert len(result) == MEM_N
        finally:
            member.stop()
        METRICS.add(Metric("client_mem", target.name, impl, held / MEM_N, "B", MEM_N))
        return
    with target.connect(ttl=3600) as rt:
        backend = rt.backend
        lease = backend.grant_lease(3600.0)
        try:
            if impl == "raw" and target.name == "memory":
                store = target.raw()
                for k, v in entries:
                    store.create(None, k, v)
            else:
                for k, v in entries:
                    backend.create(lease, k, v)
            if impl == "waypost":
                ep = rt.namespace(NAMESPACE).component(component).endpoint(endpoint)

                def make_client() -> Any:
                    client = ep.client()
                    client.wait_for_instances(timeout=60, count=MEM_N)
                    return client

                client, held = _held(make_client)
                assert len(client.instances()) == MEM_N
                client.close()
            else:
                if target.name != "memory":
                    store = target.raw()
                prefix = f"v1/instances/{NAMESPACE}/{component}/{endpoint}/"
                result, held = _held(lambda: dict(store.list(prefix)))
                assert len(result) == MEM_N
                store.close()
        finally:
            backend.revoke_lease(lease.id)
    METRICS.add(Metric("client_mem", target.name, impl, held / MEM_N, "B", MEM_N))
