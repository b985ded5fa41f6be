"""The soak suite's other processes: workers (many Runtimes each, churn), watchers, and the two probes.

    python benchmarks/soak/_children.py worker  CONFIG_JSON   # JSON-lines commands on stdin, replies on stdout
    python benchmarks/soak/_children.py watcher CONFIG_JSON
    python benchmarks/soak/_children.py cpu     CONFIG_JSON   # prints one JSON line: keepalive CPU per Runtime
    python benchmarks/soak/_children.py slow    CONFIG_JSON   # prints one JSON line: the slow-consumer check

A worker hosts many Runtimes (one Python interpreter per Runtime would mean
200 interpreters on 2 cores); a watcher holds one or more watches. Both answer
one JSON line per command line (``{"id": n, "cmd": ...}`` →
``{"id": n, "ok": true, ...}``), and exit at once when stdin closes (the
coordinator died), like a crashed process: nothing is unregistered.

The same classes run in the coordinator's own process for ``memory://``, where
a "SIGKILL" is :func:`waypost.core.faults.crash` of every Runtime of the worker.

Times are ``time.monotonic()``: one system-wide clock on Linux, so the
coordinator compares them with its own.
"""

from __future__ import annotations

import contextlib
import gc
import hashlib
import json
import os
import random
import resource
import sys
import threading
import time
import traceback
from collections.abc import Callable, Iterable
from typing import Any

import waypost
from waypost import Added, Interrupted, Query, Removed, Resynced, TransportType

NAMESPACE = "soak"
TIMED = ("grant_lease", "keep_alive", "create", "replace", "delete")  # store calls a worker times
COMPONENTS = 4  # endpoint j lives in component c{j % COMPONENTS}


def endpoint_of(j: int) -> tuple[str, str]:
    return f"c{j % COMPONENTS}", f"e{j}"


def memory_kb() -> dict[str, int]:
    """VmRSS and VmHWM (peak RSS) of this process, in KiB."""
    out = {"rss_kb": 0, "hwm_kb": 0}
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    out["rss_kb"] = int(line.split()[1])
                elif line.startswith("VmHWM:"):
                    out["hwm_kb"] = int(line.split()[1])
    except OSError:
        pass
    return out


def digest(pairs: Iterable[tuple[str, int]]) -> str:
    """Order-free digest of ``(key, generation)`` pairs: views and truths are compared through it."""
    h = hashlib.sha1()
    for key, gen in sorted(pairs):
        h.update(f"{key}\t{gen}\n".encode())
    return h.hexdigest()


def pair_hash(key: str, gen: int) -> int:
    return int.from_bytes(hashlib.blake2b(f"{key}\t{gen}".encode(), digest_size=8).digest(), "big")


def view_digest(pairs: Iterable[tuple[str, int]]) -> str:
    """The digest a watcher keeps incrementally: the count and the XOR of every pair's hash."""
    n = acc = 0
    for key, gen in pairs:
        n += 1
        acc ^= pair_hash(key, gen)
    return f"{n}:{acc:016x}"


def _gen(instance: waypost.Instance) -> int:
    meta = instance.metadata
    try:
        return int(meta["gen"]) if meta is not None else -1
    except (KeyError, TypeError, ValueError):
        return -1


# ---------------------------------------------------------------------------
# worker: many Runtimes, churn, ground truth
# ---------------------------------------------------------------------------

class _Slot:
    """One Runtime of a worker (a closed-and-reopened Runtime keeps its slot, with a new Runtime)."""

    def __init__(self, index: int) -> None:
        self.index = index
        self.rt: waypost.Runtime | None = None
        self.gen: dict[int, int] = {}  # endpoint index -> generation last written
        self.lease_lost = 0  # waypost_on_lease_lost calls for this slot's Runtimes
        self.opened = 0


