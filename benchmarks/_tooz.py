"""OpenStack tooz (group membership) on the same servers, for comparison.

Mapping of operations (tooz has no per-endpoint registry; a group stands for a
component, a member for an instance, capabilities for the instance's JSON):

* register    ≈ ``join_group(group, capabilities).get()``
* unregister  ≈ ``leave_group(group).get()``
* list        ≈ ``get_members_with_capabilities(group).get()`` (one round trip;
  ``get_members`` + ``get_member_capabilities`` per member would be N+1)
* watch       ≈ ``watch_join_group`` / ``watch_leave_group`` + ``run_watchers()``
  called in a loop (tooz watches by polling the member list; the harness polls
  every ``POLL`` seconds, a far tighter loop than a service would run)
* liveness    = tooz's heartbeat thread (``start(start_heart=True)``) with
  ``membership_timeout`` = the ttl.

For the file layout tooz's ``file://`` driver is the peer (member files whose
mtime is their liveness, like Dynamo's layout; in its own directory).

Consul: tooz 9 dropped its Consul driver; the peer is tooz 8.1 + python-consul2,
which cannot share this interpreter (python-consul2 and py-consul are both the
``consul`` package). It runs in a separate virtualenv (``run.py`` builds it,
``--tooz-consul-python`` points at it); :class:`RemoteToozMember` drives a
``_worker.py serve`` process there and the operation is timed *inside* that
process (the pipe round trip is not counted). tooz 8.1's Consul driver has no
``get_members_with_capabilities``: list = ``get_members`` + one
``get_member_capabilities`` per member, all submitted before the first
``.get()`` (tooz's futures run on its executor). Its members are plain keys, not
tied to its session, and python-consul2 refuses session TTLs below 10 s: no
crash detection or ttl = 2 s keepalive to compare with.

tooz is a benchmark-only dependency (tox env ``bench``); when it is missing
every tooz figure is reported as not measured, with the import error.
"""

from __future__ import annotations

import contextlib
import json
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

POLL = 0.01
CONSUL_TOOZ_TTL = 10  # python-consul2 asserts 10 <= ttl


def tooz_error(backend: str | None = None) -> str | None:
    """``None`` if tooz (and, for etcd, its etcd3gw client) imports, else why not."""
    try:
        import tooz.coordination  # noqa: F401

        if backend == "etcd":
            import etcd3gw  # noqa: F401
        elif backend == "redis":
            import redis  # noqa: F401
        elif backend == "consul":
            from tooz.drivers import consul  # noqa: F401  (tooz 8.x + python-consul2 only)
    except Exception as exc:  # pragma: no cover - depends on the environment
        return f"{type(exc).__name__}: {exc}"
    return None


def tooz_url(backend: str, endpoint: str) -> str | None:
    """tooz's URL for the same server (file: ``endpoint`` is the directory)."""
    if backend == "file":
        return f"file://{endpoint}"
    if backend == "etcd":
        return f"etcd3+http://{endpoint}"
    if backend == "redis":
        return f"redis://{endpoint}"
    if backend == "consul":
        return f"consul://{endpoint}?ttl={CONSUL_TOOZ_TTL}"
    return None


