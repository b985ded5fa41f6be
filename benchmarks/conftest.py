"""pytest configuration of the benchmark harness (not part of the default test run).

Run through ``benchmarks/run.py`` (which also writes the report), or directly::

    python -m pytest benchmarks --benchmark-json=out.json [--quick] [--bench-backends=memory,etcd]

Servers are the tests' own (``tests/servers/``): real etcd, Redis and Consul
(``session_ttl_min = "1s"``, Prometheus telemetry on) on free 127.0.0.1 ports in
temp dirs, started once per session.
"""

from __future__ import annotations

import contextlib
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

import pytest
from _common import BENCH_DIR, METRICS, REPO
from _raw import RAW_STORES, RawStore
from _tooz import tooz_error, tooz_url

if str(REPO / "tests") not in sys.path:
    sys.path.insert(0, str(REPO / "tests"))

import servers

ALL_BACKENDS = ("memory", "file", "etcd", "redis", "consul")
TOOZ_CONSUL_ENV: dict[str, str] = {}  # versions of the separate tooz 8.1 environment, when used
CROSS_PROCESS = {"file", "etcd", "redis", "consul"}
# Consul: short session TTLs for ttl = 2 s, and cumulative HTTP request counters (keepalive cost).
CONSUL_HCL = 'telemetry {\n  prometheus_retention_time = "24h"\n  disable_hostname = true\n}'


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("waypost-bench")
    group.addoption("--quick", action="store_true", default=False,
                    help="smoke mode: few rounds, small N, short windows (CI)")
    group.addoption("--bench-backends", default=",".join(ALL_BACKENDS),
                    help="comma-separated backends to measure (default: all)")
    group.addoption("--metrics-json", default=None,
                    help="also write the harness's own measurements (and environment) to this JSON file")
    group.addoption("--no-tooz", action="store_true", default=False, help="skip the tooz comparison")
    group.addoption("--big-list-n", type=int, default=100_000,
                    help="N of the big list (full mode, etcd and Redis; default 100 000; smaller for dev runs)")
    group.addoption("--tooz-consul-python", default=None,
                    help="python of a virtualenv with tooz 8.1 + python-consul2 (tooz 9 has no Consul driver); "
                         "run.py builds one")


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "bench_backend: measured per backend")


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "backend" in metafunc.fixturenames:
        wanted = [b.strip() for b in metafunc.config.getoption("--bench-backends").split(",") if b.strip()]
        metafunc.parametrize("backend", [b for b in ALL_BACKENDS if b in wanted])


# ---------------------------------------------------------------------------
# mode
# ---------------------------------------------------------------------------

@dataclass(frozen=True)
class Mode:
    quick: bool
    big_n: int = 100_000

    def rounds(self, full: int, quick: int = 3) -> int:
        return quick if self.quick else full

    @property
    def list_sizes(self) -> tuple[int, ...]:
        return (10, 1000) if self.quick else (10, 1000, 10000)

    @property
    def big_list_backends(self) -> tuple[str, ...]:
        """Where list N = 100 000 is measured (full mode only: populating it takes ~1 min on etcd)."""
        return () if self.quick else ("etcd", "redis")


@pytest.fixture(scope="session")
def mode(request: pytest.FixtureRequest) -> Mode:
    return Mode(quick=bool(request.config.getoption("--quick")), big_n=int(request.config.getoption("--big-list-n")))


# ---------------------------------------------------------------------------
# targets: a backend under test with its server, raw client and tooz URL
# ---------------------------------------------------------------------------

@dataclass
class Target:
    name: str
    url: str
    raw_options: dict[str, Any] = field(default_factory=dict)
    server: Any = None
    endpoint: str | None = None
    tooz_url: str | None = None
    tooz_skip: str | None = None
    tooz_python: str | None = None  # tooz runs in another interpreter (Consul: tooz 8.1, _tooz.RemoteToozMember)
    _variants: dict[str, Target] = field(default_factory=dict, repr=False)

    @property
    def cross_process(self) -> bool:
        return self.name in CROSS_PROCESS

    def variant(self, tag: str) -> Target:
        """The same backend on a separate store where that matters (file: its own directory,
        so that a big directory does not slow down unrelated measurements)."""
        if self.name != "file":
            return self
        if tag not in self._variants:
            root = tempfile.mkdtemp(prefix=f"waypost-bench-file-{tag}-")
            self._variants[tag] = Target(self.name, f"file://{root}", raw_options={"root": root},
                                         tooz_url=tooz_url("file", os.path.join(root, "tooz"))
                                         if self.tooz_url else None, tooz_skip=self.tooz_skip)
        return self._variants[tag]

    def raw(self) -> RawStore:
        cls = RAW_STORES.get(self.name)
        if cls is None:
            pytest.skip(f"no raw baseline for {self.name} yet")
        return cls(self.url, **self.raw_options)

    def connect(self, **options: Any) -> Any:
        import waypost

        return waypost.connect(self.url, **options)


