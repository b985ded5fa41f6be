"""Shared helpers of the benchmark harness: names, values, timing and results.

Everything written to a store here is a valid Dynamo endpoint instance: the
same key (``v1/instances/{ns}/{comp}/{ep}/{id:x}``) and the same compact JSON
value for waypost, for the raw client and (as tooz capabilities) for tooz.
"""

from __future__ import annotations

import json
import os
import statistics
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
BENCH_DIR = Path(__file__).resolve().parent
NAMESPACE = "bench"
TRANSPORT_ADDRESS = "127.0.0.1:42043/6f64a219dfbb2106/bench/backend/generate"


def instance_key(namespace: str, component: str, endpoint: str, instance_id: int) -> str:
    return f"v1/instances/{namespace}/{component}/{endpoint}/{instance_id:x}"


def instance_dict(namespace: str, component: str, endpoint: str, instance_id: int) -> dict[str, Any]:
    """The value every implementation writes: Dynamo's field order, compact JSON."""
    return {
        "type": "Endpoint",
        "component": component,
        "endpoint": endpoint,
        "namespace": namespace,
        "instance_id": instance_id,
        "transport": {"tcp": TRANSPORT_ADDRESS},
        "device_type": "cuda",
        "request_plane_codec": "msgpack",
    }


def encode(value: dict[str, Any]) -> bytes:
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False).encode()


def instance_ids(count: int, seed: int = 1) -> list[int]:
    """``count`` distinct random non-zero u64 ids, deterministic per seed.

    Random like real instance ids (leases), so the store's key order (hex) is
    not the instances' sort order (decimal string) and sorting is measured.
    """
    import random

    rng = random.Random(seed)
    ids: set[int] = set()
    while len(ids) < count:
        ids.add(rng.getrandbits(64) | 1)
    return sorted(ids)


def wait_until(predicate: Callable[[], bool], timeout: float, what: str, interval: float = 0.005) -> None:
    """Poll ``predicate`` until true or raise ``TimeoutError`` naming ``what``."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(interval)


Step = Callable[[], Any] | None


class Elapsed(float):
    """An operation's own duration, measured where it ran (another process): ``interleaved`` uses it
    instead of its wall clock, so a pipe round trip to that process is not counted."""

    @property
    def elapsed(self) -> float:
        return float(self)


def interleaved(impls: dict[str, tuple[Step, Callable[[], Any], Step]], rounds: int,
                warmup: int = 2, every: dict[str, int] | None = None) -> dict[str, list[float]]:
    """Time ``op`` of every implementation round by round, rotating the order each round.

    ``impls`` maps a name to ``(setup, op, teardown)``; only ``op`` is timed (or, when
    it returns something with a float ``elapsed``, that is its time: see ``Elapsed``).
    Alternating keeps a load change on a shared machine from landing on one
    implementation only, so the ratios of the medians are robust. ``every`` thins
    out a slow implementation: ``{"tooz": 6}`` runs it in one measured round of 6
    (and in the first warm-up round), still spread over the whole pass.
    """
    names = list(impls)
    samples: dict[str, list[float]] = {name: [] for name in names}
    every = every or {}
    for r in range(warmup + rounds):
        k = r % len(names)
        for name in names[k:] + names[:k]:
            step = every.get(name, 1)
            if step > 1 and not (r == 0 or (r >= warmup and (r - warmup) % step == 0)):
                continue
            setup, op, teardown = impls[name]
            if setup is not None:
                setup()
            t0 = time.perf_counter()
            result = op()
            elapsed = time.perf_counter() - t0
            own = getattr(result, "elapsed", None)
            if isinstance(own, float):
                elapsed = own
            if teardown is not None:
                teardown()
            if r >= warmup:
                samples[name].append(elapsed)
    return samples


def percentile(samples: list[float], q: float) -> float:
    """Nearest-rank percentile (q in 0..100) of a non-empty list."""
    ordered = sorted(samples)
    rank = max(1, min(len(ordered), round(q / 100 * len(ordered) + 0.5)))
    return ordered[rank - 1]


# ---------------------------------------------------------------------------
# custom metrics (latencies measured across processes, rates, bytes) go into
# the pytest-benchmark JSON under "waypost_metrics" (see conftest.py)
# ---------------------------------------------------------------------------

@dataclass
class Metric:
    op: str  # e.g. "watch_p50", "crash_detect", "keepalive_ops", "import", "client_mem"
    backend: str
    impl: str  # "waypost" | "raw" | "tooz"
    value: float  # the median (or the one figure)
    unit: str  # "s", "ops/s", "B", ...
    n: int | None = None
    samples: list[float] = field(default_factory=list)
    note: str = ""

    def as_json(self) -> dict[str, Any]:
        return {"op": self.op, "backend": self.backend, "impl": self.impl, "value": self.value,
                "unit": self.unit, "n": self.n, "samples": self.samples, "note": self.note}


class MetricStore:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.metrics: list[Metric] = []
        self.notes: list[str] = []

    def add(self, metric: Metric) -> None:
        with self._lock:
            self.metrics.append(metric)
        print(f"\n[metric] {metric.op} {metric.backend} {metric.impl} n={metric.n}: "
              f"{metric.value:.6g} {metric.unit}", file=sys.stderr)

    def note(self, text: str) -> None:
        with self._lock:
            if text not in self.notes:
                self.notes.append(text)

    def median(self, op: str, backend: str, impl: str, samples: list[float], unit: str,
               n: int | None = None, note: str = "") -> Metric:
        metric = Metric(op, backend, impl, statistics.median(samples), unit, n, list(samples), note)
        self.add(metric)
        return metric


METRICS = MetricStore()


def python_env() -> dict[str, str]:
    """Environment for worker subprocesses: this interpreter's, with benchmarks/ importable."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(
        p for p in (str(BENCH_DIR), str(REPO / "tests"), env.get("PYTHONPATH", "")) if p
    )
    env.pop("WAYPOST_URL", None)
    return env


