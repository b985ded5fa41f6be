"""One public namespace, kept exact; a light import."""

from __future__ import annotations

import inspect
import json
import subprocess
import sys

import waypost
import waypost.core

EXPECTED_PUBLIC = {
    "Added", "AlreadyRegistered", "AuthenticationError", "BackendNotInstalled", "BackendUnavailable", "Capability",
    "Client", "Closed", "CodecError", "Component", "ConfigError", "DeviceType", "Endpoint", "EndpointId", "Event",
    "EventChannel", "EventSource", "Instance", "Interrupted", "InvalidName", "LeaseLost", "ModelCard", "Namespace",
    "NoInstances", "NotFound", "Query", "RecordEvent", "Registration", "Removed", "RequestPlaneCodec", "Resynced",
    "Runtime", "TransportType", "Updated", "Watch", "WaypostError", "__version__", "aio", "connect", "hookimpl",
    "register_plugin", "unregister_plugin",
}


def test_all_is_exact_and_sorted() -> None:
    assert set(waypost.__all__) == EXPECTED_PUBLIC
    assert waypost.__all__ == sorted(waypost.__all__)
    assert waypost.core.__all__ == sorted(waypost.core.__all__)


def test_every_public_name_resolves_and_lives_in_the_package() -> None:
    for name in waypost.__all__:
        obj = getattr(waypost, name)
        if isinstance(obj, type) or inspect.isfunction(obj):  # not the type aliases (Event, RecordEvent)
            assert obj.__module__.startswith("waypost"), (name, obj.__module__)


def test_public_names_are_not_reachable_through_private_spellings_only() -> None:
    public_modules = {n for n in dir(waypost) if not n.startswith("_")} - set(waypost.__all__)
    assert public_modules <= {"core", "contrib", "backends", "annotations"}


def test_exception_tree() -> None:
    assert issubclass(waypost.InvalidName, waypost.ConfigError)
    assert issubclass(waypost.ConfigError, ValueError)
    assert issubclass(waypost.BackendNotInstalled, waypost.BackendUnavailable)
    for name in ("BackendUnavailable", "LeaseLost", "AlreadyRegistered", "NotFound", "Closed", "CodecError"):
        assert issubclass(getattr(waypost, name), waypost.WaypostError)


def test_import_loads_no_client_library_and_no_backend() -> None:
    # The import *time* is a benchmark figure (benchmarks/), not a unit-test assertion.
    code = (
        "import sys, json; import waypost;"
        "heavy = [m for m in sys.modules if m.split('.')[0] in "
        "('pyetcd', 'redis', 'consul', 'grpc', 'google', 'click', 'watchfiles', 'prometheus_client')];"
        "backends = [m for m in sys.modules if m.startswith('waypost.backends.')];"
        "print(json.dumps([heavy, backends]))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert json.loads(out) == [[], []]


def test_connecting_imports_only_the_scheme_in_use() -> None:
    code = ("import sys, waypost; waypost.connect('memory://x').close();"
            "print(sorted(m for m in sys.modules if m.startswith('waypost.backends.')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "['waypost.backends.memory']"
