"""Backends are plugins found by entry point, ours exactly like a third party's."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

import waypost
from waypost.core import installed_backends

THIRD_PARTY_MODULE = '''
"""A third-party backend: the in-memory store under its own scheme, minus chosen ids. One class."""
from waypost.backends.memory import MemoryBackend
from waypost.core import Capability


class ThirdPartyBackend(MemoryBackend):
    schemes = ("thirdparty",)
    capabilities = frozenset({Capability.SERVER_EXPIRY})
    distribution = "wp-thirdparty"
'''

THIRD_PARTY_TESTS = '''
import uuid
import pytest
from waypost.contrib.conformance import BackendConformance, Harness


class TestThirdParty(BackendConformance):
    @pytest.fixture
    def harness(self):
        return Harness(url=f"thirdparty://{uuid.uuid4().hex}", ttl=1.0, expiry_bound=0.2)
'''


def make_distribution(root: Path, name: str, version: str, modules: dict[str, str], entry_points: str) -> Path:
    """A throwaway distribution in ``root/site``, laid out the way pip installs one (modules + dist-info)."""
    site = root / "site"
    for module, source in modules.items():
        (site / module).mkdir(parents=True)
        (site / module / "__init__.py").write_text(source)
    dist_info = site / f"{name.replace('-', '_')}-{version}.dist-info"
    dist_info.mkdir()
    (dist_info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n")
    (dist_info / "entry_points.txt").write_text(entry_points)
    return root


@pytest.fixture
def third_party(tmp_path: Path) -> Path:
    make_distribution(tmp_path, "wp-thirdparty", "1.2.3", {"wp_thirdparty": THIRD_PARTY_MODULE},
                      "[waypost.backends]\nthirdparty = wp_thirdparty:ThirdPartyBackend\n")
    (tmp_path / "test_thirdparty.py").write_text(THIRD_PARTY_TESTS)
    return tmp_path


def _run(args: list[str], cwd: Path) -> subprocess.CompletedProcess[str]:
    env_path = str(cwd / "site")
    return subprocess.run([sys.executable, *args], cwd=cwd, capture_output=True, text=True, timeout=300, check=False,
                          env={**__import__("os").environ, "PYTHONPATH": env_path})


def test_third_party_plugin_is_found_by_entry_point(third_party: Path) -> None:
    code = textwrap.dedent("""
        import waypost
        from waypost.core import installed_backends
        entry = [e for e in installed_backends() if e.scheme == "thirdparty"][0]
        print(entry.distribution, entry.version)
        with waypost.connect("thirdparty://x") as rt:
            rt.namespace("n").component("c").endpoint("e").register(waypost.TransportType.tcp("h:1"))
            print(type(rt.backend).__name__, len(rt.list_instances()))
    """)
    result = _run(["-c", code], third_party)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split("\n")[:2] == ["wp-thirdparty 1.2.3", "ThirdPartyBackend 1"]


def test_third_party_plugin_passes_the_conformance_suite_it_declares(third_party: Path) -> None:
    result = _run(["-m", "pytest", "-q", "-rs", "-p", "no:cacheprovider", "test_thirdparty.py"], third_party)
    summary = result.stdout.strip().splitlines()[-1]
    assert result.returncode == 0, result.stdout[-3000:]
    assert " passed" in summary and "failed" not in summary
    # It declares only server-expiry: every skip names a capability it lacks, and nothing else skips.
    skips = [line for line in result.stdout.splitlines() if line.startswith("SKIPPED")]
    assert skips and all("backend declares no '" in line for line in skips), skips
    assert any("'chosen-instance-id'" in line for line in skips)


def test_builtin_backends_are_entry_points_naming_their_classes_too() -> None:
    schemes = {entry.scheme: entry for entry in installed_backends()}
    assert schemes["memory"].value == "waypost.backends.memory:MemoryBackend"
    assert schemes["memory"].distribution == "waypost"
    for entry in schemes.values():
        cls = waypost.core.backend_class(entry.scheme)
        assert entry.scheme in cls.schemes and entry.value == f"{cls.__module__}:{cls.__name__}"


def test_an_entry_point_that_names_no_backend_class_is_a_clear_error(tmp_path: Path) -> None:
    make_distribution(tmp_path, "wp-broken", "0.1", {"wp_broken": "class NotABackend:\n    pass\n"},
                      "[waypost.backends]\nbroken = wp_broken:NotABackend\ngone = wp_broken:Missing\n")
    code = textwrap.dedent("""
        import waypost
        for url in ("broken://x", "gone://x"):
            try:
                waypost.connect(url)
            except waypost.BackendNotInstalled as exc:
                print(exc)
    """)
    result = _run(["-c", code], tmp_path)
    assert result.returncode == 0, result.stderr
    first, second = result.stdout.strip().splitlines()
    assert "does not name a waypost.core.Backend class" in first and "wp-broken" in first
    assert "could not be imported" in second


def test_register_backend_serves_a_scheme_in_process() -> None:
    from waypost.backends.memory import MemoryBackend

    class InProcess(MemoryBackend):
        schemes = ("inprocess-test",)

    waypost.core.register_backend(InProcess)
    with waypost.connect("inprocess-test://x") as rt:
        assert type(rt.backend) is InProcess
    with pytest.raises(TypeError):
        waypost.core.register_backend(object)  # type: ignore[arg-type]


class _Recorder:
    def __init__(self) -> None:
        self.seen: list[str] = []

    @waypost.hookimpl
    def waypost_on_registered(self, runtime: waypost.Runtime, instance: waypost.Instance) -> None:
        self.seen.append(f"+{instance.endpoint}")

    @waypost.hookimpl
    def waypost_on_unregistered(self, runtime: waypost.Runtime, instance: waypost.Instance) -> None:
        self.seen.append(f"-{instance.endpoint}")
        raise RuntimeError("a broken observer must not break waypost")


def test_observer_hooks_fire_and_a_raising_observer_is_contained() -> None:
    recorder = _Recorder()
    waypost.register_plugin(recorder)
    try:
        with waypost.connect("memory://hooks") as rt:
            reg = rt.namespace("n").component("c").endpoint("e").register(waypost.TransportType.tcp("h:1"))
            reg.unregister()
            rt.namespace("n").component("c").endpoint("f").register(waypost.TransportType.tcp("h:1"))
        assert recorder.seen == ["+e", "-e", "+f", "-f"]
    finally:
        waypost.core.plugin_manager().unregister(recorder)


EXAMPLE = Path(__file__).parent.parent / "docs" / "examples" / "sqlite_backend.py"
EXAMPLE_TESTS = '''
import pytest
from waypost.contrib.conformance import BackendConformance, Harness


class TestSQLiteExample(BackendConformance):
    @pytest.fixture
    def harness(self, tmp_path):
        return Harness(url=f"sqlite://{tmp_path}/discovery.db", ttl=1.0, expiry_bound=1.0,
                       bad_urls={"sqlite://host/x.db": "database file", "sqlite://": "database file"})
'''


def test_the_guides_sqlite_backend_is_small_and_passes_the_conformance_suite(tmp_path: Path) -> None:
    """docs/writing-a-backend.md: a complete cross-process backend in at most 200 lines, built on the kit."""
    source = EXAMPLE.read_text()
    assert len(source.splitlines()) <= 200
    make_distribution(tmp_path, "waypost-sqlite-example", "0.1", {"waypost_sqlite_example": source},
                      "[waypost.backends]\nsqlite = waypost_sqlite_example:SQLiteBackend\n")
    (tmp_path / "test_sqlite_example.py").write_text(EXAMPLE_TESTS)
    result = _run(["-m", "pytest", "-q", "-rs", "-p", "no:cacheprovider", "test_sqlite_example.py"], tmp_path)
    assert result.returncode == 0, result.stdout[-3000:]
    skips = [line for line in result.stdout.splitlines() if line.startswith("SKIPPED")]
    assert all("backend declares no '" in line for line in skips), skips
