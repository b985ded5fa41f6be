"""Redis backend: ``redis://`` and ``rediss://`` (TLS), on redis-py (+ hiredis).

URL grammar
    ``redis://[USER[:PASSWORD]@]HOST[:PORT][/DB]`` — one Redis server (default
    port 6379, database 0). ``rediss://`` speaks TLS. Percent-encode special
    characters in the user and password. Sentinel and Redis Cluster are not
    supported (the scripts touch several keys that are not hash-tagged).

Options (keyword > URL query > environment > default)
    ``timeout``        socket connect/read timeout in seconds (default 5); every
                       call fails with :class:`BackendUnavailable` within it.
    ``prefix``         prefix of every Redis key the backend uses (default
                       ``waypost:``); Runtimes see each other only with the same
                       prefix and database.
    ``history``        approximate length of the change log (default 10000
                       changes; Redis trims it in whole blocks, so it may hold
                       up to ~100 more). A watcher disconnected for longer than
                       the log covers re-lists and emits a ``Resynced`` notice.
    ``username``, ``password``  ACL user and password (``password`` is secret);
                       default: the URL's user info. A password without a user
                       authenticates as Redis's ``default`` user.
    ``ca_cert``, ``client_cert``, ``client_key``  PEM files for ``rediss://``
                       (the CA that verifies the server, and an optional client
                       certificate; ``ssl_ca_certs``, ``ssl_certfile`` and
                       ``ssl_keyfile`` are their former names). The server's
                       certificate must match the host name in the URL.

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
    ``P+"lease:"+ID``  set: the instance keys lease ``ID`` owns.
    ``P+"log"``        stream: the change log, one entry per put or delete
                       (fields ``s`` sequence number, ``e`` epoch, ``o`` put|del,
                       ``k`` key, ``v`` value), ``XADD MAXLEN ~ history``.
    ``P+"seq"``        counter: sequence number of the last change.
    ``P+"epoch"``      random id of this incarnation of the data: a server
                       restarted without persistence (or flushed) gets a new one.
    ``P+"sweep"``      the last instance key the orphan sweep checked.

    Every operation is one Lua script (``EVALSHA``), so a change and its log
    entry are written in the same atomic step. Lease ids are random non-zero
    u64; ``instance_id`` may be chosen (refused while a live lease holds it).

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
    reads that reaps, checks the epoch and checks that the next change is still
    in the log. A changed epoch, a trimmed log or a gap in the sequence numbers
    makes the watch re-list and emit the minimal diff plus ``Resynced``. When
    Redis cannot be reached the watch reports ``Interrupted`` within
    ``timeout`` + 0.5 s and retries with backoff (up to 2 s); an error reply
    (``OOM`` at ``maxmemory``, an ACL denial, a script error) is treated the
    same way, so a watch only ends when it is closed. Once back, it
    replays every change it missed from the log (or re-lists if the log no
    longer has them) and ends the outage with a ``Resynced`` notice. A
    foreign entry in the log (not written by these scripts) makes the watch
    re-list past it. A silent server (paused, partitioned) is reported within
    ``max(ttl, 1 s)`` plus one poll. Pub/sub is not used: ``XREAD BLOCK`` is
    the wake-up.

ACL
    A user limited to the prefix works (tested); the narrowest rule is::

        user waypost on >PASSWORD resetkeys ~waypost:* resetchannels -@all
          +ping +select +evalsha +script|load +xread
          +time +get +set +incr +zadd +zrem +zscore +zrangebyscore +zrangebylex
          +hget +hset +hdel +hmget +sadd +srem +smembers +del +xadd +xrange +xrevrange

    (``+select`` only for a database other than 0; the second line is what
    the scripts call — Redis 7 checks each command and key a script touches.)
    Coarser and also tested: ``-@all +@read +@write +@scripting +@stream
    +@connection +time``. No channels, no ``CONFIG``, no ``CLIENT`` commands.

Caveats
    Use a ``maxmemory-policy`` that never evicts these keys (``noeviction`` or
    a ``volatile-*`` policy; the keys have no TTL). Without persistence a Redis
    restart loses everything: every Runtime's next keepalive gets
    :class:`LeaseLost` and re-registers (the core does that), and watchers
    resync on the new epoch. A replica promoted by failover may have lost the
    last writes; watchers then resync only if the epoch or log shows it. The
    change log stores values, so ``history`` times the value size bounds its memory.
"""

from __future__ import annotations

import contextlib
import secrets
import socket
import threading
from collections.abc import Iterator, Mapping, Sequence
from typing import TYPE_CHECKING, Any, ClassVar

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
    from redis.backoff import NoBackoff
    from redis.retry import Retry
except ImportError:  # the class stays importable: connect() names the extra to install
    if not TYPE_CHECKING:
        redis = rexc = NoBackoff = Retry = None

