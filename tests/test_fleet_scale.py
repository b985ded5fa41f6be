"""Fleet scale (issue 10): costs that do not grow with the store or the fleet, bounded watchers.

The figures (CPU per keepalive, convergence under churn, watcher RSS) are measured by the soak suite
in benchmarks/soak; these tests pin down the mechanisms, each of which failed on the code before.
"""

from __future__ import annotations

import itertools
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import waypost
from waypost import Added, Removed, Resynced, TransportType
from waypost.backends import file as file_backend
from waypost.backends.file import encode_name
from waypost.contrib.conformance import wait_until
from waypost.core import faults


def tcp(n: int) -> TransportType:
    return TransportType.tcp(f"127.0.0.1:{n}")


def plant_foreign(bucket: Path, count: int, instance_id: int = 0xF00D) -> None:
    value = waypost.Instance("other", "c", "e", instance_id, tcp(1)).to_json()
    for n in range(count):
        name = encode_name(f"other/c/e{n}/{instance_id:x}")
        (bucket / name).write_bytes(value.replace(b'"e"', f'"e{n}"'.encode()))


@pytest.fixture
def counted_listings(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[str]]:
    """Every directory listing the file backend does, by directory."""
    calls: list[str] = []
    real = file_backend._Dir.names

    def names(self: Any) -> list[str]:
        calls.append(self.path)
        return real(self)

    monkeypatch.setattr(file_backend._Dir, "names", names)
    return calls


# -- file: O(own files) keepalives, one elected reap, incremental watches ---------------------------

def test_a_keepalive_touches_only_its_own_files_however_big_the_store(tmp_path: Path,
                                                                       counted_listings: list[str]) -> None:
    with waypost.connect(f"file://{tmp_path}", ttl=10.0) as rt:
        plant_foreign(tmp_path / "v1" / "instances", 2000)
        for n in range(3):
            rt.namespace("ns").component("c").endpoint(f"e{n}").register(tcp(n))
        counted_listings.clear()
        for _ in range(20):
            rt.backend.keep_alive(rt.lease)
        assert counted_listings == [], "a keepalive listed the store"


def test_without_watchers_keepalives_reap_once_per_four_stale_afters_between_them(tmp_path: Path) -> None:
    """With no watch reaping, the store-wide pass is garbage collection: 5 Runtimes run it every 4 s here."""
    backends = [waypost.connect(f"file://{tmp_path}", ttl=1.0) for _ in range(5)]
    try:
        passes: list[float] = []
        for rt in backends:
            real = rt.backend._reap_everything
            rt.backend._reap_everything = lambda real=real: (passes.append(time.monotonic()), real())  # type: ignore[method-assign]
        started = time.monotonic()
        while time.monotonic() - started < 9.0:  # 5 Runtimes keeping alive for 9 s: passes at 0, 4 and 8 s
            for rt in backends:
                rt.backend.keep_alive(rt.lease)
            time.sleep(0.05)  # paces the calls (no synchronization depends on it)
        assert 2 <= len(passes) <= 3, f"{len(passes)} reap passes in 9 s by 5 Runtimes (stale_after 1 s)"
        assert min(b - a for a, b in itertools.pairwise(passes)) >= 3.5, passes
    finally:
        for rt in backends:
            rt.close()