class Worker:
    """R Runtimes with up to E endpoints each; churn runs in a thread; answers commands."""

    def __init__(self, cfg: dict[str, Any]) -> None:
        self.url: str = cfg["url"]
        self.options: dict[str, Any] = dict(cfg.get("options") or {})
        self.name: str = cfg["name"]
        self.endpoints: int = cfg["endpoints"]
        self.rng = random.Random(cfg.get("seed", 0))
        self.slots = [_Slot(i) for i in range(cfg["runtimes"])]
        self.by_runtime: dict[int, _Slot] = {}  # id(Runtime) -> slot
        self.lock = threading.Lock()  # slot bookkeeping (not held across store calls)
        self.op_lock = threading.Lock()  # one operation at a time (churn vs truth reads)
        self.ops: dict[str, int] = {"register": 0, "unregister": 0, "update": 0, "reopen": 0}
        self.errors: dict[str, int] = {}
        self.last_op_at = 0.0
        self._churn: threading.Thread | None = None
        self._stop = threading.Event()
        self._gen = 0
        self.latency: dict[str, list[float]] = {}  # store call -> durations since the last report
        waypost.register_plugin(self, name=f"soak-worker-{self.name}-{id(self)}")

    # hooks -----------------------------------------------------------------
    @waypost.hookimpl
    def waypost_on_lease_lost(self, runtime: Any, old_instance_id: int, new_instance_id: int | None,
                              reason: str) -> None:
        with self.lock:
            slot = self.by_runtime.get(id(runtime))
            if slot is not None:
                slot.lease_lost += 1

    # runtimes ----------------------------------------------------------------
    def _next_gen(self) -> int:
        self._gen += 1
        return self._gen

    def _register(self, slot: _Slot, j: int) -> None:
        assert slot.rt is not None
        comp, ep = endpoint_of(j)
        gen = self._next_gen()
        slot.rt.namespace(NAMESPACE).component(comp).endpoint(ep).register(
            transport=TransportType.tcp(f"127.0.0.1:{10000 + j}"), metadata={"gen": gen, "w": self.name})
        slot.gen[j] = gen

    def _timed(self, rt: waypost.Runtime) -> None:
        """Time every store call the Runtime makes (its keepalive and recovery included)."""
        backend = rt.backend
        for method in TIMED:
            original = getattr(backend, method)

            def timed(*args: Any, _original: Any = original, _method: str = method, **kwargs: Any) -> Any:
                t0 = time.monotonic()
                try:
                    return _original(*args, **kwargs)
                finally:
                    with self.lock:
                        self.latency.setdefault(_method, []).append(time.monotonic() - t0)

            setattr(backend, method, timed)

    def latency_report(self) -> dict[str, Any]:
        with self.lock:
            samples, self.latency = self.latency, {}
        return {"latency": samples}

    def _open(self, slot: _Slot) -> None:
        rt = waypost.connect(self.url, **self.options)
        self._timed(rt)
        with self.lock:
            slot.rt, slot.gen = rt, {}
            slot.opened += 1
            self.by_runtime[id(rt)] = slot
        for j in range(self.endpoints):
            self._register(slot, j)

    def _close(self, slot: _Slot) -> None:
        rt = slot.rt
        if rt is None:
            return
        with self.lock:
            slot.rt = None
        rt.close()
        with self.lock:
            self.by_runtime.pop(id(rt), None)

    def start(self) -> dict[str, Any]:
        for slot in self.slots:
            self._open(slot)
        return {"ready_at": time.monotonic()}

    # churn ---------------------------------------------------------------------
    def _one_op(self) -> None:
        slot = self.rng.choice(self.slots)
        rt = slot.rt
        if rt is None:
            self._open(slot)
            return
        roll = self.rng.random()
        registered = {r.endpoint_id.name: r for r in rt.registrations()}
        if roll < 0.04:
            self._close(slot)
            self._open(slot)
            self.ops["reopen"] += 1
            return
        j = self.rng.randrange(self.endpoints)
        _, ep = endpoint_of(j)
        if ep not in registered:
            self._register(slot, j)
            self.ops["register"] += 1
        elif roll < 0.55:
            self._register(slot, j)  # same Runtime again: an update (new metadata)
            self.ops["update"] += 1
        else:
            registered[ep].unregister()
            slot.gen.pop(j, None)
            self.ops["unregister"] += 1

    def _churn_loop(self, seconds: float, rate: float) -> None:
        period = 1.0 / rate if rate > 0 else 0.0
        end = time.monotonic() + seconds
        next_at = time.monotonic()
        while not self._stop.is_set() and time.monotonic() < end:
            with self.op_lock:
                try:
                    self._one_op()
                except Exception as exc:  # counted and reported; churn goes on
                    name = type(exc).__name__
                    self.errors[name] = self.errors.get(name, 0) + 1
                self.last_op_at = time.monotonic()
            next_at += period
            delay = next_at - time.monotonic()
            if delay > 0:
                self._stop.wait(delay)  # pacing of the churn, not a synchronisation
            else:
                next_at = time.monotonic()

    def churn(self, seconds: float, rate: float) -> dict[str, Any]:
        self._stop.clear()
        self._churn = threading.Thread(target=self._churn_loop, args=(seconds, rate), daemon=True)
        self._churn.start()
        return {}

    def stop(self) -> dict[str, Any]:
        self._stop.set()
        if self._churn is not None:
            self._churn.join()
            self._churn = None
        return self.truth()

    # reporting -------------------------------------------------------------------
    def truth(self, have: str | None = None) -> dict[str, Any]:
        """What every Runtime has registered now (``key -> generation``), its id, and the lease-loss counts."""
        runtimes = []
        pairs: list[tuple[str, int]] = []
        with self.op_lock:
            with self.lock:
                slots = [(s, s.rt) for s in self.slots]
            for slot, rt in slots:
                if rt is None or rt.closed:
                    runtimes.append({"slot": slot.index, "open": False, "lease_lost": slot.lease_lost})
                    continue
                keys = {}
                for reg in rt.registrations():
                    gen = reg.fields.get("metadata", {}).get("gen", -1)
                    keys[reg.instance.key] = gen
                pairs += keys.items()
                runtimes.append({"slot": slot.index, "open": True, "id": rt.instance_id, "keys": keys,
                                 "lease_lost": slot.lease_lost, "opened": slot.opened})
        # Lease losses and reopenings change the version too (ids may stay the same after a loss).
        version = digest([*pairs, *((f"#{r['slot']}", r["lease_lost"] * 1000 + r.get("opened", 0))
                                    for r in runtimes)])
        out: dict[str, Any] = {"version": version, "ops": dict(self.ops), "errors": dict(self.errors),
                               "last_op_at": self.last_op_at, **memory_kb()}
        if have != version:
            out["runtimes"] = runtimes
        return out

    def crash(self) -> dict[str, Any]:
        """In-process stand-in for SIGKILL (memory://): every Runtime stops as a killed process would."""
        from waypost.core import faults

        self._stop.set()
        if self._churn is not None:
            self._churn.join()
        for slot in self.slots:
            if slot.rt is not None:
                faults.crash(slot.rt)
                slot.rt = None
        waypost.unregister_plugin(self)
        return {}

    def close(self) -> dict[str, Any]:
        self._stop.set()
        if self._churn is not None:
            self._churn.join()
        for slot in self.slots:
            with contextlib.suppress(waypost.WaypostError):
                self._close(slot)
        waypost.unregister_plugin(self)
        return {}

    def handle(self, cmd: dict[str, Any]) -> dict[str, Any]:
        op = cmd["cmd"]
        if op == "start":
            return self.start()
        if op == "churn":
            return self.churn(cmd["seconds"], cmd["rate"])
        if op in ("stop", "freeze"):
            return self.stop()
        if op == "truth":
            return self.truth(cmd.get("have"))
        if op == "crash":
            return self.crash()
        if op == "close":
            return self.close()
        if op == "latency":
            return self.latency_report()
        raise ValueError(f"unknown command {op!r}")