__all__ = ["RedisBackend"]

DEFAULT_PORT = 6379
MAX_WATCH_BLOCK = 0.5  # seconds a watch waits in XREAD before polling (and reaping) again
READ_BATCH = 1000  # log entries read per round trip

# Lua ------------------------------------------------------------------------------
# Every script starts with this prelude. ARGV[1] = key prefix, ARGV[2] = a fresh
# random epoch (stored only if the data has none yet), ARGV[3] = change-log length;
# each script's own arguments start at ARGV[4].
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
if live(ARGV[4], now) then return 0 end
redis.call('ZADD', LEASES, now + tonumber(ARGV[5]), ARGV[4])
redis.call('HSET', GRANTS, ARGV[4], ARGV[6])
epoch()
return 1
"""

# ARGV[4] lease id, ARGV[5] ttl in ms, ARGV[6] grant token -> 1 refreshed, 0 lost
_KEEPALIVE = r"""
local now = now_ms()
reap(now)
if not live(ARGV[4], now) or not mine(ARGV[4], ARGV[6]) then return 0 end
redis.call('ZADD', LEASES, 'XX', now + tonumber(ARGV[5]), ARGV[4])
sweep()
return 1
"""

# ARGV[4] lease id, ARGV[5] key, ARGV[6] value, ARGV[7] grant token -> 'ok' | 'lost' | 'exists'
_CREATE = r"""
local now = now_ms()
reap(now)
local lease, key, value = ARGV[4], ARGV[5], ARGV[6]
if not live(lease, now) or not mine(lease, ARGV[7]) then return 'lost' end
local owner = redis.call('HGET', OWNERS, key)
-- The same create retried after a lost reply finds its own write: not a conflict (written again).
if owner and live(owner, now) and not (owner == lease and redis.call('HGET', VALUES, key) == value) then
  return 'exists'
end
put(lease, key, value)
return 'ok'
"""

# ARGV[4] lease id, ARGV[5] key, ARGV[6] value, ARGV[7] grant token -> 'ok' | 'lost' | 'exists'
_REPLACE = r"""
local now = now_ms()
reap(now)
local lease, key, value = ARGV[4], ARGV[5], ARGV[6]
if not live(lease, now) or not mine(lease, ARGV[7]) then return 'lost' end
local owner = redis.call('HGET', OWNERS, key)
if owner and owner ~= lease and live(owner, now) then return 'exists' end
-- Written even when unchanged: the write also records the key under the lease (which may have
-- been lost and granted again), so that a close always removes it.
put(lease, key, value)
return 'ok'
"""

# ARGV[4] lease id, ARGV[5] key, ARGV[6] grant token -> 'ok'
# (a key the grant does not own is left alone: another lease's, or a later grant's of the same id)
_DELETE = r"""
local lease, key = ARGV[4], ARGV[5]
if redis.call('HGET', OWNERS, key) == lease and mine(lease, ARGV[6]) then
  remove(key)
  redis.call('SREM', lease_keys(lease), key)
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
#   -> {'ok', entries} | {'epoch'} | {'trimmed'}
_POLL = r"""
local function poll()
  reap(now_ms())
  if epoch() ~= ARGV[4] then return {'epoch'} end
  local seq = tonumber(redis.call('GET', SEQ) or '0')
  local last = tonumber(ARGV[5])
  if seq == last then return {'ok', {}} end
  local first = redis.call('XRANGE', LOG, '-', '+', 'COUNT', 1)[1]
  -- The change right after the watcher's must still be in the log (field 's' is first).
  if seq < last or not first or tonumber(first[2][2]) > last + 1 then return {'trimmed'} end
  return {'ok', redis.call('XRANGE', LOG, '(' .. ARGV[6], '+', 'COUNT', ARGV[7])}
end
local result = poll()
sweep()  -- after the checks: the epoch is the first thing a poll may write
return result
"""


# Options ---------------------------------------------------------------------------
OPTIONS = (
    Option("timeout", parse_float(0.1, 3600.0), 5.0, "socket connect/read timeout in seconds"),
    prefix_option("waypost:", separator="", allow_empty=False,
                  help="prefix of every Redis key used; Runtimes see each other only with the same prefix and db"),
    Option("history", parse_int(1, 10_000_000), 10_000, "approximate length of the change log"),
    Option("username", parse_str, None, "ACL user (default: the URL's user)"),
    Option("password", parse_str, None, "password (default: the URL's password)", secret=True),
    *tls_options(),
)


# Errors: the one boundary where redis-py exceptions become waypost's ------------------
# What Redis 7 answers when a command inside a script is one, or touches a key, the ACL user may not.
_ACL_DENIED = ("can't access at least one of the keys", "can't run this command")
_UNAVAILABLE_REPLIES = ("LOADING", "MASTERDOWN", "MISCONF", "TRYAGAIN", "CLUSTERDOWN", "BUSY")