class ToozMember:
    """One tooz coordinator (one member id)."""

    def __init__(self, url: str, member_id: str, ttl: float = 10.0, heart: bool = True) -> None:
        from tooz import coordination

        self.coordination = coordination
        if url.startswith("file"):  # liveness = member file mtime younger than `timeout` (whole seconds)
            self.coord = coordination.get_coordinator(url, member_id.encode(), timeout=str(max(1, round(ttl))))
        else:
            ttl_opt = str(max(1, round(ttl))) if url.startswith("etcd3") else str(ttl)
            self.coord = coordination.get_coordinator(url, member_id.encode(), membership_timeout=ttl_opt)
        self.coord.start(start_heart=heart)
        self.member_id = member_id.encode()

    def ensure_group(self, group: str) -> None:
        with contextlib.suppress(self.coordination.GroupAlreadyExist):
            self.coord.create_group(group.encode()).get()

    def join(self, group: str, capabilities: dict[str, Any]) -> None:
        self.coord.join_group(group.encode(), capabilities).get()

    def leave(self, group: str) -> None:
        self.coord.leave_group(group.encode()).get()

    def members(self, group: str) -> dict[bytes, Any]:
        gid = group.encode()
        if hasattr(self.coord, "get_members_with_capabilities"):
            result: dict[bytes, Any] = self.coord.get_members_with_capabilities(gid).get()
            return result
        # tooz 8.1 Consul: get_members + get_member_capabilities per member (futures first, then results)
        futures = {m: self.coord.get_member_capabilities(gid, m) for m in self.coord.get_members(gid).get()}
        return {m: f.get() for m, f in futures.items()}

    def watch(self, group: str, on_event: Callable[[str, str], None]) -> None:
        """Register join/leave callbacks; events arrive from :meth:`poll`."""
        gid = group.encode()
        self.coord.watch_join_group(gid, lambda ev: on_event("put", ev.member_id.decode()))
        self.coord.watch_leave_group(gid, lambda ev: on_event("delete", ev.member_id.decode()))

    def poll_forever(self, stop: Callable[[], bool]) -> None:
        while not stop():
            self.coord.run_watchers()
            time.sleep(POLL)

    def populate(self, group: str, members: dict[str, dict[str, Any]]) -> None:
        """Write many members at once in tooz's own layout (for list benchmarks).

        Joining 10 000 members through tooz would need 10 000 coordinators; the
        keys are written directly the way the driver writes them instead, with
        liveness that outlasts the benchmark.
        """
        from tooz import utils

        coord = self.coord
        gid = group.encode()
        if hasattr(coord, "_group_dir"):  # file driver: one msgpack file per member, mtime = liveness
            import datetime
            import os

            group_dir = os.path.join(coord._group_dir, coord._make_filesystem_safe(gid))
            for member, caps in members.items():
                mid = member.encode()
                details = {"capabilities": caps, "joined_on": datetime.datetime.now(), "member_id": mid,
                           "encoded": False}
                with open(os.path.join(group_dir, f"{coord._make_filesystem_safe(mid)}.raw"), "wb") as f:
                    f.write(utils.dumps(details))
        elif hasattr(coord, "_path_member"):  # consul driver (tooz 8.1): member keys, msgpack, no session
            import base64

            items = [{"KV": {"Verb": "set", "Key": coord._path_member(gid, member.encode()),
                             "Value": base64.b64encode(utils.dumps(caps)).decode("ascii")}}
                     for member, caps in members.items()]
            for i in range(0, len(items), 64):  # Consul's limit of operations per transaction
                coord._client.txn.put(items[i:i + 64])
        elif hasattr(coord, "_prefix_group"):  # etcd3gw driver: the driver's puts, 100 to a transaction
            import base64

            prefix = coord._prefix_group(gid)
            lease = coord.client.lease(3600)
            puts = [{"request_put": {"key": base64.b64encode(prefix + member.encode()).decode("ascii"),
                                     "value": base64.b64encode(utils.dumps(caps)).decode("ascii"),
                                     "lease": lease.id}}
                    for member, caps in members.items()]
            for i in range(0, len(puts), 100):  # etcd's default --max-txn-ops is 128
                coord.client.transaction({"compare": [], "success": puts[i:i + 100], "failure": []})
            self._populate_lease = lease
        else:  # redis driver
            client = coord._client
            encoded_group = coord._encode_group_id(gid)
            pipe = client.pipeline(transaction=False)
            for i, (member, caps) in enumerate(members.items()):
                mid = member.encode()
                pipe.hset(encoded_group, coord._encode_member_id(mid), coord._dumps(caps))
                pipe.psetex(coord._encode_beat_id(mid), 3_600_000, coord.STILL_ALIVE)
                if i % 1000 == 999:
                    pipe.execute()
            pipe.execute()

    def heartbeat(self) -> None:
        self.coord.heartbeat()

    def stop(self) -> None:
        with contextlib.suppress(Exception):
            self.coord.stop()