# ---------------------------------------------------------------------------
# watcher: watches, their views, disappearance tracking
# ---------------------------------------------------------------------------

class _View:
    """One watch, consumed by its own thread into ``key -> generation``."""

    def __init__(self, rt: waypost.Runtime, query: str) -> None:
        self.query = query
        self.lock = threading.Lock()
        self.view: dict[str, int] = {}
        self.acc = 0  # XOR of pair_hash over the view: the digest is kept as events arrive, not recomputed
        self.counts = {"added": 0, "removed": 0, "resynced": 0, "interrupted": 0}
        self.last_change = time.monotonic()
        self.tracked: dict[str, tuple[set[str], float | None]] = {}  # id -> (keys still seen, all gone at)
        self.watch = rt.watch(Query.parse(query))
        self.thread = threading.Thread(target=self._consume, daemon=True, name=f"soak-view-{query}")
        self.thread.start()

    def _consume(self) -> None:
        for event in self.watch:
            now = time.monotonic()
            with self.lock:
                if isinstance(event, Added):
                    key, gen = event.instance.key, _gen(event.instance)
                    self.counts["added"] += 1
                    old = self.view.get(key)
                    if old is not None:
                        self.acc ^= pair_hash(key, old)
                    self.view[key] = gen
                    self.acc ^= pair_hash(key, gen)
                    self.last_change = now
                elif isinstance(event, Removed):
                    key = event.instance.key
                    self.counts["removed"] += 1
                    old = self.view.pop(key, None)
                    if old is not None:
                        self.acc ^= pair_hash(key, old)
                    self.last_change = now
                    for tid, (left, gone) in self.tracked.items():
                        if gone is None and key in left:
                            left.discard(key)
                            if not left:
                                self.tracked[tid] = (left, now)
                elif isinstance(event, Resynced):
                    self.counts["resynced"] += 1
                elif isinstance(event, Interrupted):
                    self.counts["interrupted"] += 1

    def track(self, tid: str, keys: list[str]) -> None:
        with self.lock:
            left = {k for k in keys if k in self.view}
            self.tracked[tid] = (left, None if left else time.monotonic())

    def report(self, full: bool) -> dict[str, Any]:
        with self.lock:
            out: dict[str, Any] = {"query": self.query, "n": len(self.view),
                                   "digest": f"{len(self.view)}:{self.acc:016x}",
                                   "last_change": self.last_change, "counts": dict(self.counts),
                                   "tracked": {t: g for t, (_, g) in self.tracked.items()}}
            if full:
                out["view"] = dict(self.view)
        return out


