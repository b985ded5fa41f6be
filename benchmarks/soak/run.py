"""The soak and fault suite (issue 10): many Runtimes, watchers, churn, SIGKILLs and server faults, per backend.

    python benchmarks/soak/run.py --quick                       # CI: every backend scaled down (< 3 min)
    python benchmarks/soak/run.py --backend etcd                # full mode on one backend (200 x 5, 20 watchers)
    python benchmarks/soak/run.py --backend all --results benchmarks/RESULTS.md --json soak.json
    python benchmarks/soak/run.py --backend redis --runtimes 50 --churn-seconds 20 --faults pause,revoke

What one backend's run does (see benchmarks/soak/README.md):

1. keepalive CPU: K Runtimes with E endpoints and nothing else in one process;
   its CPU time over a window / K / window (file: also with 10 000 foreign
   instance files in the store, and the ratio);
2. churn: N Runtimes x E endpoints spread over worker processes, W watches in
   watcher processes; workers register / unregister / update endpoints and
   close and reopen Runtimes; whole workers are SIGKILLed (and replaced);
   after churn stops, the time until every watcher's view and a fresh list
   equal the ground truth the workers report;
3. faults (network backends): restart with / without data, SIGSTOP past the
   ttl, leases revoked from outside, and for etcd a 3-member cluster losing a
   member and then the leader: convergence time, lost, phantoms, lease losses,
   whether every Runtime re-registered on its own;
4. slow consumer: one watch left unread through many changes: RSS growth, then
   it must converge to the truth with exactly one Resynced.

Exit status: 1 on any phantom, any instance still lost at the convergence
deadline, any lease loss of a live Runtime during churn, a killed Runtime not
gone within ttl + bound, a slow consumer that does not converge with one
Resynced, or a run that failed; 0 otherwise. Figures that are goals rather
than correctness (convergence <= 1 s, the CPU ratio, RSS growth <= 20 MB) are
reported as met or not and do not change the exit status.
"""

from __future__ import annotations

import argparse
import atexit
import contextlib
import json
import logging
import os
import platform
import queue
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import traceback
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

SOAK = Path(__file__).resolve().parent
REPO = SOAK.parents[1]
for _p in (SOAK, REPO / "tests"):
    if str(_p) not in sys.path:
        sys.path.insert(0, str(_p))

import _children  # noqa: E402 - found through the sys.path entries above
import _stores  # noqa: E402
from _children import NAMESPACE, view_digest  # noqa: E402

import waypost  # noqa: E402

BACKENDS = ("memory", "file", "etcd", "redis", "consul")
BEGIN, END = "<!-- soak:begin -->", "<!-- soak:end -->"
_log = logging.getLogger("soak")


# ---------------------------------------------------------------------------
# configuration
# ---------------------------------------------------------------------------

@dataclass
class Config:
    quick: bool = False
    runtimes: int = 200
    endpoints: int = 5
    watchers: int = 20
    churn_seconds: float = 60.0
    ttl: float = 2.0
    workers: int = 8  # worker processes the Runtimes are spread over
    watcher_procs: int = 20  # processes the watches are spread over
    rate: float = 5.0  # churn operations per second per worker process
    kills: int = 3  # worker processes SIGKILLed during churn (each replaced by a fresh one)
    faults: list[str] | None = None  # None: every fault the backend supports
    cpu_runtimes: int = 25
    cpu_window: float = 10.0
    foreign_files: int = 10_000
    slow_changes: int = 100_000
    slow_queue: int | None = None  # the slow watch's max_queued (None: waypost's default, 4 096)
    poll: float = 0.05  # convergence polling interval
    skip: list[str] = field(default_factory=list)  # phases not to run: cpu, slow

    @classmethod
    def quick_defaults(cls) -> Config:
        return cls(quick=True, runtimes=10, endpoints=2, watchers=2, churn_seconds=5.0, workers=2,
                   watcher_procs=2, rate=5.0, kills=1, faults=list(_stores.QUICK_FAULTS), cpu_runtimes=5,
                   cpu_window=2.0, foreign_files=2_000, slow_changes=400, slow_queue=64, skip=["cpu"])


# ---------------------------------------------------------------------------
# channels to the other processes
# ---------------------------------------------------------------------------

_children_alive: set[ProcChannel] = set()


def _kill_all_children() -> None:
    for ch in list(_children_alive):
        ch.kill()


atexit.register(_kill_all_children)


class ChannelError(RuntimeError):
    pass


_SETPRIV = shutil.which("setpriv") if sys.platform.startswith("linux") else None


def child_argv(mode: str, cfg: dict[str, Any]) -> list[str]:
    """The command line of a child; under ``setpriv --pdeathsig KILL`` when spawned from the main thread, so
    that the kernel kills it if this process dies without cleaning up (the servers do the same)."""
    argv = [sys.executable, str(SOAK / "_children.py"), mode, json.dumps(cfg)]
    if _SETPRIV and threading.current_thread() is threading.main_thread():
        argv = [_SETPRIV, "--pdeathsig", "KILL", "--", *argv]
    return argv


class ProcChannel:
    """One child process (its own process group), JSON lines both ways, every wait with a deadline."""

    def __init__(self, mode: str, cfg: dict[str, Any], log_path: Path, start_timeout: float = 60.0) -> None:
        self.name = cfg.get("name", mode)
        self.log_path = log_path
        self._log = open(log_path, "ab")  # noqa: SIM115 - closed in _reaped
        env = {**os.environ, "PYTHONUNBUFFERED": "1", "PYTHONDONTWRITEBYTECODE": "1"}
        self.proc = subprocess.Popen(child_argv(mode, cfg), stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     stderr=self._log, text=True, bufsize=1, start_new_session=True, env=env)
        _children_alive.add(self)
        self._replies: queue.Queue[dict[str, Any] | None] = queue.Queue()
        self._next_id = 1
        threading.Thread(target=self._read, daemon=True).start()
        self.hello = self._recv(0, start_timeout)

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            with contextlib.suppress(json.JSONDecodeError):
                self._replies.put(json.loads(line))
        self._replies.put(None)

    def _recv(self, want: int, timeout: float) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise ChannelError(f"{self.name}: no reply within {timeout:.0f} s (log: {self.log_path})")
            try:
                reply = self._replies.get(timeout=left)
            except queue.Empty:
                continue
            if reply is None:
                raise ChannelError(f"{self.name} exited (code {self.proc.poll()}; log: {self.log_path})")
            if reply.get("id") != want:
                continue
            if not reply.get("ok"):
                raise ChannelError(f"{self.name}: {reply.get('error')}\n{reply.get('trace', '')}")
            return reply

    def send(self, cmd: str, **args: Any) -> int:
        rid = self._next_id
        self._next_id += 1
        assert self.proc.stdin is not None
        try:
            self.proc.stdin.write(json.dumps({"id": rid, "cmd": cmd, **args}) + "\n")
            self.proc.stdin.flush()
        except (BrokenPipeError, OSError) as exc:
            raise ChannelError(f"{self.name} is gone ({exc}; log: {self.log_path})") from exc
        return rid

    def recv(self, rid: int, timeout: float = 60.0) -> dict[str, Any]:
        return self._recv(rid, timeout)

    def call(self, cmd: str, timeout: float = 60.0, **args: Any) -> dict[str, Any]:
        return self.recv(self.send(cmd, **args), timeout)

    def kill(self) -> None:
        """SIGKILL the whole process group, and reap."""
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self.proc.pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(10)
        self._reaped()

    def close(self, timeout: float = 30.0) -> None:
        try:
            if self.proc.poll() is None:
                self.call("close", timeout)
                self.proc.wait(timeout)
        except (ChannelError, subprocess.TimeoutExpired):
            pass
        self.kill()

    def _reaped(self) -> None:
        _children_alive.discard(self)
        with contextlib.suppress(OSError):
            self._log.close()


