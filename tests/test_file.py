"""The file backend: layout, liveness across real processes, and bad directories or files."""

from __future__ import annotations

import json
import logging
import os
import shutil
import signal
import stat
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import waypost
from waypost import Added, Query, Removed, TransportType
from waypost.backends.file import FileBackend, decode_name, encode_name
from waypost.contrib.conformance import wait_until
from waypost.core import faults

TTL = 2.0
DYNAMO_VALUE = (
    b'{"type":"Endpoint","component":"backend","endpoint":"generate","namespace":"dynamo",'
    b'"instance_id":8026718667892531462,"transport":{"tcp":"127.0.0.1:42043/6f64a219dfbb2106/dynamo/backend/'
    b'generate"},"device_type":"cuda","request_plane_codec":"msgpack"}'
)
DYNAMO_NAME = "dynamo%2Fbackend%2Fgenerate%2F6f64a219dfbb2106"

# A Runtime in another process: registers, prints its id and what it sees, then waits to be killed
# or for stdin to close (a graceful stop).
CHILD = textwrap.dedent("""
    import json, sys, time, waypost
    url, endpoint, expected = sys.argv[1], sys.argv[2], int(sys.argv[3])
    with waypost.connect(url, ttl=float(sys.argv[4])) as rt:
        rt.endpoint(endpoint).register(waypost.TransportType.tcp("127.0.0.1:1/" + endpoint))
        print(json.dumps({"instance_id": rt.instance_id}), flush=True)
        deadline = time.monotonic() + 20
        while len(seen := rt.list_instances()) < expected and time.monotonic() < deadline:
            time.sleep(0.02)
        print(json.dumps({"seen": sorted(i.instance_id for i in seen)}), flush=True)
        sys.stdin.read()
""")




@pytest.fixture
def url(tmp_path: Path) -> str:
    return f"file://{tmp_path}"


@pytest.fixture
def bucket(tmp_path: Path) -> Path:
    return tmp_path / "v1" / "instances"


@pytest.fixture
def children() -> Iterator[list[subprocess.Popen[str]]]:
    procs: list[subprocess.Popen[str]] = []
    yield procs
    for proc in procs:
        if proc.poll() is None:
            proc.kill()
        proc.wait()
        for stream in (proc.stdin, proc.stdout):
            if stream is not None:
                stream.close()


def spawn(procs: list[subprocess.Popen[str]], *args: str) -> subprocess.Popen[str]:
    proc = subprocess.Popen([sys.executable, "-c", CHILD, *args], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, text=True)
    procs.append(proc)
    return proc


def read_json(proc: subprocess.Popen[str]) -> Any:
    line = proc.stdout.readline()  # type: ignore[union-attr]
    assert line, f"child exited with {proc.wait()}"
    return json.loads(line)


def files(bucket: Path) -> list[str]:
    return sorted(os.listdir(bucket))


# -- names and contents (design §3) --------------------------------------------------------

def test_file_name_and_content_are_dynamos(url: str, bucket: Path) -> None:
    with waypost.connect(url, instance_id=8026718667892531462) as rt:
        ep = rt.namespace("dynamo").component("backend").endpoint("generate")
        ep.register(TransportType.tcp("127.0.0.1:42043/6f64a219dfbb2106/dynamo/backend/generate"),
                    device_type="cuda", request_plane_codec="msgpack")
        assert files(bucket) == [DYNAMO_NAME]
        assert (bucket / DYNAMO_NAME).read_bytes() == DYNAMO_VALUE
    assert files(bucket) == []


def test_every_byte_outside_alnum_is_percent_encoded(url: str, bucket: Path) -> None:
    with waypost.connect(url, instance_id=0xABC) as rt:
        rt.namespace("my-ns.child").component("a_b").endpoint("x9").register(TransportType.tcp("h:1"))
        assert files(bucket) == ["my%2Dns%2Echild%2Fa%5Fb%2Fx9%2Fabc"]


