"""Real etcd, Redis and Consul servers for tests.

Each server runs in its own temp dir on free 127.0.0.1 ports (never a
default port, never another address).  Binaries come from
``$WAYPOST_SERVERS_DIR/bin`` (default ``<repo>/.servers/bin``), installed by
``scripts/install-servers``.

Only the standard library and ``trustme`` (for :func:`make_tls`) are used;
``pytest`` is needed for the fixtures (``servers.fixtures``, imported by
tests/conftest.py, not by this package).

Typical use::

    with EtcdServer() as etcd:
        connect(etcd.url)           # "etcd://127.0.0.1:PORT"
        etcd.pause(); ...; etcd.resume()
        etcd.restart()              # same port, same data dir

Readiness is always a real protocol check polled until a deadline (etcd
``/health``, Redis ``PING``, Consul ``/v1/status/leader`` + node health).

Modules:

- ``_process``: binaries, free ports, child processes (signals, pause/resume,
  cleanup at exit), readiness polling, the common server base class;
- ``tls``: :class:`TLSFiles` and :func:`make_tls` (certificates made on the fly);
- ``etcd``: :class:`EtcdServer`, :class:`EtcdCluster`;
- ``redis``: :class:`RedisServer` and its raw RESP helpers;
- ``redis_ha``: :class:`RedisSentinelSet` (primary + replica + 3 Sentinels) and
  :class:`RedisClusterSet` (3 primaries + 3 replicas), with fault hooks on the primary;
- ``consul``: :class:`ConsulServer`;
- ``fixtures``: the pytest fixtures, with the one ``server_factory``.
"""

from __future__ import annotations

# `_SETPRIV` and `_resp_command` are private, but test_servers.py checks that servers die
# with their parent and speaks raw RESP: re-export them explicitly.
from ._process import _SETPRIV as _SETPRIV
from ._process import (
    DEFAULT_START_TIMEOUT,
    HOST,
    REPO_ROOT,
    ServerBinaryMissing,
    ServerError,
    find_binary,
    free_port,
    servers_dir,
)
from .consul import ConsulServer
from .etcd import EtcdCluster, EtcdServer
from .redis import RedisServer
from .redis import _resp_command as _resp_command
from .redis_ha import RedisClusterSet, RedisSentinelSet
from .tls import TLSFiles, make_tls

__all__ = [
    "DEFAULT_START_TIMEOUT",
    "HOST",
    "REPO_ROOT",
    "ConsulServer",
    "EtcdCluster",
    "EtcdServer",
    "RedisClusterSet",
    "RedisSentinelSet",
    "RedisServer",
    "ServerBinaryMissing",
    "ServerError",
    "TLSFiles",
    "find_binary",
    "free_port",
    "make_tls",
    "servers_dir",
]
