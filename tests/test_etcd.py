"""The etcd backend on real etcd (3.5, and 3.4 where it matters): wire format, faults, security, scale.

The shared conformance suite (tests/conformance/test_etcd_conformance.py) covers the
generic semantics; these tests cover what is specific to etcd and the issue's done-when.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from pyetcd import etcdrpc

import servers  # tests/servers/, on sys.path through tests/conftest.py
import waypost
from waypost import Added, Interrupted, Query, Removed, Resynced, TransportType
from waypost.backends.etcd import EtcdBackend
from waypost.contrib.conformance import wait_until

TTL = 1.0
OPTIONS = {"ttl": TTL, "timeout": 2.0}
ROOT_PW = "r00t:pw@/?#"  # URL-hostile on purpose


# -- helpers --------------------------------------------------------------------------------------


def etcdctl(server: Any, *args: str, user: str | None = None) -> str:
    """Run etcdctl against ``server`` (for setup only: users, auth, compaction)."""
    argv = [servers.find_binary("etcdctl"), f"--endpoints={server.client_url}", "--dial-timeout=5s",
            "--command-timeout=5s"]
    if server.tls is not None:
        argv += [f"--cacert={server.tls.ca}", f"--cert={server.tls.client_cert}", f"--key={server.tls.client_key}"]
    if user is not None:
        argv.append(f"--user={user}")
    env = {k: v for k, v in os.environ.items() if not k.startswith("ETCDCTL_")}
    done = subprocess.run([*argv, *args], capture_output=True, text=True, timeout=30, env=env, check=False)
    assert done.returncode == 0, f"etcdctl {args[0]} failed: {done.stderr}"
    return done.stdout


def enable_auth(server: Any, password: str = ROOT_PW) -> None:
    etcdctl(server, "user", "add", "root", f"--new-user-password={password}", "--interactive=false")
    etcdctl(server, "auth", "enable")


def raw_client(server: Any, **kwargs: Any) -> Any:
    """python-etcd3's API (pyetcd), to check what waypost wrote, byte for byte."""
    import pyetcd

    client = pyetcd.client(host=servers.HOST, port=server.port, timeout=5, **kwargs)
    client.call_credentials = None  # plain-text token metadata is fine on loopback
    return client


def tcp(n: int) -> TransportType:
    return TransportType.tcp(f"127.0.0.1:{9000 + n}")


def new_ns() -> str:
    return f"t-{uuid.uuid4().hex[:10]}"


def etcd_threads() -> list[str]:
    return [t.name for t in threading.enumerate() if t.name.startswith("waypost-etcd")]


# -- fixtures -------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def etcd() -> Iterator[Any]:
    """One etcd 3.5 for the tests that do not fault it (each uses its own namespace)."""
    with servers.EtcdServer() as server:
        yield server


@pytest.fixture(scope="module", params=["3.5", "3.4"])
def any_etcd(request: pytest.FixtureRequest) -> Iterator[Any]:
    with servers.EtcdServer(version=request.param) as server:
        yield server


@pytest.fixture
def fresh_etcd() -> Iterator[Any]:
    """An etcd of its own, for tests that kill or pause it."""
    with servers.EtcdServer() as server:
        yield server


@pytest.fixture
def runtimes() -> Iterator[Callable[..., waypost.Runtime]]:
    made: list[waypost.Runtime] = []

    def connect(url: str, **options: Any) -> waypost.Runtime:
        runtime = waypost.connect(url, **{**OPTIONS, **options})
        made.append(runtime)
        return runtime

    yield connect
    for runtime in made:
        with contextlib.suppress(waypost.WaypostError):
            runtime.close()


@pytest.fixture(scope="module")
def tls(tmp_path_factory: pytest.TempPathFactory) -> Any:
    return servers.make_tls(Path(tmp_path_factory.mktemp("etcd-tls")))


# Servers a test faults or configures are fixtures requested *before* ``runtimes``, so that
# the Runtimes close while their server still runs (closing against a dead one takes ``timeout``).

@pytest.fixture
def tls_etcd(tls: Any) -> Iterator[Any]:
    with servers.EtcdServer(tls=tls) as server:
        yield server


@pytest.fixture
def mtls_etcd(tls: Any) -> Iterator[Any]:
    with servers.EtcdServer(tls=tls, client_cert_auth=True) as server:
        yield server