def test_files_and_directories_are_private(tmp_path: Path, bucket: Path) -> None:
    root = tmp_path / "new" / "store"
    with waypost.connect(f"file://{root}") as rt:
        reg = rt.namespace("ns").component("c").endpoint("e").register(TransportType.tcp("h:1"))
        path = root / "v1" / "instances" / encode_name(reg.instance.key.removeprefix("v1/instances/"))
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
        for directory in (tmp_path / "new", root, root / "v1", root / "v1" / "instances"):
            assert stat.S_IMODE(directory.stat().st_mode) == 0o700


@pytest.mark.parametrize("key", ["dynamo/backend/generate/6f64a219dfbb2106", "a-b/c_d/é/0", "x.y/%/ /1"])
def test_names_round_trip(key: str) -> None:
    name = encode_name(key)
    assert all(c.isascii() and (c.isalnum() or c == "%") for c in name)
    assert decode_name(name) == key


@pytest.mark.parametrize("name", ["README.txt", "a%2f", "a%2", "%FF", "", ".tmp_abc", "a b"])
def test_foreign_names_do_not_decode(name: str) -> None:
    assert decode_name(name) is None


def test_a_file_written_by_dynamo_is_listed_and_its_staleness_reaps_it(url: str, bucket: Path) -> None:
    with waypost.connect(url, ttl=TTL) as rt:
        (bucket / DYNAMO_NAME).write_bytes(DYNAMO_VALUE)
        [instance] = rt.list_instances()
        assert instance.instance_id == 8026718667892531462
        assert instance.to_json() == DYNAMO_VALUE
        old = time.time() - TTL - 1
        os.utime(bucket / DYNAMO_NAME, (old, old))
        assert rt.list_instances() == []
        assert files(bucket) == []


# -- liveness across processes ---------------------------------------------------------------

def test_two_processes_see_each_other(url: str, children: list[subprocess.Popen[str]]) -> None:
    procs = [spawn(children, url, f"ns/comp/e{n}", "2", str(TTL)) for n in range(2)]
    ids = sorted(read_json(p)["instance_id"] for p in procs)
    assert [read_json(p)["seen"] for p in procs] == [ids, ids]
    with waypost.connect(url, ttl=TTL) as rt:
        assert sorted(i.instance_id for i in rt.list_instances()) == ids


def test_sigkilled_process_leaves_list_and_watch_within_ttl_plus_1s(
    url: str, children: list[subprocess.Popen[str]]
) -> None:
    victim, survivor = (spawn(children, url, f"ns/comp/e{n}", "2", str(TTL)) for n in range(2))
    victim_id, survivor_id = read_json(victim)["instance_id"], read_json(survivor)["instance_id"]
    with waypost.connect(url, ttl=TTL) as observer, observer.watch(Query.namespace("ns")) as watch:
        wait_until(lambda: len(watch.instances) == 2, 10, "both children seen")
        killed_at = time.monotonic()
        victim.send_signal(signal.SIGKILL)
        removed = watch.wait_for(lambda e: isinstance(e, Removed), TTL + 1.0)
        watch_delay = time.monotonic() - killed_at
        assert isinstance(removed, Removed)
        assert removed.instance.instance_id == victim_id
        wait_until(lambda: [i.instance_id for i in observer.list_instances()] == [survivor_id],
                   TTL + 1.0 - watch_delay, "the killed child gone from list")
        assert time.monotonic() - killed_at <= TTL + 1.0
        assert [i.instance_id for i in watch.instances] == [survivor_id]


def test_sigkilled_process_is_reaped_by_list_alone(url: str, children: list[subprocess.Popen[str]]) -> None:
    victim = spawn(children, url, "ns/comp/e", "1", str(TTL))
    read_json(victim)
    with waypost.connect(url, ttl=TTL) as observer:
        assert len(observer.list_instances()) == 1
        killed_at = time.monotonic()
        victim.kill()
        wait_until(lambda: observer.list_instances() == [], TTL + 1.0, "killed child gone from list")
        assert time.monotonic() - killed_at <= TTL + 1.0