def _translate(exc: Exception, context: str) -> WaypostError:
    # redis-py's AuthenticationError is a ConnectionError: test it first.
    if isinstance(exc, rexc.AuthenticationError | rexc.AuthenticationWrongNumberOfArgsError):
        return AuthenticationError(f"{context}: Redis rejected the credentials ({exc})")
    if isinstance(exc, rexc.NoPermissionError) or any(text in str(exc) for text in _ACL_DENIED):
        return AuthenticationError(
            f"{context}: the Redis ACL user lacks a permission ({exc}); see the ACL rule in the redis backend docs"
        )
    if isinstance(exc, rexc.ConnectionError | rexc.TimeoutError | rexc.ReadOnlyError):
        return BackendUnavailable(f"{context}: {exc}")
    if isinstance(exc, rexc.ResponseError) and str(exc).startswith(_UNAVAILABLE_REPLIES):
        return BackendUnavailable(f"{context}: {exc}")
    return WaypostError(f"{context}: Redis error: {exc}")


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


_Entry = tuple[str, Mapping[bytes, bytes]]  # (log id, fields)
_Items = list[tuple[str, bytes]]  # (key, value) pairs


class RedisBackend(Backend):
    __doc__ = __doc__
    schemes: ClassVar[tuple[str, ...]] = ("redis", "rediss")
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
        self._prefix: str = options["prefix"]
        self._history: int = options["history"]
        self._connect_kwargs = _connect_kwargs(url, options)
        self._ttl = 10.0  # until a lease is granted: only sets the watch poll period
        self._watches: WatchRegistry[_RedisWatch] = WatchRegistry(self.describe)
        self._lock = threading.Lock()
        self._grants: dict[int, str] = {}  # our leases: id -> token of our grant (guarded by _lock)
        self._client = self._new_client()
        self._scripts = {name: self._client.register_script(_PRELUDE + body) for name, body in (
            ("grant", _GRANT), ("keepalive", _KEEPALIVE), ("create", _CREATE), ("replace", _REPLACE),
            ("delete", _DELETE), ("revoke", _REVOKE), ("list", _LIST), ("snapshot", _SNAPSHOT),
            ("poll", _POLL))}
        try:
            with self._boundary("connecting"):
                self._client.ping()
        except WaypostError:
            self._client.close()
            raise

    @classmethod
    def from_url(cls, url: ParsedURL, options: Mapping[str, Any]) -> RedisBackend:
        return cls(url, options)

    def describe(self) -> str:
        return self._url.redacted

    def __repr__(self) -> str:
        return f"<RedisBackend {self.describe()} prefix={self._prefix!r}>"

    # plumbing ------------------------------------------------------------------------
    def _new_client(self, *, watch_timeout: float | None = None) -> redis.Redis:
        """A client with this backend's settings.

        A watch gets its own single connection (``watch_timeout`` is its socket
        timeout), without redis-py's retry: its loop retries itself, and a read
        it breaks on close must not be redone.
        """
        kwargs = dict(self._connect_kwargs)
        if watch_timeout is not None:
            kwargs |= {"retry": Retry(NoBackoff(), 0), "socket_timeout": watch_timeout}
        return redis.Redis(single_connection_client=watch_timeout is not None, **kwargs)

    @contextlib.contextmanager
    def _boundary(self, what: str) -> Iterator[None]:
        """Translate redis-py exceptions raised inside into waypost's, cause chained."""
        try:
            yield
        except rexc.RedisError as exc:
            raise _translate(exc, f"{what} on {self.describe()}") from exc

    def _run(self, script: str, *args: str | bytes | int, client: redis.Redis | None = None) -> Any:
        """Run a named script (EVALSHA, loading it after a restart) inside the boundary."""
        self._watches.check_open()
        argv = (self._prefix, secrets.token_hex(8), self._history, *args)
        with self._boundary(f"redis {script}"):
            return self._scripts[script](keys=[], args=argv, client=client)

    # SPI -------------------------------------------------------------------------------
    def grant_lease(self, ttl: float, preferred_id: int | None = None) -> Lease:
        self._ttl = ttl
        for _ in range(16):
            lease_id = preferred_id or random_instance_id()
            token = secrets.token_hex(8)
            if self._run("grant", str(lease_id), _ms(ttl), token):
                with self._lock:
                    self._grants[lease_id] = token
                return Lease(lease_id, ttl)
            if preferred_id is not None:
                raise AlreadyRegistered(f"instance id {lease_id:x} is held by a live Runtime")
        raise WaypostError("could not find a free random lease id in 16 tries")  # pragma: no cover

    def _grant_of(self, lease_id: int) -> str:
        """The token of our grant of ``lease_id`` (``''`` if it is not ours: matches no grant)."""
        with self._lock:
            return self._grants.get(lease_id, "")

    def keep_alive(self, lease: Lease) -> None:
        if not self._run("keepalive", str(lease.id), _ms(lease.ttl), self._grant_of(lease.id)):
            raise LeaseLost(f"redis lease {lease.id:x} has expired, was revoked, or its id was granted again")

    def revoke_lease(self, lease_id: int) -> None:
        with self._lock:
            token = self._grants.get(lease_id, "")
        self._run("revoke", str(lease_id), token)
        with self._lock:
            if self._grants.get(lease_id) == token:
                del self._grants[lease_id]

    def create(self, lease: Lease, key: str, value: bytes) -> None:
        self._check_write(self._run("create", str(lease.id), key, value, self._grant_of(lease.id)), lease, key)

    def replace(self, lease: Lease, key: str, value: bytes) -> None:
        self._check_write(self._run("replace", str(lease.id), key, value, self._grant_of(lease.id)), lease, key)

    def delete(self, lease: Lease, key: str) -> None:
        self._run("delete", str(lease.id), key, self._grant_of(lease.id))

    def list(self, prefix: str) -> list[tuple[str, bytes]]:
        keys, values = self._run("list", prefix)
        return _pairs(keys, values)

    def watch(self, prefix: str, sink: WatchSink) -> WatchHandle:
        return self._watches.open(_RedisWatch(self, prefix, sink))

    def close(self) -> None:
        if self._watches.close():
            self._client.close()

    # used by watches ---------------------------------------------------------------------
    def _snapshot(self, prefix: str, client: redis.Redis) -> tuple[_Items, _Position]:
        keys, values, epoch, seq, last_id = self._run("snapshot", prefix, client=client)
        return _pairs(keys, values), _Position(_text(epoch), int(seq), _text(last_id))

    @staticmethod
    def _check_write(result: Any, lease: Lease, key: str) -> None:
        status = _text(result)
        if status == "lost":
            raise LeaseLost(f"redis lease {lease.id:x} has expired or was revoked")
        if status == "exists":
            raise AlreadyRegistered(f"{key} is already registered by another Runtime")


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


