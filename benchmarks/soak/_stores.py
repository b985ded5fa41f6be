"""The stores the soak suite runs on, and the server faults it injects (tests/servers/ underneath).

Each :class:`Store` knows its URL, how long past the ttl a killed Runtime may
linger (the backend's documented bound), and the faults it supports. A fault
runs in the coordinator's main thread (the servers' PDEATHSIG is tied to the
spawning thread) and returns once the fault is lifted (server back, signals
sent, leases revoked): convergence is measured from that moment.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import subprocess
import tempfile
import time
import urllib.request
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import servers
import waypost
from servers import _process

# fault name -> what it does (the report's wording)
FAULTS = {
    "restart": "server SIGKILLed and restarted with its data",
    "restart-empty": "server SIGKILLed and restarted without its data",
    "pause": "server SIGSTOPped for 2 x ttl + 1 s, then SIGCONT",
    "revoke": "every lease revoked from outside",
    "member-loss": "3-member etcd cluster: a follower (the member in use by the Runtimes that picked it) SIGKILLed",
    "leader-loss": "3-member etcd cluster: the leader SIGKILLed",
}
QUICK_FAULTS = ("restart", "pause")


class Store:
    name = "?"
    #: seconds past the ttl within which a SIGKILLed Runtime's instances must be gone for every watcher
    expiry_bound = 1.0
    faults: tuple[str, ...] = ()
    notes: tuple[str, ...] = ()

    def __init__(self, ttl: float) -> None:
        self.ttl = ttl
        self.url = ""
        self.options: dict[str, Any] = {}
        self.server: Any = None
        self.admin: waypost.Runtime | None = None  # the coordinator's own Runtime (lists, revokes)

    def start(self) -> None:
        raise NotImplementedError

    def connect_admin(self) -> waypost.Runtime:
        self.admin = waypost.connect(self.url, ttl=self.ttl, **self.options)
        return self.admin

    def close(self) -> None:
        if self.admin is not None:
            with contextlib.suppress(waypost.WaypostError):
                self.admin.close()
            self.admin = None
        if self.server is not None:
            self.server.close()

    def describe(self) -> str:
        return self.url

    def fault_text(self, name: str) -> str:
        return FAULTS[name]

    def fault(self, name: str) -> dict[str, Any]:
        """Inject fault ``name``; return once it is lifted, with what was done."""
        method: Callable[[], dict[str, Any]] = getattr(self, "_fault_" + name.replace("-", "_"))
        return method()

    # helpers for the network servers
    def _pause(self) -> dict[str, Any]:
        seconds = 2 * self.ttl + 1.0
        self.server.pause()
        time.sleep(seconds)  # the fault itself: the server stays stopped past the ttl
        self.server.resume()
        return {"paused_s": seconds}


class MemoryStore(Store):
    name = "memory"
    expiry_bound = 0.5
    notes = ("in-process only: workers and watchers are objects in the coordinator's process, a SIGKILL is "
             "`faults.crash()` of each of the worker's Runtimes, and RSS is the coordinator's",)

    def start(self) -> None:
        self.url = f"memory://soak-{uuid.uuid4().hex[:8]}"


class FileStore(Store):
    name = "file"
    expiry_bound = 0.5  # poll_interval (0.25 s) + a scan
    faults = ("revoke",)

    def start(self) -> None:
        self.root = tempfile.mkdtemp(prefix="waypost-soak-file-")
        self.url = f"file://{self.root}"

    def close(self) -> None:
        super().close()
        shutil.rmtree(self.root, ignore_errors=True)

    def _fault_revoke(self) -> dict[str, Any]:
        assert self.admin is not None
        leases = Path(self.root, ".waypost", "leases")
        ids = [int(n, 16) for n in os.listdir(leases) if re.fullmatch(r"[0-9a-f]{1,16}", n)]
        for lease_id in ids:
            self.admin.backend.revoke_lease(lease_id)  # as another process would: by id
        return {"revoked": len(ids)}


class EtcdStore(Store):
    name = "etcd"
    expiry_bound = 1.0  # etcd's lessor checks expiry every 500 ms, + a watch round trip
    faults = ("restart", "restart-empty", "pause", "revoke")

    def start(self) -> None:
        self.server = servers.EtcdServer()
        self.server.start()
        self.url = self.server.url

    def _fault_restart(self) -> dict[str, Any]:
        self.server.kill()
        self.server.start()
        return {}

    def _fault_restart_empty(self) -> dict[str, Any]:
        self.server.kill()
        shutil.rmtree(self.server.data_dir, ignore_errors=True)
        self.server.start()
        return {}

    def _fault_pause(self) -> dict[str, Any]:
        return self._pause()

    def _fault_revoke(self) -> dict[str, Any]:
        assert self.admin is not None
        out = subprocess.run([servers.find_binary("etcdctl"), f"--endpoints={self.server.client_url}",
                              "lease", "list"], capture_output=True, text=True, timeout=30, check=True).stdout
        ids = [int(line, 16) for line in out.split() if re.fullmatch(r"[0-9a-f]{1,16}", line)]
        for lease_id in ids:
            self.admin.backend.revoke_lease(lease_id)
        return {"revoked": len(ids), "how": "`etcdctl lease list`, then LeaseRevoke of each from this process"}


class EtcdClusterStore(Store):
    name = "etcd-cluster"
    expiry_bound = 1.5
    faults = ("member-loss", "leader-loss")

    def start(self) -> None:
        self.server = servers.EtcdCluster(3)
        self.server.start()
        self.url = self.server.url

    def _kill_member(self, leader: bool) -> dict[str, Any]:
        lead = self.server.leader()
        victim = lead if leader else next(m for m in self.server.members if m is not lead)
        victim.kill()
        new_leader = self.server.leader(timeout=30)
        self._victim = victim
        return {"killed": victim.name, "was_leader": victim is lead, "leader_after": new_leader.name}

    def _fault_member_loss(self) -> dict[str, Any]:
        return self._kill_member(leader=False)

    def _fault_leader_loss(self) -> dict[str, Any]:
        return self._kill_member(leader=True)

    def heal(self) -> None:
        """Bring the killed member back (with its data) after the fault was measured."""
        victim = getattr(self, "_victim", None)
        if victim is not None and not victim.running:
            victim.start()
            self.server.leader(timeout=30)
        self._victim = None


class PersistentRedisServer(servers.RedisServer):
    """tests/servers' Redis, but with an append-only file (``appendfsync everysec``) kept across restarts,
    so that a SIGKILL + start keeps the data (the tests' Redis has no persistence, by design).
    ``wipe()`` before a start makes it lose everything, like the default."""

    def _before_spawn(self) -> None:
        q = self._q
        lines = [f"bind {servers.HOST}", "protected-mode no", "daemonize no", f"dir {q(str(self.data_dir))}",
                 'save ""', "appendonly yes", "appendfsync everysec", 'logfile ""', "loglevel notice",
                 "databases 16", f"port {self.port}"]
        _process._write_config(self.config_path, lines)

    def wipe(self) -> None:
        shutil.rmtree(self.data_dir, ignore_errors=True)
        self.data_dir.mkdir()


class RedisStore(Store):
    name = "redis"
    expiry_bound = 1.0  # a watch polls (and reaps) every 0.5 s, + a round trip
    faults = ("restart", "restart-empty", "pause", "revoke")
    notes = ("Redis runs with an append-only file (`appendfsync everysec`) so that `restart` keeps the data; "
             "`restart-empty` deletes it first (the tests' default Redis has no persistence)",)

    def start(self) -> None:
        self.server = PersistentRedisServer()
        self.server.start()
        self.url = self.server.url

    def _fault_restart(self) -> dict[str, Any]:
        self.server.kill()
        self.server.start()
        return {}

    def _fault_restart_empty(self) -> dict[str, Any]:
        self.server.kill()
        self.server.wipe()
        self.server.start()
        return {}

    def _fault_pause(self) -> dict[str, Any]:
        return self._pause()

    def _fault_revoke(self) -> dict[str, Any]:
        import redis

        client = redis.Redis(host=servers.HOST, port=self.server.port)
        try:
            keys = [b"waypost:leases", b"waypost:grants", *client.scan_iter(match="waypost:lease:*", count=1000)]
            deleted = client.delete(*keys)
        finally:
            client.close()
        return {"deleted_keys": deleted, "how": "DEL waypost:leases waypost:grants waypost:lease:*"}


class ConsulStore(Store):
    name = "consul"
    faults = ("restart", "pause", "revoke")
    notes = ("Consul: tests/servers' `-dev` agent with default limits (`http_max_conns_per_client` 200…) and only "
             '`session_ttl_min = "1s"` (the default 10 s would refuse ttl = 2 s); a dev agent keeps no data, so '
             "its restart is a restart without data (there is no restart-with-data fault on Consul)",)

    def fault_text(self, name: str) -> str:
        if name == "restart":
            return "agent SIGKILLed and restarted (a dev agent: without its data)"
        return super().fault_text(name)

    @property
    def expiry_bound(self) -> float:  # type: ignore[override]
        return self.ttl + 1.0  # Consul expires a session up to 2 x ttl after its last renewal

    def start(self) -> None:
        self.server = servers.ConsulServer(session_ttl_min="1s")
        self.server.start()
        self.url = self.server.url

    def _http(self, method: str, path: str) -> Any:
        req = urllib.request.Request(f"http://{self.server.endpoint}{path}", method=method)
        with urllib.request.urlopen(req, timeout=10) as resp:
            return json.loads(resp.read() or b"null")

    def _fault_restart(self) -> dict[str, Any]:
        self.server.kill()
        self.server.start()
        return {}

    def _fault_pause(self) -> dict[str, Any]:
        return self._pause()

    def _fault_revoke(self) -> dict[str, Any]:
        sessions = self._http("GET", "/v1/session/list") or []
        for s in sessions:
            self._http("PUT", f"/v1/session/destroy/{s['ID']}")
        return {"revoked": len(sessions), "how": "PUT /v1/session/destroy of every session"}


STORES: dict[str, type[Store]] = {"memory": MemoryStore, "file": FileStore, "etcd": EtcdStore,
                                  "redis": RedisStore, "consul": ConsulStore, "etcd-cluster": EtcdClusterStore}


def plant_foreign_files(root: str, count: int, namespace: str = "foreign") -> None:
    """``count`` instance files of other (pretend) live processes, dated in the future so that no reaper
    deletes them during a measurement: the store looks like one shared with ``count`` live instances."""
    # The layout the file backend documents (Dynamo's): <root>/v1/instances/<key relative to the bucket,
    # every byte outside [A-Za-z0-9] written as %XX>.
    bucket_key = "v1/instances"
    bucket = Path(root, bucket_key)
    for part in (Path(root), Path(root, "v1"), bucket):
        part.mkdir(exist_ok=True, mode=0o700)
    future = time.time() + 86400
    for i in range(count):
        inst = waypost.Instance(namespace, f"c{i % 16}", "e", i + 1, waypost.TransportType.tcp(f"10.0.0.1:{i}"))
        relative = inst.key[len(bucket_key) + 1:].encode()
        path = bucket / "".join(chr(b) if chr(b).isascii() and chr(b).isalnum() else f"%{b:02X}" for b in relative)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            os.write(fd, inst.to_json())
        finally:
            os.close(fd)
        os.utime(path, (future, future))