def test_create_only_race_between_processes_has_one_winner(url: str, tmp_path: Path) -> None:
    racer = textwrap.dedent("""
        import os, sys, time, waypost
        url, key, go = sys.argv[1], sys.argv[2], sys.argv[3]
        with waypost.connect(url) as rt:
            print("ready", flush=True)
            while not os.path.exists(go):
                time.sleep(0.001)
            try:
                rt.backend.create(rt.lease, key, b'{"racer":%d}' % os.getpid())
                print("won", flush=True)
            except waypost.AlreadyRegistered:
                print("lost", flush=True)
            sys.stdin.read()  # keep the winner's file until every racer has answered
    """)
    for round_ in range(3):
        go = tmp_path / f"go{round_}"
        key = f"v1/instances/race/c/e/{round_ + 1:x}"
        procs = [subprocess.Popen([sys.executable, "-c", racer, url, key, str(go)], stdin=subprocess.PIPE,
                                  stdout=subprocess.PIPE, text=True) for _ in range(4)]
        try:
            assert all(p.stdout.readline() == "ready\n" for p in procs)  # type: ignore[union-attr]
            go.touch()
            outcomes = sorted(p.stdout.readline().strip() for p in procs)  # type: ignore[union-attr]
        finally:
            for p in procs:
                p.stdin.close()  # type: ignore[union-attr]
                p.wait(timeout=30)
                p.stdout.close()  # type: ignore[union-attr]
        assert outcomes == ["lost", "lost", "lost", "won"]


def test_watch_converges_on_another_processes_churn(url: str) -> None:
    churn = textwrap.dedent("""
        import sys, waypost
        with waypost.connect(sys.argv[1]) as rt:
            regs = [rt.endpoint(f"ns.c.e{n}").register(waypost.TransportType.tcp(f"h:{n}")) for n in range(30)]
            for n, reg in enumerate(regs):
                if n % 3 == 0:
                    reg.unregister()
                elif n % 3 == 1:
                    rt.endpoint(f"ns.c.e{n}").register(waypost.TransportType.tcp("changed"))
            print("done", flush=True)
            sys.stdin.read()
    """)
    with waypost.connect(url, ttl=TTL) as observer, observer.watch() as watch:
        child = subprocess.Popen([sys.executable, "-c", churn, url], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                 text=True)
        try:
            assert child.stdout is not None
            assert child.stdout.readline() == "done\n"
            expected = observer.list_instances()
            assert len(expected) == 20
            state: dict[str, waypost.Instance] = {}

            def replayed() -> bool:
                while (event := watch.get(timeout=0)) is not None:
                    if isinstance(event, Added):
                        state[event.instance.key] = event.instance
                    elif isinstance(event, Removed):
                        state.pop(event.instance.key, None)
                return sorted(state.values()) == expected

            wait_until(replayed, 5, "watch events replay to the child's final state")
        finally:
            child.communicate(input="", timeout=30)
        wait_until(lambda: watch.instances == [], 5, "the child's close seen")


def test_chosen_id_is_refused_while_fresh_instance_files_carry_it(url: str, bucket: Path) -> None:
    bucket.parent.mkdir(mode=0o700)
    bucket.mkdir(mode=0o700)
    (bucket / DYNAMO_NAME).write_bytes(DYNAMO_VALUE)
    with pytest.raises(waypost.AlreadyRegistered, match="6f64a219dfbb2106"):
        waypost.connect(url, ttl=TTL, instance_id=8026718667892531462)
    old = time.time() - 30
    os.utime(bucket / DYNAMO_NAME, (old, old))  # a dead Dynamo process's file: the id is free
    with waypost.connect(url, ttl=TTL, instance_id=8026718667892531462) as rt:
        assert rt.instance_id == 8026718667892531462


