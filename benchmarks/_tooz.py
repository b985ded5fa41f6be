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

tooz is a benchmark-only dependency (tox env ``bench``); when it is missing
every tooz figure is reported as not measured, with the import error.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable
from typing import Any

POLL = 0.01


def tooz_error(backend: str | None = None) -> str | None:
    """``None`` if tooz (and, for etcd, its etcd3gw client) imports, else why not."""
    try:
        import tooz.coordination  # noqa: F401

        if backend == "etcd":
            import etcd3gw  # noqa: F401
        elif backend == "redis":
            import redis  # noqa: F401
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
        result: dict[bytes, Any] = self.coord.get_members_with_capabilities(group.encode()).get()
        return result

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
        elif hasattr(coord, "_prefix_group"):  # etcd3gw driver
            prefix = coord._prefix_group(gid)
            lease = coord.client.lease(3600)
            for member, caps in members.items():
                coord.client.put((prefix + member.encode()).decode(), utils.dumps(caps), lease=lease)
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