@pytest.fixture
def short_token_etcd() -> Iterator[Any]:
    with servers.EtcdServer(extra_args=["--auth-token-ttl", "1"]) as server:
        enable_auth(server)
        yield server


@pytest.fixture
def cluster() -> Iterator[Any]:
    with servers.EtcdCluster(size=3) as members:
        yield members


# -- wire format ----------------------------------------------------------------------------------

def test_registration_writes_dynamos_exact_key_and_value(any_etcd: Any, runtimes: Any) -> None:
    rt = runtimes(any_etcd.url)
    ns = new_ns()
    transport = TransportType.tcp(f"127.0.0.1:42043/{rt.instance_id:x}/{ns}/backend/generate")
    rt.namespace(ns).component("backend").endpoint("generate").register(
        transport, device_type="cuda", request_plane_codec="msgpack")
    key = f"v1/instances/{ns}/backend/generate/{rt.instance_id:x}"
    expected = (
        '{"type":"Endpoint","component":"backend","endpoint":"generate","namespace":"NS",'
        '"instance_id":ID,"transport":{"tcp":"127.0.0.1:42043/HEX/NS/backend/generate"},'
        '"device_type":"cuda","request_plane_codec":"msgpack"}'
    ).replace("NS", ns).replace("HEX", f"{rt.instance_id:x}").replace("ID", str(rt.instance_id)).encode()
    client = raw_client(any_etcd)
    try:
        value, meta = client.get(key)
        assert value == expected
        assert meta.lease_id == rt.instance_id  # the key lives on the Runtime's lease
        assert [m.key for _, m in client.get_prefix(f"v1/instances/{ns}/")] == [key.encode()]
    finally:
        client.close()


def test_value_written_the_dynamo_way_is_listed_and_watched(any_etcd: Any, runtimes: Any) -> None:
    rt = runtimes(any_etcd.url)
    ns = new_ns()
    client = raw_client(any_etcd)
    try:
        with rt.watch(Query.namespace(ns)) as watch:
            lease = client.lease(10)  # a Dynamo worker: its own lease, a raw put, the lease id in the key
            key = f"v1/instances/{ns}/backend/generate/{lease.id:x}"
            value = (
                '{"type":"Endpoint","component":"backend","endpoint":"generate","namespace":"NS",'
                '"instance_id":ID,"transport":{"nats_tcp":"NS_backend.generate-HEX"}}'
            ).replace("NS", ns).replace("HEX", f"{lease.id:x}").replace("ID", str(lease.id))
            client.put(key, value, lease=lease)
            added = watch.wait_for(lambda e: isinstance(e, Added), 5)
            assert added is not None
            assert added.instance.instance_id == lease.id
            [listed] = rt.namespace(ns).component("backend").endpoint("generate").list_instances()
            assert listed.transport == TransportType.nats_tcp(f"{ns}_backend.generate-{lease.id:x}")
            assert listed.device_type is None
            assert listed.request_plane_codec is None
            client.revoke_lease(lease.id)  # the worker stops
            removed = watch.wait_for(lambda e: isinstance(e, Removed), 5)
            assert removed is not None
            assert removed.instance.instance_id == lease.id
    finally:
        client.close()


def test_prefix_option_prefixes_every_key(etcd: Any, runtimes: Any) -> None:
    rt = runtimes(etcd.url, prefix="tenant-a")
    ns = new_ns()
    rt.namespace(ns).component("c").endpoint("e").register(tcp(1))
    client = raw_client(etcd)
    try:
        keys = [m.key.decode() for _, m in client.get_prefix(f"tenant-a/v1/instances/{ns}/")]
        assert keys == [f"tenant-a/v1/instances/{ns}/c/e/{rt.instance_id:x}"]
        assert list(client.get_prefix(f"v1/instances/{ns}/")) == []
    finally:
        client.close()
    assert len(rt.list_instances(Query.namespace(ns))) == 1


# -- liveness ---------------------------------------------------------------------------------------

CHILD = """
import sys, time, waypost
rt = waypost.connect(sys.argv[1], ttl=float(sys.argv[2]))
rt.namespace(sys.argv[3]).component("c").endpoint("e").register(waypost.TransportType.tcp("127.0.0.1:1"))
print(rt.instance_id, flush=True)
time.sleep(600)
"""


