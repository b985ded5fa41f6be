"""Shared test setup: real servers (tests/servers.py) and hygiene checks."""

from __future__ import annotations

import sys
from pathlib import Path

# tests/servers.py starts real etcd/Redis/Consul servers; make it importable from every test folder.
sys.path.insert(0, str(Path(__file__).parent))

from servers import (
    consul_factory,
    consul_server,
    etcd_cluster_factory,
    etcd_factory,
    etcd_server,
    redis_factory,
    redis_server,
    tls_files,
)

__all__ = [
    "consul_factory",
    "consul_server",
    "etcd_cluster_factory",
    "etcd_factory",
    "etcd_server",
    "redis_factory",
    "redis_server",
    "tls_files",
]
