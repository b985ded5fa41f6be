"""``waypost demo``: several processes find each other, one crashes, one stops, all on a temp directory.

The story, with timings measured by a watch in this process:

1. start N worker processes; each registers ``demo/backend/generate`` with a ttl;
2. SIGKILL one: nothing tells the store, so it disappears when its file goes
   stale (ttl) and a scan reaps it — the crash detection time is printed;
3. SIGTERM another: it closes its Runtime, which deletes its file at once;
4. stop the rest, remove the temp directory, leave no process behind.
"""

from __future__ import annotations

import contextlib
import shutil
import signal
import subprocess
import sys
import tempfile
import textwrap
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import click

import waypost
from waypost import Added, Capability, Instance, Query, Removed
from waypost.core import backend_class, parse_url, resolve_url

from . import _format

__all__ = ["demo"]

NAMESPACE = "demo"
BASE_PORT = 9100


class DemoError(Exception):
    """A step of the demo did not happen in time."""


@dataclass
class _Worker:
    name: str
    port: int
    process: subprocess.Popen[bytes]
    spawned_at: float
    instance_id: int | None = None
    registered_after: float | None = None
    signalled_at: float | None = None
    gone_after: float | None = None

    @property
    def alive_in_store(self) -> bool:
        return self.instance_id is not None and self.gone_after is None


class _Output:
    """Readable lines stamped with the time since the start, or JSON lines (``--json``)."""

    def __init__(self, as_json: bool) -> None:
        self.as_json = as_json
        self.started = time.monotonic()

    def elapsed(self) -> float:
        return time.monotonic() - self.started

    def say(self, kind: str, text: str, color: str | None = None, **fields: Any) -> None:
        if self.as_json:
            click.echo(_format.json_line({"t": round(self.elapsed(), 3), "type": kind, **fields}))
        else:
            click.echo(f"{self.elapsed():6.2f}s  " + click.style(text, fg=color))

    def block(self, text: str) -> None:
        if not self.as_json:
            click.echo(text)


class Demo:
    def __init__(self, url: str, workers: int, ttl: float, out: _Output) -> None:
        self.url = url
        self.ttl = ttl
        self.out = out
        self.run_id = uuid.uuid4().hex[:8]
        self.count = workers
        self.workers: list[_Worker] = []
        self.watch: waypost.Watch[Instance] | None = None

    # the story ------------------------------------------------------------------------
    def run(self) -> dict[str, float]:
        with waypost.connect(self.url, ttl=self.ttl) as runtime, runtime.watch(Query.namespace(NAMESPACE)) as watch:
            self.watch = watch
            poll = float(getattr(runtime.backend, "poll_interval", 0.0))
            self.out.say("start", f"watching {NAMESPACE}.* on {runtime.backend.describe()} "
                         f"(ttl {self.ttl:g} s); starting {self.count} workers", "cyan",
                         url=runtime.backend.describe(), workers=self.count, ttl=self.ttl, poll_interval=poll)
            self._start_workers()
            self._wait(lambda: all(w.instance_id is not None for w in self.workers), 30, "all workers registered")
            self._show_instances()
            crash = self._stop(self.workers[0], signal.SIGKILL, self.ttl + poll + 5,
                               "no goodbye: its lease is no longer kept alive and expires after the ttl")
            graceful = self._stop(self.workers[1], signal.SIGTERM, 5,
                                  "it closes its Runtime, which removes its registration at once")
            for worker in self.workers[2:]:
                self._stop(worker, signal.SIGTERM, 5, "")
            for worker in self.workers:
                worker.process.wait(timeout=10)
            # The crashed worker's lease file is reaped eventually; revoke it now to leave nothing behind.
            if (crashed := self.workers[0].instance_id) is not None:
                runtime.backend.revoke_lease(crashed)
        return {"crash_detection_s": crash, "graceful_detection_s": graceful, "poll_interval": poll}

    def _start_workers(self) -> None:
        for n in range(self.count):
            name = f"worker-{n + 1}"
            args = [sys.executable, "-m", "waypost.contrib.cli._demo_worker", self.url, name, self.run_id,
                    str(self.ttl), str(BASE_PORT + n + 1)]
            # Own session: a Ctrl-C in the terminal reaches only the demo, which then stops the workers.
            process = subprocess.Popen(args, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                       start_new_session=True)
            self.workers.append(_Worker(name, BASE_PORT + n + 1, process, time.monotonic()))
            self.out.say("spawn", f"started {name} (pid {process.pid})", worker=name, pid=process.pid)

    def _stop(self, worker: _Worker, sig: signal.Signals, timeout: float, why: str) -> float:
        worker.signalled_at = time.monotonic()
        worker.process.send_signal(sig)
        self.out.say("signal", f"{sig.name} {worker.name} (pid {worker.process.pid})" + (f": {why}" if why else ""),
                     "yellow", worker=worker.name, pid=worker.process.pid, signal=sig.name)
        self._wait(lambda: worker.gone_after is not None, timeout, f"{worker.name} gone from the watch")
        assert worker.gone_after is not None
        return worker.gone_after

    # watching ---------------------------------------------------------------------------
    def _wait(self, done: Callable[[], bool], timeout: float, what: str) -> None:
        """Show events as they come until ``done()``; a worker dying on its own is an error."""
        assert self.watch is not None
        deadline = time.monotonic() + timeout
        while not done():
            left = deadline - time.monotonic()
            if left <= 0:
                raise DemoError(f"{what}: not reached within {timeout:.1f} s")
            for worker in self.workers:
                code = worker.process.poll()
                if code is not None and worker.signalled_at is None:
                    raise DemoError(f"{worker.name} exited with code {code} on its own (see its stderr above)")
            event = self.watch.get(timeout=min(left, 0.1))
            if isinstance(event, Added | Removed):
                self._on_event(event)

    def _on_event(self, event: Added[Instance] | Removed[Instance]) -> None:
        instance = event.instance
        metadata = instance.metadata or {}
        worker = next((w for w in self.workers if w.name == metadata.get("worker")), None)
        if metadata.get("run") != self.run_id or worker is None:
            return  # another run's (or someone else's) instance in a shared store
        now = time.monotonic()
        fields = {"worker": worker.name, "instance_id": instance.instance_id, "key": instance.key}
        if isinstance(event, Added):
            worker.instance_id = instance.instance_id
            worker.registered_after = now - worker.spawned_at
            self.out.say("added", f"+ {worker.name} registered {instance.key.removeprefix('v1/instances/')} → "
                         f"{_format.transport_text(instance)}, {worker.registered_after:.2f} s after its start",
                         "green", after_spawn=round(worker.registered_after, 3), **fields)
            return
        worker.gone_after = now - (worker.signalled_at or now)
        cause = "after its signal" if worker.signalled_at else "without being signalled"
        self.out.say("removed", f"- {worker.name} disappeared {worker.gone_after:.3f} s {cause}; "
                     f"serving now: {', '.join(w.name for w in self.workers if w.alive_in_store) or 'nobody'}",
                     "red", after_signal=round(worker.gone_after, 3), **fields)

    def _show_instances(self) -> None:
        assert self.watch is not None
        ours = sorted((i for i in self.watch.instances if (i.metadata or {}).get("run") == self.run_id),
                      key=lambda i: str((i.metadata or {}).get("worker")))
        rows = [(str((i.metadata or {}).get("worker")), str((i.metadata or {}).get("pid")),
                 _format.short_id(i.instance_id), f"{i.namespace}/{i.component}/{i.endpoint}",
                 _format.transport_text(i)) for i in ours]
        self.out.say("instances", f"the watch now sees {len(ours)} instances:",
                     instances=[i.to_dict() for i in ours])
        self.out.block(textwrap.indent(_format.table(("WORKER", "PID", "INSTANCE", "ENDPOINT", "TRANSPORT"), rows),
                                       " " * 9))

    def kill_all(self) -> None:
        for worker in self.workers:
            if worker.process.poll() is None:
                worker.process.kill()
            with contextlib.suppress(subprocess.TimeoutExpired):
                worker.process.wait(timeout=10)


