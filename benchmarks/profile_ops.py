"""Profile one waypost operation with pyinstrument (for the ratios the report flags).

    python benchmarks/profile_ops.py list --backend etcd --n 1000 [--repeat 50] [--html out.html]
    python benchmarks/profile_ops.py register --backend redis [--repeat 2000]
    python benchmarks/profile_ops.py list --backend consul --n 1000 --compare
    python benchmarks/profile_ops.py watch --backend redis [--repeat 200]

Starts the server the same way the harness does (``tests/servers/``),
writes the same data, then runs the operation ``--repeat`` times under
pyinstrument and prints the call tree (``pip install pyinstrument``; the
``bench`` tox env has it). With ``--compare`` it also times the raw baseline.

``watch`` is a cross-process latency, so it is not a call tree: a second
process watches (waypost, then raw), this one registers and unregisters, and
the watcher timestamps each stage of every change (all ``time.monotonic()``,
one clock): the register call, the backend handing the change to the core
(``WatchLoop.put``), the core's decode and diff (``InstanceView.put``, up to the
event queued) and the hand-off to the consumer's thread (``Watch.get``). Raw's
only stage is its own callback, in its watch thread. Medians are printed.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from _common import NAMESPACE, encode, instance_dict, instance_ids, instance_key
from _raw import RAW_STORES


@contextlib.contextmanager
def store(backend: str) -> Iterator[tuple[str, dict[str, Any]]]:
    """(waypost URL, raw options) of a fresh store."""
    if backend == "memory":
        yield "memory://profile", {}
    elif backend == "file":
        root = tempfile.mkdtemp(prefix="waypost-profile-")
        try:
            yield f"file://{root}", {"root": root}
        finally:
            shutil.rmtree(root, ignore_errors=True)
    else:
        import servers

        if backend == "consul":
            server = servers.ConsulServer(session_ttl_min="1s")
        else:
            server = servers.EtcdServer() if backend == "etcd" else servers.RedisServer()
        with server:
            yield server.url, {}


def timed(fn: Callable[[], Any], repeat: int) -> float:
    samples = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        samples.append(time.perf_counter() - t0)
    return statistics.median(samples)


def _emit(obj: dict[str, Any]) -> None:
    sys.stdout.write(json.dumps(obj) + "\n")
    sys.stdout.flush()


def watch_child(impl: str, backend: str, url: str, raw_options: dict[str, Any]) -> None:
    """The watcher of ``watch``: one JSON line per change, with the time of each stage."""
    component = "profile-watch"
    if impl == "raw":
        raw = RAW_STORES[backend](url, **raw_options)
        raw.watch(f"v1/instances/{NAMESPACE}/{component}/",
                  lambda kind, key: _emit({"kind": kind, "raw": time.monotonic()}))
        _emit({"ready": True})
        sys.stdin.read()
        return
    import waypost
    from waypost.core import _kit, _watch

    stages: dict[str, float] = {}
    loop_put, loop_delete, view_put, view_delete = (_kit.WatchLoop.put, _kit.WatchLoop.delete,
                                                    _watch.InstanceView.put, _watch.InstanceView.delete)

    def timed(fn: Any, stage: str) -> Any:
        def wrapper(self: Any, *args: Any) -> Any:
            stages.setdefault(stage, time.monotonic())
            result = fn(self, *args)
            stages.setdefault(stage + "_done", time.monotonic())
            return result
        return wrapper

    _kit.WatchLoop.put = timed(loop_put, "backend")  # type: ignore[method-assign]
    _kit.WatchLoop.delete = timed(loop_delete, "backend")  # type: ignore[method-assign]
    _watch.InstanceView.put = timed(view_put, "view")  # type: ignore[method-assign]
    _watch.InstanceView.delete = timed(view_delete, "view")  # type: ignore[method-assign]
    rt = waypost.connect(url, ttl=10)
    w = rt.watch(waypost.Query.component(NAMESPACE, component))
    _emit({"ready": True})
    for event in w:
        now = time.monotonic()
        if isinstance(event, waypost.Added | waypost.Removed):
            _emit({"kind": "put" if isinstance(event, waypost.Added) else "delete", "out": now, **stages})
        stages.clear()


def _watch_writer(impl: str, backend: str, url: str, raw_options: dict[str, Any]) -> tuple[Any, Any, Any]:
    """(register, unregister, close) of the endpoint the watcher waits for."""
    component = "profile-watch"
    if impl == "waypost":
        import waypost

        rt = waypost.connect(url, ttl=10)
        ep = rt.namespace(NAMESPACE).component(component).endpoint("w")
        transport = waypost.TransportType.tcp("127.0.0.1:1")
        held: list[Any] = []
        return (lambda: held.append(ep.register(transport=transport, device_type="cuda")),
                lambda: held.pop().unregister(), rt.close)
    raw = RAW_STORES[backend](url, **raw_options)
    lease = raw.grant(3600)  # not kept alive
    iid = getattr(lease, "id", None) or 0x7A11_0000_0000_0003
    key = instance_key(NAMESPACE, component, "w", iid)

    def close() -> None:
        raw.revoke(lease)
        raw.close()

    return (lambda: raw.create(lease, key, encode(instance_dict(NAMESPACE, component, "w", iid))),
            lambda: raw.delete(key), close)


def _watch_stages(impl: str, backend: str, url: str, raw_options: dict[str, Any], repeat: int
                  ) -> dict[str, list[float]]:
    import subprocess

    env = {k: v for k, v in os.environ.items() if k != "WAYPOST_URL"}
    child = subprocess.Popen([sys.executable, __file__, "_watch-child", impl, backend, url,
                              json.dumps(raw_options)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
                             env=env)
    assert child.stdout is not None
    assert json.loads(child.stdout.readline()).get("ready")
    stages: dict[str, list[float]] = {}
    register, unregister, close = _watch_writer(impl, backend, url, raw_options)
    try:
        for i in range(repeat + 3):
            t0 = time.monotonic()
            register()
            t1 = time.monotonic()
            line = json.loads(child.stdout.readline())
            assert line["kind"] == "put", line
            unregister()
            assert json.loads(child.stdout.readline())["kind"] == "delete"
            if i < 3:
                continue  # warm-up
            stages.setdefault("register call", []).append(t1 - t0)
            if impl == "raw":
                stages.setdefault("store -> raw callback (total)", []).append(line["raw"] - t0)
            else:
                stages.setdefault("store -> backend hands it to the core (WatchLoop.put)", []).append(
                    line["backend"] - t0)
                stages.setdefault("core: decode + diff + queue (InstanceView.put)", []).append(
                    line["view_done"] - line["view"])
                stages.setdefault("queued -> consumer thread has it (Watch.get)", []).append(
                    line["out"] - line["view_done"])
                stages.setdefault("total", []).append(line["out"] - t0)
            time.sleep(0.002)
    finally:
        close()
        child.kill()
        child.wait()
    return stages


def profile_watch(backend: str, url: str, raw_options: dict[str, Any], repeat: int) -> None:
    for impl in ("waypost", "raw"):
        stages = _watch_stages(impl, backend, url, raw_options, repeat)
        print(f"{impl} (median of {repeat}):")
        for stage, samples in stages.items():
            print(f"  {stage:60s} {statistics.median(samples) * 1e6:9.1f} µs")


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "_watch-child":
        impl, backend, url, raw_options = sys.argv[2:6]
        watch_child(impl, backend, url, json.loads(raw_options))
        return
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("op", choices=["list", "register", "unregister", "watch"])
    parser.add_argument("--backend", default="memory", choices=list(RAW_STORES))
    parser.add_argument("--n", type=int, default=1000)
    parser.add_argument("--repeat", type=int, default=0)
    parser.add_argument("--html")
    parser.add_argument("--compare", action="store_true", help="also time the raw baseline (medians)")
    args = parser.parse_args()

    if args.op == "watch":
        with store(args.backend) as (url, raw_options):
            profile_watch(args.backend, url, raw_options, args.repeat or 200)
        return

    from pyinstrument import Profiler

    import waypost

    with store(args.backend) as (url, raw_options), waypost.connect(url, ttl=3600) as rt:
        comp = rt.namespace(NAMESPACE).component("profile")
        raw = RAW_STORES[args.backend](url, **raw_options)
        if args.op == "list":
            lease = rt.backend.grant_lease(3600.0)
            for iid in instance_ids(args.n):
                key = instance_key(NAMESPACE, "profile", "generate", iid)
                value = encode(instance_dict(NAMESPACE, "profile", "generate", iid))
                rt.backend.create(lease, key, value)
                if args.backend == "memory":
                    raw.create(None, key, value)
            repeat = args.repeat or max(5, 20_000 // args.n)

            def op() -> Any:
                return comp.list_instances()

            def raw_op() -> Any:
                return raw.list(f"v1/instances/{NAMESPACE}/profile/")
        else:
            ep = comp.endpoint("generate")
            transport = waypost.TransportType.tcp("127.0.0.1:42043/6f64a219dfbb2106/bench/backend/generate")
            repeat = args.repeat or 1000
            raw_lease = raw.grant(3600)
            raw_key = instance_key(NAMESPACE, "profile", "raw", getattr(raw_lease, "id", None) or 1)

            def op() -> Any:
                ep.register(transport=transport, device_type="cuda", request_plane_codec="msgpack").unregister()

            def raw_op() -> Any:
                raw.create(raw_lease, raw_key, encode(instance_dict(NAMESPACE, "profile", "raw", 1)))
                raw.delete(raw_key)
        op()
        raw_op()
        if args.compare:
            w, r = timed(op, repeat), timed(raw_op, repeat)
            print(f"median: waypost {w * 1e6:.1f} µs, raw {r * 1e6:.1f} µs, ratio {w / r:.2f}")
        profiler = Profiler(interval=0.0001)
        profiler.start()
        for _ in range(repeat):
            op()
        profiler.stop()
        raw.close()
    if args.html:
        Path(args.html).write_text(profiler.output_html())
    print(profiler.output_text(unicode=True, color=False, show_all=False))


if __name__ == "__main__":
    main()