# ---------------------------------------------------------------------------
# worker subprocesses (benchmarks/_worker.py)
# ---------------------------------------------------------------------------

class Worker:
    """A ``_worker.py`` subprocess whose stdout lines are read by a thread."""

    def __init__(self, role: str, target: Any, impl: str, component: str, **extra: Any) -> None:
        import queue
        import subprocess

        python = getattr(target, "tooz_python", None) if impl == "tooz" else None
        argv = [python or sys.executable, str(BENCH_DIR / "_worker.py"), role, "--impl", impl, "--backend", target.name,
                "--url", target.url, "--tooz-url", target.tooz_url or "",
                "--raw-options", json.dumps(target.raw_options), "--component", component]
        for k, v in extra.items():
            argv += [f"--{k.replace('_', '-')}", str(v)]
        self.lines: queue.SimpleQueue[str] = queue.SimpleQueue()
        self.proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                     text=True, env=python_env())
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()
        self._stderr: list[str] = []
        threading.Thread(target=self._read_err, daemon=True).start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.put(line.strip())
        self.lines.put("EOF")

    def _read_err(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            self._stderr.append(line)
            del self._stderr[:-40]

    def expect(self, predicate: Callable[[str], bool], timeout: float, what: str) -> str:
        import queue

        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            try:
                line = self.lines.get(timeout=max(left, 0.0))
            except queue.Empty:
                raise TimeoutError(f"worker: no {what} within {timeout} s; stderr:\n{''.join(self._stderr)}") from None
            if line == "EOF":
                raise RuntimeError(f"worker exited ({self.proc.poll()}) before {what}; "
                                   f"stderr:\n{''.join(self._stderr)}")
            if predicate(line):
                return line

    def event(self, kind: str, name: str, timeout: float) -> float:
        """Wait for ``EV kind name t`` and return ``t``."""
        line = self.expect(lambda s: s.startswith(f"EV {kind} {name} "), timeout, f"{kind} {name}")
        return float(line.split()[3])

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(timeout=30)

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=5)
            except Exception:
                self.proc.kill()
                self.proc.wait(timeout=30)