def test_stale_after_protects_a_slower_peer(url: str, bucket: Path) -> None:
    with waypost.connect(url, ttl=TTL, stale_after=10) as rt:
        (bucket / DYNAMO_NAME).write_bytes(DYNAMO_VALUE)
        three_s_ago = time.time() - 3
        os.utime(bucket / DYNAMO_NAME, (three_s_ago, three_s_ago))  # Dynamo touches every ~3.3 s
        assert len(rt.list_instances()) == 1


def test_removed_store_directory_is_recreated_and_registrations_return(url: str, tmp_path: Path) -> None:
    with waypost.connect(url, ttl=1.0) as rt:
        reg = rt.namespace("ns").component("c").endpoint("e").register(TransportType.tcp("h:1"))
        shutil.rmtree(tmp_path / "v1")
        shutil.rmtree(tmp_path / ".waypost")
        wait_until(lambda: rt.list_instances() == [reg.instance], 5, "registration back after rm -rf")


def test_watch_resyncs_after_the_bucket_was_unusable(url: str, bucket: Path) -> None:
    with waypost.connect(url, ttl=TTL, watcher="poll") as rt, rt.watch() as watch:
        shutil.rmtree(bucket)
        bucket.write_bytes(b"not a directory")
        assert watch.wait_for(lambda e: isinstance(e, waypost.Interrupted), 5) is not None
        bucket.unlink()
        bucket.mkdir(mode=0o700)
        (bucket / DYNAMO_NAME).write_bytes(DYNAMO_VALUE)
        assert watch.wait_for(lambda e: isinstance(e, waypost.Resynced), 5) is not None
        assert [i.instance_id for i in watch.instances] == [8026718667892531462]


def test_watch_sees_another_process_quickly_with_inotify(url: str, children: list[subprocess.Popen[str]]) -> None:
    with waypost.connect(url, ttl=TTL, watcher="inotify", poll_interval=30) as rt, rt.watch() as watch:
        child = spawn(children, url, "ns/comp/e", "1", str(TTL))
        child_id = read_json(child)["instance_id"]
        added = watch.wait_for(lambda e: isinstance(e, Added), 5)
        assert isinstance(added, Added)
        assert added.instance.instance_id == child_id
        read_json(child)
        child.stdin.close()  # type: ignore[union-attr]
        assert watch.wait_for(lambda e: isinstance(e, Removed), 5) is not None  # long before poll_interval


# -- bad directories, bad files, bad URLs -------------------------------------------------------