@pytest.mark.slow
def test_etcd_paused_10s_runtime_reregisters_and_watchers_converge(fresh_etcd: Any, runtimes: Any) -> None:
    ttl = 2.0
    rt, observer = runtimes(fresh_etcd.url, ttl=ttl), runtimes(fresh_etcd.url, ttl=ttl)
    ns = new_ns()
    comp = rt.namespace(ns).component("c")
    comp.endpoint("kept").register(tcp(1))
    comp.endpoint("dropped").register(tcp(2)).unregister()
    old_id = rt.instance_id
    with observer.watch(Query.namespace(ns)) as watch, observer.namespace(ns).component("c").endpoint(
            "kept").client() as client:
        fresh_etcd.pause()
        paused_at = time.monotonic()
        try:
            interrupted = watch.wait_for(lambda e: isinstance(e, Interrupted), 10)
            assert interrupted is not None, "the watch did not notice the paused server"
            print(f"pause noticed by the watch after {time.monotonic() - paused_at:.2f} s")
            time.sleep(max(0.0, 10 - (time.monotonic() - paused_at)))  # the fault: a 10 s pause
        finally:
            fresh_etcd.resume()
        resumed_at = time.monotonic()
        wait_until(lambda: rt.instance_id != old_id, 3 * ttl, what="re-registration under a new lease")
        wait_until(lambda: [(i.endpoint, i.instance_id) for i in watch.instances] == [("kept", rt.instance_id)],
                   3 * ttl, what="watch converges")
        wait_until(lambda: client.instance_ids() == [rt.instance_id], 3 * ttl, what="client converges")
        print(f"converged {time.monotonic() - resumed_at:.2f} s after resume")
    assert [(i.endpoint, i.instance_id) for i in observer.list_instances(Query.namespace(ns))] == [
        ("kept", rt.instance_id)]


def test_lease_revoked_behind_our_back_gets_a_new_instance_id(etcd: Any, runtimes: Any) -> None:
    rt, observer = runtimes(etcd.url), runtimes(etcd.url)
    ns = new_ns()
    rt.namespace(ns).component("c").endpoint("e").register(tcp(1))
    old_id = rt.instance_id
    client = raw_client(etcd)
    try:
        client.revoke_lease(old_id)
    finally:
        client.close()
    wait_until(lambda: rt.instance_id != old_id, TTL + 1, what="new lease")
    wait_until(lambda: [i.instance_id for i in observer.list_instances(Query.namespace(ns))] == [rt.instance_id],
               TTL + 1, what="re-registration listed")


def test_server_killed_and_restarted_keeps_data_and_watch_resumes(fresh_etcd: Any, runtimes: Any) -> None:
    rt, observer = runtimes(fresh_etcd.url), runtimes(fresh_etcd.url)
    ns = new_ns()
    rt.namespace(ns).component("c").endpoint("a").register(tcp(1))
    with observer.watch(Query.namespace(ns)) as watch:
        assert watch.wait_for(lambda e: isinstance(e, Added), 1) is not None
        fresh_etcd.kill()
        assert watch.wait_for(lambda e: isinstance(e, Interrupted), 10) is not None
        fresh_etcd.start()
        # etcd keeps leases across a restart: same instance id, and the watch re-lists to catch up.
        assert watch.wait_for(lambda e: isinstance(e, Resynced), 10) is not None
        rt.namespace(ns).component("c").endpoint("b").register(tcp(2))
        wait_until(lambda: sorted(i.endpoint for i in watch.instances) == ["a", "b"], 5, what="watch live again")
        assert {i.instance_id for i in watch.instances} == {rt.instance_id}


def test_store_data_lost_runtime_reregisters_without_phantoms(fresh_etcd: Any, runtimes: Any) -> None:
    rt, observer = runtimes(fresh_etcd.url), runtimes(fresh_etcd.url)
    ns = new_ns()
    comp = rt.namespace(ns).component("c")
    comp.endpoint("kept").register(tcp(1))
    comp.endpoint("dropped").register(tcp(2)).unregister()
    old_id = rt.instance_id
    with observer.watch(Query.namespace(ns)) as watch:
        fresh_etcd.stop()
        shutil.rmtree(fresh_etcd.data_dir)  # the fault: a new, empty store on the same address
        fresh_etcd.start()
        wait_until(lambda: rt.instance_id != old_id, 10, what="lease loss noticed and a new lease granted")
        wait_until(lambda: [(i.endpoint, i.instance_id) for i in watch.instances] == [("kept", rt.instance_id)],
                   10, what="watch converges on the new store")
    assert [i.endpoint for i in observer.list_instances(Query.namespace(ns))] == ["kept"]


