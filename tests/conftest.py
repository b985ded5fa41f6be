"""Shared test setup: real servers (the tests/servers/ package) and hygiene checks."""

from __future__ import annotations

import sys
from pathlib import Path

# tests/servers/ starts real etcd/Redis/Consul servers; make it importable (as `servers`) from every test folder.
sys.path.insert(0, str(Path(__file__).parent))

from servers.fixtures import (
    consul_server,
    etcd_server,
    redis_server,
    server_factory,
    tls_files,
)

__all__ = [
    "consul_server",
    "etcd_server",
    "redis_server",
    "server_factory",
    "tls_files",
]
