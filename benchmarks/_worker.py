"""A second process for the cross-process benchmarks (watch propagation, crash detection).

    python benchmarks/_worker.py watch --impl waypost --backend etcd --url etcd://... --component watch
    python benchmarks/_worker.py hold  --impl raw --backend etcd --url etcd://... --component crash --ttl 2

``watch`` prints ``READY`` once its initial snapshot is in, then one line per
change: ``EV put|delete NAME MONOTONIC`` (NAME = endpoint name for waypost and
raw, member id for tooz; MONOTONIC = ``time.monotonic()`` when the event was
received, the same clock as the parent's on Linux).
``hold`` registers NAME with a ttl, prints ``HELD``, and waits on stdin until
killed (SIGKILL = a crash: no unregister, no revoke).
``serve`` (tooz only) is a tooz member driven by JSON lines on stdin
(``_tooz.RemoteToozMember``: tooz 8.1 on Consul runs in its own virtualenv).
``listmem`` (waypost / raw) lists ``--count`` instances of COMPONENT once and
prints one JSON line: the call's time, its peak RSS above the RSS just before
it, its tracemalloc peak and what the result holds (test_bench_list.py).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import threading
import time
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from _common import NAMESPACE, encode, instance_dict, instance_key

_out_lock = threading.Lock()


def emit(line: str) -> None:
    with _out_lock:
        sys.stdout.write(line + "\n")
        sys.stdout.flush()


def on_event(kind: str, name: str) -> None:
    emit(f"EV {kind} {name} {time.monotonic():.9f}")


def raw_store(args: argparse.Namespace) -> Any:
    from _raw import RAW_STORES

    return RAW_STORES[args.backend](args.url, **json.loads(args.raw_options))


def watch(args: argparse.Namespace) -> None:
    prefix = f"v1/instances/{NAMESPACE}/{args.component}/"
    if args.impl == "waypost":
        import waypost

        rt = waypost.connect(args.url, ttl=10)
        w = rt.watch(waypost.Query.component(NAMESPACE, args.component))
        emit("READY")
        for event in w:
            if isinstance(event, waypost.Added | waypost.Removed):
                on_event("put" if isinstance(event, waypost.Added) else "delete", event.instance.endpoint)
    elif args.impl == "raw":
        store = raw_store(args)
        store.watch(prefix, lambda kind, key: on_event(kind, key.split("/")[4]))
        emit("READY")
        sys.stdin.read()
    else:
        from _tooz import ToozMember

        member = ToozMember(args.tooz_url, f"watcher-{os.getpid()}", ttl=10)
        group = f"{NAMESPACE}.{args.component}"
        member.ensure_group(group)
        member.watch(group, on_event)
        emit("READY")
        member.poll_forever(lambda: False)


def hold(args: argparse.Namespace) -> None:
    name = args.name
    if args.impl == "waypost":
        import waypost

        rt = waypost.connect(args.url, ttl=args.ttl)
        ep = rt.namespace(NAMESPACE).component(args.component).endpoint(name)
        ep.register(transport=waypost.TransportType.tcp("127.0.0.1:1"), device_type="cuda")
    elif args.impl == "raw":
        from _raw import keepalive_thread

        store = raw_store(args)
        lease = store.grant(args.ttl)
        iid = getattr(lease, "id", None) or os.getpid()
        store.create(lease, instance_key(NAMESPACE, args.component, name, iid),
                     encode(instance_dict(NAMESPACE, args.component, name, iid)))
        keepalive_thread(store, lease, args.ttl / 3)
    else:
        from _tooz import ToozMember

        member = ToozMember(args.tooz_url, name, ttl=args.ttl)
        group = f"{NAMESPACE}.{args.component}"
        member.ensure_group(group)
        member.join(group, instance_dict(NAMESPACE, args.component, name, os.getpid()))
    emit("HELD")
    sys.stdin.read()


def _rss_kib(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"no {field} in /proc/self/status")


def listmem(args: argparse.Namespace) -> None:
    """Peak memory of one list, in this fresh process (connections and imports warmed on an empty prefix)."""
    import gc
    import tracemalloc

    prefix = f"v1/instances/{NAMESPACE}/{args.component}/"
    if args.impl == "waypost":
        import waypost

        rt = waypost.connect(args.url, ttl=3600, timeout=60.0)  # etcd and Redis (the big list only)
        rt.namespace(NAMESPACE).component("listmem-warmup").list_instances()

        def read() -> Any:
            return rt.namespace(NAMESPACE).component(args.component).list_instances()
    else:
        store = raw_store(args)
        store.list(f"v1/instances/{NAMESPACE}/listmem-warmup/")

        def read() -> Any:
            return store.list(prefix)
    gc.collect()
    try:  # reset the high-water mark (VmHWM) to the current RSS
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        pass
    before = _rss_kib("VmRSS")
    t0 = time.perf_counter()
    result = read()
    elapsed = time.perf_counter() - t0
    rss_peak = (_rss_kib("VmHWM") - before) * 1024
    count = len(result)
    del result
    gc.collect()
    tracemalloc.start()
    base = tracemalloc.get_traced_memory()[0]
    result = read()
    held, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    emit(json.dumps({"count": count, "elapsed": elapsed, "rss_peak": rss_peak, "tracemalloc_peak": peak - base,
                     "tracemalloc_held": held - base, "check": len(result)}))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("role", choices=["watch", "hold", "serve", "listmem"])
    parser.add_argument("--impl", choices=["waypost", "raw", "tooz"], required=True)
    parser.add_argument("--backend", required=True)
    parser.add_argument("--url", required=True)
    parser.add_argument("--tooz-url", default="")
    parser.add_argument("--raw-options", default="{}")
    parser.add_argument("--component", required=True)
    parser.add_argument("--name", default="held")
    parser.add_argument("--ttl", type=float, default=2.0)
    parser.add_argument("--no-heart", action="store_true")
    parser.add_argument("--count", type=int, default=0)
    args = parser.parse_args()
    if args.role == "serve":
        from _tooz import serve

        serve(args.tooz_url, args.name, args.ttl, not args.no_heart)
        return
    if args.role == "listmem":
        listmem(args)
        return
    (watch if args.role == "watch" else hold)(args)


if __name__ == "__main__":
    main()
