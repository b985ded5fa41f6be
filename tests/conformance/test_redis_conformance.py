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
# One atomic step, as the backend's own scripts write: a sweep running between separate commands
# would find an indexed key without an owner and delete half of it. The owner is a lease that never
# expires (else the orphan sweep deletes the plant before the test reads it).
_PLANT = """
redis.call('ZADD', KEYS[1], 4503599627370496, ARGV[3])
redis.call('HSET', KEYS[2], ARGV[1], ARGV[3])
redis.call('HSET', KEYS[3], ARGV[1], ARGV[2])
redis.call('ZADD', KEYS[4], 0, ARGV[1])
"""


def _raw(client: Any, prefix: str) -> dict[str, Any]:
    """Plant and read as another writer would: record keys (any bytes) into the backend's index and
    values, anything else as plain Redis keys. ``client`` is long-lived and follows the primary."""
    keys = [prefix + name for name in ("leases", "owners", "values", "index")]

    def put(key: bytes, value: bytes) -> None:
        if key.startswith(BUCKETS):
            client.eval(_PLANT, len(keys), *keys, key, value, FOREIGN_LEASE)
        else:
            client.set(key, value)

    def get(key: bytes) -> bytes | None:
        if key.startswith(BUCKETS):
            return client.hget(prefix + "values", key)  # type: ignore[no-any-return]
        return client.get(key)  # type: ignore[no-any-return]

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
def plain_raw(plain_redis: servers.RedisServer) -> Iterator[Any]:
    import redis

    client = redis.Redis(host=servers.HOST, port=plain_redis.port, socket_timeout=2.0)
    yield client
    client.close()


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
    def harness(self, plain_redis: servers.RedisServer, plain_raw: Any) -> Harness:
        server = _ready(plain_redis)
        return Harness(url=server.url, ttl=1.0, expiry_bound=1.0, server=server,
                       restart_loses_data=True, unreachable_url=_closed_port_url("redis"), bad_urls=BAD_URLS,
                       **_raw(plain_raw, "waypost:"))


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


# -- highly available Redis: Sentinel and Cluster -----------------------------------------------------
# The fault hooks act on the current primary (of the waypost hash slot, on a cluster): kill = SIGKILL
# (a fail-over follows), restart = wait for the fail-over and start the old primary as a replica,
# pause/resume = SIGSTOP/SIGCONT of the primary. A fail-over takes ~2 s (Sentinel) to ~2.5 s (Cluster):
# the bound on an outage is larger than a single server's.
HA_TIMEOUT = 2.0  # redis calls; keeps the fault tests (paused or dead primary) short
HA_INTERRUPT_BOUND = 4.0

SENTINEL_BAD_URLS = {
    "redis+sentinel://127.0.0.1:1": "SERVICE",
    "redis+sentinel:///mymaster": "at least one host",
    "redis+sentinel://127.0.0.1:1/mymaster/zero": "database",
    "redis+sentinel://127.0.0.1:1/mymaster?ca_cert=/etc/hostname": "TLS scheme",
    "rediss+sentinel://127.0.0.1:1/mymaster?client_key=/etc/hostname": "go together",
    "redis://127.0.0.1:1/0?sentinel_password=x": "only for redis+sentinel",
    "redis+sentinel://127.0.0.1:1/mymaster?wait_replicas=1&wait_timeout=9": "less than timeout",
}
CLUSTER_BAD_URLS = {
    "redis+cluster://": "at least one host",
    "redis+cluster://127.0.0.1:1?prefix=waypost:": "hash tag",
    "redis+cluster://127.0.0.1:1?prefix={}:": "hash tag",
    "redis+cluster://127.0.0.1:1/1": "only database 0",
    "redis+cluster://127.0.0.1:1?ca_cert=/etc/hostname": "TLS scheme",
    "rediss+cluster://127.0.0.1:1?client_cert=/etc/hostname": "go together",
}


@pytest.fixture(scope="module")
def sentinel_set() -> Iterator[servers.RedisSentinelSet]:
    with servers.RedisSentinelSet() as sentinels:
        yield sentinels


@pytest.fixture(scope="module")
def cluster_set() -> Iterator[servers.RedisClusterSet]:
    with servers.RedisClusterSet() as cluster:
        yield cluster


@pytest.fixture(scope="module")
def sentinel_raw(sentinel_set: servers.RedisSentinelSet) -> Iterator[Any]:
    import redis.sentinel

    sentinel = redis.sentinel.Sentinel(sentinel_set.sentinel_addresses, socket_timeout=2.0)
    client = sentinel.master_for(sentinel_set.service, socket_timeout=2.0)
    yield client
    client.close()
    sentinel.close()


@pytest.fixture(scope="module")
def cluster_raw(cluster_set: servers.RedisClusterSet) -> Iterator[Any]:
    import redis.cluster

    client = redis.cluster.RedisCluster(startup_nodes=[redis.cluster.ClusterNode(*n.address)
                                                       for n in cluster_set.nodes], socket_timeout=2.0)
    yield client
    client.close()


class TestRedisSentinelConformance(BackendConformance):
    """``redis+sentinel://``: a primary, a replica and three Sentinels; the faults hit the primary."""

    @pytest.fixture
    def harness(self, sentinel_set: servers.RedisSentinelSet, sentinel_raw: Any) -> Harness:
        sentinel_set.heal()
        return Harness(url=sentinel_set.url, options={"timeout": HA_TIMEOUT}, ttl=1.0, expiry_bound=1.0,
                       server=sentinel_set.faults(), restart_loses_data=False,
                       unreachable_url=f"redis+sentinel://127.0.0.1:{servers.free_port()}/mymaster",
                       interrupt_bound=HA_INTERRUPT_BOUND, bad_urls=SENTINEL_BAD_URLS,
                       **_raw(sentinel_raw, "waypost:"))


class TestRedisClusterConformance(BackendConformance):
    """``redis+cluster://``: 3 primaries + 3 replicas; the faults hit the primary of the ``{waypost}`` slot."""

    @pytest.fixture
    def harness(self, cluster_set: servers.RedisClusterSet, cluster_raw: Any) -> Harness:
        cluster_set.heal()
        return Harness(url=cluster_set.url, options={"timeout": HA_TIMEOUT}, ttl=1.0, expiry_bound=1.0,
                       server=cluster_set.faults(), restart_loses_data=False,
                       unreachable_url=f"redis+cluster://127.0.0.1:{servers.free_port()}",
                       interrupt_bound=HA_INTERRUPT_BOUND, bad_urls=CLUSTER_BAD_URLS,
                       prefixes=("{wp-iso-a}:", "{wp-iso-b}:"),
                       **_raw(cluster_raw, "{waypost}:"))