def test_the_store_wide_pass_examines_only_stale_entries(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """One lstat per live file and nothing more; stale instances and temp files go; links and their targets stay."""
    import os

    with waypost.connect(f"file://{tmp_path}", ttl=1.0) as rt:
        bucket = tmp_path / "v1" / "instances"
        plant_foreign(bucket, 50)
        outside = tmp_path / "outside"
        outside.write_bytes(b"not the store's")
        stale = [bucket / encode_name("other/c/dead/f00d"), bucket / ".tmp_f00d-0123", bucket / "not%encoded"]
        for path in stale:
            path.write_bytes(waypost.Instance("other", "c", "dead", 0xF00D, tcp(1)).to_json())
        (bucket / encode_name("other/c/link/f00d")).symlink_to(outside)
        old = time.time() - 60
        for path in [*stale, outside]:
            os.utime(path, (old, old))
        os.utime(bucket / encode_name("other/c/link/f00d"), (old, old), follow_symlinks=False)
        decoded: list[str] = []
        real = file_backend.decode_name
        monkeypatch.setattr(file_backend, "decode_name", lambda name: (decoded.append(name), real(name))[1])
        rt.backend._reap_everything()
        assert sorted(decoded) == sorted([encode_name("other/c/dead/f00d"), "not%encoded",
                                          encode_name("other/c/link/f00d")])
        assert not stale[0].exists() and not stale[1].exists()
        assert stale[2].exists(), "a name that is not a key is not this store's to delete"
        assert (bucket / encode_name("other/c/link/f00d")).is_symlink() and outside.read_bytes() == b"not the store's"
        assert len(rt.list_instances("other")) == 50


def test_processes_sharing_a_store_elect_one_reaper_per_interval(tmp_path: Path) -> None:
    observers = [waypost.connect(f"file://{tmp_path}", ttl=2.0) for _ in range(4)]
    try:
        passes: list[int] = []
        for n, rt in enumerate(observers):
            real = rt.backend._reap_everything
            rt.backend._reap_everything = lambda n=n, real=real: (passes.append(n), real())  # type: ignore[method-assign]
        interval = observers[0].backend.reap_interval
        threads = [threading.Thread(target=lambda rt=rt: [rt.backend._maybe_reap(interval) or time.sleep(0.01)
                                                          for _ in range(100)]) for rt in observers]
        started = time.monotonic()
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        elapsed = time.monotonic() - started
        assert len(passes) <= elapsed / interval + 2, f"{len(passes)} passes in {elapsed:.2f} s (interval {interval})"
    finally:
        for rt in observers:
            rt.close()


def test_an_inotify_watch_applies_changes_without_rescanning(tmp_path: Path, counted_listings: list[str]) -> None:
    url = f"file://{tmp_path}"
    with waypost.connect(url, ttl=10.0, watcher="inotify") as observer, \
            waypost.connect(url, ttl=10.0) as writer, observer.watch() as watch:
        plant_foreign(tmp_path / "v1" / "instances", 500)
        wait_until(lambda: len(watch.instances) == 500, 10.0, what="the planted files seen")
        counted_listings.clear()
        for n in range(20):
            reg = writer.namespace("ns").component("c").endpoint(f"e{n}").register(tcp(n))
            wait_until(lambda reg=reg: reg.instance in watch.instances, 5.0, what="a change seen")
        bucket = str(tmp_path / "v1" / "instances")
        assert counted_listings.count(bucket) == 0, f"{counted_listings.count(bucket)} full listings for 20 changes"


def test_a_polling_watch_skips_scans_while_the_directory_is_unchanged(tmp_path: Path,
                                                                      counted_listings: list[str]) -> None:
    with waypost.connect(f"file://{tmp_path}", ttl=10.0, watcher="poll", poll_interval=0.02) as rt, rt.watch():
        rt.namespace("ns").component("c").endpoint("e").register(tcp(1))
        # For 1 s after a change every poll rescans (the directory's mtime is coarse, see
        # _FileWatch._unchanged_since_scan): let that window pass, then observe a quiet second.
        time.sleep(1.5)
        counted_listings.clear()
        time.sleep(1.0)  # the measurement window, not a synchronisation
        bucket = str(tmp_path / "v1" / "instances")
        assert counted_listings.count(bucket) <= 2, "a quiet directory was listed every poll"


# -- a slow consumer: bounded memory, the truth when it catches up --------------------------------------

def test_an_unread_watch_keeps_a_bounded_queue_and_catches_up_with_one_resynced() -> None:
    with waypost.connect("memory://slow-consumer", ttl=30, max_queued=100) as rt, rt.watch("ns") as watch, \
            rt.endpoint("ns.c.e0").client() as client:
        regs = {}
        for n in range(5000):  # 5 000 changes nobody reads
            name = f"e{n % 50}"
            if n % 3 == 2 and name in regs:
                regs.pop(name).unregister()
            else:
                regs[name] = rt.namespace("ns").component("c").endpoint(name).register(tcp(n))
        truth = {r.instance.key: r.instance for r in regs.values()}
        wait_until(lambda: watch.instances == sorted(truth.values(), key=str), 10.0, what="the view caught up")
        assert len(watch._queue) <= 100, "the queue grew past its bound"
        wait_until(lambda: client.instances() == [r.instance for k, r in regs.items() if k == "e0"], 5.0,
                   what="the client is current")  # a client never lags behind its watch
        state: dict[str, waypost.Instance] = {}
        resynced = 0
        while (event := watch.get(timeout=0)) is not None:
            if isinstance(event, Added):
                state[event.instance.key] = event.instance
            elif isinstance(event, Removed):
                state.pop(event.instance.key, None)
            elif isinstance(event, Resynced):
                resynced += 1
        assert state == truth
        assert resynced == 1


def test_a_watch_that_caught_up_is_live_again() -> None:
    with waypost.connect("memory://slow-consumer-2", ttl=30, max_queued=16) as rt, rt.watch("ns") as watch:
        for n in range(100):
            rt.namespace("ns").component("c").endpoint(f"e{n}").register(tcp(n))
        assert watch.wait_for(lambda e: isinstance(e, Resynced), 5.0) is not None
        later = rt.namespace("ns").component("c").endpoint("later").register(tcp(1))
        event = watch.wait_for(lambda e: isinstance(e, Added), 5.0)
        assert isinstance(event, Added) and event.instance == later.instance


def test_crash_faults_are_public() -> None:
    with waypost.connect("memory://crash", ttl=0.5) as observer:
        rt = waypost.connect("memory://crash", ttl=0.5)
        rt.namespace("ns").component("c").endpoint("e").register(tcp(1))
        faults.crash(rt)
        wait_until(lambda: observer.list_instances("ns") == [], 3.0, what="the crashed Runtime expired")
        assert rt.closed
        with pytest.raises(TypeError):
            faults.crash(object())