class LocalChannel:
    """The same protocol to an object in this process (memory://): SIGKILL = faults.crash of its Runtimes."""

    def __init__(self, host: Any, name: str) -> None:
        self.host, self.name = host, name
        self._replies: dict[int, dict[str, Any]] = {}
        self._next_id = 1
        self.hello = {"pid": os.getpid(), **_children.memory_kb()}
        self.log_path = Path("(in-process)")

    def send(self, cmd: str, **args: Any) -> int:
        rid = self._next_id
        self._next_id += 1
        try:
            self._replies[rid] = {"ok": True, **self.host.handle({"id": rid, "cmd": cmd, **args})}
        except Exception as exc:
            raise ChannelError(f"{self.name}: {type(exc).__name__}: {exc}\n{traceback.format_exc()}") from exc
        return rid

    def recv(self, rid: int, timeout: float = 60.0) -> dict[str, Any]:
        return self._replies.pop(rid)

    def call(self, cmd: str, timeout: float = 60.0, **args: Any) -> dict[str, Any]:
        return self.recv(self.send(cmd, **args), timeout)

    def kill(self) -> None:
        with contextlib.suppress(Exception):
            self.host.handle({"cmd": "crash"})

    def close(self, timeout: float = 30.0) -> None:
        with contextlib.suppress(Exception):
            self.host.handle({"cmd": "close"})


Channel = ProcChannel | LocalChannel


def call_all(channels: list[Any], cmd: str, timeout: float = 60.0, **args: Any) -> list[dict[str, Any]]:
    """The same command to every channel at once, then every reply."""
    ids = [ch.send(cmd, **args) for ch in channels]
    return [ch.recv(rid, timeout) for ch, rid in zip(channels, ids, strict=True)]


def child_argv_env() -> None:
    """Children import waypost, the servers and _children from where this file runs."""
    paths = [str(REPO / "src"), str(SOAK), str(REPO / "tests")]
    old = os.environ.get("PYTHONPATH")
    os.environ["PYTHONPATH"] = os.pathsep.join([*paths, *([old] if old else [])])


def run_child(mode: str, cfg: dict[str, Any], log_path: Path, timeout: float) -> dict[str, Any]:
    """A one-shot child (cpu, slow): its one JSON line; killed (group) at the deadline."""
    with open(log_path, "ab") as log:
        proc = subprocess.Popen(child_argv(mode, cfg), stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=log,
                                text=True, start_new_session=True)
        try:
            out, _ = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.communicate()
            raise ChannelError(f"{mode} probe did not finish within {timeout:.0f} s (log: {log_path})") from None
    lines = [line for line in out.splitlines() if line.startswith("{")]
    if proc.returncode != 0 or not lines:
        raise ChannelError(f"{mode} probe failed (code {proc.returncode}; log: {log_path})")
    result: dict[str, Any] = json.loads(lines[-1])
    return result


# ---------------------------------------------------------------------------
# the population: workers (ground truth) and watchers (views)
# ---------------------------------------------------------------------------

def _query_prefix(query: str) -> str:
    return waypost.Query.parse(query).prefix


