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
"""A third-party backend: the in-memory store under its own scheme, minus chosen ids."""
from waypost.backends.memory import MemoryBackend
from waypost.core import Capability, hookimpl


class ThirdPartyBackend(MemoryBackend):
    schemes = ("thirdparty",)
    capabilities = frozenset({Capability.SERVER_EXPIRY})


@hookimpl
def waypost_backend_class(scheme):
    return ThirdPartyBackend if scheme == "thirdparty" else None


@hookimpl
def waypost_backend(url, options):
    return ThirdPartyBackend.from_url(url, options) if url.scheme == "thirdparty" else None
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


@pytest.fixture
def third_party(tmp_path: Path) -> Path:
    """A throwaway distribution, installed the way pip lays one out (module + dist-info)."""
    site = tmp_path / "site"
    (site / "wp_thirdparty").mkdir(parents=True)
    (site / "wp_thirdparty" / "__init__.py").write_text(THIRD_PARTY_MODULE)
    dist_info = site / "wp_thirdparty-1.2.3.dist-info"
    dist_info.mkdir()
    (dist_info / "METADATA").write_text("Metadata-Version: 2.1\nName: wp-thirdparty\nVersion: 1.2.3\n")
    (dist_info / "entry_points.txt").write_text("[waypost.backends]\nthirdparty = wp_thirdparty\n")
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


def test_builtin_backends_are_entry_points_too() -> None:
    schemes = {entry.scheme: entry for entry in installed_backends()}
    assert schemes["memory"].value == "waypost.backends.memory"
    assert schemes["memory"].distribution == "waypost"


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