def test_with_auth_a_store_that_lost_its_data_is_recovered_from(fresh_etcd: Any, runtimes: Any) -> None:
    """The old token names a revision the new store has not reached: every call used to time out forever."""
    enable_auth(fresh_etcd)
    ttl = 2.0
    rt = runtimes(fresh_etcd.url, user="root", password=ROOT_PW, ttl=ttl, timeout=1.0)
    ns = new_ns()
    for n in range(30):  # move the revision well past what the new store will have
        rt.namespace(ns).component("c").endpoint(f"e{n}").register(tcp(n)).unregister()
    rt.namespace(ns).component("c").endpoint("kept").register(tcp(1))
    old_id = rt.instance_id
    fresh_etcd.stop()
    shutil.rmtree(fresh_etcd.data_dir)  # the fault: a new, empty store, provisioned the same way
    fresh_etcd.start()
    enable_auth(fresh_etcd)
    lost_at = time.monotonic()
    observer = runtimes(fresh_etcd.url, user="root", password=ROOT_PW)
    wait_until(lambda: [i.endpoint for i in observer.list_instances(Query.namespace(ns))] == ["kept"],
               ttl * 3 + 5.0, what="the registration back on the new store")
    assert rt.instance_id != old_id
    print(f"recovered {time.monotonic() - lost_at:.2f} s after the new store came up")


def test_compacted_history_makes_the_watch_relist(etcd: Any, runtimes: Any) -> None:
    rt = runtimes(etcd.url)
    ns = new_ns()
    comp = rt.namespace(ns).component("c")
    comp.endpoint("a").register(tcp(1))
    with rt.watch(Query.namespace(ns)) as watch:
        handle: Any = watch._handle
        handle._probe_interval = 3600.0  # no progress notification may move the revision under the test
        resume_from = handle._revision
        comp.endpoint("b").register(tcp(2))
        comp.endpoint("b").register(tcp(3))  # two revisions after resume_from: its successor is compacted
        wait_until(lambda: len(watch.instances) == 2, 5, what="b seen")
        client = raw_client(etcd)
        try:
            revision = client.get_response("x").header.revision
        finally:
            client.close()
        etcdctl(etcd, "compaction", str(revision))
        # White box: break the stream while the watch believes it is at a compacted revision,
        # the situation of a watch that fell behind during an outage.
        handle._revision = resume_from
        handle._stream.call.cancel()
        resynced = watch.wait_for(lambda e: isinstance(e, Resynced), 10)
        assert resynced is not None
        assert "compacted" in resynced.reason
        assert sorted(i.endpoint for i in watch.instances) == ["a", "b"]
        comp.endpoint("c").register(tcp(4))
        wait_until(lambda: len(watch.instances) == 3, 5, what="watch live after the re-list")


def test_closed_watch_stops_its_threads_and_stream(etcd: Any, runtimes: Any) -> None:
    rt = runtimes(etcd.url)
    before = len(etcd_threads())
    watches = [rt.watch(Query.namespace(new_ns())) for _ in range(3)]
    # A supervisor and a stream reader each (the supervisor opens its stream in the background).
    wait_until(lambda: len(etcd_threads()) == before + 6, 5, what="watch threads running")
    # The reader thread may start a moment before the supervisor publishes its stream.
    wait_until(lambda: all(w._handle._stream is not None for w in watches), 5,  # type: ignore[attr-defined]
               what="watch streams open")
    calls = [watch._handle._stream.call for watch in watches]  # type: ignore[attr-defined]
    for watch in watches:
        watch.close()
    assert len(etcd_threads()) == before  # close() joined them
    assert all(call.done() and call.code() is grpc.StatusCode.CANCELLED for call in calls)


# -- cluster ------------------------------------------------------------------------------------------

def member_in_use(rt: waypost.Runtime) -> str:
    backend = rt.backend
    assert isinstance(backend, EtcdBackend)
    return backend.settings.targets[backend.conn.current()]