class RemoteToozMember:
    """A :class:`ToozMember` in another interpreter (``_worker.py serve``), for tooz 8.1 on Consul.

    Same methods; each call is one JSON line each way. ``join``/``leave``/``members``
    return the operation's own duration (``Elapsed``), measured in the other
    process, which ``_common.interleaved`` uses instead of its wall clock.
    """

    def __init__(self, python: str, url: str, member_id: str, ttl: float = 10.0, heart: bool = True) -> None:
        from _common import python_env

        worker = Path(__file__).resolve().parent / "_worker.py"
        self.proc = subprocess.Popen([python, str(worker), "serve", "--impl", "tooz", "--backend", "consul",
                                      "--url", "", "--tooz-url", url, "--component", "-", "--name", member_id,
                                      "--ttl", str(ttl), *([] if heart else ["--no-heart"])],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=python_env())
        self._call("ping")

    def _call(self, op: str, **args: Any) -> Any:
        from _common import Elapsed

        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.write(json.dumps({"op": op, **args}) + "\n")
        self.proc.stdin.flush()
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError(f"tooz worker exited ({self.proc.poll()}) during {op}")
        reply = json.loads(line)
        if "error" in reply:
            raise RuntimeError(f"tooz worker: {op}: {reply['error']}")
        if "count" in reply:  # members: the size, not the data (the data stays in the other process)
            return _Counted(reply["count"], reply["elapsed"])
        return Elapsed(reply.get("elapsed", 0.0))

    def ensure_group(self, group: str) -> None:
        self._call("ensure_group", group=group)

    def join(self, group: str, capabilities: dict[str, Any]) -> Any:
        return self._call("join", group=group, caps=capabilities)

    def leave(self, group: str) -> Any:
        return self._call("leave", group=group)

    def members(self, group: str) -> Any:
        return self._call("members", group=group)

    def populate(self, group: str, members: dict[str, dict[str, Any]]) -> None:
        self._call("populate", group=group, members=members)

    def stop(self) -> None:
        if self.proc.poll() is None:
            with contextlib.suppress(Exception):
                self._call("stop")
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)


class _Counted:
    """What a remote ``members`` returns: its length and the call's own duration."""

    def __init__(self, count: int, elapsed: float) -> None:
        self.count, self.elapsed = count, elapsed

    def __len__(self) -> int:
        return self.count


def make_member(target: Any, member_id: str, ttl: float = 10.0, heart: bool = True) -> Any:
    """A tooz member for ``target``: in this process, or in the tooz-consul interpreter."""
    python = getattr(target, "tooz_python", None)
    if python:
        return RemoteToozMember(python, target.tooz_url, member_id, ttl=ttl, heart=heart)
    return ToozMember(target.tooz_url, member_id, ttl=ttl, heart=heart)


def serve(tooz_url: str, member_id: str, ttl: float, heart: bool) -> None:
    """The other end of :class:`RemoteToozMember` (stdin: JSON commands, stdout: JSON replies)."""
    member = ToozMember(tooz_url, member_id, ttl=ttl, heart=heart)

    def reply(obj: dict[str, Any]) -> None:
        sys.stdout.write(json.dumps(obj) + "\n")
        sys.stdout.flush()

    for line in sys.stdin:
        cmd = json.loads(line)
        op = cmd["op"]
        try:
            t0 = time.perf_counter()
            if op == "join":
                member.join(cmd["group"], cmd["caps"])
            elif op == "leave":
                member.leave(cmd["group"])
            elif op == "members":
                count = len(member.members(cmd["group"]))
                reply({"count": count, "elapsed": time.perf_counter() - t0})
                continue
            elif op == "ensure_group":
                member.ensure_group(cmd["group"])
            elif op == "populate":
                member.populate(cmd["group"], cmd["members"])
            elif op == "stop":
                member.stop()
                reply({"elapsed": 0.0})
                return
            reply({"elapsed": time.perf_counter() - t0})
        except Exception as exc:
            reply({"error": f"{type(exc).__name__}: {exc}"})