def _backend_missing(name: str) -> str | None:
    """Why the ``name://`` backend cannot be measured here (it is found through the ``waypost.backends``
    entry points, as ``connect()`` finds it), or ``None``."""
    from waypost.core._plugins import backend_class, require_installed

    try:
        require_installed(backend_class(name), name)
    except Exception as exc:  # BackendNotInstalled, or an entry point that does not load
        return f"{type(exc).__name__}: {exc}"
    return None


def _smoke(target: Target) -> None:
    """Prove the backend works end to end before measuring it."""
    import waypost

    with waypost.connect(target.url, ttl=5) as rt:
        ep = rt.namespace("benchsmoke").component("c").endpoint("e")
        reg = ep.register(transport=waypost.TransportType.tcp("127.0.0.1:1"))
        if len(ep.list_instances()) != 1:
            raise RuntimeError("a registered endpoint was not listed")
        reg.unregister()


class Targets:
    def __init__(self, config: pytest.Config) -> None:
        self.config = config
        self._made: dict[str, Target | str] = {}
        self._cleanup: list[Any] = []

    def get(self, name: str) -> Target:
        if name not in self._made:
            try:
                self._made[name] = self._make(name)
            except pytest.skip.Exception as exc:
                self._made[name] = str(exc.msg)
            except Exception as exc:
                self._made[name] = f"{name} backend is broken right now: {type(exc).__name__}: {exc}"
            made = self._made[name]
            if isinstance(made, str):
                METRICS.note(f"{name}: not measured — {made}")
        made = self._made[name]
        if isinstance(made, str):
            pytest.skip(made)
        return made

    def _make(self, name: str) -> Target:
        missing = _backend_missing(name)
        if missing:
            pytest.skip(missing)
        if name == "memory":
            target = Target(name, f"memory://bench-{uuid.uuid4().hex[:8]}",
                            tooz_skip="tooz has no in-process driver")
        elif name == "file":
            root = tempfile.mkdtemp(prefix="waypost-bench-file-")
            self._cleanup.append(lambda: shutil.rmtree(root, ignore_errors=True))
            target = Target(name, f"file://{root}", raw_options={"root": root})
            self._tooz(target, tooz_url("file", os.path.join(root, "tooz")))
        elif name in ("etcd", "redis"):
            cls = servers.EtcdServer if name == "etcd" else servers.RedisServer
            try:
                server = cls()
            except servers.ServerBinaryMissing as exc:
                pytest.skip(str(exc))
            self._cleanup.append(server.close)
            server.start()
            target = Target(name, server.url, server=server, endpoint=server.endpoint)
            self._tooz(target, tooz_url(name, server.endpoint))
        elif name == "consul":
            try:
                server = servers.ConsulServer(session_ttl_min="1s", extra_hcl=CONSUL_HCL)
            except servers.ServerBinaryMissing as exc:
                pytest.skip(str(exc))
            self._cleanup.append(server.close)
            server.start()
            target = Target(name, server.url, server=server, endpoint=server.endpoint)
            self._tooz(target, tooz_url(name, server.endpoint))
        else:  # pragma: no cover
            raise ValueError(name)
        _smoke(target)
        return target

    def _tooz(self, target: Target, url: str | None) -> None:
        if self.config.getoption("--no-tooz"):
            target.tooz_skip = "--no-tooz"
            return
        if target.name == "consul":
            self._tooz_consul(target, url)
            return
        err = tooz_error(target.name)
        if err:
            target.tooz_skip = f"tooz does not import here: {err}"
            METRICS.note(f"tooz not measured: {err}")
        else:
            target.tooz_url = url

    def _tooz_consul(self, target: Target, url: str | None) -> None:
        """tooz 9 has no Consul driver: tooz 8.1 + python-consul2 in another virtualenv, if there is one."""
        python = self.config.getoption("--tooz-consul-python")
        if not python:
            target.tooz_skip = "no tooz 8.1 environment (--tooz-consul-python; run.py builds one)"
            METRICS.note(f"consul: tooz not measured — {target.tooz_skip}")
            return
        check = subprocess.run([python, "-W", "ignore", "-c",
                                "import tooz, tooz.drivers.consul, consul; from importlib import metadata; "
                                "print(metadata.version('tooz'), metadata.version('python-consul2'))"],
                               capture_output=True, text=True, timeout=60, check=False)
        if check.returncode != 0:
            target.tooz_skip = f"the tooz 8.1 environment does not work: {check.stderr.strip()[-300:]}"
            METRICS.note(f"consul: tooz not measured — {target.tooz_skip}")
            return
        target.tooz_url, target.tooz_python = url, python
        tooz_version, consul2_version = check.stdout.split()
        TOOZ_CONSUL_ENV.update({"python": python, "tooz": tooz_version, "python-consul2": consul2_version})

    def close(self) -> None:
        for made in self._made.values():
            if isinstance(made, Target):
                for variant in made._variants.values():
                    shutil.rmtree(variant.raw_options["root"], ignore_errors=True)
        for fn in reversed(self._cleanup):
            with contextlib.suppress(Exception):
                fn()