def _connect_kwargs(url: ParsedURL, options: Mapping[str, Any]) -> dict[str, Any]:
    (address,) = hosts(url, DEFAULT_PORT, most=1)
    db_text = url.path.strip("/") or "0"
    if not (db_text.isascii() and db_text.isdigit()):
        raise ConfigError(f"invalid database {url.path!r} in {url.redacted}: expected /N, e.g. /0")
    tls = tls_files(url, options, tls=url.scheme == "rediss")
    timeout: float = options["timeout"]
    kwargs: dict[str, Any] = {
        "host": address.host, "port": address.port, "db": int(db_text),
        "username": options["username"] or url.username, "password": options["password"] or url.password,
        "socket_timeout": timeout, "socket_connect_timeout": timeout,
        # One immediate retry on a broken connection (a pooled socket the server closed,
        # e.g. after a restart); never on a timeout, which would double the bound.
        "retry": Retry(NoBackoff(), 1, supported_errors=(rexc.ConnectionError,)),
        "driver_info": None,  # no CLIENT SETINFO: a narrow ACL user may not have it
    }
    if tls is not None:
        kwargs |= {"ssl": True, "ssl_cert_reqs": "required", "ssl_ca_certs": tls.ca_cert,
                   "ssl_certfile": tls.client_cert, "ssl_keyfile": tls.client_key}
    return kwargs


class _Position:
    """Where a watch is in the change log."""

    __slots__ = ("epoch", "last_id", "seq")

    def __init__(self, epoch: str, seq: int, last_id: str) -> None:
        self.epoch = epoch
        self.seq = seq
        self.last_id = last_id


class _RedisWatch(WatchLoop):
    """Snapshot, then follow the change log on a dedicated connection (XREAD BLOCK between polls)."""

    thread_name = "waypost-redis-watch"
    resumable = True

    def __init__(self, backend: RedisBackend, prefix: str, sink: WatchSink) -> None:
        silence = max(backend._ttl, 1.0)
        # Block short enough to reap often, and well inside the socket timeout (else a quiet log
        # would read as a dead server); a silent server times the socket out within the limit.
        block = min(backend._ttl / 4, MAX_WATCH_BLOCK, silence / 4)
        timeout = min(backend._connect_kwargs["socket_timeout"], silence - block)
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
            raise Resync("the Redis data was replaced (restart or flush)" if status == "epoch"
                         else "the change log was trimmed past this watcher")
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
                raise Resync("the change log has a gap (restart or trim)")
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

