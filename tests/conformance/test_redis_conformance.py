"""The shipped conformance suite against real Redis 7: plain, an ACL user limited to the prefix, and TLS."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import servers
import waypost.core
from waypost.contrib.conformance import BackendConformance, Harness

# The narrowest ACL the backend documents: its commands only, keys under its prefix, no channels.
ACL_COMMANDS = (
    "-@all +ping +select +evalsha +script|load +xread +time +get +set +incr +zadd +zrem +zscore +zrangebyscore "
    "+zrangebylex +hget +hset +hdel +hmget +sadd +srem +smembers +del +xadd +xrange +xrevrange"
)


def _ready(server: servers.RedisServer) -> servers.RedisServer:
    """Undo what a failed fault test may have left (paused or stopped server)."""
    if server.paused:
        server.resume()
    if not server.running:
        server.start()
    return server


BUCKETS = tuple(f"{bucket}/".encode() for bucket in waypost.core.BUCKETS)  # what the backend keeps in its index
FOREIGN_LEASE = str(2**64 - 2)  # the other writer's lease: an id no test asks for


def _raw(server: servers.RedisServer) -> dict[str, Any]:
    """Plant and read as another writer would: record keys (any bytes) into the backend's index and
    values, owned by a lease that never expires (else the orphan sweep deletes them before the test
    reads them, whenever a keepalive comes first); anything else as plain Redis keys."""
    import redis

    def put(key: bytes, value: bytes) -> None:
        with redis.Redis(host=servers.HOST, port=server.port, password=server.password) as raw:
            if key.startswith(BUCKETS):
                # One transaction, as the backend's scripts write: a sweep running between the
                # commands would find an indexed key without an owner and delete half of it.
                with raw.pipeline(transaction=True) as step:
                    step.zadd("waypost:leases", {FOREIGN_LEASE: 2**52})  # a deadline in the year 142 000
                    step.hset("waypost:owners", key, FOREIGN_LEASE)
                    step.hset("waypost:values", key, value)
                    step.zadd("waypost:index", {key: 0})
                    step.execute()
            else:
                raw.set(key, value)

    def get(key: bytes) -> bytes | None:
        with redis.Redis(host=servers.HOST, port=server.port, password=server.password) as raw:
            if key.startswith(BUCKETS):
                return raw.hget("waypost:values", key)  # type: ignore[return-value]
            return raw.get(key)  # type: ignore[return-value]

    return {"raw_put": put, "raw_get": get}


def _closed_port_url(scheme: str) -> str:
    return f"{scheme}://127.0.0.1:{servers.free_port()}/0"


BAD_URLS = {
    "redis://127.0.0.1:1,127.0.0.1:2/0": "one host",
    "redis://127.0.0.1:1/zero": "database",
    "redis://127.0.0.1:1/0?prefix=": "prefix",
    "redis://127.0.0.1:1/0?ca_cert=/etc/hostname": "TLS scheme",
    "rediss://127.0.0.1:1/0?ca_cert=/nonexistent/ca.pem": "no such file",
    "rediss://127.0.0.1:1/0?client_cert=/etc/hostname": "go together",
}


@pytest.fixture(scope="module")
def plain_redis() -> Iterator[servers.RedisServer]:
    with servers.RedisServer() as server:
        yield server


@pytest.fixture(scope="module")
def acl_redis() -> Iterator[servers.RedisServer]:
    with servers.RedisServer(acl_user=("wp-user", "s3cret:pw@x", "waypost:*"), acl_commands=ACL_COMMANDS) as server:
        yield server


@pytest.fixture(scope="module")
def tls_redis(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[servers.RedisServer, servers.TLSFiles]]:
    tls = servers.make_tls(Path(tmp_path_factory.mktemp("redis-tls")))
    with servers.RedisServer(tls=tls, client_cert_auth=True) as server:
        yield server, tls


class TestRedisConformance(BackendConformance):
    @pytest.fixture
    def harness(self, plain_redis: servers.RedisServer) -> Harness:
        server = _ready(plain_redis)
        return Harness(url=server.url, ttl=1.0, expiry_bound=1.0, server=server,
                       restart_loses_data=True, unreachable_url=_closed_port_url("redis"), bad_urls=BAD_URLS,
                       **_raw(server))


class TestRedisACLConformance(BackendConformance):
    """A user allowed only ``~waypost:*`` and the documented commands; credentials in the URL."""

    @pytest.fixture
    def harness(self, acl_redis: servers.RedisServer) -> Harness:
        server = _ready(acl_redis)
        return Harness(url=server.auth_url, ttl=1.0, expiry_bound=1.0, server=server,
                       restart_loses_data=True, unreachable_url=_closed_port_url("redis"), bad_urls=BAD_URLS,
                       prefixes=("waypost:iso-a:", "waypost:iso-b:"))  # inside the ACL's ~waypost:*


class TestRedisTLSConformance(BackendConformance):
    """``rediss://`` with a CA-verified server and a mandatory client certificate."""

    @pytest.fixture
    def harness(self, tls_redis: tuple[servers.RedisServer, servers.TLSFiles]) -> Harness:
        server, tls = tls_redis
        options = {"ca_cert": tls.ca, "client_cert": tls.client_cert, "client_key": tls.client_key}
        return Harness(url=_ready(server).url, options=options, ttl=1.0, expiry_bound=1.0, server=server,
                       restart_loses_data=True, unreachable_url=_closed_port_url("rediss"), bad_urls=BAD_URLS)
