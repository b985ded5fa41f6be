"""Redis backend: one server, Sentinel or Cluster, plain or TLS, on redis-py (+ hiredis).

URL grammar
    ``redis://[USER[:PASSWORD]@]HOST[:PORT][/DB]`` — one Redis server (default
    port 6379, database 0).
    ``redis+sentinel://[USER[:PASSWORD]@]H1[:P1][,H2[:P2]…]/SERVICE[/DB]`` —
    the primary of the Sentinel service ``SERVICE``, found through the
    Sentinels ``H1``, ``H2``… (default port 26379) and followed through
    fail-overs without a restart. The user info is for the data nodes, as with
    ``redis://``; the Sentinels' own credentials are the ``sentinel_username``
    and ``sentinel_password`` options.
    ``redis+cluster://[USER[:PASSWORD]@]H1[:P1][,H2[:P2]…][/0]`` — a Redis
    Cluster, reached through any of the listed nodes (default port 6379; a
    cluster has only database 0). All of waypost's keys live in one hash slot
    (see "Cluster" below).
    ``rediss://``, ``rediss+sentinel://`` and ``rediss+cluster://`` speak TLS —
    to the Sentinels and the data nodes alike, with the same ``ca_cert`` and
    client certificate. Percent-encode special characters in the user and
    password.

Options (keyword > URL query > environment > default)
    ``timeout``        socket connect/read timeout in seconds (default 5); every
                       call fails with :class:`BackendUnavailable` within it
                       (Sentinel: plus up to 1 s per Sentinel that does not answer).
    ``prefix``         prefix of every Redis key the backend uses (default
                       ``waypost:``; ``{waypost}:`` for ``redis+cluster``, where it
                       must contain a non-empty ``{hash tag}``); Runtimes see each
                       other only with the same prefix and database.
    ``history``        approximate length of the change log (default 10000
                       changes; Redis trims it in whole blocks, so it may hold
                       up to ~100 more). A watcher disconnected for longer than
                       the log covers re-lists and emits a ``Resynced`` notice.
    ``username``, ``password``  ACL user and password of the data nodes
                       (``password`` is secret); default: the URL's user info. A
                       password without a user authenticates as Redis's
                       ``default`` user.
    ``sentinel_username``, ``sentinel_password``  the Sentinels' own ACL user and
                       password (``sentinel_password`` is secret), for Sentinels
                       with ``requirepass``; ``redis+sentinel`` only.
    ``wait_replicas``  after each write that registers, updates or removes
                       something (not after keepalives), wait until this many
                       replicas acknowledged it (``WAIT``, on the connection
                       that wrote; default 0: off). See "Confirmed writes".
    ``wait_timeout``   how long that wait may take, in seconds (default 0.1;
                       Redis checks it on its clock ticks, so up to 100 ms more
                       at its default ``hz 10``); less than ``timeout``.
    ``ca_cert``, ``client_cert``, ``client_key``  PEM files for the TLS schemes
                       (the CA that verifies the servers, and an optional client
                       certificate; ``ssl_ca_certs``, ``ssl_certfile`` and
                       ``ssl_keyfile`` are their former names). A server's
                       certificate must match the host name it is reached by
                       (the URL's, or the address Sentinel or the cluster
                       reports).

Data layout (``P`` = ``prefix``; every key and value is the design's §3 wire format)
    ``P+"index"``      sorted set, all scores 0: instance keys, so that a list
                       under any query prefix is one ``ZRANGEBYLEX`` (no SCAN).
    ``P+"values"``     hash: instance key → JSON value (bytes as written).
    ``P+"owners"``     hash: instance key → lease id.
    ``P+"leases"``     sorted set: lease id (decimal) → deadline in ms of the
                       *server's* clock (``TIME``), so client clocks never matter.
    ``P+"grants"``     hash: lease id → random token of the grant that holds it.
                       A Runtime whose lease was lost while another one was
                       granted the same id holds a stale token: its keepalive
                       gets ``LeaseLost`` and its writes, deletes and revoke
                       leave the other Runtime's lease and keys alone.
    ``P+"writes"``     hash: lease id → how many writes its grant made (to detect
                       writes a fail-over lost, see below).
    ``P+"lease:"+ID``  set: the instance keys lease ``ID`` owns.
    ``P+"log"``        stream: the change log, one entry per put or delete
                       (fields ``s`` sequence number, ``e`` epoch, ``o`` put|del,
                       ``k`` key, ``v`` value), ``XADD MAXLEN ~ history``.
    ``P+"seq"``        counter: sequence number of the last change.
    ``P+"epoch"``      random id of this incarnation of the data: a server
                       restarted without persistence (or flushed) gets a new one.
    ``P+"sweep"``      the last instance key the orphan sweep checked.

    Every operation is one Lua script (``EVALSHA``, with ``KEYS[1]`` =
    ``P+"seq"``), so a change and its log entry are written in the same atomic
    step. Lease ids are random non-zero u64; ``instance_id`` may be chosen
    (refused while a live lease holds it).

Leases, expiry and the bound on crash detection
    A Runtime's keepalive (every ttl/3) moves its deadline to server-now + ttl.
    Redis itself expires nothing (no key TTLs, no keyspace notifications, no
    ``CONFIG SET``): every script first *reaps* expired leases — it deletes
    their instances and logs the deletes. Scripts run on every keepalive
    (ttl/3), every list, and every watch poll (each watch polls at least every
    min(ttl/4, 0.5 s, timeout/2) — 0.5 s with the defaults). Hence a crashed
    process is never listed after its deadline (at most ttl after its last
    keepalive), and a watcher sees it removed within ttl + 0.5 s + one round
    trip of the crash (measured: ~1.0 s at ttl=1, ~3.1 s at ttl=3) — provided
    some waypost Runtime or watch uses the same Redis and prefix. If none is
    connected, the registration stays until the next one connects or lists
    (hence no ``server-expiry`` capability). The lease's own keepalive reaps
    too, so without watchers the bound is ttl + ttl/3.

    The keepalive and poll scripts also sweep a slice of 64 instance keys per
    call (continuing where the last call stopped) and delete every instance
    whose owning lease record is gone: lease records deleted from outside (an
    operator "revoking" by hand, an eviction) never leave phantoms. Live
    Runtimes notice the loss at their next keepalive and re-register; every
    write records its key under the lease, so a graceful close always removes
    everything it wrote.

Watch
    One script returns the snapshot under the prefix together with the epoch,
    sequence number and last log id, atomically. A thread then follows the log
    with ``XREAD BLOCK`` (on its own connection) and polls a script between
    reads that reaps, checks the epoch and checks that the watcher's last
    entry and the next change are still in the log. A changed epoch, a
    trimmed log, a lost entry (after a fail-over, below) or a gap in the
    sequence numbers makes the watch re-list and emit the minimal diff plus
    ``Resynced``. When Redis cannot be reached the watch reports
    ``Interrupted`` within ``timeout`` + 0.5 s and retries with backoff (up to
    2 s); an error reply (``OOM`` at ``maxmemory``, an ACL denial, a script
    error) is treated the same way, so a watch only ends when it is closed.
    Once back, it replays every change it missed from the log (or re-lists if
    the log no longer has them) and ends the outage with a ``Resynced``
    notice. A foreign entry in the log (not written by these scripts) makes
    the watch re-list past it. A silent server (paused, partitioned) is
    reported within ``max(ttl, 1 s)`` plus one poll. Pub/sub is not used:
    ``XREAD BLOCK`` is the wake-up.

Sentinel
    redis-py's Sentinel support finds the primary: every new connection asks
    the Sentinels (in turn, each within ``min(timeout, 1 s)``) and refuses a
    primary they flag as down. Two redis-py 8 faults are worked around: a read
    error (a timeout) closes the connection, so that no later reply is read
    out of step; and a watch's single connection re-asks the Sentinels when it
    reconnects (redis-py issue #3874 retries the old address forever). A
    connection to a primary that was demoted is closed (its ``READONLY``
    reply, or Sentinel's ``CLIENT KILL``). During a fail-over calls fail with
    :class:`BackendUnavailable` and watches report ``Interrupted``; once the
    Sentinels agree on the promoted replica, calls work again, watches replay
    the log from where they were, and Runtimes whose lease expired meanwhile
    (a ttl shorter than the fail-over) re-register. Measured on loopback with
    ``down-after-milliseconds 1000`` and fast ``SENTINEL DEBUG`` timers:
    writes work again ~2 s after a SIGKILL of the primary, ~2.3 s after a
    SIGSTOP; a watch is back within its retry backoff (at most 2 s) after
    that. Choose a ttl longer than the fail-over (down-after-milliseconds plus
    a few seconds) so that leases survive it.

Cluster
    All keys share one hash slot — the prefix's hash tag, ``{waypost}`` by
    default — so the Lua scripts (several keys each) and the one change log
    work unchanged; every script passes a tagged ``KEYS[1]`` so that it is
    routed to the slot's primary. This gives high availability, not sharding:
    a discovery store holds little (10 000 instances are a few MB), and all of
    one deployment's traffic goes to one primary. Deployments with different
    tags (``prefix={fleet-a}:``) use different slots, so different primaries.
    A fail-over of the slot's primary to its replica is followed: redis-py
    refreshes its slot map after a broken connection or a ``MOVED`` reply
    (calls fail with :class:`BackendUnavailable` until the cluster has
    promoted the replica, ~2.4 s with ``cluster-node-timeout 1000``), and a
    watch's connection asks for the slot's current primary whenever it
    reconnects. Calls are retried (twice, after the map is refreshed) on a
    broken connection, never on a timeout (which could run a script twice).
    Limits: no database other than 0; the slot's primary carries everything;
    other slots' health does not matter, but the startup nodes must include
    one that answers.

Lost writes after a fail-over
    Replication is asynchronous: a replica promoted after its primary died may
    lack the primary's last writes (the epoch does not change — it is
    replicated). The backend detects it on both sides. Each grant counts its
    writes in ``P+"writes"`` and the backend remembers the count each write of
    its own was acknowledged with; a keepalive or write that finds the store's
    count behind (a registration, update or delete acknowledged, then lost)
    drops the lease with all its instances and raises :class:`LeaseLost`, so
    the Runtime re-registers exactly what it serves now under the same
    instance id: no registration stays missing and no lost delete comes back
    as a phantom. This happens at the first keepalive (ttl/3) after the store
    is reachable again; watchers see the lease's instances removed and added
    back. A watch polls that its own last log entry is still there with its
    sequence number; if the log lacks it without having been trimmed past it,
    the watch re-lists and emits ``Resynced`` ("the Redis primary lacks
    changes this watcher had seen").
    A lease whose grant itself was lost gets :class:`LeaseLost` as usual. A
    graceful close (revoke) that is lost leaves the instances until the
    lease's deadline, like a crash. Split brain: a primary that froze (SIGSTOP,
    a VM pause, a partition) and comes back after the fail-over keeps
    acknowledging writes on connections that stayed open until Sentinel
    demotes it (4 x Sentinel's publish period: ~8 s with its default timers);
    those writes are lost, and detected as above. A cluster demotes such a
    node as soon as it is reachable again. ``min-replicas-to-write`` on the
    data nodes narrows this window, but with a single replica it blocks every
    write after a fail-over until the old primary rejoins.

Confirmed writes (``wait_replicas``)
    With ``wait_replicas=N`` each registering write is pipelined with ``WAIT N
    wait_timeout`` on the same connection, so it returns once N replicas have
    it (or the wait timed out: the write is applied either way and is not
    undone; a warning is logged). This narrows the window in which an
    acknowledged registration can be lost, it does not close it (the
    replication stays asynchronous, and the detection above still does the
    repair). Measured on loopback, one replica, on a busy 2-core machine
    (median of 2000 writes, ``tests/test_redis_ha.py::test_wait_replicas_cost``):
    a write took 0.30 ms, 0.51 ms with ``wait_replicas=1`` on Sentinel (0.42
    and 0.84 ms on Cluster; 0.75/0.95 and 0.84/1.47 ms in a busier run);
    while no replica answers (after a fail-over, until the old primary rejoins
    as a replica) each write takes ``wait_timeout`` plus up to one tick of
    Redis's clock: 100-200 ms at the default 0.1 s. Off by default: the
    detection above repairs a loss within a keepalive period anyway.

ACL
    A user limited to the prefix works (tested); the narrowest rule is::

        user waypost on >PASSWORD resetkeys ~waypost:* resetchannels -@all
          +ping +select +evalsha +script|load +xread
          +time +get +set +incr +zadd +zrem +zscore +zrangebyscore +zrangebylex
          +hget +hset +hdel +hmget +sadd +srem +smembers +del +xadd +xrange +xrevrange

    (``+select`` only for a database other than 0; the second line is what
    the scripts call — Redis 7 checks each command and key a script touches.)
    Add ``+wait`` for ``wait_replicas``, and for Redis Cluster ``+cluster|slots
    +command`` (what redis-py's cluster client asks at connect) with the key
    pattern of the tagged prefix (``~{waypost}:*``). Sentinels with their own
    users need ``+sentinel|masters`` for ``sentinel_username``. (All three
    tested.) Coarser and also tested: ``-@all +@read +@write +@scripting
    +@stream +@connection +time``.
    No channels, no ``CONFIG``, no ``CLIENT`` commands.

Caveats
    Use a ``maxmemory-policy`` that never evicts these keys (``noeviction`` or
    a ``volatile-*`` policy; the keys have no TTL). Without persistence a Redis
    restart loses everything: every Runtime's next keepalive gets
    :class:`LeaseLost` and re-registers (the core does that), and watchers
    resync on the new epoch. The change log stores values, so ``history``
    times the value size bounds its memory.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import logging
import re
import secrets
import socket
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import TYPE_CHECKING, Any, ClassVar

import msgspec

from waypost.core import (
    AlreadyRegistered,
    AuthenticationError,
    Backend,
    BackendUnavailable,
    Capability,
    ConfigError,
    Lease,
    LeaseLost,
    Option,
    ParsedURL,
    Resync,
    Silent,
    WatchHandle,
    WatchLoop,
    WatchRegistry,
    WatchSink,
    WaypostError,
    hosts,
    parse_float,
    parse_int,
    parse_str,
    prefix_option,
    random_instance_id,
    skip_value,
    tls_files,
    tls_options,
)

try:
    import redis
    import redis.exceptions as rexc
    from redis.backoff import ExponentialBackoff, NoBackoff
    from redis.cluster import ClusterNode, RedisCluster
    from redis.connection import Connection, ConnectionPool, SSLConnection
    from redis.retry import Retry
    from redis.sentinel import MasterNotFoundError, Sentinel, SentinelConnectionPool, SentinelManagedConnection
    from redis.utils import SENTINEL
except ImportError:  # the class stays importable: connect() names the extra to install
    if not TYPE_CHECKING:
        redis = rexc = NoBackoff = Retry = None
else:
    class _SentinelConnection(SentinelManagedConnection):
        """A connection to the Sentinel service's primary, without two redis-py 8 faults.

        * A read error closes the connection, as ``redis.Connection`` does:
          ``SentinelManagedConnection.read_response`` defaults to
          ``disconnect_on_error=False``, so after a read timeout (which the
          backend never retries) the late reply stays in the socket and every
          later command reads the previous one's reply.
        * A reconnect asks the Sentinels: ``send_packed_command`` reconnects with
          ``connect_check_health()`` to the *old* address, bypassing
          ``connect()`` (redis-py issue #3874). A pooled client is saved by the
          pool calling ``connect()``; a watch's single connection is not: it
          would retry the dead primary forever.
        """

        def read_response(self, disable_decoding: Any = False, *, timeout: float | object = SENTINEL,
                          disconnect_on_error: bool | None = True, push_request: bool | None = False) -> Any:
            return super().read_response(disable_decoding, timeout=timeout, disconnect_on_error=disconnect_on_error,
                                         push_request=push_request)

        def send_packed_command(self, command: Any, check_health: bool = True) -> None:
            if not self._sock:
                self.connect()  # type: ignore[no-untyped-call]  # through the Sentinels
            super().send_packed_command(command, check_health)  # type: ignore[no-untyped-call]

    class _SentinelSSLConnection(_SentinelConnection, SSLConnection):
        pass

    class _SlotConnection(Connection):
        """A connection to whichever node is the primary of one cluster slot right now (a watch's).

        Every (re)connect asks the shared cluster client for the slot's primary;
        a reply that says the slot moved or is failing over (``MOVED``, ``ASK``,
        ``CLUSTERDOWN``, ``TRYAGAIN``, ``READONLY``, ``MASTERDOWN``) closes the
        connection as a ``ConnectionError`` and has the slot map refreshed first.
        """

        _REDIRECTS = (rexc.AskError, rexc.ClusterDownError, rexc.TryAgainError, rexc.ReadOnlyError)

        def __init__(self, *, cluster: RedisCluster, slot: int, **kwargs: Any) -> None:
            self._cluster = cluster
            self._slot = slot
            self._stale = False
            super().__init__(**kwargs)  # type: ignore[no-untyped-call]

        def connect(self) -> None:
            if getattr(self, "_sock", None) is not None:
                return
            if self._stale:
                _refresh_slots(self._cluster)
                self._stale = False
            try:
                node = self._cluster.nodes_manager.get_node_from_slot(self._slot)
            except rexc.SlotNotCoveredError as exc:
                self._stale = True
                raise rexc.ConnectionError(f"cluster slot {self._slot} is not served: {exc}") from exc
            self.host, self.port = node.host, node.port
            try:
                super().connect()  # type: ignore[no-untyped-call]
            except (rexc.ConnectionError, rexc.TimeoutError):
                self._stale = True
                raise

        def send_packed_command(self, command: Any, check_health: bool = True) -> None:
            if not self._sock:
                self.connect()  # (re)resolve the slot's primary first
            super().send_packed_command(command, check_health)  # type: ignore[no-untyped-call]

        def read_response(self, *args: Any, **kwargs: Any) -> Any:
            try:
                return super().read_response(*args, **kwargs)
            except self._REDIRECTS as exc:
                self.disconnect()  # type: ignore[no-untyped-call]
                self._stale = True
                raise rexc.ConnectionError(f"cluster slot {self._slot} moved or is failing over: {exc}") from exc
            except (rexc.ConnectionError, rexc.TimeoutError):
                self._stale = True
                raise

    class _SlotSSLConnection(_SlotConnection, SSLConnection):
        pass

    class _Cluster(RedisCluster):
        """redis-py's cluster client, retrying a broken connection but never a timeout.

        A timed-out script may have run: running it again would break the
        "fails within ``timeout``" rule and apply it twice.
        """

        ERRORS_ALLOW_RETRY = (rexc.ConnectionError, rexc.ClusterDownError,  # type: ignore[assignment]
                              rexc.SlotNotCoveredError)


def _refresh_slots(cluster: RedisCluster) -> None:
    """Re-read the cluster's slot map (after a broken connection or a redirect); best effort."""
    with contextlib.suppress(rexc.RedisError, rexc.RedisClusterException):
        cluster.nodes_manager.initialize()


__all__ = ["RedisBackend"]

DEFAULT_PORT = 6379
DEFAULT_SENTINEL_PORT = 26379
DEFAULT_PREFIX = "waypost:"
DEFAULT_CLUSTER_PREFIX = "{waypost}:"
MAX_WATCH_BLOCK = 0.5  # seconds a watch waits in XREAD before polling (and reaping) again
READ_BATCH = 1000  # log entries read per round trip
CLUSTER_RETRIES = 2  # a broken connection to the slot's primary is retried this often (map refreshed)
SENTINEL_TIMEOUT = 1.0  # at most this long per Sentinel when asking for the primary

_log = logging.getLogger("waypost.redis")


# Lua ------------------------------------------------------------------------------
# Every script starts with this prelude. KEYS[1] = P.."seq" (it only routes the script to
# the prefix's hash slot on a cluster), ARGV[1] = key prefix, ARGV[2] = a fresh random epoch
# (stored only if the data has none yet), ARGV[3] = change-log length; each script's own
# arguments start at ARGV[4].
_PRELUDE = r"""
local P = ARGV[1]
local LEASES = P .. 'leases'  -- zset: lease id -> deadline (ms, server clock)
local INDEX = P .. 'index'    -- zset, all scores 0: instance keys in lexicographic order
local VALUES = P .. 'values'  -- hash: instance key -> value
local OWNERS = P .. 'owners'  -- hash: instance key -> lease id
local LOG = P .. 'log'        -- stream: the change log
local SEQ = P .. 'seq'        -- counter: sequence number of the last change
local EPOCH = P .. 'epoch'    -- string: this incarnation of the data
local GRANTS = P .. 'grants'  -- hash: lease id -> token of the grant holding it
local WRITES = P .. 'writes'  -- hash: lease id -> how many writes its grant made

local function lease_keys(lease) return P .. 'lease:' .. lease end

local function now_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end

-- A restart without persistence (or a flush) loses the epoch; watchers that
-- remember another one know their position in the log means nothing any more.
local function epoch()
  local e = redis.call('GET', EPOCH)
  if not e then
    e = ARGV[2]
    redis.call('SET', EPOCH, e)
  end
  return e
end

-- Append a change to the log, in the same atomic step as the change itself.
local function log(op, key, value)
  local seq = redis.call('INCR', SEQ)
  redis.call('XADD', LOG, 'MAXLEN', '~', ARGV[3], '*',
             's', seq, 'e', epoch(), 'o', op, 'k', key, 'v', value)
end

local function put(lease, key, value)
  redis.call('ZADD', INDEX, 0, key)
  redis.call('HSET', VALUES, key, value)
  redis.call('HSET', OWNERS, key, lease)
  redis.call('SADD', lease_keys(lease), key)
  log('put', key, value)
end

local function remove(key)
  redis.call('ZREM', INDEX, key)
  redis.call('HDEL', VALUES, key)
  redis.call('HDEL', OWNERS, key)
  log('del', key, '')
end

local function drop_lease(lease)
  for _, key in ipairs(redis.call('SMEMBERS', lease_keys(lease))) do
    if redis.call('HGET', OWNERS, key) == lease then remove(key) end
  end
  redis.call('DEL', lease_keys(lease))
  redis.call('ZREM', LEASES, lease)
  redis.call('HDEL', GRANTS, lease)
  redis.call('HDEL', WRITES, lease)
end

-- Drop expired leases with their instances: a bounded batch per call keeps every
-- script short; the next call (at most a poll period away) takes the rest.
local function reap(now)
  for _, lease in ipairs(redis.call('ZRANGEBYSCORE', LEASES, '-inf', now, 'LIMIT', 0, 100)) do
    drop_lease(lease)
  end
end

-- Instances whose lease record is gone (deleted from outside, evicted) have nobody to expire
-- them: check a slice of the index per call, continuing where the last call stopped.
local SWEEP = P .. 'sweep'
local function sweep()
  local after = redis.call('GET', SWEEP) or ''
  local keys = redis.call('ZRANGEBYLEX', INDEX, '(' .. after, '+', 'LIMIT', 0, 64)
  for _, key in ipairs(keys) do
    local owner = redis.call('HGET', OWNERS, key)
    if not owner or not redis.call('ZSCORE', LEASES, owner) then
      remove(key)
      if owner then redis.call('SREM', lease_keys(owner), key) end
    end
  end
  if #keys == 64 then redis.call('SET', SWEEP, keys[#keys]) elseif after ~= '' then redis.call('DEL', SWEEP) end
end

-- Is the lease live? An expired one is dropped on the spot, so that a key it
-- owned can never be revived by a new lease that reuses the id.
local function live(lease, now)
  local deadline = redis.call('ZSCORE', LEASES, lease)
  if not deadline then return false end
  if tonumber(deadline) > now then return true end
  drop_lease(lease)
  return false
end

-- Is the lease (still) held by the caller's grant? An id can be granted again after it was
-- lost; only the token tells the two holders apart.
local function mine(lease, token)
  return redis.call('HGET', GRANTS, lease) == token
end

-- How the caller's grant stands, given how many of its writes were acknowledged: 'other' (it
-- does not hold the lease), 'behind' (it does, but the store has fewer of its writes: a replica
-- promoted by a fail-over lacks the last ones) or 'mine'. 'behind' drops the lease with its
-- instances, so that the Runtime re-registers what it serves now, and nothing else.
local function standing(lease, token, writes)
  if not mine(lease, token) then return 'other' end
  if tonumber(redis.call('HGET', WRITES, lease) or '0') < tonumber(writes) then
    drop_lease(lease)
    return 'behind'
  end
  return 'mine'
end

-- Count a write of the lease's grant; the new count is the caller's acknowledgement.
local function wrote(lease)
  local n = tonumber(redis.call('HGET', WRITES, lease) or '0') + 1
  redis.call('HSET', WRITES, lease, n)
  return n
end

-- Keys and values under a key prefix, in order: one ZRANGEBYLEX, then HMGET in
-- chunks (Lua's unpack has a stack limit).
local function items(prefix)
  local keys = redis.call('ZRANGEBYLEX', INDEX, '[' .. prefix, '(' .. prefix .. '\255')
  local values = {}
  for i = 1, #keys, 1000 do
    local chunk = redis.call('HMGET', VALUES, unpack(keys, i, math.min(i + 999, #keys)))
    for j = 1, #chunk do values[#values + 1] = chunk[j] end
  end
  return {keys, values}
end
"""

# ARGV[4] lease id, ARGV[5] ttl in ms, ARGV[6] grant token -> 1 granted, 0 held by a live lease
_GRANT = r"""
local now = now_ms()
reap(now)
-- The same grant retried after a lost reply finds its own.
if live(ARGV[4], now) then return mine(ARGV[4], ARGV[6]) and 1 or 0 end
redis.call('ZADD', LEASES, now + tonumber(ARGV[5]), ARGV[4])
redis.call('HSET', GRANTS, ARGV[4], ARGV[6])
redis.call('HSET', WRITES, ARGV[4], 0)
epoch()
return 1
"""

# ARGV[4] lease id, ARGV[5] ttl in ms, ARGV[6] grant token, ARGV[7] acknowledged writes
#   -> 1 refreshed, 0 lost, -1 dropped: the store lacks acknowledged writes
_KEEPALIVE = r"""
local now = now_ms()
reap(now)
if not live(ARGV[4], now) then return 0 end
local how = standing(ARGV[4], ARGV[6], ARGV[7])
if how ~= 'mine' then return how == 'behind' and -1 or 0 end
redis.call('ZADD', LEASES, 'XX', now + tonumber(ARGV[5]), ARGV[4])
sweep()
return 1
"""

# ARGV[4] lease id, ARGV[5] key, ARGV[6] value, ARGV[7] grant token, ARGV[8] acknowledged writes
#   -> {'ok', writes} | 'lost' | 'behind' | 'exists'
_CREATE = r"""
local now = now_ms()
reap(now)
local lease, key, value = ARGV[4], ARGV[5], ARGV[6]
if not live(lease, now) then return 'lost' end
local how = standing(lease, ARGV[7], ARGV[8])
if how ~= 'mine' then return how == 'behind' and 'behind' or 'lost' end
local owner = redis.call('HGET', OWNERS, key)
-- The same create retried after a lost reply finds its own write: not a conflict (written again).
if owner and live(owner, now) and not (owner == lease and redis.call('HGET', VALUES, key) == value) then
  return 'exists'
end
put(lease, key, value)
return {'ok', wrote(lease)}
"""

# ARGV[4] lease id, ARGV[5] key, ARGV[6] value, ARGV[7] grant token, ARGV[8] acknowledged writes
#   -> {'ok', writes} | 'lost' | 'behind' | 'exists'
_REPLACE = r"""
local now = now_ms()
reap(now)
local lease, key, value = ARGV[4], ARGV[5], ARGV[6]
if not live(lease, now) then return 'lost' end
local how = standing(lease, ARGV[7], ARGV[8])
if how ~= 'mine' then return how == 'behind' and 'behind' or 'lost' end
local owner = redis.call('HGET', OWNERS, key)
if owner and owner ~= lease and live(owner, now) then return 'exists' end
-- Written even when unchanged: the write also records the key under the lease (which may have
-- been lost and granted again), so that a close always removes it.
put(lease, key, value)
return {'ok', wrote(lease)}
"""

# ARGV[4] lease id, ARGV[5] key, ARGV[6] grant token, ARGV[7] acknowledged writes -> {'ok', writes} | 'ok'
# (a key the grant does not own is left alone: another lease's, or a later grant's of the same id;
# a grant 'behind' is dropped, the key with it: the next keepalive reports the loss)
_DELETE = r"""
local lease, key = ARGV[4], ARGV[5]
if redis.call('HGET', OWNERS, key) == lease and standing(lease, ARGV[6], ARGV[7]) == 'mine' then
  remove(key)
  redis.call('SREM', lease_keys(lease), key)
  return {'ok', wrote(lease)}
end
return 'ok'
"""

# ARGV[4] lease id, ARGV[5] grant token ('' for another Runtime's lease: revoke it whoever holds it) -> 'ok'
_REVOKE = r"""
if ARGV[5] == '' or mine(ARGV[4], ARGV[5]) then drop_lease(ARGV[4]) end
return 'ok'
"""

# ARGV[4] key prefix -> {keys, values}
_LIST = r"""
reap(now_ms())
return items(ARGV[4])
"""

# ARGV[4] key prefix -> {keys, values, epoch, seq, last log id}
_SNAPSHOT = r"""
reap(now_ms())
local result = items(ARGV[4])
local last = redis.call('XREVRANGE', LOG, '+', '-', 'COUNT', 1)[1]
result[3] = epoch()
result[4] = redis.call('GET', SEQ) or '0'
result[5] = last and last[1] or '0-0'
return result
"""

# ARGV[4] watcher's epoch, ARGV[5] its last seq, ARGV[6] its last log id, ARGV[7] count
#   -> {'ok', entries} | {'epoch'} | {'trimmed'} | {'lost'}
_POLL = r"""
local function poll()
  reap(now_ms())
  if epoch() ~= ARGV[4] then return {'epoch'} end
  local seq = tonumber(redis.call('GET', SEQ) or '0')
  local last = tonumber(ARGV[5])
  -- The watcher's own last entry must still be there, with its seq: a replica promoted by a
  -- fail-over may lack the last changes (seq went back, or the log lacks the entry although it
  -- still reaches back past it) -- whatever log ids the new primary's clock gives new entries.
  if seq < last then return {'lost'} end
  if ARGV[6] ~= '0-0' then
    local own = redis.call('XRANGE', LOG, ARGV[6], ARGV[6])[1]
    if not own then
      if redis.call('XRANGE', LOG, '-', ARGV[6], 'COUNT', 1)[1] then return {'lost'} end
      return {'trimmed'}
    end
    if own[2][1] == 's' and tonumber(own[2][2]) ~= last then return {'lost'} end
  end
  if seq == last then return {'ok', {}} end
  local first = redis.call('XRANGE', LOG, '-', '+', 'COUNT', 1)[1]
  -- The change right after the watcher's must still be in the log (field 's' is first).
  if not first or tonumber(first[2][2]) > last + 1 then return {'trimmed'} end
  return {'ok', redis.call('XRANGE', LOG, '(' .. ARGV[6], '+', 'COUNT', ARGV[7])}
end
local result = poll()
sweep()  -- after the checks: the epoch is the first thing a poll may write
return result
"""


# Options ---------------------------------------------------------------------------
# The prefix's default depends on the scheme (a cluster needs a hash tag): None means "the scheme's".
_PREFIX = msgspec.structs.replace(
    prefix_option(DEFAULT_PREFIX, separator="", allow_empty=False,
                  help="prefix of every Redis key used (default waypost:, {waypost}: for redis+cluster, where it "
                       "must hold a {hash tag}); Runtimes see each other only with the same prefix and db"),
    default=None)

OPTIONS = (
    Option("timeout", parse_float(0.1, 3600.0), 5.0, "socket connect/read timeout in seconds"),
    _PREFIX,
    Option("history", parse_int(1, 10_000_000), 10_000, "approximate length of the change log"),
    Option("username", parse_str, None, "ACL user (default: the URL's user)"),
    Option("password", parse_str, None, "password (default: the URL's password)", secret=True),
    Option("sentinel_username", parse_str, None, "ACL user of the Sentinels (redis+sentinel)"),
    Option("sentinel_password", parse_str, None, "password of the Sentinels (redis+sentinel)", secret=True),
    Option("wait_replicas", parse_int(0, 100), 0, "after each registering write, WAIT for this many replicas "
           "(0: off)"),
    Option("wait_timeout", parse_float(0.001, 60.0), 0.1, "how long WAIT may take, in seconds"),
    *tls_options(),
)


# Errors: the one boundary where redis-py exceptions become waypost's ------------------
# What Redis 7 answers when a command inside a script is one, or touches a key, the ACL user may not.
_ACL_DENIED = ("can't access at least one of the keys", "can't run this command")
_UNAVAILABLE_REPLIES = ("LOADING", "MASTERDOWN", "MISCONF", "TRYAGAIN", "CLUSTERDOWN", "BUSY", "NOREPLICAS",
                        "UNBLOCKED", "MOVED", "ASK")
_REJECTED_CREDENTIALS = ("AuthenticationError", "WRONGPASS", "NOAUTH", "invalid password")


def _translate(exc: BaseException, context: str) -> WaypostError:
    # redis-py's AuthenticationError is a ConnectionError: test it first.
    if isinstance(exc, rexc.AuthenticationError | rexc.AuthenticationWrongNumberOfArgsError):
        return AuthenticationError(f"{context}: Redis rejected the credentials ({exc})")
    if isinstance(exc, MasterNotFoundError) and any(text in str(exc) for text in _REJECTED_CREDENTIALS):
        return AuthenticationError(f"{context}: the Sentinels rejected the credentials (sentinel_username, "
                                   f"sentinel_password) ({exc})")
    if isinstance(exc, rexc.NoPermissionError) or any(text in str(exc) for text in _ACL_DENIED):
        return AuthenticationError(
            f"{context}: the Redis ACL user lacks a permission ({exc}); see the ACL rule in the redis backend docs"
        )
    if isinstance(exc, rexc.ConnectionError | rexc.TimeoutError | rexc.ReadOnlyError):
        return BackendUnavailable(f"{context}: {exc}")
    if isinstance(exc, rexc.ResponseError) and str(exc).startswith(_UNAVAILABLE_REPLIES):
        return BackendUnavailable(f"{context}: {exc}")
    if isinstance(exc, rexc.ClusterError):  # "TTL exhausted": redirected too often (a slot in flux)
        return BackendUnavailable(f"{context}: Redis Cluster: {exc}")
    if isinstance(exc, rexc.RedisClusterException):
        return _translate_cluster(exc, context)
    return WaypostError(f"{context}: Redis error: {exc}")


def _translate_cluster(exc: rexc.RedisClusterException, context: str) -> WaypostError:
    """redis-py's cluster client errors, which are not ``RedisError``s."""
    if isinstance(exc, rexc.SlotNotCoveredError):
        return BackendUnavailable(f"{context}: {exc}")
    chain: list[BaseException] = []  # "cannot be connected" wraps why: the last node's error, and its cause
    link: BaseException | None = exc
    while link is not None and len(chain) < 5:
        chain.append(link)
        link = link.__cause__ or link.__context__
    redis_error = next((e for e in chain if isinstance(e, rexc.RedisError)), None)
    if isinstance(redis_error, rexc.ResponseError) and not isinstance(redis_error, rexc.NoPermissionError):
        # CLUSTER SLOTS refused: redis-py says "Cluster mode is not enabled on this node"
        return ConfigError(f"{context}: not a Redis Cluster node (cluster mode is not enabled: {redis_error}); "
                           "use redis:// or redis+sentinel:// for it")
    if redis_error is not None:  # no startup node could be reached, or the credentials or ACL are wrong
        return _translate(redis_error, context)
    return WaypostError(f"{context}: Redis Cluster client error: {exc}")


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


_Entry = tuple[str, Mapping[bytes, bytes]]  # (log id, fields)
_Items = list[tuple[str, bytes]]  # (key, value) pairs


class _Script:
    """A Lua script: the prelude and its body, with the SHA1 ``EVALSHA`` names it by."""

    __slots__ = ("body", "name", "sha")

    def __init__(self, name: str, body: str) -> None:
        self.name = name
        self.body = _PRELUDE + body
        self.sha = hashlib.sha1(self.body.encode(), usedforsecurity=False).hexdigest()


_SCRIPTS = {name: _Script(name, body) for name, body in (
    ("grant", _GRANT), ("keepalive", _KEEPALIVE), ("create", _CREATE), ("replace", _REPLACE),
    ("delete", _DELETE), ("revoke", _REVOKE), ("list", _LIST), ("snapshot", _SNAPSHOT), ("poll", _POLL))}


class _Grant:
    """One of our leases: the token of our grant and how many of its writes were acknowledged."""

    __slots__ = ("token", "writes")

    def __init__(self, token: str) -> None:
        self.token = token
        self.writes = 0


# Topologies: how the clients for one URL form are made -------------------------------------

class _Topology:
    """A single server; the base of the HA topologies.

    ``pooled()`` is the shared client, ``dedicated(timeout)`` a watch's own
    single connection (no retry: its loop retries itself, and a read it breaks
    on close must not be redone), ``writer()`` the client whose connection runs
    a write and its ``WAIT``.
    """

    kind = "single"

    def __init__(self, kwargs: dict[str, Any]) -> None:
        self.kwargs = kwargs

    def pooled(self) -> Any:
        return redis.Redis(**self.kwargs)

    def dedicated(self, timeout: float) -> Any:
        kwargs = self.kwargs | {"retry": Retry(NoBackoff(), 0), "socket_timeout": timeout}
        return redis.Redis(single_connection_client=True, **kwargs)

    def writer(self, pooled: Any) -> Any:
        return pooled

    def load(self, client: Any, script: _Script) -> None:
        """Load ``script`` where ``client`` runs it (after ``NOSCRIPT``: a restart, a promoted replica)."""
        client.script_load(script.body)

    def redirected(self) -> None:
        """A write's connection was redirected or broken: refresh what routes it."""

    def close(self) -> None:
        pass


class _SentinelTopology(_Topology):
    """The primary of a Sentinel service: every new connection asks the Sentinels where it is."""

    kind = "sentinel"

    def __init__(self, kwargs: dict[str, Any], sentinels: Sequence[tuple[str, int]], service: str,
                 sentinel_kwargs: dict[str, Any]) -> None:
        tls = kwargs.pop("ssl", False)
        kwargs["connection_class"] = _SentinelSSLConnection if tls else _SentinelConnection
        super().__init__(kwargs)
        self.service = service
        self.sentinel = Sentinel(sentinels, sentinel_kwargs=sentinel_kwargs, **kwargs)  # type: ignore[no-untyped-call]

    def pooled(self) -> Any:
        return self.sentinel.master_for(self.service)  # type: ignore[no-untyped-call]

    def dedicated(self, timeout: float) -> Any:
        kwargs = self.kwargs | {"retry": Retry(NoBackoff(), 0), "socket_timeout": timeout}
        pool = SentinelConnectionPool(self.service, self.sentinel, is_master=True, **kwargs)  # type: ignore[no-untyped-call]
        client = redis.Redis(connection_pool=pool, single_connection_client=True)
        client.auto_close_connection_pool = True  # its close() also closes the pool
        return client

    def close(self) -> None:
        self.sentinel.close()


class _ClusterTopology(_Topology):
    """Redis Cluster, every call routed to the primary of the prefix's hash slot."""

    kind = "cluster"

    def __init__(self, kwargs: dict[str, Any], nodes: Sequence[tuple[str, int]], route_key: str) -> None:
        super().__init__(kwargs)
        self.route_key = route_key
        cluster_kwargs = {k: v for k, v in kwargs.items() if k not in ("retry", "db")}
        self.cluster = _Cluster(startup_nodes=[ClusterNode(host, port) for host, port in nodes],  # type: ignore[no-untyped-call]
                                retry=Retry(ExponentialBackoff(cap=0.5, base=0.05), CLUSTER_RETRIES),
                                require_full_coverage=False,  # only our slot matters
                                **cluster_kwargs)
        self.slot: int = self.cluster.keyslot(route_key)  # type: ignore[no-untyped-call]

    def pooled(self) -> Any:
        return self.cluster

    def node(self) -> Any:
        """The slot's primary, as redis-py currently maps it."""
        return self.cluster.nodes_manager.get_node_from_slot(self.slot)

    def dedicated(self, timeout: float) -> Any:
        kwargs = {k: v for k, v in self.kwargs.items() if k not in ("ssl", "db", "host", "port")}
        kwargs |= {"retry": Retry(NoBackoff(), 0), "socket_timeout": timeout}
        pool = ConnectionPool(connection_class=_SlotSSLConnection if self.kwargs.get("ssl") else _SlotConnection,
                              cluster=self.cluster, slot=self.slot, **kwargs)
        client = redis.Redis(connection_pool=pool, single_connection_client=True)
        client.auto_close_connection_pool = True
        return client

    def writer(self, pooled: Any) -> Any:
        # A WAIT must run on the connection that wrote: the slot owner's own client, not the
        # cluster pipeline (which would send WAIT to another node).
        return self.cluster.get_redis_connection(self.node())

    def load(self, client: Any, script: _Script) -> None:
        if client is self.cluster:  # on the slot's primary only: another shard's health must not matter
            client.execute_command("SCRIPT LOAD", script.body, target_nodes=self.node())  # type: ignore[no-untyped-call]
        else:
            client.script_load(script.body)

    def redirected(self) -> None:
        _refresh_slots(self.cluster)

    def close(self) -> None:
        self.cluster.close()


_SCHEMES = {
    "redis": ("single", False), "rediss": ("single", True),
    "redis+sentinel": ("sentinel", False), "rediss+sentinel": ("sentinel", True),
    "redis+cluster": ("cluster", False), "rediss+cluster": ("cluster", True),
}
_SERVICE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")


class RedisBackend(Backend):
    __doc__ = __doc__
    schemes: ClassVar[tuple[str, ...]] = tuple(_SCHEMES)
    capabilities: ClassVar[frozenset[Capability]] = frozenset({
        Capability.CROSS_PROCESS, Capability.CROSS_HOST, Capability.TLS, Capability.AUTH,
        Capability.WATCH_HISTORY, Capability.CHOSEN_INSTANCE_ID,
    })
    options: ClassVar[tuple[Option, ...]] = OPTIONS
    min_ttl: ClassVar[float] = 0.5
    requires: ClassVar[tuple[str, ...]] = ("redis",)
    extra: ClassVar[str | None] = "redis"

    def __init__(self, url: ParsedURL, options: Mapping[str, Any]) -> None:
        self._url = url
        kind, tls = _SCHEMES.get(url.scheme, ("single", url.scheme.startswith("rediss")))
        self._prefix: str = options["prefix"] or (DEFAULT_CLUSTER_PREFIX if kind == "cluster" else DEFAULT_PREFIX)
        self._route_key = self._prefix + "seq"  # KEYS[1] of every script: routes it to the prefix's slot
        self._history: int = options["history"]
        self._timeout: float = options["timeout"]
        self._wait_replicas: int = options["wait_replicas"]
        self._wait_ms = max(1, round(options["wait_timeout"] * 1000))
        if self._wait_replicas and options["wait_timeout"] >= self._timeout:
            raise ConfigError(f"wait_timeout ({options['wait_timeout']} s) must be less than timeout "
                              f"({self._timeout} s): a write waits for its replicas within the timeout")
        if kind != "sentinel" and (options["sentinel_username"] or options["sentinel_password"]):
            raise ConfigError(f"sentinel_username, sentinel_password: only for redis+sentinel:// URLs, not "
                              f"{url.scheme}://")
        self._ttl = 10.0  # until a lease is granted: only sets the watch poll period
        self._watches: WatchRegistry[_RedisWatch] = WatchRegistry(self.describe)
        self._lock = threading.Lock()
        self._grants: dict[int, _Grant] = {}  # our leases (guarded by _lock)
        self._last_wait_warning = 0.0
        make = _topology(kind, url, options, tls, self._prefix)  # checks the URL and options first
        self._topology: _Topology | None = None
        self._client: Any = None
        try:
            with self._boundary("connecting"):
                self._topology = make()  # a cluster client connects here
                self._client = self._topology.pooled()
                self._topology.writer(self._client).ping()
        except WaypostError:
            self.close()
            raise

    @classmethod
    def from_url(cls, url: ParsedURL, options: Mapping[str, Any]) -> RedisBackend:
        return cls(url, options)

    def describe(self) -> str:
        return self._url.redacted

    def __repr__(self) -> str:
        return f"<RedisBackend {self.describe()} prefix={self._prefix!r}>"

    # plumbing ------------------------------------------------------------------------
    @property
    def _clients(self) -> _Topology:
        assert self._topology is not None  # set in __init__, or __init__ raised
        return self._topology

    def _new_client(self, *, watch_timeout: float) -> Any:
        """A watch's own single connection, whose socket timeout is ``watch_timeout`` (it connects at once)."""
        with self._boundary("redis watch"):
            return self._clients.dedicated(watch_timeout)

    @contextlib.contextmanager
    def _boundary(self, what: str) -> Iterator[None]:
        """Translate redis-py exceptions raised inside into waypost's, cause chained."""
        try:
            yield
        except (rexc.RedisError, rexc.RedisClusterException) as exc:
            raise _translate(exc, f"{what} on {self.describe()}") from exc

    def _run(self, name: str, *args: str | bytes | int, client: Any = None, wait: bool = False) -> Any:
        """Run a named script (EVALSHA, loading it after a restart) inside the boundary.

        ``wait``: a registering write, confirmed by ``wait_replicas`` replicas if that is set.
        """
        self._watches.check_open()
        script = _SCRIPTS[name]
        argv = (self._prefix, secrets.token_hex(8), self._history, *args)
        with self._boundary(f"redis {name}"):
            if wait and self._wait_replicas:
                return self._run_and_wait(script, argv)
            target = self._client if client is None else client
            try:
                return target.evalsha(script.sha, 1, self._route_key, *argv)
            except rexc.NoScriptError:
                self._clients.load(target, script)
                return target.evalsha(script.sha, 1, self._route_key, *argv)

    def _run_and_wait(self, script: _Script, argv: Sequence[str | bytes | int]) -> Any:
        """The script, then ``WAIT wait_replicas wait_timeout`` pipelined on the same connection."""
        for attempt in range(1 + CLUSTER_RETRIES):
            client = self._clients.writer(self._client)
            pipe = client.pipeline(transaction=False)
            pipe.evalsha(script.sha, 1, self._route_key, *argv)
            pipe.execute_command("WAIT", self._wait_replicas, self._wait_ms)
            try:
                result, acknowledged = pipe.execute()
            except rexc.NoScriptError:
                self._clients.load(client, script)
                continue
            except (rexc.ConnectionError, rexc.AskError, rexc.ClusterDownError, rexc.TryAgainError,
                    rexc.ReadOnlyError):
                if self._clients.kind != "cluster" or attempt == CLUSTER_RETRIES:
                    raise
                self._clients.redirected()
                continue
            if int(acknowledged) < self._wait_replicas:
                self._warn_unconfirmed(script.name, int(acknowledged))
            return result
        raise rexc.ConnectionError(f"{script.name}: no attempt reached the primary")

    def _warn_unconfirmed(self, what: str, acknowledged: int) -> None:
        now = time.monotonic()
        if now - self._last_wait_warning >= 30.0:
            self._last_wait_warning = now
            _log.warning("%s on %s: only %d of wait_replicas=%d replicas confirmed the write within %d ms (it is "
                         "applied; a fail-over now could lose it, and the Runtime would re-register)", what,
                         self.describe(), acknowledged, self._wait_replicas, self._wait_ms)

    # SPI -------------------------------------------------------------------------------
    def grant_lease(self, ttl: float, preferred_id: int | None = None) -> Lease:
        self._ttl = ttl
        for _ in range(16):
            lease_id = preferred_id or random_instance_id()
            token = secrets.token_hex(8)
            if self._run("grant", str(lease_id), _ms(ttl), token, wait=True):
                with self._lock:
                    self._grants[lease_id] = _Grant(token)
                return Lease(lease_id, ttl)
            if preferred_id is not None:
                raise AlreadyRegistered(f"instance id {lease_id:x} is held by a live Runtime")
        raise WaypostError("could not find a free random lease id in 16 tries")  # pragma: no cover

    def _grant_of(self, lease_id: int) -> tuple[str, int]:
        """Our grant of ``lease_id``: its token and acknowledged writes (``('', 0)`` if it is not ours)."""
        with self._lock:
            grant = self._grants.get(lease_id)
            return ("", 0) if grant is None else (grant.token, grant.writes)

    def _acknowledged(self, lease_id: int, token: str, result: Any) -> str:
        """A write's status; record the count of writes it was acknowledged with (``{'ok', n}``)."""
        if not isinstance(result, list):
            return _text(result)
        with self._lock:
            grant = self._grants.get(lease_id)
            if grant is not None and grant.token == token:
                grant.writes = max(grant.writes, int(result[1]))
        return _text(result[0])

    def keep_alive(self, lease: Lease) -> None:
        token, writes = self._grant_of(lease.id)
        result = self._run("keepalive", str(lease.id), _ms(lease.ttl), token, writes)
        if result == -1:
            raise LeaseLost(f"redis lease {lease.id:x} lacks writes that Redis had acknowledged (a fail-over to a "
                            "replica that lagged): dropped, to be registered again")
        if not result:
            raise LeaseLost(f"redis lease {lease.id:x} has expired, was revoked, or its id was granted again")

    def revoke_lease(self, lease_id: int) -> None:
        with self._lock:
            grant = self._grants.get(lease_id)
        token = "" if grant is None else grant.token
        self._run("revoke", str(lease_id), token, wait=True)
        with self._lock:
            if grant is not None and self._grants.get(lease_id) is grant:
                del self._grants[lease_id]

    def create(self, lease: Lease, key: str, value: bytes) -> None:
        self._write("create", lease, key, value)

    def replace(self, lease: Lease, key: str, value: bytes) -> None:
        self._write("replace", lease, key, value)

    def _write(self, name: str, lease: Lease, key: str, value: bytes) -> None:
        token, writes = self._grant_of(lease.id)
        status = self._acknowledged(lease.id, token, self._run(name, str(lease.id), key, value, token, writes,
                                                               wait=True))
        if status == "lost":
            raise LeaseLost(f"redis lease {lease.id:x} has expired or was revoked")
        if status == "behind":
            raise LeaseLost(f"redis lease {lease.id:x} lacks writes that Redis had acknowledged (a fail-over to a "
                            "replica that lagged): dropped, to be registered again")
        if status == "exists":
            raise AlreadyRegistered(f"{key} is already registered by another Runtime")

    def delete(self, lease: Lease, key: str) -> None:
        token, writes = self._grant_of(lease.id)
        self._acknowledged(lease.id, token, self._run("delete", str(lease.id), key, token, writes, wait=True))

    def list(self, prefix: str) -> list[tuple[str, bytes]]:
        keys, values = self._run("list", prefix)
        return _pairs(keys, values)

    def watch(self, prefix: str, sink: WatchSink) -> WatchHandle:
        return self._watches.open(_RedisWatch(self, prefix, sink))

    def close(self) -> None:
        if self._watches.close():
            if self._client is not None and not isinstance(self._topology, _ClusterTopology):
                self._client.close()  # a cluster's pooled client is the topology's, closed next
            if self._topology is not None:
                self._topology.close()

    # used by watches ---------------------------------------------------------------------
    def _snapshot(self, prefix: str, client: Any) -> tuple[_Items, _Position]:
        keys, values, epoch, seq, last_id = self._run("snapshot", prefix, client=client)
        return _pairs(keys, values), _Position(_text(epoch), int(seq), _text(last_id))


def _ms(seconds: float) -> int:
    return max(1, round(seconds * 1000))


def _pairs(keys: Sequence[bytes], values: Sequence[bytes | None]) -> list[tuple[str, bytes]]:
    # A key without a value, or one that is not UTF-8, can only come from a foreign writer: skip it.
    pairs = []
    for raw, value in zip(keys, values, strict=True):
        if value is None:
            continue
        try:
            pairs.append((raw.decode(), value))
        except UnicodeDecodeError:
            skip_value(raw.decode(errors="backslashreplace"), value, "the key in the Redis index is not UTF-8")
    return pairs


def _hash_tag(prefix: str) -> str | None:
    """The prefix's hash tag (what Redis Cluster hashes every key starting with it by), if it has one."""
    start = prefix.find("{")
    end = prefix.find("}", start + 1) if start >= 0 else -1
    return prefix[start + 1:end] if end > start + 1 else None


def _topology(kind: str, url: ParsedURL, options: Mapping[str, Any], tls: bool,
              prefix: str) -> Callable[[], _Topology]:
    """Check the URL and options for ``kind``; return what makes its topology (a cluster's connects)."""
    files = tls_files(url, options, tls=tls)
    timeout: float = options["timeout"]
    kwargs: dict[str, Any] = {
        "username": options["username"] or url.username, "password": options["password"] or url.password,
        "socket_timeout": timeout, "socket_connect_timeout": timeout,
        # One immediate retry on a broken connection (a pooled socket the server closed,
        # e.g. after a restart); never on a timeout, which would double the bound.
        "retry": Retry(NoBackoff(), 1, supported_errors=(rexc.ConnectionError,)),
        "driver_info": None,  # no CLIENT SETINFO: a narrow ACL user may not have it
    }
    tls_kwargs: dict[str, Any] = {}
    if files is not None:
        tls_kwargs = {"ssl_cert_reqs": "required", "ssl_ca_certs": files.ca_cert, "ssl_certfile": files.client_cert,
                      "ssl_keyfile": files.client_key}
        kwargs |= {"ssl": True, **tls_kwargs}
    if kind == "single":
        (address,) = hosts(url, DEFAULT_PORT, most=1,
                           hint="for several Sentinels use redis+sentinel://, for a cluster redis+cluster://")
        return functools.partial(_Topology, kwargs | {"host": address.host, "port": address.port,
                                                      "db": _database(url, url.path)})
    if kind == "sentinel":
        addresses = hosts(url, DEFAULT_SENTINEL_PORT, default_host=None)
        service, _, db_path = url.path.strip("/").partition("/")
        if not _SERVICE_NAME.fullmatch(service):
            raise ConfigError(f"{url.redacted}: expected /SERVICE[/DB] after the Sentinels, e.g. "
                              f"{url.scheme}://127.0.0.1:{DEFAULT_SENTINEL_PORT}/mymaster/0")
        sentinel_timeout = min(timeout, SENTINEL_TIMEOUT)
        sentinel_kwargs = {
            "username": options["sentinel_username"], "password": options["sentinel_password"],
            "socket_timeout": sentinel_timeout, "socket_connect_timeout": sentinel_timeout,
            "retry": Retry(NoBackoff(), 0),  # discover_master() walks the Sentinels itself
            "driver_info": None, **({"ssl": True, **tls_kwargs} if files is not None else {}),
        }
        return functools.partial(_SentinelTopology, kwargs | {"db": _database(url, db_path)},
                                 [(a.host, a.port) for a in addresses], service, sentinel_kwargs)
    addresses = hosts(url, DEFAULT_PORT, default_host=None)
    if _database(url, url.path) != 0:
        raise ConfigError(f"{url.redacted}: a Redis Cluster has only database 0")
    if _hash_tag(prefix) is None:
        raise ConfigError(f"prefix {prefix!r}: on a Redis Cluster the prefix must hold a non-empty hash tag, e.g. "
                          f"{DEFAULT_CLUSTER_PREFIX!r}, so that every key (and script) lands in one slot")
    return functools.partial(_ClusterTopology, kwargs, [(a.host, a.port) for a in addresses], prefix + "seq")


def _database(url: ParsedURL, path: str) -> int:
    text = path.strip("/") or "0"
    if not (text.isascii() and text.isdigit()):
        raise ConfigError(f"invalid database {path!r} in {url.redacted}: expected /N, e.g. /0")
    return int(text)


class _Position:
    """Where a watch is in the change log."""

    __slots__ = ("epoch", "last_id", "seq")

    def __init__(self, epoch: str, seq: int, last_id: str) -> None:
        self.epoch = epoch
        self.seq = seq
        self.last_id = last_id


_RESYNC_REASONS = {
    "epoch": "the Redis data was replaced (restart or flush)",
    "trimmed": "the change log was trimmed past this watcher",
    "lost": "the Redis primary lacks changes this watcher had seen (a fail-over to a replica that lagged)",
}


class _RedisWatch(WatchLoop):
    """Snapshot, then follow the change log on a dedicated connection (XREAD BLOCK between polls)."""

    thread_name = "waypost-redis-watch"
    resumable = True

    def __init__(self, backend: RedisBackend, prefix: str, sink: WatchSink) -> None:
        silence = max(backend._ttl, 1.0)
        # Block short enough to reap often, and well inside the socket timeout (else a quiet log
        # would read as a dead server); a silent server times the socket out within the limit.
        block = min(backend._ttl / 4, MAX_WATCH_BLOCK, silence / 4)
        timeout = min(backend._timeout, silence - block)
        super().__init__(prefix, sink, silence_limit=silence, join_timeout=timeout + 1.0,
                         on_close=backend._watches.forget)
        self._backend = backend
        self._block_ms = max(10, round(block * 1000))
        self._client = backend._new_client(watch_timeout=timeout)
        self._position = _Position("", 0, "0-0")

    def snapshot(self) -> _Items:
        items, self._position = self._backend._snapshot(self.prefix, self._client)
        return items

    def follow(self) -> None:
        while not self.stopped:
            if self._step() < READ_BATCH:
                self.caught_up()  # the missed changes (if any) are all replayed

    def _step(self) -> int:
        """Poll (reap, check epoch and history, read what is new); if idle, block on the log.

        Return how many log entries were applied.
        """
        pos = self._position
        try:
            reply = self._backend._run("poll", pos.epoch, pos.seq, pos.last_id, READ_BATCH, client=self._client)
        except BackendUnavailable as exc:
            raise _silence(exc) from exc
        status = _text(reply[0])
        if status != "ok":
            raise Resync(_RESYNC_REASONS.get(status, f"unexpected poll status {status!r}"))
        entries: Sequence[_Entry] = [(_text(entry_id), _fields(raw)) for entry_id, raw in reply[1]]
        if not entries:
            entries = self._read_blocking()
        self._apply(entries)
        return len(entries)

    def _read_blocking(self) -> list[_Entry]:
        log_key = self._backend._prefix + "log"
        try:
            with self._backend._boundary("redis watch"):
                reply: Any = self._client.xread({log_key: self._position.last_id}, count=READ_BATCH,
                                                block=self._block_ms)
        except BackendUnavailable as exc:
            raise _silence(exc) from exc
        return [(_text(entry_id), fields) for _, stream in reply or [] for entry_id, fields in stream]

    def _apply(self, entries: Sequence[_Entry]) -> None:
        pos = self._position
        for entry_id, fields in entries:
            try:
                epoch, seq = fields[b"e"].decode(), int(fields[b"s"])
                key, op = fields[b"k"].decode(), fields[b"o"]
            except (KeyError, ValueError, UnicodeDecodeError):
                skip_value(f"{self._backend._prefix}log {entry_id}", repr(fields).encode(),
                           "not an entry of waypost's change log")
                raise Resync(f"a foreign entry {entry_id} in the change log") from None
            if epoch != pos.epoch or seq != pos.seq + 1:
                raise Resync("the change log has a gap (restart, trim or fail-over)")
            pos.seq, pos.last_id = seq, entry_id
            if not key.startswith(self.prefix):
                continue
            if op == b"put":
                self.put(key, fields.get(b"v", b""))
            else:
                self.delete(key)

    def interrupt(self) -> None:
        """Wake the thread from XREAD BLOCK (or a read from a paused server) at once.

        Shutting the socket down makes the read return EOF in the watch thread,
        which then closes the connection itself (redis-py objects are not shared
        across threads). ``_sock`` is redis-py's socket; there is no public handle.
        """
        connection = self._client.connection
        sock = getattr(connection, "_sock", None)
        if isinstance(sock, socket.socket):
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)

    def release(self) -> None:
        self._client.close()


def _silence(exc: BackendUnavailable) -> BackendUnavailable:
    """A timed-out read is a silent server; anything else stays what it was."""
    return Silent(str(exc)) if isinstance(exc.__cause__, rexc.TimeoutError) else exc


def _fields(raw: Sequence[bytes]) -> dict[bytes, bytes]:
    """A log entry's flat ``[field, value, …]`` list (as Lua returns it) as a dict."""
    return dict(zip(raw[::2], raw[1::2], strict=True))
