"""Shared test setup: real servers (the tests/servers/ package) and hygiene checks."""

from __future__ import annotations

import sys
from pathlib import Path

# tests/servers/ starts real etcd/Redis/Consul servers; make it importable (as `servers`) from every test folder.
sys.path.insert(0, str(Path(__file__).parent))

from hypothesis import settings

from servers.fixtures import (
    consul_server,
    etcd_server,
    lease_losses,
    redis_server,
    server_factory,
    tls_files,
)

# Property tests check rules, not speed: on a loaded 2-core CI machine a 200 ms per-example deadline
# fails good code (timing goals live in benchmarks/).
settings.register_profile("waypost", deadline=None)
settings.load_profile("waypost")

__all__ = [
    "consul_server",
    "etcd_server",
    "lease_losses",
    "redis_server",
    "server_factory",
    "tls_files",
]
