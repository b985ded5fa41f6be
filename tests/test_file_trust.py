"""The file backend never reads, writes or deletes anything outside its store, and refuses a store
it cannot trust (another user could plant or delete instances in it)."""

from __future__ import annotations

import logging
import os
import shutil
import stat
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

import waypost
from waypost.backends import file as file_backend
from waypost.backends.file import encode_name
from waypost.contrib.conformance import wait_until

DYNAMO_VALUE = (
    b'{"type":"Endpoint","component":"backend","endpoint":"generate","namespace":"dynamo",'
    b'"instance_id":8026718667892531462,"transport":{"tcp":"127.0.0.1:42043"}}'
)
DYNAMO_NAME = "dynamo%2Fbackend%2Fgenerate%2F6f64a219dfbb2106"
LONG_AGO = time.time() - 3600


@pytest.fixture
def decoy(tmp_path: Path) -> Path:
    """A directory outside any store that looks like one's contents, every file an hour old."""
    target = tmp_path / "decoy"
    target.mkdir(mode=0o700)
    for name in ("passwd", "shadow", DYNAMO_NAME, "6f64a219dfbb2106", "abc", ".tmp_0123"):
        (target / name).write_bytes(DYNAMO_VALUE if name == DYNAMO_NAME else b"precious " + name.encode())
        os.utime(target / name, (LONG_AGO, LONG_AGO))
    return target


def snapshot(directory: Path) -> dict[str, tuple[bytes, int]]:
    return {p.name: (p.read_bytes(), p.stat().st_mtime_ns) for p in sorted(directory.iterdir())}


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "waypost", *args], capture_output=True, text=True, timeout=60,
                          check=False)


@pytest.mark.parametrize("linked", ["", "v1", "v1/instances", ".waypost", ".waypost/leases"])
def test_a_symlinked_store_directory_is_refused_and_its_target_untouched(
    tmp_path: Path, decoy: Path, linked: str
) -> None:
    root = tmp_path / "store"
    link = root / linked if linked else root
    link.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    link.symlink_to(decoy)
    before = snapshot(decoy)
    with pytest.raises(waypost.ConfigError, match="symbolic link") as caught:
        waypost.connect(f"file://{root}", ttl=1.0)
    assert str(link) in str(caught.value)
    result = cli("list", "--url", f"file://{root}")
    assert result.returncode == 1
    assert "symbolic link" in result.stderr and "Traceback" not in result.stderr
    assert snapshot(decoy) == before


def test_a_store_directory_swapped_for_a_symlink_while_in_use_is_never_followed(
    tmp_path: Path, decoy: Path, caplog: pytest.LogCaptureFixture
) -> None:
    root = tmp_path / "store"
    before = snapshot(decoy)
    with caplog.at_level(logging.WARNING, logger="waypost"), waypost.connect(f"file://{root}", ttl=1.0) as rt:
        rt.namespace("ns").component("c").endpoint("e").register(waypost.TransportType.tcp("h:1"))
        shutil.rmtree(root / "v1" / "instances")
        (root / "v1" / "instances").symlink_to(decoy)
        with pytest.raises(waypost.ConfigError, match="symbolic link"):
            rt.list_instances()
        wait_until(lambda: any("keepalive" in r.getMessage() and "symbolic link" in r.getMessage()
                               for r in caplog.records), 5.0, what="a keepalive refusing the link")
    assert snapshot(decoy) == before


@pytest.mark.parametrize("mode", [0o777, 0o1777, 0o770, 0o702])
@pytest.mark.parametrize("where", ["", "v1/instances", ".waypost/leases"])
def test_a_store_writable_by_others_is_refused(tmp_path: Path, mode: int, where: str) -> None:
    root = tmp_path / "store"
    for directory in (root, root / "v1", root / "v1" / "instances", root / ".waypost", root / ".waypost" / "leases"):
        directory.mkdir(mode=0o700)
        directory.chmod(0o700)  # whatever the umask
    (root / where).chmod(mode)
    if mode & 0o020 and not mode & 0o002:  # group-writable is refused unless the group is the user alone
        if os.geteuid() != 0:
            pytest.skip("giving the directory a shared group needs root")
        os.chown(root / where, -1, 65534)
    with pytest.raises(waypost.ConfigError) as caught:
        waypost.connect(f"file://{root}", ttl=1.0)
    message = str(caught.value)
    assert str(root / where).rstrip("/") in message
    assert f"{stat.S_IMODE(mode):04o}" in message and f"chmod -R go-w {root / where}".rstrip("/") in message
    assert "group" in message if mode & 0o020 else "others" in message


