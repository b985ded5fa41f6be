"""pytest fixtures: ``tls_files``, the session-wide ``etcd_server`` / ``redis_server`` / ``consul_server``,
``server_factory`` for servers of a test's own, and ``lease_losses`` (tests/conftest.py imports them)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest

import waypost

from .consul import ConsulServer
from .etcd import EtcdCluster, EtcdServer
from .redis import RedisServer
from .redis_ha import RedisClusterSet, RedisSentinelSet
from .tls import TLSFiles, make_tls

# What ``server_factory`` makes, by kind.
SERVER_KINDS: dict[str, Callable[..., Any]] = {
    cls.kind: cls for cls in (EtcdServer, EtcdCluster, RedisServer, RedisSentinelSet, RedisClusterSet, ConsulServer)
}


class LeaseLosses:
    """Observer plugin: every ``waypost_on_lease_lost`` call, as ``(old id, new id, reason)``."""

    def __init__(self) -> None:
        self.calls: list[tuple[int, int | None, str]] = []

    @property
    def reasons(self) -> list[str]:
        return [reason for _, _, reason in self.calls]

    @waypost.hookimpl
    def waypost_on_lease_lost(self, runtime: Any, old_instance_id: int, new_instance_id: int | None,
                              reason: str) -> None:
        self.calls.append((old_instance_id, new_instance_id, reason))


@pytest.fixture
def lease_losses() -> Iterator[LeaseLosses]:
    """A :class:`LeaseLosses` registered as a plugin for the test."""
    plugin = LeaseLosses()
    waypost.register_plugin(plugin)
    yield plugin
    waypost.unregister_plugin(plugin)


@pytest.fixture
def tls_files(tmp_path) -> TLSFiles:
    """A fresh CA + server/client certs (``trustme`` is a dev dependency)."""
    return make_tls(tmp_path / "tls")


@pytest.fixture(scope="session")
def etcd_server():
    """One etcd 3.5 shared by the session (use unique key prefixes)."""
    with EtcdServer() as s:
        yield s


@pytest.fixture(scope="session")
def redis_server():
    """One Redis shared by the session (use unique key prefixes)."""
    with RedisServer() as s:
        yield s


@pytest.fixture(scope="session")
def consul_server():
    """One Consul dev agent shared by the session (session_ttl_min 1s)."""
    with ConsulServer(session_ttl_min="1s") as s:
        yield s


@pytest.fixture
def server_factory() -> Iterator[Callable[..., Any]]:
    """``make(kind, *args, **kwargs)`` -> a started server of the test's own,
    closed (last made first) at the end of the test. ``kind`` and the arguments:

    - ``"etcd"``: :class:`EtcdServer` ``(version="3.5", tls=None, client_cert_auth=False, **kw)``
    - ``"etcd-cluster"``: :class:`EtcdCluster` ``(size=3, version="3.5", tls=None, client_cert_auth=False)``
    - ``"redis"``: :class:`RedisServer` ``(password=None, acl_user=None, tls=None, **kw)``
    - ``"redis-sentinel"``: :class:`RedisSentinelSet` ``(service="mymaster", replicas=1, sentinels=3,
      password=None, sentinel_password=None, tls=None, **kw)``
    - ``"redis-cluster"``: :class:`RedisClusterSet` ``(primaries=3, replicas=1, password=None, tls=None, **kw)``
    - ``"consul"``: :class:`ConsulServer` ``(tls=None, acl_token=None, **kw)``
    """
    made: list[Any] = []

    def make(kind: str, *args: Any, **kwargs: Any) -> Any:
        try:
            cls = SERVER_KINDS[kind]
        except KeyError:
            raise ValueError(f"unknown server kind {kind!r}: one of {sorted(SERVER_KINDS)}") from None
        server = cls(*args, **kwargs)
        made.append(server)
        return server.start()

    yield make
    for server in reversed(made):
        server.close()
