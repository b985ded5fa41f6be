"""Profile one waypost operation with pyinstrument (for the ratios the report flags).

    python benchmarks/profile_ops.py list --backend etcd --n 1000 [--repeat 50] [--html out.html]
    python benchmarks/profile_ops.py register --backend redis [--repeat 2000]
    python benchmarks/profile_ops.py list --backend consul --n 1000 --compare

Starts the server the same way the harness does (``tests/servers/``),
writes the same data, then runs the operation ``--repeat`` times under
pyinstrument and prints the call tree (``pip install pyinstrument``; the
``bench`` tox env has it). With ``--compare`` it also times the raw baseline.
"""

from __future__ import annotations

import argparse
import contextlib
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("op", choices=["list", "register", "unregister"])
    parser.add_argument("--backend", default="memory", choices=list(RAW_STORES))
    parser.add_argument("--n", type=int, default=1000)
    parser.add_argument("--repeat", type=int, default=0)
    parser.add_argument("--html")
    parser.add_argument("--compare", action="store_true", help="also time the raw baseline (medians)")
    args = parser.parse_args()

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