def _check_url(url: str | None) -> None:
    if url is None:
        return
    scheme = parse_url(resolve_url(url)).scheme
    if Capability.CROSS_PROCESS not in backend_class(scheme).capabilities:
        raise click.ClickException(f"the demo runs several processes; the {scheme}:// backend does not "
                                   "work across processes (try file:///tmp/demo)")


@click.command()
@click.option("--url", default=None, metavar="URL", help="discovery store to use (default: a fresh temp directory)")
@click.option("--json", "as_json", is_flag=True, help="JSON lines instead of readable text")
@click.option("--workers", type=click.IntRange(2, 16), default=3, show_default=True, help="worker processes")
@click.option("--ttl", type=click.FloatRange(1.0, 30.0), default=2.0, show_default=True, help="lease ttl in seconds")
def demo(url: str | None, as_json: bool, workers: int, ttl: float) -> None:
    """Watch worker processes register, crash (SIGKILL) and stop (SIGTERM), with timings."""
    _check_url(url)
    out = _Output(as_json)
    scratch = None if url else tempfile.mkdtemp(prefix="waypost-demo-")
    story = Demo(url or f"file://{scratch}", workers, ttl, out)
    try:
        with _exit_on_termination():
            summary = story.run()
    except DemoError as exc:
        out.say("error", f"demo failed: {exc}", "red", message=str(exc))
        raise click.ClickException(str(exc)) from None
    finally:  # also on Ctrl-C or SIGTERM: no worker and no file may outlive the demo
        story.kill_all()
        if scratch is not None:
            shutil.rmtree(scratch, ignore_errors=True)
    _summarize(out, summary, ttl, removed_dir=scratch)


@contextlib.contextmanager
def _exit_on_termination() -> Iterator[None]:
    """Turn SIGTERM and SIGHUP into SystemExit so that cleanup runs (SIGINT already raises)."""

    def leave(signum: int, _frame: object) -> None:
        raise SystemExit(128 + signum)

    previous = {sig: signal.signal(sig, leave) for sig in (signal.SIGTERM, signal.SIGHUP)}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def _summarize(out: _Output, summary: dict[str, float], ttl: float, removed_dir: str | None) -> None:
    crash, graceful, poll = summary["crash_detection_s"], summary["graceful_detection_s"], summary["poll_interval"]
    cleaned = f"removed {removed_dir}" if removed_dir else "left the store as it was"
    bound = f"ttl {ttl:g} s + scan every {poll:g} s" if poll else f"ttl {ttl:g} s, expired by the server"
    out.say("summary", f"done: crash seen after {crash:.2f} s ({bound}), "
            f"graceful stop seen after {graceful * 1000:.0f} ms; {cleaned}; no worker left running", "cyan",
            crash_detection_s=round(crash, 3), graceful_detection_s=round(graceful, 3), ttl=ttl,
            poll_interval=poll, total_s=round(out.elapsed(), 3), removed_dir=removed_dir)
