"""What a backend's tests hand to the conformance suite."""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol, TypeVar

import waypost
from waypost.core import Backend, Capability, backend_class, parse_url

__all__ = ["Harness", "ServerControl", "Worker", "wait_until"]

T = TypeVar("T")


class ServerControl(Protocol):
    """Fault hooks on the real server behind a backend (the suite's seam for server faults).

    ``kill`` is SIGKILL, ``restart`` starts it again (with its data unless the
    harness says ``restart_loses_data``), ``pause``/``resume`` are
    SIGSTOP/SIGCONT. Faults of the client side go through
    :mod:`waypost.core.faults`.
    """

    def kill(self) -> None: ...
    def restart(self) -> None: ...
    def pause(self) -> None: ...
    def resume(self) -> None: ...


@dataclass
class Harness:
    """How the suite reaches a backend.

    :param url: discovery URL of a store the suite may write to (tests use
        unique namespaces, so one store can serve the whole suite).
    :param options: extra ``waypost.connect`` keyword arguments (TLS files…).
    :param ttl: lease ttl the suite uses (≥ the backend's ``min_ttl``).
    :param expiry_bound: how long after ``ttl`` a crashed Runtime may linger.
    :param server: fault hooks of the real server, if any.
    :param restart_loses_data: whether ``server.restart()`` wipes the store.
    :param unreachable_url: a URL of the same scheme where nothing listens.
    :param interrupt_bound: seconds beyond ``max(ttl, 1)`` within which a watch must report a silent or
        dead store (the backend's documented bound).
    :param prefixes: two values of the backend's ``prefix`` option that the store lets the suite use
        (an ACL may limit the keys); default: made up for each test.
    :param raw_put: writes a raw key (bytes, relative to the backend's root, and maybe not UTF-8) and
        value to the store, bypassing waypost; ``None`` writes through the backend's ``create``. The
        hostile-store tests plant what other writers could leave there with it.
    :param raw_get: reads a raw key back (``None`` if absent); ``None`` reads through ``list``.
    :param bad_urls: URLs of this backend's scheme that ``connect`` must refuse with a
        :class:`~waypost.ConfigError`, each mapped to a fragment of the message (what was wrong).
    """

    url: str
    options: Mapping[str, Any] = field(default_factory=dict)
    ttl: float = 1.0
    expiry_bound: float = 1.0
    server: ServerControl | None = None
    restart_loses_data: bool = True
    unreachable_url: str | None = None
    interrupt_bound: float = 2.0
    bad_urls: Mapping[str, str] = field(default_factory=dict)
    prefixes: tuple[str, str] | None = None
    raw_put: Callable[[bytes, bytes], None] | None = None
    raw_get: Callable[[bytes], bytes | None] | None = None
    _runtimes: list[waypost.Runtime] = field(default_factory=list, repr=False)
    _plants: waypost.Runtime | None = field(default=None, repr=False)
    _workers: list[Worker] = field(default_factory=list, repr=False)

    @property
    def backend_class(self) -> type[Backend]:
        return backend_class(parse_url(self.url).scheme)

    @property
    def capabilities(self) -> frozenset[Capability]:
        return self.backend_class.capabilities

    def connect(self, **overrides: Any) -> waypost.Runtime:
        """A Runtime on the backend, closed when the test ends."""
        options = {"ttl": self.ttl, **self.options, **overrides}
        runtime = waypost.connect(self.url, **options)
        self._runtimes.append(runtime)
        return runtime

    def plant(self, key: bytes, value: bytes) -> None:
        """Put ``key`` = ``value`` into the store as another writer would (see ``raw_put``)."""
        if self.raw_put is not None:
            self.raw_put(key, value)
            return
        writer = self._planter()
        writer.backend.replace(writer.lease, key.decode(), value)

    def peek(self, key: bytes) -> bytes | None:
        """What the store holds at ``key`` (see ``raw_get``)."""
        if self.raw_get is not None:
            return self.raw_get(key)
        text = key.decode()
        return dict(self._planter().backend.list(text)).get(text)

    def _planter(self) -> waypost.Runtime:
        if self._plants is None or self._plants.closed:
            self._plants = self.connect(ttl=max(self.ttl * 60, 60.0))  # long-lived: plants must not expire
        return self._plants

    def spawn_worker(self, endpoints: list[str]) -> Worker:
        """A Runtime in another process that registers ``endpoints`` (``ns/comp/ep``)."""
        worker = Worker.start(self.url, {"ttl": self.ttl, **self.options}, endpoints)
        self._workers.append(worker)
        return worker

    def cleanup(self) -> None:
        for worker in self._workers:
            worker.kill()
        for runtime in self._runtimes:
            with contextlib.suppress(waypost.WaypostError):  # the store may be down on purpose
                runtime.close()


@dataclass
class Worker:
    """A child process running ``python -m waypost.contrib.conformance._worker``."""

    process: subprocess.Popen[str]
    instance_id: int

    @classmethod
    def start(cls, url: str, options: Mapping[str, Any], endpoints: list[str], timeout: float = 30.0) -> Worker:
        args = [sys.executable, "-m", "waypost.contrib.conformance._worker", url, json.dumps(dict(options)),
                *endpoints]
        process = subprocess.Popen(args, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
                                   env={**os.environ, "PYTHONUNBUFFERED": "1"})
        line = _readline_with_timeout(process, timeout)
        if not line:
            process.kill()
            raise RuntimeError(f"worker did not start within {timeout} s (exit code {process.poll()})")
        return cls(process, int(json.loads(line)["instance_id"]))

    def kill(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
        self.process.wait()
        for stream in (self.process.stdin, self.process.stdout):
            if stream is not None:
                stream.close()

    def stop(self) -> None:
        """Graceful: closing stdin makes the worker close its Runtime."""
        if self.process.stdin is not None:
            self.process.stdin.close()
        self.process.wait(timeout=30)


def _readline_with_timeout(process: subprocess.Popen[str], timeout: float) -> str:
    result: list[str] = []
    reader = threading.Thread(target=lambda: result.append(process.stdout.readline()  # type: ignore[union-attr]
                                                           ), daemon=True)
    reader.start()
    reader.join(timeout)
    return result[0] if result else ""


def wait_until(condition: Callable[[], T], timeout: float, what: str = "condition", interval: float = 0.02) -> T:
    """Poll ``condition`` until it returns something truthy; fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() >= deadline:
            raise AssertionError(f"{what} not reached within {timeout:.1f} s (last value: {value!r})")
        time.sleep(interval)