class Population:
    def __init__(self, store: _stores.Store, cfg: Config, logdir: Path, tag: str) -> None:
        self.store, self.cfg, self.logdir, self.tag = store, cfg, logdir, tag
        self.options = {"ttl": cfg.ttl, **store.options}
        self.workers: dict[str, Any] = {}
        self.watchers: list[Any] = []
        self.queries: list[list[str]] = []  # per watcher process
        self._truth_cache: dict[str, dict[str, Any]] = {}  # worker -> last full truth reply
        self._worker_n = 0
        self.local = store.name == "memory"
        self.retired: dict[str, dict[str, Any]] = {}  # killed or closed workers' last truth
        self.last_worker_up = 0.0  # when the newest workers had registered everything (start_workers)

    # processes -----------------------------------------------------------------------
    def _spawn(self, mode: str, cfg: dict[str, Any]) -> Any:
        if self.local:
            host = _children.Worker(cfg) if mode == "worker" else _children.Watcher(cfg)
            return LocalChannel(host, cfg["name"])
        return ProcChannel(mode, cfg, self.logdir / f"{self.tag}-{cfg['name']}.log")

    def start_watchers(self) -> None:
        queries = [NAMESPACE if i % 2 == 0 else f"{NAMESPACE}.c{(i // 2) % _children.COMPONENTS}"
                   for i in range(self.cfg.watchers)]
        procs = max(1, min(self.cfg.watcher_procs, len(queries)))
        groups = [queries[i::procs] for i in range(procs)]
        for i, group in enumerate(groups):
            self.watchers.append(self._spawn("watcher", {"name": f"watch{i}", "url": self.store.url,
                                                         "options": self.options, "queries": group}))
            self.queries.append(group)

    def _worker_cfg(self, runtimes: int) -> dict[str, Any]:
        self._worker_n += 1
        name = f"w{self._worker_n}"
        return {"name": name, "url": self.store.url, "options": self.options, "runtimes": runtimes,
                "endpoints": self.cfg.endpoints, "seed": hash((self.tag, name)) & 0xFFFF}

    def start_workers(self, counts: list[int]) -> None:
        made = [self._spawn("worker", self._worker_cfg(n)) for n in counts]
        call_all(made, "start", timeout=120.0)
        # Their Runtimes' registrations are writes too: convergence counts from the last one.
        self.last_worker_up = time.monotonic()
        for ch in made:
            self.workers[ch.name] = ch

    def worker_counts(self) -> list[int]:
        n, p = self.cfg.runtimes, max(1, min(self.cfg.workers, self.cfg.runtimes))
        return [n // p + (1 if i < n % p else 0) for i in range(p)]

    def close(self) -> None:
        for ch in [*self.workers.values(), *self.watchers]:
            with contextlib.suppress(Exception):
                ch.close(timeout=30.0)
        self.workers.clear()
        self.watchers.clear()

    # truth and views -----------------------------------------------------------------
    def truth(self) -> tuple[dict[str, int], list[dict[str, Any]]]:
        """Every key a live Runtime has registered (-> generation), and the per-Runtime records."""
        names = list(self.workers)
        ids = [self.workers[n].send("truth", have=self._truth_cache.get(n, {}).get("version")) for n in names]
        for n, rid in zip(names, ids, strict=True):
            reply = self.workers[n].recv(rid, 60.0)
            if "runtimes" in reply:
                self._truth_cache[n] = reply
            else:
                self._truth_cache[n] = {**self._truth_cache[n], **{k: v for k, v in reply.items()
                                                                    if k != "runtimes"}}
        keys: dict[str, int] = {}
        runtimes = []
        for n in names:
            for rt in self._truth_cache[n]["runtimes"]:
                runtimes.append({**rt, "worker": n})
                keys.update(rt.get("keys", {}))
        return keys, runtimes

    def lease_losses(self) -> dict[tuple[str, int], int]:
        """Lease-loss hook calls per (worker, slot), retired workers included (as of their last report)."""
        out = {}
        for n, reply in [*self.retired.items(), *self._truth_cache.items()]:
            for rt in reply.get("runtimes", []):
                out[(n, rt["slot"])] = rt["lease_lost"]
        return out

    def reports(self, full: bool = False) -> list[dict[str, Any]]:
        return call_all(self.watchers, "report", timeout=60.0, full=full)

    def listed(self) -> dict[str, int] | None:
        assert self.store.admin is not None
        try:
            return {i.key: _children._gen(i)
                    for i in self.store.admin.list_instances(waypost.Query.namespace(NAMESPACE))}
        except waypost.WaypostError:
            return None

    def converge(self, since: float, deadline_s: float, settle_s: float = 0.0,
                 stable_s: float = 0.3) -> dict[str, Any]:
        """Poll until every view and a fresh list equal the truth (or the deadline); then count the differences.

        A fault's effects (a lease expiring, a keepalive noticing, a watch reconnecting) can come after the
        fault is lifted, so the views and the list must equal the truth from ``since + settle_s`` on, and for
        at least ``stable_s`` in a row. The convergence time runs from ``since`` to the last change any
        watcher's view made (its own timestamp) or the start of the list's final run of matches, whichever
        is later.
        """
        deadline = time.monotonic() + deadline_s
        list_ok_at: float | None = None  # start of the list's current run of matches
        ok_at: float | None = None  # start of the current run where views and list all match
        polls = 0
        poll_parts: list[tuple[float, float, float, bool, bool]] = []  # truth, reports, list (s); views, list ok
        views_ok = False
        # The coordinator's own work must not starve what it measures (2 cores; memory:// shares its GIL):
        # the polling interval grows with the time a poll takes.
        duty = 0.1 if self.local else 0.33
        while True:
            polls += 1
            poll_started = time.monotonic()
            truth, _ = self.truth()
            t_truth = time.monotonic()
            expected = {}
            views_ok = True
            reports = self.reports()
            t_reports = time.monotonic()
            for report in reports:
                for view in report["views"]:
                    q = view["query"]
                    if q not in expected:
                        prefix = _query_prefix(q)
                        expected[q] = view_digest((k, g) for k, g in truth.items() if k.startswith(prefix))
                    views_ok = views_ok and view["digest"] == expected[q]
            listed = self.listed()
            now = time.monotonic()
            poll_parts.append((round(t_truth - poll_started, 3), round(t_reports - t_truth, 3),
                               round(now - t_reports, 3), views_ok, listed == truth))
            list_ok_at = (list_ok_at or now) if listed == truth else None
            ok_at = (ok_at or now) if views_ok and list_ok_at is not None else None
            if ok_at is not None and now >= since + settle_s and now - ok_at >= stable_s:
                break
            if now >= deadline:
                break
            spent = time.monotonic() - poll_started
            time.sleep(max(self.cfg.poll, spent * (1 - duty) / duty))  # polling interval of a condition wait
        converged = ok_at is not None
        truth, runtimes = self.truth()
        reports = self.reports(full=True)
        listed = self.listed() or {}
        per_view = []
        lost = phantoms = stale = 0
        last_change = since
        for report in reports:
            for view in report["views"]:
                prefix = _query_prefix(view["query"])
                want = {k: g for k, g in truth.items() if k.startswith(prefix)}
                have = view["view"]
                v_lost = len(set(want) - set(have))
                v_phantoms = len(set(have) - set(want))
                v_stale = sum(1 for k in set(want) & set(have) if want[k] != have[k])
                lost, phantoms, stale = lost + v_lost, phantoms + v_phantoms, stale + v_stale
                last_change = max(last_change, view["last_change"])
                per_view.append({"query": view["query"], "n": len(have), "lost": v_lost, "phantoms": v_phantoms,
                                 "stale": v_stale, "counts": view["counts"], "tracked": view["tracked"]})
        list_lost = len(set(truth) - set(listed))
        list_phantoms = len(set(listed) - set(truth))
        samples = {"list_lost": sorted(set(truth) - set(listed))[:5],
                   "list_phantoms": sorted(set(listed) - set(truth))[:5]}
        end = max(last_change, list_ok_at or time.monotonic())
        open_rts = [rt for rt in runtimes if rt.get("open")]
        reregistered = sum(1 for rt in open_rts if all(k in listed for k in rt.get("keys", {})))
        return {
            "converged": converged, "convergence_s": max(0.0, end - since) if converged else None,
            # Which of the two ended it: the views' last change, or the first matching list (poll-bound).
            "views_settled_s": max(0.0, last_change - since),
            "list_ok_s": None if list_ok_at is None else max(0.0, list_ok_at - since),
            "poll_parts": poll_parts[-8:],
            "lost": lost + list_lost, "phantoms": phantoms + list_phantoms, "stale": stale,
            "view_lost": lost, "view_phantoms": phantoms, "list_lost": list_lost, "list_phantoms": list_phantoms,
            "truth": len(truth), "polls": polls, "runtimes_open": len(open_rts), "runtimes_back": reregistered,
            "views": per_view, "samples": samples,
            "watcher_rss_kb": max((r["rss_kb"] for r in reports), default=0),
            "watcher_hwm_kb": max((r["hwm_kb"] for r in reports), default=0),
            "events": _event_totals(per_view),
        }


def latency_stats(pop: Population) -> dict[str, dict[str, float]]:
    """Store-call latencies the workers saw since the last call (and reset them): n, p50, p99, max."""
    samples: dict[str, list[float]] = {}
    for reply in call_all(list(pop.workers.values()), "latency", timeout=60.0):
        for method, values in reply["latency"].items():
            samples.setdefault(method, []).extend(values)
    out = {}
    for method, values in sorted(samples.items()):
        values.sort()
        n = len(values)
        out[method] = {"n": n, "p50": values[n // 2], "p99": values[min(n - 1, int(n * 0.99))], "max": values[-1]}
    return out


def _event_totals(views: list[dict[str, Any]]) -> dict[str, int]:
    out: dict[str, int] = {}
    for v in views:
        for k, n in v["counts"].items():
            out[k] = out.get(k, 0) + n
    return out


def _ops_total(replies: list[dict[str, Any]]) -> dict[str, int]:
    out: dict[str, int] = {}
    for r in replies:
        for k, n in r.get("ops", {}).items():
            out[k] = out.get(k, 0) + n
    return out


def _errors_total(replies: list[dict[str, Any]]) -> dict[str, int]:
    out: dict[str, int] = {}
    for r in replies:
        for k, n in r.get("errors", {}).items():
            out[k] = out.get(k, 0) + n
    return out


# ---------------------------------------------------------------------------
# phases
# ---------------------------------------------------------------------------

def say(backend: str, text: str) -> None:
    print(f"[soak {time.strftime('%H:%M:%S')}] {backend}: {text}", flush=True)


def phase_churn(pop: Population, cfg: Config) -> dict[str, Any]:
    """Churn with SIGKILLs, then convergence after churn stops."""
    store = pop.store
    pop.start_watchers()
    pop.start_workers(pop.worker_counts())
    initial = pop.converge(time.monotonic(), deadline_s=30.0 + cfg.ttl * 2)
    say(store.name, f"population up: {initial['truth']} instances, {len(pop.workers)} workers, "
                    f"{cfg.watchers} watches in {len(pop.watchers)} processes; initial views "
                    f"{'converged' if initial['converged'] else 'NOT converged'}")
    losses_before = pop.lease_losses()
    events_before = initial["events"]
    load_start = os.getloadavg()[0]
    latency_stats(pop)  # reset: what follows is the churn's
    started = time.monotonic()
    call_all(list(pop.workers.values()), "churn", seconds=cfg.churn_seconds, rate=cfg.rate)
    margin = cfg.ttl + store.expiry_bound + 1.5  # the last kill must be gone before churn stops
    window_end = max(cfg.churn_seconds * 0.15, cfg.churn_seconds - margin)
    kill_at = [cfg.churn_seconds * 0.1 + (window_end - cfg.churn_seconds * 0.1) * i / max(1, cfg.kills)
               for i in range(cfg.kills)]
    kills: list[dict[str, Any]] = []
    rng = random.Random(10)
    ops_retired: list[dict[str, Any]] = []
    for at in kill_at:
        delay = started + at - time.monotonic()
        if delay > 0:
            time.sleep(delay)  # pacing: the kill schedule
        name = rng.choice(sorted(pop.workers))
        victim = pop.workers.pop(name)
        frozen = victim.call("freeze", timeout=60.0)  # its exact truth, then the kill
        t_kill = time.monotonic()
        victim.kill()
        keys = [k for rt in frozen["runtimes"] for k in rt.get("keys", {})]
        tid = f"kill{len(kills)}"
        call_all(pop.watchers, "track", tid=tid, keys=keys)
        pop.retired[name] = frozen
        pop._truth_cache.pop(name, None)
        ops_retired.append(frozen)
        runtimes = len(frozen["runtimes"])
        pop.start_workers([runtimes])
        left = cfg.churn_seconds - (time.monotonic() - started)
        newest = pop.workers[max(pop.workers, key=lambda n: int(n[1:]))]
        if left > 0.5:
            newest.call("churn", seconds=left, rate=cfg.rate)
        kills.append({"tid": tid, "worker": name, "at": t_kill, "keys": len(keys), "runtimes": runtimes})
    left = started + cfg.churn_seconds - time.monotonic()
    if left > 0:
        time.sleep(left)  # pacing: churn runs for its duration
    stopped = call_all(list(pop.workers.values()), "stop", timeout=120.0)
    for n, reply in zip(list(pop.workers), stopped, strict=True):
        pop._truth_cache[n] = reply
    # The last write: a churn operation, or the last registration of a worker started to replace a killed
    # one (on a saturated Consul agent, 25 Runtimes x 5 endpoints take tens of seconds to register).
    t_stop = max([r["last_op_at"] for r in stopped] + [started, pop.last_worker_up])
    result = pop.converge(t_stop, deadline_s=cfg.ttl + store.expiry_bound + 20.0, stable_s=0.5)
    losses_after = pop.lease_losses()
    lease_lost = sum(n - losses_before.get(k, 0) for k, n in losses_after.items())
    bound = cfg.ttl + store.expiry_bound
    for kill in kills:
        gone = [v["tracked"].get(kill["tid"]) for v in result["views"]]
        kill["gone_s"] = None if any(g is None for g in gone) else max(g - kill["at"] for g in gone)
        kill["within_bound"] = kill["gone_s"] is not None and kill["gone_s"] <= bound + 1.0
        del kill["at"]
    ops = _ops_total([*stopped, *ops_retired])
    result.update({
        "seconds": cfg.churn_seconds, "operations": sum(ops.values()) + len(kills), "ops": ops,
        "errors": _errors_total([*stopped, *ops_retired]), "kills": kills, "kill_bound_s": bound,
        "lease_lost": lease_lost,
        "churn_events": {k: n - events_before.get(k, 0) for k, n in result["events"].items()},
        "initial": {k: initial[k] for k in ("converged", "truth", "lost", "phantoms")},
        "worker_rss_kb": max((r["rss_kb"] for r in stopped), default=0),
        "loadavg": [load_start, os.getloadavg()[0]],  # the machine is shared: 1-minute load, start and end
        "store_latency": latency_stats(pop),  # every store call the workers' Runtimes made, kills' excluded
    })
    return result


def phase_faults(pop: Population, cfg: Config, faults: list[str]) -> list[dict[str, Any]]:
    store = pop.store
    out = []
    # A fault's consequences may come after it is lifted: lease expiry, a keepalive noticing (every ttl/3),
    # a watch noticing a silent server (max(ttl, 1) s + its bound). The views must hold the truth past this.
    settle = 2 * cfg.ttl + store.expiry_bound + 1.0
    for name in faults:
        losses_before = pop.lease_losses()
        events_before = _event_totals([v for r in pop.reports() for v in r["views"]])
        latency_stats(pop)
        say(store.name, f"fault {name}: {store.fault_text(name)}")
        t_inject = time.monotonic()
        try:
            info = store.fault(name)
        except Exception as exc:
            out.append({"fault": name, "error": f"{type(exc).__name__}: {exc}"})
            say(store.name, f"fault {name} could not be injected: {exc}")
            continue
        t_lifted = time.monotonic()
        result = pop.converge(t_lifted, deadline_s=settle + 30.0, settle_s=settle)
        result["loadavg"] = os.getloadavg()[0]
        losses_after = pop.lease_losses()
        per_rt = {k: n - losses_before.get(k, 0) for k, n in losses_after.items()}
        result.update({
            "fault": name, "what": store.fault_text(name), "info": info, "fault_s": t_lifted - t_inject,
            "since_inject_s": (result["convergence_s"] + t_lifted - t_inject) if result["converged"] else None,
            "lease_lost": sum(per_rt.values()), "runtimes_lost_lease": sum(1 for n in per_rt.values() if n),
            "fault_events": {k: n - events_before.get(k, 0) for k, n in result["events"].items()},
        })
        if not result["converged"]:
            # Slow, or never? Give it another minute before the next fault, and say which.
            late = pop.converge(t_lifted, deadline_s=60.0, stable_s=1.0)
            result["late"] = {k: late[k] for k in ("converged", "convergence_s", "lost", "phantoms", "samples")}
        result["store_latency"] = latency_stats(pop)
        out.append(result)
        say(store.name, _fault_line(result))
        heal = getattr(store, "heal", None)
        if heal is not None:
            heal()
            pop.converge(time.monotonic(), deadline_s=settle + 30.0, settle_s=settle)
    return out


def _conv(r: dict[str, Any]) -> str:
    return f"converged in {r['convergence_s']:.2f} s" if r["converged"] else "NOT converged"


def _fault_line(r: dict[str, Any]) -> str:
    late = r.get("late")
    later = "" if not late else (f" (converged {late['convergence_s']:.1f} s after the fault)" if late["converged"]
                                 else " (still not converged a minute later)")
    return (f"fault {r['fault']}: {_conv(r)}{later}; lost {r['lost']}, phantoms {r['phantoms']}, lease losses "
            f"{r['lease_lost']} ({r['runtimes_lost_lease']} Runtimes), re-registered {r['runtimes_back']}/"
            f"{r['runtimes_open']}")


def phase_cpu(store: _stores.Store, cfg: Config, logdir: Path) -> dict[str, Any]:
    """Keepalive CPU per Runtime. file: in fresh directories, empty or with foreign instance files, with the
    probe alone on the store (its keepalive is then the elected reaper, one pass per stale_after) and with a
    watcher in another process (which then reaps, as in any store with watchers)."""
    import shutil

    out: dict[str, Any] = {}
    variants = [("empty", 0, False)]
    if store.name == "file":
        variants += [("foreign", cfg.foreign_files, False), ("empty+watcher", 0, True),
                     ("foreign+watcher", cfg.foreign_files, True)]
    options = {"ttl": cfg.ttl, **store.options}
    for tag, foreign, watched in variants:
        url, root, watcher = store.url, None, None
        if store.name == "file":
            root = tempfile.mkdtemp(prefix="waypost-soak-cpu-")
            url = f"file://{root}"
            if foreign:
                _stores.plant_foreign_files(root, foreign)
        elif store.name == "memory":
            url = f"memory://soak-cpu-{tag}"
        try:
            if watched:
                watcher = ProcChannel("watcher", {"name": "cpuwatch", "url": url, "options": options,
                                                  "queries": ["soakcpu"]}, logdir / f"cpu-{tag}-watcher.log")
            probe = {"url": url, "options": options, "runtimes": cfg.cpu_runtimes, "endpoints": cfg.endpoints,
                     "window": cfg.cpu_window, "settle": cfg.ttl}
            out[tag] = run_child("cpu", probe, logdir / f"cpu-{store.name}-{tag}.log",
                                 timeout=120.0 + cfg.cpu_window)
            out[tag]["foreign_files"] = foreign
        finally:
            if watcher is not None:
                watcher.close()
            if root:
                shutil.rmtree(root, ignore_errors=True)
    for ratio, (num, den) in {"ratio": ("foreign+watcher", "empty+watcher"),
                              "ratio_alone": ("foreign", "empty")}.items():
        if num in out and out[den]["cpu_per_runtime"] > 0:
            out[ratio] = out[num]["cpu_per_runtime"] / out[den]["cpu_per_runtime"]
    return out


def slow_changes_for(store: _stores.Store, cfg: Config) -> int:
    if cfg.quick:
        return cfg.slow_changes
    # Consul answers a write only once this process's watches saw it (a blocking-query round trip):
    # 100 k changes would take most of the 10-minute budget there.
    return min(cfg.slow_changes, 20_000) if store.name == "consul" else cfg.slow_changes


def phase_slow(store: _stores.Store, cfg: Config, logdir: Path) -> dict[str, Any]:
    changes = slow_changes_for(store, cfg)
    probe = {"url": store.url, "options": {"ttl": cfg.ttl, **store.options}, "changes": changes,
             "keys": 100, "deadline": 60.0, "max_queued": cfg.slow_queue}
    if store.name == "memory":
        probe["url"] = f"memory://soak-slow-{os.getpid()}"
    return run_child("slow", probe, logdir / f"slow-{store.name}.log", timeout=900.0)


# ---------------------------------------------------------------------------
# one backend
# ---------------------------------------------------------------------------

def run_backend(name: str, cfg: Config, logdir: Path) -> dict[str, Any]:
    result: dict[str, Any] = {"backend": name, "config": asdict(cfg), "failures": []}
    store = _stores.STORES[name](cfg.ttl)
    started = time.monotonic()
    pop: Population | None = None
    try:
        store.start()
        store.connect_admin()
        result["store"] = store.describe()
        result["notes"] = list(store.notes)
        say(name, f"store {store.describe()}")
        result["cpu"] = phase_cpu(store, cfg, logdir) if "cpu" not in cfg.skip else {}
        if result["cpu"]:
            say(name, "keepalive CPU per Runtime: " + ", ".join(
                f"{tag} {v['cpu_per_runtime'] * 1000:.2f} ms/s" for tag, v in result["cpu"].items()
                if isinstance(v, dict)) + "".join(f"; {k} {v:.2f}" for k, v in result["cpu"].items()
                                                  if not isinstance(v, dict)))
        pop = Population(store, cfg, logdir, name)
        churn = result["churn"] = phase_churn(pop, cfg)
        say(name, f"churn: {churn['operations']} operations, events {churn['churn_events']}, "
                  f"{_conv(churn)}; "
                  f"lost {churn['lost']}, phantoms {churn['phantoms']}, stale {churn['stale']}, lease losses "
                  f"{churn['lease_lost']}, kills gone in "
                  + ", ".join("never" if k["gone_s"] is None else f"{k['gone_s']:.2f} s" for k in churn["kills"]))
        wanted = [f for f in (cfg.faults if cfg.faults is not None else store.faults) if f in store.faults]
        result["faults"] = phase_faults(pop, cfg, wanted)
        pop.close()
        pop = None
        if name == "etcd" and (cfg.faults is None or {"member-loss", "leader-loss"} & set(cfg.faults)):
            result["faults"] += run_cluster(cfg, logdir)
        if "slow" not in cfg.skip:
            result["slow"] = phase_slow(store, cfg, logdir)
            s = result["slow"]
            say(name, f"slow consumer: {s['changes']} changes, RSS +{s['growth_mb']:.1f} MB, {s['resynced']} Resynced, "
                      f"{'converged' if s['converged'] else 'NOT converged'} in {s['drain_s']:.2f} s")
    except Exception as exc:
        result["failures"].append(f"run failed: {type(exc).__name__}: {exc}")
        result["trace"] = traceback.format_exc()
        say(name, f"run failed: {exc}")
    finally:
        if pop is not None:
            pop.close()
        store.close()
    result["seconds"] = time.monotonic() - started
    result["failures"] += judge(result)
    result["targets"] = targets(result, cfg)
    say(name, f"done in {result['seconds']:.0f} s: " + ("OK" if not result["failures"] else
                                                         "FAILED: " + "; ".join(result["failures"])))
    return result


def run_cluster(cfg: Config, logdir: Path) -> list[dict[str, Any]]:
    store = _stores.EtcdClusterStore(cfg.ttl)
    pop = None
    try:
        store.start()
        store.connect_admin()
        say("etcd", f"3-member cluster {store.describe()}")
        pop = Population(store, cfg, logdir, "etcd-cluster")
        pop.start_watchers()
        pop.start_workers(pop.worker_counts())
        initial = pop.converge(time.monotonic(), deadline_s=30.0 + cfg.ttl * 2)
        if not initial["converged"]:
            say("etcd", "cluster population did not converge before the faults")
        wanted = [f for f in (cfg.faults if cfg.faults is not None else store.faults) if f in store.faults]
        return phase_faults(pop, cfg, wanted)
    finally:
        if pop is not None:
            pop.close()
        store.close()


def judge(r: dict[str, Any]) -> list[str]:
    """The hard failures (exit status 1)."""
    out = []
    churn = r.get("churn")
    if churn:
        if churn["phantoms"]:
            out.append(f"churn: {churn['phantoms']} phantoms")
        if not churn["converged"]:
            out.append(f"churn: not converged at the deadline ({churn['lost']} lost, {churn['stale']} stale)")
        if churn["lease_lost"]:
            out.append(f"churn: {churn['lease_lost']} lease losses of live Runtimes")
        for k in churn["kills"]:
            if not k["within_bound"]:
                gone = "never" if k["gone_s"] is None else f"{k['gone_s']:.2f} s"
                out.append(f"churn: killed worker {k['worker']}'s instances not gone within ttl + bound + 1 s "
                           f"({gone})")
    for f in r.get("faults", []):
        if "error" in f:
            out.append(f"fault {f['fault']}: {f['error']}")
            continue
        if f["phantoms"]:
            out.append(f"fault {f['fault']}: {f['phantoms']} phantoms")
        if not f["converged"]:
            out.append(f"fault {f['fault']}: not converged ({f['lost']} lost, {f['stale']} stale)")
    s = r.get("slow")
    if s and (not s["converged"] or s["resynced"] != 1 or not s["list_ok"]):
        out.append(f"slow consumer: converged={s['converged']} with {s['resynced']} Resynced (want exactly 1)")
    return out


def targets(r: dict[str, Any], cfg: Config) -> dict[str, Any]:
    """The issue's goals (reported, not part of the exit status)."""
    t: dict[str, Any] = {}
    churn = r.get("churn")
    if churn and churn["converged"]:
        t["convergence <= 1 s after churn"] = churn["convergence_s"] <= 1.0
    cpu = r.get("cpu", {})
    if "ratio" in cpu:
        t["file keepalive CPU ratio <= 1.5 (with a watcher)"] = cpu["ratio"] <= 1.5
    if "ratio_alone" in cpu:
        t["file keepalive CPU ratio <= 1.5 (probe alone)"] = cpu["ratio_alone"] <= 1.5
    faults = [f for f in r.get("faults", []) if "error" not in f]
    if faults:
        t["every fault: 0 phantoms, every Runtime back"] = all(
            f["phantoms"] == 0 and f["converged"] and f["runtimes_back"] == f["runtimes_open"] for f in faults)
    s = r.get("slow")
    if s:
        t["slow consumer <= 20 MB, one Resynced"] = s["growth_mb"] <= 20 and s["resynced"] == 1 and s["converged"]
    return t


# ---------------------------------------------------------------------------
# report
# ---------------------------------------------------------------------------

def _s(x: float | None) -> str:
    return "—" if x is None else f"{x:.2f} s"


def _fault_conv(f: dict[str, Any]) -> str:
    if f["converged"]:
        return _s(f["convergence_s"])
    late = f.get("late")
    if late and late["converged"]:
        return f"**no** within the deadline; converged {late['convergence_s']:.1f} s after the fault"
    return "**no** (nor within a further minute)" if late else "**no**"


def _cpu_ms(v: dict[str, Any] | None) -> str:
    return "—" if not v else f"{v['cpu_per_runtime'] * 1000:.3f} ms/s"


def render(results: list[dict[str, Any]], cfg: Config, command: str, env: dict[str, Any] | None = None,
           findings: str = "") -> str:
    env = env or environment()
    lines = [BEGIN, "## Soak and faults", "",
             f"Generated {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())} by `{command}` "
             f"({'quick' if cfg.quick else 'full'} mode; see `benchmarks/soak/README.md`). "
             f"{env['cpu']}, {env['cores']} cores, Python {env['python']}; code {env['code']}.", "",
             f"Churn phase: N = {cfg.runtimes} Runtimes x E = {cfg.endpoints} endpoints over {cfg.workers} worker "
             f"processes, W = {cfg.watchers} watches in {min(cfg.watcher_procs, cfg.watchers)} watcher processes "
             f"(half on the namespace, half on one component each), ttl = {cfg.ttl:g} s, {cfg.churn_seconds:g} s of "
             f"churn at {cfg.rate:g} operations/s per worker (register, unregister, update, close + reopen a "
             f"Runtime) with {cfg.kills} worker processes SIGKILLed (each replaced). Convergence: from the last "
             "write of the churn (an operation, or the last registration of a worker replacing a killed one; or "
             "the moment a fault was lifted) to the last change any watcher's view made, or "
             "the first fresh list equal to the truth, whichever is later. lost = in the truth but missing from a "
             "view or the list; phantoms = in a view or the list but not in the truth (summed over the views and "
             "the list); stale = present with an older value.", "",
             "| backend | operations | events seen | converged after churn | lost | phantoms | stale | lease losses "
             "(live Runtimes) | SIGKILLed gone after (bound) | watcher RSS peak | worker RSS | keepalive CPU "
             "per Runtime | machine load (1 min, start/end of churn) | run |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in results:
        c = r.get("churn")
        cpu = r.get("cpu", {})
        if not c:
            lines.append(f"| {r['backend']} | run failed: {'; '.join(r['failures'])} ||||||||||||| |")
            continue
        ev = sum(c["churn_events"].values())
        gone = ", ".join("never" if k["gone_s"] is None else f"{k['gone_s']:.2f}" for k in c["kills"])
        cpu_txt = _cpu_ms(cpu.get("empty"))
        lines.append(
            f"| {r['backend']} | {c['operations']} | {ev} | {_s(c['convergence_s']) if c['converged'] else 'no'} | "
            f"{c['lost']} | {c['phantoms']} | {c['stale']} | {c['lease_lost']} | {gone} s ({c['kill_bound_s']:g} s) "
            f"| {c['watcher_hwm_kb'] / 1024:.0f} MB | {c['worker_rss_kb'] / 1024:.0f} MB | {cpu_txt} | "
            f"{' / '.join(f'{x:.1f}' for x in c.get('loadavg', []))} | {r['seconds']:.0f} s |")
    file_cpu = next((r["cpu"] for r in results if r["backend"] == "file" and "ratio" in r.get("cpu", {})), None)
    if file_cpu:
        n = file_cpu["foreign"]["foreign_files"]
        lines += ["", f"Keepalive CPU per Runtime ({cfg.cpu_runtimes} Runtimes x {cfg.endpoints} endpoints in one "
                      f"process, no churn, {cfg.cpu_window:g} s window; CPU time of that process / Runtimes / "
                      f"window). file, with a watcher in another process on the store: empty store "
                      f"{_cpu_ms(file_cpu['empty+watcher'])}, with {n} foreign instance files "
                      f"{_cpu_ms(file_cpu['foreign+watcher'])}: ratio **{file_cpu['ratio']:.2f}** (goal <= 1.5). "
                      f"The probe alone on the store (its keepalive is then the elected reaper: one pass over "
                      f"the whole store per 4 x stale_after): {_cpu_ms(file_cpu['empty'])} vs "
                      f"{_cpu_ms(file_cpu['foreign'])}, "
                      f"ratio **{file_cpu['ratio_alone']:.2f}**."]
    lines += ["", "### Faults", "",
              "The population of the churn phase, churn stopped; each fault in turn. Convergence is measured from "
              "the moment the fault was lifted (server back, SIGCONT sent, leases revoked, member killed); "
              "\"back\" = open Runtimes whose every registration is listed again without help.", "",
              "| backend | fault | fault took | converged after | lost | phantoms | lease losses (Runtimes) | "
              "Runtimes back | watch events (Resynced / Interrupted) |",
              "|---|---|---|---|---|---|---|---|---|"]
    for r in results:
        for f in r.get("faults", []):
            if "error" in f:
                lines.append(f"| {r['backend']} | {f['fault']} | error: {f['error']} ||||||| |")
                continue
            ev = f["fault_events"]
            lines.append(
                f"| {r['backend']} | {f['what']} | {f['fault_s']:.1f} s | {_fault_conv(f)} | "
                f"{f['lost']} | {f['phantoms']} | {f['lease_lost']} ({f['runtimes_lost_lease']}) | "
                f"{f['runtimes_back']}/{f['runtimes_open']} | {ev.get('resynced', 0)} / {ev.get('interrupted', 0)} |")
    lines += ["", "### Slow consumer", "",
              "One watch left unread in a process while another Runtime of it makes the changes (register, "
              "update, unregister over 100 endpoints), then read: its RSS growth and whether the events it reads "
              "bring its view to the truth, with how many `Resynced` notices (the watch's queue holds "
              f"{cfg.slow_queue or 4096} events).", "",
              "| backend | changes | writing took | RSS growth | Resynced | converged (read in) |",
              "|---|---|---|---|---|---|"]
    for r in results:
        s = r.get("slow")
        if s:
            lines.append(f"| {r['backend']} | {s['changes']} | {s['write_s']:.1f} s | {s['growth_mb']:.1f} MB | "
                         f"{s['resynced']} | {'yes' if s['converged'] and s['list_ok'] else 'NO'} "
                         f"({s['drain_s']:.2f} s) |")
    if findings:
        lines += ["", "### Findings", "", findings.strip()]
    lines += ["", "### Goals and checks", ""]
    for r in results:
        met = ", ".join(f"{k}: {'met' if v else '**not met**'}" for k, v in r.get("targets", {}).items())
        status = "all checks passed" if not r["failures"] else "**FAILED**: " + "; ".join(r["failures"])
        lines.append(f"- {r['backend']}: {status}. Goals: {met or '—'}.")
    notes = sorted({n for r in results for n in r.get("notes", [])})
    if notes:
        lines += ["", "Notes:", ""] + [f"- {n}" for n in notes]
    lines += ["", END]
    return "\n".join(lines) + "\n"


def write_section(path: Path, section: str) -> None:
    """Replace the text between the soak markers of ``path`` (or append it)."""
    text = path.read_text() if path.exists() else ""
    if BEGIN in text and END in text:
        head, rest = text.split(BEGIN, 1)
        tail = rest.split(END, 1)[1].lstrip("\n")
        text = head + section + ("\n" + tail if tail else "")
    else:
        text = text.rstrip("\n") + ("\n\n" if text else "") + section
    path.write_text(text)


def environment() -> dict[str, Any]:
    cpu = platform.processor() or "unknown CPU"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    code = "unknown"
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        head = subprocess.run(["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"], capture_output=True,
                              text=True, timeout=20, check=True).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(REPO), "status", "--porcelain", "--", "src"], capture_output=True,
                               text=True, timeout=20, check=True).stdout.strip()
        src = subprocess.run(["git", "-C", str(REPO), "log", "-1", "--format=%h", "--", "src"], capture_output=True,
                             text=True, timeout=20, check=True).stdout.strip()
        code = f"git {head} (src/ as of {src})" + (" + uncommitted changes in src/" if dirty else "")
    return {"cpu": cpu, "cores": os.cpu_count(), "python": platform.python_version(), "code": code}


# ---------------------------------------------------------------------------
# main
# ---------------------------------------------------------------------------

def parse_args(argv: list[str] | None) -> tuple[argparse.Namespace, Config]:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--backend", default="all", help=f"one of {', '.join(BACKENDS)}, a comma list, or all")
    p.add_argument("--quick", action="store_true", help="CI mode: 10 x 2, 2 watchers, 5 s churn, restart + pause, "
                                                        "no CPU probe, a 400-change slow consumer on a 64-event queue")
    p.add_argument("--runtimes", type=int)
    p.add_argument("--endpoints", type=int)
    p.add_argument("--watchers", type=int)
    p.add_argument("--churn-seconds", type=float)
    p.add_argument("--ttl", type=float)
    p.add_argument("--workers", type=int, help="worker processes the Runtimes are spread over")
    p.add_argument("--watcher-procs", type=int, help="processes the watches are spread over")
    p.add_argument("--rate", type=float, help="churn operations per second per worker process")
    p.add_argument("--kills", type=int, help="worker processes SIGKILLed during churn")
    p.add_argument("--faults", help=f"comma list of {', '.join(_stores.FAULTS)}; 'none'; default: all the backend "
                                    "supports (quick: restart,pause)")
    p.add_argument("--cpu-runtimes", type=int)
    p.add_argument("--cpu-window", type=float)
    p.add_argument("--foreign-files", type=int)
    p.add_argument("--slow-changes", type=int)
    p.add_argument("--slow-queue", type=int, help="max_queued of the slow consumer's watch (default: 4096)")
    p.add_argument("--skip", help="comma list of phases not to run: cpu, slow, or 'none' (default: none; quick: "
                                  "cpu). Churn always runs; --faults none skips the faults")
    p.add_argument("--json", help="write every figure to this JSON file")
    p.add_argument("--results", help="write/replace the 'Soak and faults' section of this Markdown file")
    p.add_argument("--render-from", metavar="JSON", help="only render a --json file of an earlier run (to stdout, "
                                                         "or into --results)")
    p.add_argument("--findings", metavar="MD", help="Markdown inserted as the section's 'Findings' (a run's reading)")
    p.add_argument("--logs", help="directory for the children's logs (default: a temp dir, kept on failure)")
    args = p.parse_args(argv)
    cfg = Config.quick_defaults() if args.quick else Config()
    for name in ("runtimes", "endpoints", "watchers", "churn_seconds", "ttl", "workers", "watcher_procs", "rate",
                 "kills", "cpu_runtimes", "cpu_window", "foreign_files", "slow_changes", "slow_queue"):
        value = getattr(args, name)
        if value is not None:
            setattr(cfg, name, value)
    if args.skip is not None:
        cfg.skip = [] if args.skip == "none" else [x.strip() for x in args.skip.split(",") if x.strip()]
    if set(cfg.skip) - {"cpu", "slow"}:
        p.error("--skip takes cpu and/or slow")
    if args.faults is not None:
        cfg.faults = [] if args.faults == "none" else [f.strip() for f in args.faults.split(",") if f.strip()]
        unknown = set(cfg.faults) - set(_stores.FAULTS)
        if unknown:
            p.error(f"unknown faults: {', '.join(sorted(unknown))}")
    return args, cfg


def main(argv: list[str] | None = None) -> int:
    args, cfg = parse_args(argv)
    backends = list(BACKENDS) if args.backend == "all" else [b.strip() for b in args.backend.split(",")]
    if set(backends) - set(BACKENDS):
        print(f"unknown backend in {args.backend!r}", file=sys.stderr)
        return 2
    logdir = Path(args.logs or tempfile.mkdtemp(prefix="waypost-soak-logs-"))
    logdir.mkdir(parents=True, exist_ok=True)
    logging.basicConfig(filename=str(logdir / "coordinator.log"), level=logging.WARNING,
                        format="%(asctime)s %(threadName)s %(name)s %(levelname)s %(message)s")
    child_argv_env()

    def on_signal(signum: int, _frame: Any) -> None:
        raise SystemExit(128 + signum)

    signal.signal(signal.SIGTERM, on_signal)
    print(f"[soak] {'quick' if cfg.quick else 'full'} mode, backends {', '.join(backends)}; logs in {logdir}",
          flush=True)
    command = "python benchmarks/soak/run.py " + " ".join(argv if argv is not None else sys.argv[1:])
    findings = Path(args.findings).read_text() if args.findings else ""
    if args.render_from:
        saved = json.loads(Path(args.render_from).read_text())
        section = render(saved["results"], Config(**saved["config"]), saved.get("command", command).strip(),
                         saved.get("environment"), findings)
        if args.results:
            write_section(Path(args.results), section)
        else:
            print(section)
        return 0
    results = []
    t0 = time.monotonic()
    for name in backends:
        results.append(run_backend(name, cfg, logdir))
        if args.json:  # after every backend, so that a later crash keeps what was measured
            Path(args.json).write_text(json.dumps({"config": asdict(cfg), "environment": environment(),
                                                   "command": command.strip(), "seconds": time.monotonic() - t0,
                                                   "results": results}, indent=2, default=str))
    total = time.monotonic() - t0
    if args.results:
        write_section(Path(args.results), render(results, cfg, command.strip(), findings=findings))
        print(f"[soak] wrote the 'Soak and faults' section of {args.results}", flush=True)
    failed = [r["backend"] for r in results if r["failures"]]
    print(f"[soak] {len(results)} backends in {total:.0f} s: "
          + ("all checks passed" if not failed else f"FAILED on {', '.join(failed)} (logs in {logdir})"), flush=True)
    if not failed and not args.logs:
        logging.shutdown()
        shutil.rmtree(logdir, ignore_errors=True)  # kept only on failure, or when --logs chose the directory
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