class Watcher:
    def __init__(self, cfg: dict[str, Any]) -> None:
        self.rt = waypost.connect(cfg["url"], **dict(cfg.get("options") or {}))
        self.views = [_View(self.rt, q) for q in cfg["queries"]]

    def handle(self, cmd: dict[str, Any]) -> dict[str, Any]:
        op = cmd["cmd"]
        if op == "report":
            return {"views": [v.report(bool(cmd.get("full"))) for v in self.views], **memory_kb()}
        if op == "track":
            for v in self.views:
                v.track(cmd["tid"], cmd["keys"])
            return {}
        if op == "close":
            self.rt.close()
            return {}
        if op == "crash":
            from waypost.core import faults

            faults.crash(self.rt)
            return {}
        raise ValueError(f"unknown command {op!r}")


# ---------------------------------------------------------------------------
# probes: keepalive CPU, slow consumer
# ---------------------------------------------------------------------------

def _cpu_seconds() -> float:
    ru = resource.getrusage(resource.RUSAGE_SELF)
    return ru.ru_utime + ru.ru_stime


def keepalive_cpu(cfg: dict[str, Any]) -> dict[str, Any]:
    """K Runtimes with E endpoints each and no churn: this process's CPU time over a window / K / window."""
    k, e, window = cfg["runtimes"], cfg["endpoints"], cfg["window"]
    options = dict(cfg.get("options") or {})
    runtimes = []
    for i in range(k):
        rt = waypost.connect(cfg["url"], **options)
        runtimes.append(rt)
        for j in range(e):
            comp, ep = endpoint_of(j)
            rt.namespace(cfg.get("namespace", "soakcpu")).component(comp).endpoint(ep).register(
                transport=TransportType.tcp(f"127.0.0.1:{20000 + i}"))
    time.sleep(cfg.get("settle", 1.0))  # let start-up work (connections, first keepalives) pass: pacing
    lost = {"n": 0}

    class Hook:
        @waypost.hookimpl
        def waypost_on_lease_lost(self, runtime: Any, old_instance_id: int, new_instance_id: int | None,
                                  reason: str) -> None:
            lost["n"] += 1

    hook = Hook()
    waypost.register_plugin(hook)
    cpu0, t0 = _cpu_seconds(), time.monotonic()
    time.sleep(window)  # the measurement window, not a synchronisation
    cpu1, t1 = _cpu_seconds(), time.monotonic()
    waypost.unregister_plugin(hook)
    for rt in runtimes:
        rt.close()
    elapsed = t1 - t0
    return {"runtimes": k, "endpoints": e, "window": elapsed, "cpu_s": cpu1 - cpu0,
            "cpu_per_runtime": (cpu1 - cpu0) / elapsed / k, "lease_lost": lost["n"]}


