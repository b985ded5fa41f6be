"""Footprint: ``import waypost`` time and memory per instance held by a ``Client``.

Import time, in fresh interpreters, **with bytecode caches**: the environment
(and ``run.py``/tox) sets ``PYTHONDONTWRITEBYTECODE=1``, under which an editable
install (waypost's ``src/``) never gets ``__pycache__`` and compiles every
module from source on every import, while pip has compiled tooz and the client
libraries at install time — an unfair comparison. So each module is first
imported once with bytecode writing on (warm-up), then every module that the
import loads is checked for a valid cached ``.pyc`` (magic number, and the
source's mtime and size in its header; the count of modules without one goes
into the figure's note), and only then timed. The modules are timed round by
round in rotating order (waypost, tooz.coordination, the client libraries) so
that load drift on a shared machine hits all alike:

* ``import`` — wall clock of the ``import`` statement (``time.perf_counter``
  around it, in a fresh interpreter): the figure the headline quotes;
* ``import_x`` — ``python -X importtime``'s cumulative time of the top-level
  module (it adds a little per module imported: tooz.coordination loads ~4x
  as many modules as waypost); full mode only.

Compared with ``import tooz.coordination`` (the module a tooz user imports)
and, as "raw", with the client library the backend needs (``pyetcd``,
``redis``, ``consul``; nothing for memory/file).

Client memory: N = 1 000 instances of one endpoint are written (backend SPI,
one lease); ``tracemalloc`` measures what ``Endpoint.client()`` holds once it
has seen all N, divided by N. raw = a dict key -> ``json.loads(value)`` of the
same listing; tooz = the ``get_members_with_capabilities`` result.
"""

from __future__ import annotations

import gc
import json
import subprocess
import sys
import tracemalloc
from typing import Any

import pytest
from _common import METRICS, NAMESPACE, Metric, encode, instance_dict, instance_ids, instance_key, python_env
from _tooz import ToozMember, tooz_error

MEM_N = 1000
RAW_MODULES = {"etcd": "pyetcd", "redis": "redis", "consul": "consul", "file": "", "memory": ""}

# Run in a fresh interpreter: time `import MODULE`, then check that every module it loaded came from a
# valid bytecode cache (what importlib's SourceFileLoader would accept for a timestamp-based .pyc).
# Nothing but built-in modules (sys, time) is imported before the timed import, so that it pays for all it loads.
_PROBE = """
import sys, time
module = sys.argv[1]
before = set(sys.modules)
t0 = time.perf_counter()
__import__(module)
elapsed = time.perf_counter() - t0
loaded = set(sys.modules) - before
import importlib.util, json, os
uncached = []
for name in sorted(loaded):
    spec = getattr(sys.modules[name], "__spec__", None)
    origin = getattr(spec, "origin", None) or ""
    if not origin.endswith(".py"):
        continue  # built-in, frozen or an extension module: nothing to compile
    try:
        with open(spec.cached, "rb") as f:
            head = f.read(16)
        st = os.stat(origin)
        flags = int.from_bytes(head[4:8], "little")
        ok = head[:4] == importlib.util.MAGIC_NUMBER and (flags != 0 or (
            int.from_bytes(head[8:12], "little") == int(st.st_mtime) & 0xFFFFFFFF
            and int.from_bytes(head[12:16], "little") == st.st_size & 0xFFFFFFFF))
    except (OSError, TypeError):
        ok = False
    if not ok:
        uncached.append(name)
print(json.dumps({"elapsed": elapsed, "modules": len(loaded), "uncached": uncached}))
"""


def _bytecode_env() -> dict[str, str]:
    env = python_env()
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    return env


def _probe(module: str, importtime: bool = False) -> tuple[dict[str, Any], str]:
    argv = [sys.executable, *(["-X", "importtime"] if importtime else []), "-c", _PROBE, module]
    proc = subprocess.run(argv, capture_output=True, text=True, env=_bytecode_env(), timeout=120, check=True)
    return json.loads(proc.stdout.strip().splitlines()[-1]), proc.stderr


def _importtime(stderr: str, module: str) -> float:
    for line in stderr.splitlines():
        parts = [p.strip() for p in line.split("|")]
        if len(parts) == 3 and parts[2] == module:
            return int(parts[1]) / 1e6
    raise AssertionError(f"no importtime line for {module}")


def warm_bytecode(module: str) -> str:
    """Import ``module`` once with bytecode writing on; return a note on what still has no cache."""
    subprocess.run([sys.executable, "-c", f"import {module}"], env=_bytecode_env(), timeout=120, check=True,
                   capture_output=True)
    info, _ = _probe(module)
    if info["uncached"]:
        METRICS.note(f"import {module}: {len(info['uncached'])} of {info['modules']} modules still compile from "
                     f"source after the warm-up (no writable cache?): {', '.join(info['uncached'][:8])}")
    return f"{info['modules']} modules, {info['modules'] - len(info['uncached'])} from bytecode caches"


@pytest.mark.timeout(900)  # 150 fresh interpreters in full mode
def test_import_time(mode: Any) -> None:
    runs = mode.rounds(15, 3)
    modules = {("any", "waypost"): "waypost"}
    err = tooz_error()
    if err is None:
        modules[("any", "tooz")] = "tooz.coordination"
    else:
        METRICS.note(f"tooz import time not measured: {err}")
    for backend, module in RAW_MODULES.items():
        if module:
            modules[(backend, "raw")] = module
    notes = {key: warm_bytecode(module) for key, module in modules.items()}
    wall: dict[tuple[str, str], list[float]] = {key: [] for key in modules}
    cumulative: dict[tuple[str, str], list[float]] = {key: [] for key in modules}
    keys = list(modules)
    for r in range(runs):  # rotate the order each round: load drift hits every module alike
        for key in keys[r % len(keys):] + keys[:r % len(keys)]:
            info, _ = _probe(modules[key])
            wall[key].append(info["elapsed"])
            if not mode.quick:  # the -X importtime figure is for the full report only (CI time)
                _, stderr = _probe(modules[key], importtime=True)
                cumulative[key].append(_importtime(stderr, modules[key]))
    for (backend, impl), module in modules.items():
        note = f"import {module}; {notes[(backend, impl)]}"
        METRICS.median("import", backend, impl, wall[(backend, impl)], "s", note=note + "; perf_counter")
        if cumulative[(backend, impl)]:
            METRICS.median("import_x", backend, impl, cumulative[(backend, impl)], "s",
                           note=note + "; -X importtime cumulative")


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