@pytest.fixture(scope="session")
def targets(request: pytest.FixtureRequest) -> Iterator[Targets]:
    t = Targets(request.config)
    yield t
    t.close()


@pytest.fixture
def target(targets: Targets, backend: str) -> Target:
    return targets.get(backend)


# ---------------------------------------------------------------------------
# environment + custom metrics into the pytest-benchmark JSON
# ---------------------------------------------------------------------------

def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _version(dist: str) -> str:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return "not installed"


def _server_version(binary: str, args: list[str], marker: str) -> str:
    try:
        path = servers.find_binary(binary)
        out = subprocess.run([path, *args], capture_output=True, text=True, timeout=20, check=False).stdout
    except Exception as exc:
        return f"unavailable ({exc.__class__.__name__})"
    for line in out.splitlines():
        if marker in line:
            return line.strip()
    return out.strip().splitlines()[0] if out.strip() else "unknown"


def _code_state() -> str:
    """The code measured: ``WAYPOST_BENCH_CODE`` if set (e.g. a ``git archive`` snapshot), else git's view."""
    if os.environ.get("WAYPOST_BENCH_CODE"):
        return os.environ["WAYPOST_BENCH_CODE"]
    try:
        head = subprocess.run(["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"], capture_output=True,
                              text=True, timeout=20, check=True).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(REPO), "status", "--porcelain", "--", "src"], capture_output=True,
                               text=True, timeout=20, check=True).stdout.split("\n")
    except (OSError, subprocess.SubprocessError):
        return "unknown (no git)"
    changed = sorted(line[3:] for line in dirty if line.strip())
    return f"git {head}" + (f" + uncommitted changes in {', '.join(changed)}" if changed else " (clean src/)")


def environment() -> dict[str, Any]:
    affinity = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return {
        "cpu": _cpu_model(),
        "cores": os.cpu_count(),
        "usable_cores": affinity,
        "machine": platform.machine(),
        "kernel": platform.release(),
        "python": sys.version.split()[0],
        "packages": {d: _version(d) for d in (
            "waypost", "pluggy", "etcd-sdk-python", "grpcio", "protobuf", "redis", "hiredis",
            "msgspec", "py-consul", "tooz", "etcd3gw", "pytest-benchmark")},
        "code": _code_state(),
        "load": {"start": _LOAD.get("start"), "end": [round(x, 2) for x in os.getloadavg()]},
        "consul_backend": _backend_missing("consul") is None,
        "tooz_consul": dict(TOOZ_CONSUL_ENV),
        "servers": {
            "etcd": _server_version("etcd", ["--version"], "etcd Version"),
            "redis": _server_version("redis-server", ["--version"], "Redis server"),
            "consul": _server_version("consul", ["version"], "Consul v"),
        },
    }


def _harness_json(config: pytest.Config) -> dict[str, Any]:
    env = environment()
    env["mode"] = "quick" if config.getoption("--quick") else "full"
    return {"waypost_env": env, "waypost_metrics": [m.as_json() for m in METRICS.metrics],
            "waypost_notes": list(METRICS.notes)}


def pytest_benchmark_update_json(config: pytest.Config, benchmarks: Any, output_json: dict[str, Any]) -> None:
    output_json.update(_harness_json(config))


def pytest_unconfigure(config: pytest.Config) -> None:
    path = config.getoption("--metrics-json", None)
    if path:
        Path(path).write_text(json.dumps(_harness_json(config), indent=2))


_LOAD: dict[str, list[float]] = {}  # the machine's load average when the run started (and ended)


def pytest_sessionstart(session: pytest.Session) -> None:
    _LOAD["start"] = [round(x, 2) for x in os.getloadavg()]
    os.environ.pop("WAYPOST_URL", None)
    os.environ["PYTHONPATH"] = os.pathsep.join(
        p for p in (str(BENCH_DIR), str(REPO / "tests"), os.environ.get("PYTHONPATH", "")) if p)