def slow_consumer(cfg: dict[str, Any]) -> dict[str, Any]:
    """One watch left unread through ``changes`` changes: RSS growth, then it must converge with one Resynced."""
    options = dict(cfg.get("options") or {})
    changes, keys = cfg["changes"], cfg.get("keys", 100)
    ns = cfg.get("namespace", "soakslow")
    reader = waypost.connect(cfg["url"], **options, **({"max_queued": cfg["max_queued"]}
                                                       if cfg.get("max_queued") else {}))
    writer = waypost.connect(cfg["url"], **options)
    watch = reader.watch(Query.namespace(ns))
    comp = writer.namespace(ns).component("c")
    rng = random.Random(7)
    regs: dict[int, waypost.Registration] = {}
    gc.collect()
    before = memory_kb()
    peak = before["rss_kb"]
    started = time.monotonic()
    errors = 0
    for i in range(changes):
        j, gen = rng.randrange(keys), i + 1
        try:
            if j not in regs:
                regs[j] = comp.endpoint(f"e{j}").register(transport=TransportType.tcp(f"127.0.0.1:{30000 + j}"),
                                                          metadata={"gen": gen})
            elif rng.random() < 0.5:
                comp.endpoint(f"e{j}").register(transport=TransportType.tcp(f"127.0.0.1:{30000 + j}"),
                                                metadata={"gen": gen})
            else:
                regs.pop(j).unregister()
        except waypost.WaypostError:
            errors += 1
        if i % 5000 == 0:
            peak = max(peak, memory_kb()["rss_kb"])
    write_s = time.monotonic() - started
    after = memory_kb()
    peak = max(peak, after["rss_kb"])
    truth = {r.instance.key: r.fields["metadata"]["gen"] for r in writer.registrations()}
    deadline = time.monotonic() + cfg.get("deadline", 60.0)
    # The watch's thread may still be delivering (a network store's stream lags the writes): "then read it"
    # means once the watch itself has seen everything, so that the reader falls behind exactly once.
    caught_up_start = time.monotonic()
    while time.monotonic() < deadline and {i.key: _gen(i) for i in watch.instances} != truth:
        time.sleep(0.05)  # polling interval of a condition wait with a deadline
    caught_up_s = time.monotonic() - caught_up_start
    # Read it: the consumer's own view, built from the events it gets, must reach the truth.
    view: dict[str, int] = {}
    resynced = events = 0
    drain_start = time.monotonic()
    while time.monotonic() < deadline:
        event = watch.get(timeout=0.2)
        if event is None:
            if view == truth:
                break
            continue
        events += 1
        if isinstance(event, Added):
            view[event.instance.key] = _gen(event.instance)
        elif isinstance(event, Removed):
            view.pop(event.instance.key, None)
        elif isinstance(event, Resynced):
            resynced += 1
    drained_s = time.monotonic() - drain_start
    listed = {i.key: _gen(i) for i in writer.list_instances(Query.namespace(ns))}
    watch.close()
    writer.close()
    reader.close()
    return {"changes": changes, "write_s": write_s, "errors": errors, "rss_before_kb": before["rss_kb"],
            "rss_after_kb": after["rss_kb"], "rss_peak_kb": peak, "growth_mb": (peak - before["rss_kb"]) / 1024,
            "events_read": events, "resynced": resynced, "converged": view == truth, "list_ok": listed == truth,
            "truth": len(truth), "drain_s": drained_s, "caught_up_s": caught_up_s, "lost": len(set(truth) - set(view)),
            "phantoms": len(set(view) - set(truth))}


# ---------------------------------------------------------------------------
# process main
# ---------------------------------------------------------------------------

def _serve(make: Callable[[dict[str, Any]], Any], cfg: dict[str, Any]) -> None:
    out_lock = threading.Lock()

    def send(obj: dict[str, Any]) -> None:
        with out_lock:
            sys.stdout.write(json.dumps(obj) + "\n")
            sys.stdout.flush()

    try:
        host = make(cfg)
    except Exception as exc:
        send({"id": 0, "ok": False, "error": f"{type(exc).__name__}: {exc}", "trace": traceback.format_exc()})
        os._exit(1)
    send({"id": 0, "ok": True, "pid": os.getpid(), **memory_kb()})
    for line in sys.stdin:
        cmd = json.loads(line)
        try:
            reply = {"id": cmd["id"], "ok": True, **host.handle(cmd)}
        except Exception as exc:
            reply = {"id": cmd["id"], "ok": False, "error": f"{type(exc).__name__}: {exc}",
                     "trace": traceback.format_exc()}
        send(reply)
        if cmd["cmd"] == "close":
            break
    else:
        os._exit(0)  # stdin closed: the coordinator is gone; vanish like a killed process
    sys.stdout.flush()
    os._exit(0)


def main(argv: list[str]) -> None:
    import logging

    logging.basicConfig(level=logging.WARNING, stream=sys.stderr,
                        format="%(asctime)s %(process)d %(threadName)s %(name)s %(levelname)s %(message)s")
    mode, cfg = argv[0], json.loads(argv[1])
    if mode == "worker":
        _serve(Worker, cfg)
    elif mode == "watcher":
        _serve(Watcher, cfg)
    elif mode in ("cpu", "slow"):
        result = (keepalive_cpu if mode == "cpu" else slow_consumer)(cfg)
        sys.stdout.write(json.dumps(result) + "\n")
        sys.stdout.flush()
        os._exit(0)
    else:
        raise SystemExit(f"unknown mode {mode!r}")


if __name__ == "__main__":
    main(sys.argv[1:])