def test_a_store_owned_by_another_user_is_refused(tmp_path: Path) -> None:
    if os.geteuid() == 0:
        root = tmp_path / "store"
        root.mkdir(mode=0o700)
        os.chown(root, 65534, 65534)
        owner = "uid 65534"
    else:
        root, owner = Path("/"), "uid 0"  # owned by root, as a directory of another user's would be
    with pytest.raises(waypost.ConfigError, match="not by this user") as caught:
        waypost.connect(f"file://{root}", ttl=1.0)
    assert owner in str(caught.value) and str(root) in str(caught.value)
    if os.geteuid() == 0:
        assert list(root.iterdir()) == []  # nothing was created in it


def test_special_files_in_the_bucket_are_skipped_never_followed_read_or_deleted(
    tmp_path: Path, decoy: Path, caplog: pytest.LogCaptureFixture
) -> None:
    root = tmp_path / "store"
    with caplog.at_level(logging.WARNING, logger="waypost"), waypost.connect(f"file://{root}", ttl=1.0) as rt:
        good = rt.namespace("ns").component("c").endpoint("e").register(waypost.TransportType.tcp("h:1"))
        bucket = root / "v1" / "instances"
        fifo, link = bucket / encode_name("ns/c/fifo/1"), bucket / DYNAMO_NAME
        os.mkfifo(fifo)
        link.symlink_to(decoy / DYNAMO_NAME)  # the target is valid and an hour old
        os.utime(fifo, (LONG_AGO, LONG_AGO))
        os.utime(link, (LONG_AGO, LONG_AGO), follow_symlinks=False)
        before = snapshot(decoy)
        assert _within(5.0, rt.list_instances) == [good.instance]
        with rt.watch() as watch:
            assert watch.instances == [good.instance]
        assert stat.S_ISFIFO(fifo.lstat().st_mode) and link.is_symlink()
        assert snapshot(decoy) == before
    warnings = [r.getMessage() for r in caplog.records]
    assert sum("fifo" in w and "not a regular file" in w for w in warnings) == 1
    assert sum(DYNAMO_NAME in w and "symbolic link" in w for w in warnings) == 1