@pytest.mark.slow
def test_cluster_survives_killing_the_member_in_use(cluster: Any, runtimes: Any) -> None:
    rt = runtimes(cluster.url, ttl=2.0)
    ns = new_ns()
    comp = rt.namespace(ns).component("c")
    comp.endpoint("a").register(tcp(1))
    in_use = member_in_use(rt)
    # A watcher on the same member, so that its stream dies too.
    observer = next(o for o in (runtimes(cluster.url) for _ in range(30)) if member_in_use(o) == in_use)
    with observer.watch(Query.namespace(ns)) as watch:
        old_id = rt.instance_id
        [victim] = [m for m in cluster.members if m.endpoint == in_use]
        victim.kill()
        killed_at = time.monotonic()
        comp.endpoint("b").register(tcp(2))
        print(f"registered through another member {time.monotonic() - killed_at:.2f} s after the kill")
        wait_until(lambda: sorted(i.endpoint for i in watch.instances) == ["a", "b"], 10,
                   what="watch follows on another member")
        assert member_in_use(rt) != in_use
        assert member_in_use(observer) != in_use
        # The lease is kept alive through the surviving members: same instance id, nothing lost.
        removed = watch.wait_for(lambda e: isinstance(e, Removed), 3 * 2.0)
        assert removed is None
        assert rt.instance_id == old_id
        assert {i.instance_id for i in observer.list_instances(Query.namespace(ns))} == {old_id}


# -- security ------------------------------------------------------------------------------------------

def test_tls_with_ca(tls_etcd: Any, tls: Any, runtimes: Any) -> None:
    assert tls_etcd.url.startswith("etcds://")
    rt = runtimes(tls_etcd.url, ca_cert=tls.ca)
    ns = new_ns()
    rt.namespace(ns).component("c").endpoint("e").register(tcp(1))
    assert len(rt.list_instances(Query.namespace(ns))) == 1
    with pytest.raises(waypost.BackendUnavailable):  # the system's roots do not know the test CA
        runtimes(tls_etcd.url, timeout=1.0)
    with pytest.raises(waypost.ConfigError, match="etcds://"):
        runtimes(tls_etcd.url.replace("etcds://", "etcd://"), ca_cert=tls.ca)


def test_mutual_tls(mtls_etcd: Any, tls: Any, runtimes: Any) -> None:
    rt = runtimes(mtls_etcd.url, ca_cert=tls.ca, client_cert=tls.client_cert, client_key=tls.client_key)
    ns = new_ns()
    rt.namespace(ns).component("c").endpoint("e").register(tcp(1))
    with rt.watch(Query.namespace(ns)) as watch:
        assert len(watch.instances) == 1
    with pytest.raises(waypost.BackendUnavailable):  # no client certificate
        runtimes(mtls_etcd.url, ca_cert=tls.ca, timeout=1.0)
    with pytest.raises(waypost.ConfigError, match="client_key"):
        runtimes(mtls_etcd.url, ca_cert=tls.ca, client_cert=tls.client_cert)