def test_store_path_that_is_a_file_is_a_config_error(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("x")
    with pytest.raises(waypost.ConfigError, match=r"file.*not a directory"):
        waypost.connect(f"file://{tmp_path}/file")
    with pytest.raises(waypost.ConfigError, match="not a directory"):
        waypost.connect(f"file://{tmp_path}/file/below")


def test_missing_directories_are_created(tmp_path: Path) -> None:
    with waypost.connect(f"file://{tmp_path}/a/b%20c/d") as rt:
        assert rt.backend.describe() == f"file://{tmp_path}/a/b c/d"
        assert (tmp_path / "a" / "b c" / "d" / "v1" / "instances").is_dir()


@pytest.fixture
def read_only_dir(tmp_path: Path) -> Iterator[Path]:
    """A directory this process cannot write to (root ignores modes: make it immutable instead)."""
    locked = tmp_path / "locked"
    locked.mkdir()
    if os.geteuid() != 0:
        locked.chmod(0o500)
        yield locked
        locked.chmod(0o700)
        return
    if subprocess.run(["chattr", "+i", str(locked)], capture_output=True, check=False).returncode != 0:
        pytest.skip("running as root and chattr +i is not available here")
    try:
        yield locked
    finally:
        subprocess.run(["chattr", "-i", str(locked)], check=True)


def test_unwritable_directory_is_one_clear_error(read_only_dir: Path) -> None:
    with pytest.raises(waypost.ConfigError) as caught:
        waypost.connect(f"file://{read_only_dir}")
    assert str(read_only_dir) in str(caught.value)
    assert "permission denied" in str(caught.value) or "not writable" in str(caught.value)
    with pytest.raises(waypost.ConfigError, match="permission denied"):
        waypost.connect(f"file://{read_only_dir}/below")


def test_stale_after_shorter_than_the_ttl_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(waypost.ConfigError, match="stale_after=5 is shorter than the ttl"):
        waypost.connect(f"file://{tmp_path}?stale_after=5&ttl=10")


def test_corrupt_and_foreign_files_are_skipped_with_one_warning(
    url: str, bucket: Path, caplog: pytest.LogCaptureFixture
) -> None:
    with waypost.connect(url, ttl=TTL) as rt:
        good = rt.namespace("ns").component("c").endpoint("e").register(TransportType.tcp("h:1"))
        (bucket / "README.txt").write_text("not ours")
        (bucket / "subdir").mkdir()
        (bucket / encode_name("ns/c/bad/1")).write_bytes(b"\x00garbage")
        (bucket / ".tmp_0123").write_bytes(DYNAMO_VALUE)  # being written: never read
        with caplog.at_level(logging.WARNING, logger="waypost"):
            assert rt.list_instances() == [good.instance]
            assert rt.list_instances() == [good.instance]
            with rt.watch() as watch:
                assert watch.instances == [good.instance]
        warnings = [r.getMessage() for r in caplog.records]
        assert sum("README.txt" in w for w in warnings) == 1
        assert sum("subdir" in w for w in warnings) == 1
        assert any("ns/c/bad/1" in w for w in warnings)
        assert not any(".tmp_" in w for w in warnings)


def test_left_over_tmp_files_are_removed_once_old(url: str, bucket: Path) -> None:
    with waypost.connect(url, ttl=TTL) as rt:
        tmp = bucket / ".tmp_dead"
        tmp.write_bytes(b"half")
        rt.list_instances()
        assert tmp.exists()
        old = time.time() - 3600
        os.utime(tmp, (old, old))
        rt.list_instances()
        assert not tmp.exists()


def test_default_directory_is_dynamos(tmp_path: Path) -> None:
    probe = "import waypost\nwith waypost.connect() as rt:\n    print(rt.backend.root)\n"
    env = {k: v for k, v in os.environ.items() if k not in ("WAYPOST_URL", "DYN_DISCOVERY_BACKEND", "DYN_FILE_KV")}
    tmpdir = subprocess.run([sys.executable, "-c", probe], env={**env, "TMPDIR": str(tmp_path)},
                            capture_output=True, text=True, check=True, timeout=60)
    assert tmpdir.stdout.strip() == str(tmp_path / "dynamo_store_kv")
    kv = subprocess.run([sys.executable, "-c", probe], env={**env, "DYN_FILE_KV": str(tmp_path / "kv")},
                        capture_output=True, text=True, check=True, timeout=60)
    assert kv.stdout.strip() == str(tmp_path / "kv")


def test_backend_class_declares_what_it_does() -> None:
    assert waypost.Capability.CROSS_PROCESS in FileBackend.capabilities
    assert waypost.Capability.SERVER_EXPIRY not in FileBackend.capabilities
    assert waypost.Capability.CROSS_HOST not in FileBackend.capabilities
    assert "file:///" in (FileBackend.__doc__ or "")


def test_revoking_a_killed_writers_lease_removes_its_half_written_file(url: str, bucket: Path) -> None:
    with waypost.connect(url, ttl=TTL, instance_id=0xABC) as victim, waypost.connect(url, ttl=TTL) as other:
        victim.namespace("ns").component("c").endpoint("e").register(TransportType.tcp("h:1"))
        faults.crash(victim)
        (bucket / ".tmp_abc-0123456789abcdef").write_bytes(b'{"half')  # killed between write and link()
        (bucket / ".tmp_abd-0123456789abcdef").write_bytes(b'{"half')  # another lease's: not this one's
        other.backend.revoke_lease(0xABC)
        assert files(bucket) == [".tmp_abd-0123456789abcdef"]


# -- Dynamo's other buckets: v1/mdc, v1/event_channels, v1/event_sources ---------------------------

DYNAMO_CARD = (  # a LoRA card exactly as a Dynamo 1.6.1 worker wrote it (trimmed runtime_config)
    b'{"type":"Model","namespace":"ns1","component":"comp1","endpoint":"gen","instance_id":9712720323321273154,'
    b'"card_json":{"display_name":"my-lora","slug":"my-lora","source_path":"/nonexistent/base-model",'
    b'"model_info":null,"tokenizer":null,"context_length":0,"kv_cache_block_size":0,"migration_limit":0,'
    b'"model_type":"Chat","model_input":"Text","worker_type":"aggregated","needs":[],"lora":{"name":"my-lora"},'
    b'"runtime_config":{"data_parallel_size":1,"enable_eagle":false},"media_decoder":null,"media_fetcher":null},'
    b'"model_suffix":"my-lora"}'
)
DYNAMO_CARD_NAME = "ns1%2Fcomp1%2Fgen%2F86ca83ac82481b42%2Fmy%2Dlora"


def _publish(directory: Path, name: str, value: bytes) -> Path:
    """Write a file the way Dynamo does: a dot-file, then link() to its name."""
    directory.mkdir(parents=True, exist_ok=True, mode=0o700)
    tmp = directory / ".tmp_0123456789abcdef"
    tmp.write_bytes(value)
    os.link(tmp, directory / name)
    tmp.unlink()
    return directory / name


def test_every_bucket_is_created_private_at_connect(tmp_path: Path) -> None:
    with waypost.connect(f"file://{tmp_path}", ttl=TTL):
        for bucket in ("instances", "mdc", "event_channels", "event_sources"):
            assert stat.S_IMODE((tmp_path / "v1" / bucket).stat().st_mode) == 0o700, bucket


def test_model_cards_are_files_in_v1_mdc_named_as_dynamo_names_them(tmp_path: Path) -> None:
    with waypost.connect(f"file://{tmp_path}", ttl=TTL) as rt:
        endpoint = rt.endpoint("ns1.comp1.gen")
        base = endpoint.register_model({"display_name": "base"})
        lora = endpoint.register_model({"display_name": "my-lora"}, lora="my-lora")
        hex_id = f"{rt.instance_id:x}"
        mdc = tmp_path / "v1" / "mdc"
        assert sorted(p.name for p in mdc.iterdir()) == [f"ns1%2Fcomp1%2Fgen%2F{hex_id}",
                                                         f"ns1%2Fcomp1%2Fgen%2F{hex_id}%2Fmy%2Dlora"]
        assert (mdc / f"ns1%2Fcomp1%2Fgen%2F{hex_id}").read_bytes() == base.model.to_json()
        assert stat.S_IMODE((mdc / f"ns1%2Fcomp1%2Fgen%2F{hex_id}").stat().st_mode) == 0o600
        lora.update_taints(["t"])  # rename() over the file: a new inode, Dynamo's watcher sees an update
        assert b'"taints":["t"]' in (mdc / f"ns1%2Fcomp1%2Fgen%2F{hex_id}%2Fmy%2Dlora").read_bytes()
    assert list(mdc.iterdir()) == []


def test_a_card_dynamo_wrote_is_read_byte_for_byte_and_reaped_when_stale(tmp_path: Path) -> None:
    path = _publish(tmp_path / "v1" / "mdc", DYNAMO_CARD_NAME, DYNAMO_CARD)
    with waypost.connect(f"file://{tmp_path}", ttl=TTL) as rt, rt.watch_models("ns1") as watch:
        [card] = rt.list_models("ns1.comp1.gen")
        assert (card.to_json(), card.lora, card.display_name) == (DYNAMO_CARD, "my-lora", "my-lora")
        assert watch.instances == [card]
        old = time.time() - TTL - 1  # the Dynamo worker was SIGKILLed: nobody touches its file any more
        os.utime(path, (old, old))
        removed = watch.wait_for(lambda e: isinstance(e, Removed), TTL * 2)
        assert isinstance(removed, Removed) and removed.instance == card
    assert not path.exists()


def test_revoking_another_processs_lease_removes_its_cards(tmp_path: Path) -> None:
    with waypost.connect(f"file://{tmp_path}", ttl=TTL) as rt, waypost.connect(f"file://{tmp_path}", ttl=TTL) as other:
        endpoint = other.endpoint("ns.c.e")
        endpoint.register(TransportType.tcp("h:1"))
        endpoint.register_model({"display_name": "m"})
        endpoint.register_model({"display_name": "m"}, lora="l")
        faults.crash(other)  # its backend forgets the files: only their names tie them to the lease
        rt.backend.revoke_lease(other.instance_id)
        assert rt.list_models() == [] and rt.list_instances() == []


def test_event_records_in_their_buckets_are_read(tmp_path: Path) -> None:
    scope = b'{"kind":"endpoint","endpoint":{"namespace":"ns1","component":"comp1","name":"gen"}}'
    channel = (b'{"type":"EventChannel","scope":' + scope + b',"topic":"kv-events","instance_id":8960392117629846,'
               b'"transport":{"kind":"Zmq","config":{"endpoint":"tcp://127.0.0.1:36997"}}}')
    name = "namespace%2Fns1%2Fcomponent%2Fcomp1%2Fendpoint%2Fgen%2Ftopic%2Fkv%2Devents%2F1fd56ddd383396"
    _publish(tmp_path / "v1" / "event_channels", name, channel)
    with waypost.connect(f"file://{tmp_path}", ttl=TTL) as rt:
        [record] = rt.list_event_channels("ns1.comp1")
        assert (record.to_json(), record.address, record.instance_id) == (
            channel, "tcp://127.0.0.1:36997", 8960392117629846)
        assert rt.list_event_sources() == []


def test_one_unusable_bucket_does_not_take_the_others_down(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """v1/mdc swapped for a symbolic link: the instance must stay fresh, and revoke and close still work."""
    elsewhere = tmp_path.parent / f"{tmp_path.name}-elsewhere"
    elsewhere.mkdir(mode=0o700)
    with waypost.connect(f"file://{tmp_path}", ttl=1.0) as rt, waypost.connect(f"file://{tmp_path}", ttl=1.0) as peer:
        endpoint = rt.endpoint("ns.c.e")
        endpoint.register(TransportType.tcp("h:1"))
        endpoint.register_model({"display_name": "m"})
        peer.endpoint("ns.c.other").register(TransportType.tcp("h:2"))
        mdc = tmp_path / "v1" / "mdc"
        shutil.rmtree(mdc)
        mdc.symlink_to(elsewhere)
        with peer.watch("ns") as watch:  # several ttls of keepalives and reaping
            assert watch.wait_for(lambda e: isinstance(e, Removed), 3.5) is None, "a live instance was reaped"
        assert {i.endpoint for i in peer.list_instances("ns")} == {"e", "other"}
        with pytest.raises(waypost.ConfigError, match="symbolic link"):
            peer.list_models()
    assert list(elsewhere.iterdir()) == []  # nothing was written through the link
    assert list((tmp_path / "v1" / "instances").iterdir()) == []  # both closed cleanly: their files went
    assert "could not revoke" not in caplog.text