def test_a_fifo_swapped_in_between_listing_and_reading_never_blocks(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    root = tmp_path / "store"
    with waypost.connect(f"file://{root}", ttl=1.0) as rt:
        bucket = root / "v1" / "instances"
        (bucket / DYNAMO_NAME).write_bytes(DYNAMO_VALUE)
        as_listed = (bucket / DYNAMO_NAME).lstat()
        (bucket / DYNAMO_NAME).unlink()
        os.mkfifo(bucket / DYNAMO_NAME)
        real_lstat = file_backend._Dir.lstat
        # The listing still sees the regular file that was there a moment ago.
        monkeypatch.setattr(file_backend._Dir, "lstat",
                            lambda self, name: as_listed if name == DYNAMO_NAME else real_lstat(self, name))
        with caplog.at_level(logging.WARNING, logger="waypost"):
            assert _within(5.0, rt.list_instances) == []
        assert any("not a regular file" in r.getMessage() for r in caplog.records)


def test_an_oversized_file_is_skipped_with_one_warning(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    root = tmp_path / "store"
    with caplog.at_level(logging.WARNING, logger="waypost"), waypost.connect(f"file://{root}", ttl=10.0) as rt:
        good = rt.namespace("ns").component("c").endpoint("e").register(waypost.TransportType.tcp("h:1"))
        huge = root / "v1" / "instances" / encode_name("ns/c/huge/1")
        huge.write_bytes(DYNAMO_VALUE[:-1] + b' ' * (waypost.core.MAX_VALUE_BYTES + 1) + b"}")
        assert rt.list_instances() == [good.instance]
        assert rt.list_instances() == [good.instance]
    assert sum("huge" in r.getMessage() and "bytes" in r.getMessage() for r in caplog.records) == 1


def _within(seconds: float, call: object) -> object:
    """Run ``call`` in a thread; fail if it has not returned within ``seconds`` (it would hang forever)."""
    result: list[object] = []
    worker = threading.Thread(target=lambda: result.append(call()), daemon=True)  # type: ignore[operator]
    worker.start()
    worker.join(seconds)
    assert not worker.is_alive(), f"{call} blocked for more than {seconds} s"
    return result[0]


def test_a_refused_reopen_leaves_no_descriptor_behind_to_be_reused(tmp_path: Path, decoy: Path) -> None:
    """After a store directory is refused, whatever directory the process opens next is never taken for it."""
    root = tmp_path / "store"
    victim = tmp_path / "app-data"
    victim.mkdir(mode=0o700)
    for n in range(20):
        (victim / encode_name(f"ns/c/e/{n + 1:x}")).write_bytes(b"app data")
        os.utime(victim / encode_name(f"ns/c/e/{n + 1:x}"), (LONG_AGO, LONG_AGO))
    before = snapshot(victim)
    with waypost.connect(f"file://{root}", ttl=1.0) as rt:
        shutil.rmtree(root / "v1" / "instances")
        (root / "v1" / "instances").symlink_to(decoy)
        with pytest.raises(waypost.ConfigError, match="symbolic link"):
            rt.list_instances()
        opened = [os.open(victim, os.O_RDONLY | os.O_DIRECTORY) for _ in range(8)]  # reuse freed numbers
        try:
            with pytest.raises(waypost.ConfigError, match="symbolic link"):
                rt.list_instances()
        finally:
            for fd in opened:
                os.close(fd)
    assert snapshot(victim) == before


def test_a_renamed_store_is_left_for_the_one_now_at_its_path(tmp_path: Path) -> None:
    root = tmp_path / "store"
    with waypost.connect(f"file://{root}", ttl=10.0) as old, old.watch():
        old.namespace("ns").component("c").endpoint("e").register(waypost.TransportType.tcp("h:1"))
        root.rename(tmp_path / "store.old")
        with waypost.connect(f"file://{root}", ttl=10.0) as new:
            reg = new.namespace("ns").component("c").endpoint("e").register(waypost.TransportType.tcp("h:2"))
            assert old.list_instances() == [reg.instance]  # both Runtimes use the store at that path


def test_a_store_made_writable_by_others_after_connect_is_refused(tmp_path: Path) -> None:
    root = tmp_path / "store"
    with waypost.connect(f"file://{root}", ttl=10.0) as rt:
        assert rt.list_instances() == []
        (root / "v1" / "instances").chmod(0o777)
        with pytest.raises(waypost.ConfigError, match="writable by group and others"):
            rt.list_instances()


def test_files_owned_by_another_user_are_never_read_as_instances(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    if os.geteuid() != 0:
        pytest.skip("creating a file owned by another user needs root")
    root = tmp_path / "store"
    with caplog.at_level(logging.WARNING, logger="waypost"), waypost.connect(f"file://{root}", ttl=10.0) as rt:
        planted = root / "v1" / "instances" / DYNAMO_NAME
        planted.write_bytes(DYNAMO_VALUE)
        os.chown(planted, 65534, 65534)
        assert rt.list_instances() == []
        with rt.watch() as watch:
            assert watch.instances == []
    assert any("owned by uid 65534" in r.getMessage() for r in caplog.records)


def test_a_group_writable_store_is_accepted_only_for_a_private_group(tmp_path: Path) -> None:
    """Dynamo under umask 002 makes 0775 directories: fine when the group is the user alone."""
    root = tmp_path / "store"
    root.mkdir(mode=0o700)
    root.chmod(0o775)
    if file_backend._private_group(os.getegid()):
        os.chown(root, -1, os.getegid())
        with waypost.connect(f"file://{root}", ttl=10.0) as rt:
            assert rt.list_instances() == []
    if os.geteuid() == 0:  # a shared group: refused
        os.chown(root, -1, 65534)
        with pytest.raises(waypost.ConfigError, match="writable by group"):
            waypost.connect(f"file://{root}", ttl=10.0)


def test_the_filesystem_root_is_never_a_store() -> None:
    with pytest.raises(waypost.ConfigError, match="refusing / as the store"):
        waypost.connect("file:///", ttl=10.0)


def test_dot_dot_after_a_linked_parent_is_resolved_by_the_kernel(tmp_path: Path) -> None:
    (tmp_path / "real" / "deep").mkdir(mode=0o700, parents=True)
    (tmp_path / "link").symlink_to(tmp_path / "real" / "deep")
    with waypost.connect(f"file://{tmp_path}/link/../store", ttl=10.0) as rt:
        rt.namespace("ns").component("c").endpoint("e").register(waypost.TransportType.tcp("h:1"))
        assert (tmp_path / "real" / "store" / "v1" / "instances").is_dir()  # as Dynamo and the shell see it


def test_every_untrusted_directory_is_named_in_one_error(tmp_path: Path) -> None:
    root = tmp_path / "store"
    for directory in (root, root / "v1", root / "v1" / "instances", root / ".waypost", root / ".waypost" / "leases"):
        directory.mkdir(mode=0o700)
        directory.chmod(0o700)
    (root / "v1" / "instances").chmod(0o777)
    (root / ".waypost" / "leases").chmod(0o777)
    with pytest.raises(waypost.ConfigError) as caught:
        waypost.connect(f"file://{root}", ttl=10.0)
    assert str(root / "v1" / "instances") in str(caught.value)
    assert str(root / ".waypost" / "leases") in str(caught.value)