def test_user_password_over_plain_text(fresh_etcd: Any, runtimes: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    enable_auth(fresh_etcd)
    ns = new_ns()
    with pytest.raises(waypost.AuthenticationError) as refused:
        runtimes(fresh_etcd.url)
    with pytest.raises(waypost.AuthenticationError) as wrong:
        runtimes(fresh_etcd.url, user="root", password="not-it")
    for error in (refused.value, wrong.value):
        assert ROOT_PW not in str(error)
        assert "not-it" not in str(error)
    rt = runtimes(fresh_etcd.url, user="root", password=ROOT_PW)
    rt.namespace(ns).component("c").endpoint("e").register(tcp(1))
    assert ROOT_PW not in repr(rt)
    assert ROOT_PW not in repr(rt.backend)
    # The same credentials through the URL, and through Dynamo's variables.
    from urllib.parse import quote

    in_url = runtimes(fresh_etcd.url.replace("://", f"://root:{quote(ROOT_PW, safe='')}@"))
    assert len(in_url.list_instances(Query.namespace(ns))) == 1
    assert ROOT_PW not in repr(in_url)
    monkeypatch.setenv("ETCD_AUTH_USERNAME", "root")
    monkeypatch.setenv("ETCD_AUTH_PASSWORD", ROOT_PW)
    assert len(runtimes(fresh_etcd.url).list_instances(Query.namespace(ns))) == 1


def test_expired_auth_token_is_renewed_transparently(short_token_etcd: Any, runtimes: Any) -> None:
    rt = runtimes(short_token_etcd.url, user="root", password=ROOT_PW, ttl=2.0)
    ns = new_ns()
    comp = rt.namespace(ns).component("c")
    comp.endpoint("a").register(tcp(1))
    backend = rt.backend
    assert isinstance(backend, EtcdBackend)
    with rt.watch(Query.namespace(ns)) as watch:
        first_token = backend.conn.token
        time.sleep(3.0)  # the fault: an idle token outlives --auth-token-ttl 1 (checked each second)
        channel = grpc.insecure_channel(short_token_etcd.endpoint)
        try:
            with pytest.raises(grpc.RpcError) as stale:
                etcdrpc.KVStub(channel).Range(etcdrpc.RangeRequest(key=b"x"), timeout=5,
                                              metadata=(("token", first_token),))
        finally:
            channel.close()
        assert "invalid auth token" in (stale.value.details() or "")
        comp.endpoint("b").register(tcp(2))  # renews the token, then succeeds
        assert backend.conn.token != first_token
        wait_until(lambda: len(watch.instances) == 2, 5, what="watch still live after token renewal")
    assert len(rt.list_instances(Query.namespace(ns))) == 2


# -- configuration -----------------------------------------------------------------------------------

def test_dynamo_environment_variables(etcd: Any, monkeypatch: pytest.MonkeyPatch, runtimes: Any) -> None:
    monkeypatch.delenv("WAYPOST_URL", raising=False)
    monkeypatch.setenv("DYN_DISCOVERY_BACKEND", "etcd")
    monkeypatch.setenv("ETCD_ENDPOINTS", f"http://{etcd.endpoint}")
    monkeypatch.setenv("ETCD_LEASE_TTL", "3")
    rt = waypost.connect()
    try:
        assert rt.ttl == 3.0
        assert isinstance(rt.backend, EtcdBackend)
        assert rt.backend.describe() == f"etcd://{etcd.endpoint}"
    finally:
        rt.close()


def test_dynamo_tls_environment_variables(mtls_etcd: Any, tls: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("WAYPOST_URL", raising=False)
    monkeypatch.setenv("DYN_DISCOVERY_BACKEND", "etcd")
    monkeypatch.setenv("ETCD_ENDPOINTS", f"https://{mtls_etcd.endpoint}")
    monkeypatch.setenv("ETCD_AUTH_CA", tls.ca)
    monkeypatch.setenv("ETCD_AUTH_CLIENT_CERT", tls.client_cert)
    monkeypatch.setenv("ETCD_AUTH_CLIENT_KEY", tls.client_key)
    with waypost.connect() as rt:
        assert rt.backend.describe() == f"etcds://{mtls_etcd.endpoint}"
        ns = new_ns()
        rt.namespace(ns).component("c").endpoint("e").register(tcp(1))
        assert len(rt.list_instances(Query.namespace(ns))) == 1


def test_configuration_errors_name_the_problem_without_secrets(etcd: Any) -> None:
    with pytest.raises(waypost.ConfigError, match="both user and password"):
        waypost.connect(etcd.url, user="root")
    with pytest.raises(waypost.ConfigError, match="different values") as twice:
        waypost.connect(etcd.url.replace("://", "://root:hunter2@"), password="other")
    assert "hunter2" not in str(twice.value)
    assert "other" not in str(twice.value)
    with pytest.raises(waypost.ConfigError, match="ca_cert"):
        waypost.connect(etcd.url.replace("etcd://", "etcds://"), ca_cert="/nonexistent/ca.pem")
    with pytest.raises(waypost.ConfigError, match="timeout"):
        waypost.connect(etcd.url, timeout="soon")
    with pytest.raises(waypost.ConfigError, match="minimum"):
        waypost.connect(etcd.url, ttl=0.5)
    with pytest.raises(waypost.ConfigError, match="instance_id"):
        waypost.connect(etcd.url, instance_id=42)


# -- scale ----------------------------------------------------------------------------------------------

def test_50k_instances_list_and_watch(etcd: Any, runtimes: Any) -> None:
    ns = new_ns()
    count = 50_000
    client = raw_client(etcd)
    try:
        started = time.monotonic()
        puts = [client.transactions.put(i.key, i.to_json()) for i in (
            waypost.Instance(ns, "backend", "generate", n + 1, tcp(n % 1000), device_type="cuda")
            for n in range(count))]
        for start in range(0, count, 128):  # etcd's default --max-txn-ops
            client.transaction(compare=[], success=puts[start:start + 128], failure=[])
        print(f"wrote {count} instances in {time.monotonic() - started:.2f} s")
        rt = runtimes(etcd.url, timeout=30.0)
        started = time.monotonic()
        listed = rt.list_instances(Query.namespace(ns))
        list_seconds = time.monotonic() - started
        assert len(listed) == count
        assert listed[0].instance_id == 1
        started = time.monotonic()
        with rt.watch(Query.namespace(ns)) as watch:
            assert len(watch.instances) == count
            watch_seconds = time.monotonic() - started
        print(f"list of {count}: {list_seconds:.2f} s; watch snapshot: {watch_seconds:.2f} s")
    finally:
        client.delete_prefix(f"v1/instances/{ns}/")
        client.close()


def test_register_and_list_latency(etcd: Any, runtimes: Any) -> None:
    rt = runtimes(etcd.url)
    ns = new_ns()
    comp = rt.namespace(ns).component("c")
    started = time.monotonic()
    for n in range(200):
        comp.endpoint(f"e{n}").register(tcp(n))
    register_ms = (time.monotonic() - started) / 200 * 1000
    started = time.monotonic()
    for _ in range(200):
        assert len(comp.list_instances()) == 200
    list_ms = (time.monotonic() - started) / 200 * 1000
    print(f"register {register_ms:.2f} ms, list of 200 {list_ms:.2f} ms")
    assert register_ms < 100
    assert list_ms < 200


def test_json_of_a_listing_is_stable(etcd: Any, runtimes: Any) -> None:
    """Values read back are the bytes written: nothing re-encoded on the way."""
    rt = runtimes(etcd.url)
    ns = new_ns()
    reg = rt.namespace(ns).component("c").endpoint("e").register(tcp(1), metadata={"b": 1, "a": [1, 2]})
    [(key, value)] = rt.backend.list(f"v1/instances/{ns}/")
    assert key == reg.instance.key
    assert value == reg.instance.to_json()
    assert json.loads(value)["metadata"] == {"b": 1, "a": [1, 2]}


@pytest.mark.slow
def test_cluster_moves_off_a_silent_member(cluster: Any, runtimes: Any) -> None:
    """A SIGSTOPped member keeps its connections open but answers nothing: calls time out and move on."""
    rt = runtimes(cluster.url, ttl=5.0, timeout=5.0)  # room for an election if the leader was paused
    ns = new_ns()
    comp = rt.namespace(ns).component("c")
    comp.endpoint("a").register(tcp(1))
    in_use = member_in_use(rt)
    [victim] = [m for m in cluster.members if m.endpoint == in_use]
    with rt.watch(Query.namespace(ns)) as watch:
        victim.pause()
        try:
            started = time.monotonic()
            comp.endpoint("b").register(tcp(2))  # within the timeout, through another member
            print(f"registered {time.monotonic() - started:.2f} s after pausing the member in use")
            wait_until(lambda: sorted(i.endpoint for i in watch.instances) == ["a", "b"], 10,
                       what="watch moves to a live member")
            assert member_in_use(rt) != in_use
        finally:
            victim.resume()
    wait_until(lambda: [i.instance_id for i in rt.list_instances(Query.namespace(ns))] == [rt.instance_id] * 2,
               10, what="both registrations listed under the Runtime's lease")


def test_unregister_deletes_only_a_key_on_our_lease(etcd: Any, runtimes: Any) -> None:
    rt = runtimes(etcd.url)
    ns = new_ns()
    reg = rt.namespace(ns).component("c").endpoint("e").register(tcp(1))
    client = raw_client(etcd)
    try:
        client.put(reg.instance.key, reg.instance.to_json())  # someone rewrote it, on no lease
        reg.unregister()
        value, _ = client.get(reg.instance.key)
        assert value == reg.instance.to_json()  # not ours any more: left alone
        client.delete(reg.instance.key)
    finally:
        client.close()
