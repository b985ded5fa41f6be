"""The Consul backend on a real Consul 1.8 agent: layout, sessions, options, ACLs, crashes and faults.

No mocks: real dev agents (``tests/servers/``), real child processes, and the
raw py-consul client to check what is stored.
"""

from __future__ import annotations

import base64
import contextlib
import json
import threading
import time
import uuid
from collections.abc import Iterator
from typing import Any

import consul
import pytest

import servers
import waypost
from servers.fixtures import LeaseLosses
from waypost import Added, Query, Removed, TransportType
from waypost.contrib.conformance._harness import wait_until

TTL = 1.0
ACL_TOKEN = "0f1e2d3c-4b5a-6978-8796-a5b4c3d2e1f0"


@pytest.fixture
def ns() -> str:
    return f"t-{uuid.uuid4().hex[:12]}"


@pytest.fixture
def runtimes() -> Iterator[list[waypost.Runtime]]:
    made: list[waypost.Runtime] = []
    yield made
    for runtime in made:
        with contextlib.suppress(waypost.WaypostError):  # the agent may be down on purpose
            runtime.close()


def _connect(made: list[waypost.Runtime], url: str, **options: Any) -> waypost.Runtime:
    runtime = waypost.connect(url, **{"ttl": TTL, **options})
    made.append(runtime)
    return runtime


def _raw(server: servers.ConsulServer, token: str | None = None) -> Any:
    return consul.Consul(host="127.0.0.1", port=server.port, token=token)


def _session(server: servers.ConsulServer, session_id: str) -> dict[str, Any]:
    status, body = server.http_get(f"/v1/session/info/{session_id}")
    assert status == 200
    [info] = json.loads(body)
    return dict(info)


# -- layout ------------------------------------------------------------------------------------

def test_key_and_value_bytes_are_dynamos(consul_server: servers.ConsulServer, runtimes: list[waypost.Runtime],
                                         ns: str) -> None:
    rt = _connect(runtimes, consul_server.url)
    reg = rt.namespace(ns).component("backend").endpoint("generate").register(
        TransportType.tcp("127.0.0.1:42043/6f64a219dfbb2106/dynamo/backend/generate"),
        device_type="cuda", request_plane_codec="msgpack")
    key = f"v1/instances/{ns}/backend/generate/{rt.instance_id:x}"
    _, entry = _raw(consul_server).kv.get(key)
    assert entry is not None, f"{key} not stored"
    assert entry["Value"] == (
        b'{"type":"Endpoint","component":"backend","endpoint":"generate","namespace":"' + ns.encode()
        + b'","instance_id":' + str(rt.instance_id).encode()
        + b',"transport":{"tcp":"127.0.0.1:42043/6f64a219dfbb2106/dynamo/backend/generate"},'
        b'"device_type":"cuda","request_plane_codec":"msgpack"}')
    assert entry["Value"] == reg.instance.to_json()
    # The key is locked by the Runtime's session: deleted with it, never lingering behind a lock delay.
    info = _session(consul_server, entry["Session"])
    assert info["Name"] == f"waypost/{rt.instance_id:x}"
    assert (info["Behavior"], info["LockDelay"], info["TTL"]) == ("delete", 0, "1s")
    _, lease_entry = _raw(consul_server).kv.get(f"waypost/leases/{rt.instance_id:x}")
    assert lease_entry["Session"] == entry["Session"]


def test_prefix_option_prefixes_every_key(consul_server: servers.ConsulServer, runtimes: list[waypost.Runtime],
                                        ns: str) -> None:
    root = f"apps/{ns}"
    rt = _connect(runtimes, f"{consul_server.url}?prefix={root}")
    rt.namespace(ns).component("c").endpoint("e").register(TransportType.tcp("h:1"))
    raw = _raw(consul_server)
    _, keys = raw.kv.get(f"{root}/", keys=True)
    assert sorted(keys) == [f"{root}/v1/instances/{ns}/c/e/{rt.instance_id:x}",
                            f"{root}/waypost/leases/{rt.instance_id:x}"]
    assert raw.kv.get(f"v1/instances/{ns}/", recurse=True)[1] is None
    assert [i.endpoint for i in rt.list_instances(Query.namespace(ns))] == ["e"]


def test_values_written_by_others_are_read(consul_server: servers.ConsulServer, runtimes: list[waypost.Runtime],
                                           ns: str) -> None:
    """A registration made by another Dynamo-compatible writer (plain KV put) is listed and watched."""
    rt = _connect(runtimes, consul_server.url)
    foreign = waypost.Instance(ns, "c", "e", 0xDEADBEEF, TransportType.http("http://10.0.0.1:8000/x"))
    with rt.watch(Query.namespace(ns)) as watch:
        assert _raw(consul_server).kv.put(foreign.key, foreign.to_json())
        event = watch.wait_for(lambda e: isinstance(e, Added), 5.0)
        assert isinstance(event, Added)
        assert event.instance == foreign
        assert rt.list_instances(Query.namespace(ns)) == [foreign]
        _raw(consul_server).kv.delete(foreign.key)
        assert watch.wait_for(lambda e: isinstance(e, Removed), 5.0) is not None


def test_read_modes_and_datacenter(consul_server: servers.ConsulServer, runtimes: list[waypost.Runtime],
                                   ns: str) -> None:
    for consistency in ("default", "consistent", "stale"):
        rt = _connect(runtimes, consul_server.url, consistency=consistency, dc="dc1")
        reg = rt.namespace(ns).component("c").endpoint(consistency).register(TransportType.tcp("h:1"))
        assert reg.instance in rt.list_instances(Query.namespace(ns))
    with pytest.raises(waypost.ConfigError, match="dc2"):
        _connect(runtimes, consul_server.url, dc="dc2")


@pytest.mark.parametrize("budget", [{}, {"watch_rate": 1024, "watch_wait": 5.0}])
def test_a_processs_own_writes_are_never_merged(consul_server: servers.ConsulServer,
                                                runtimes: list[waypost.Runtime], ns: str,
                                                budget: dict[str, float]) -> None:
    """Blocking queries return states; the write fence keeps a Runtime's own add-then-remove visible.

    Also when the read budget is spent (a 25 KB prefix at 1 KiB/s: 5 s between queries), a fenced write
    asks at once.
    """
    raw = _raw(consul_server)
    for n in range(20):
        filler = waypost.Instance(ns, "f", f"f{n}", 0x1000 + n, TransportType.tcp("h:1"), metadata={"pad": "x" * 900})
        assert raw.kv.put(filler.key, filler.to_json())
    rt = _connect(runtimes, consul_server.url, **budget)
    ep = rt.namespace(ns).component("c").endpoint("e")
    with rt.watch(Query.namespace(ns)) as watch:
        for _ in range(20):  # the fillers' snapshot
            assert isinstance(watch.get(timeout=2.0), Added)
        for n in range(20):
            ep.register(TransportType.tcp(f"h:{n}")).unregister()
        events = [watch.get(timeout=2.0) for _ in range(40)]
    assert [type(e).__name__ for e in events] == ["Added", "Removed"] * 20
    assert [e.instance.transport.address for e in events if isinstance(e, Added)] == [f"h:{n}" for n in range(20)]


# -- leases --------------------------------------------------------------------------------------


def test_ttl_below_the_agents_minimum_is_a_config_error(server_factory: Any, runtimes: list[waypost.Runtime]) -> None:
    server = server_factory("consul")  # Consul's default session_ttl_min: 10 s
    with pytest.raises(waypost.ConfigError, match="session_ttl_min"):
        _connect(runtimes, server.url, ttl=1.0)
    rt = _connect(runtimes, server.url, ttl=10.0)
    assert _raw(server).kv.get(f"waypost/leases/{rt.instance_id:x}")[1] is not None


def test_chosen_instance_id_survives_lease_loss(consul_server: servers.ConsulServer,
                                                runtimes: list[waypost.Runtime], ns: str) -> None:
    rt = _connect(runtimes, consul_server.url, instance_id=0x5EED0001 + hash(ns) % 1000)
    chosen = rt.instance_id
    rt.namespace(ns).component("c").endpoint("e").register(TransportType.tcp("h:1"))
    session = _raw(consul_server).kv.get(f"waypost/leases/{chosen:x}")[1]["Session"]
    assert _raw(consul_server).session.destroy(session)
    wait_until(lambda: [i.instance_id for i in rt.list_instances(Query.namespace(ns))] == [chosen], 3 * TTL,
               what="re-registered under the same id")
    assert _raw(consul_server).kv.get(f"waypost/leases/{chosen:x}")[1]["Session"] != session


def test_a_session_that_expires_before_its_claim_is_replaced(consul_server: servers.ConsulServer,
                                                             runtimes: list[waypost.Runtime]) -> None:
    """A process starved for 2 x ttl between creating its session and claiming an id (seen with 1 000
    Runtimes on a loaded machine) used to fail connect() with a bare WaypostError."""
    rt = _connect(runtimes, consul_server.url)
    backend: Any = rt.backend
    create, destroyed = backend._create_session, []

    def expiring_first(lease_id: int, ttl: float) -> str:
        session: str = create(lease_id, ttl)
        if not destroyed:  # the agent expires it for real before the claim uses it
            assert _raw(consul_server).session.destroy(session)
            destroyed.append(session)
        return session

    backend._create_session = expiring_first
    lease = backend.grant_lease(TTL)
    assert destroyed and _raw(consul_server).kv.get(f"waypost/leases/{lease.id:x}")[1]["Session"] != destroyed[0]
    backend.revoke_lease(lease.id)
    backend._create_session = lambda lease_id, ttl: destroyed[0]  # every session already gone
    with pytest.raises(waypost.BackendUnavailable, match="expired before they could claim"):
        backend.grant_lease(TTL)


def test_revoke_of_an_unknown_lease_is_a_no_op(consul_server: servers.ConsulServer,
                                                runtimes: list[waypost.Runtime]) -> None:
    rt = _connect(runtimes, consul_server.url)
    rt.backend.revoke_lease(0x1234ABCD)
    rt.backend.revoke_lease(0x1234ABCD)


# -- options, URLs and ACLs --------------------------------------------------------------------

def test_acl_denied_is_an_authentication_error_without_the_token(server_factory: Any,
                                                                  runtimes: list[waypost.Runtime]) -> None:
    server = server_factory("consul", acl_token=ACL_TOKEN, session_ttl_min="1s")
    wrong = "b7c1d2e3-f4a5-4b6c-8d7e-secretsecret"
    for options in ({"token": wrong}, {}):
        with pytest.raises(waypost.AuthenticationError) as caught:
            _connect(runtimes, server.url, **options)
        text = f"{caught.value} {caught.value!r} {caught.value.__cause__!r}"
        assert wrong not in text
        assert ACL_TOKEN not in text
        assert "ACL" in str(caught.value)
    rt = _connect(runtimes, server.url, token=ACL_TOKEN)
    assert ACL_TOKEN not in f"{rt!r} {rt.backend!r} {rt.backend.describe()} {rt.url!r}"
    assert rt.list_instances() == []


def test_token_from_the_environment(server_factory: Any, runtimes: list[waypost.Runtime],
                                    monkeypatch: pytest.MonkeyPatch) -> None:
    server = server_factory("consul", acl_token=ACL_TOKEN, session_ttl_min="1s")
    monkeypatch.setenv("CONSUL_HTTP_TOKEN", ACL_TOKEN)
    rt = _connect(runtimes, server.url)
    assert rt.list_instances() == []
    # A keyword beats the environment (py-consul alone would prefer the environment).
    with pytest.raises(waypost.AuthenticationError):
        _connect(runtimes, server.url, token="not-the-token")


def test_tls_needs_the_ca_and_the_client_certificate(server_factory: Any, tls_files: Any,
                                                     runtimes: list[waypost.Runtime]) -> None:
    server = server_factory("consul", tls=tls_files, client_cert_auth=True, session_ttl_min="1s")
    assert server.url.startswith("consuls://")
    with pytest.raises(waypost.AuthenticationError, match="ca_cert"):
        _connect(runtimes, server.url)  # the system roots do not know the test CA
    with pytest.raises(waypost.AuthenticationError, match="client_cert"):
        _connect(runtimes, server.url, ca_cert=str(tls_files.ca))  # no client certificate
    rt = _connect(runtimes, server.url, ca_cert=str(tls_files.ca), client_cert=str(tls_files.client_cert),
                  client_key=str(tls_files.client_key))
    assert rt.list_instances() == []


def test_missing_tls_files_are_config_errors(tmp_path: Any) -> None:
    with pytest.raises(waypost.ConfigError, match="ca_cert: no such file"):
        waypost.connect("consuls://127.0.0.1:1", ttl=TTL, ca_cert=str(tmp_path / "nope.pem"))
    with pytest.raises(waypost.ConfigError, match="go together"):
        waypost.connect("consuls://127.0.0.1:1", ttl=TTL, client_cert=str(tmp_path / "c.pem"))


@pytest.mark.parametrize(("url", "match"), [
    ("consul://user:hunter2@127.0.0.1:8500", "token"),
    ("consul://h1:8500,h2:8500", "one Consul agent"),
    ("consul://127.0.0.1:8500/some/path", "prefix"),
    ("consul://127.0.0.1:8500?consistency=eventual", "consistency"),
])
def test_bad_urls_are_config_errors(url: str, match: str) -> None:
    with pytest.raises(waypost.ConfigError, match=match) as caught:
        waypost.connect(url, ttl=TTL)
    assert "hunter2" not in str(caught.value)


def test_a_busy_prefix_is_read_at_most_at_watch_rate(consul_server: servers.ConsulServer,
                                                     runtimes: list[waypost.Runtime], ns: str) -> None:
    """Consul answers each change with the whole prefix: past ``watch_rate`` bytes/s, states are merged.

    Another writer changes one value of a ~70 KB prefix every 20 ms for 2 s; at
    35 KB/s (a burst of one second) the watch can take about three states, not
    a hundred (unlimited, every change is one answer: 20 watching processes on
    200 x 5 endpoints saturated a 2-core agent that way).
    """
    raw = _raw(consul_server)
    padding = {"pad": "x" * 1000}
    fillers = [waypost.Instance(ns, "c", f"f{n}", 0x1000 + n, TransportType.tcp("h:1"), metadata=padding)
               for n in range(50)]
    for instance in fillers:
        assert raw.kv.put(instance.key, instance.to_json())
    rt = _connect(runtimes, consul_server.url, watch_rate=35_000)
    changed = [waypost.Instance(ns, "c", "busy", 0xB05, TransportType.tcp(f"h:{n}")) for n in range(100)]
    with rt.watch(Query.namespace(ns)) as watch:
        wait_until(lambda: len(watch.instances) == 50, 5.0, what="the fillers listed")
        started = time.monotonic()
        for n, instance in enumerate(changed):
            assert raw.kv.put(instance.key, instance.to_json())
            time.sleep(max(0.0, started + 0.02 * (n + 1) - time.monotonic()))  # pacing the writer, not a sync
        elapsed = time.monotonic() - started
        wait_until(lambda: changed[-1] in watch.instances, 10.0, what="the last value watched")
        states = []
        while (event := watch.get(timeout=0)) is not None:
            if isinstance(event, Added) and event.instance.endpoint == "busy":
                states.append(event.instance)
    assert states[-1] == changed[-1]
    size = len(json.dumps([{"Value": base64.b64encode(i.to_json()).decode()} for i in fillers]))
    allowed = 2 + (35_000 * (elapsed + 1)) / size  # the burst, the rate over the writes, the last state
    assert len(states) <= allowed + 2, f"{len(states)} states of a {size}-byte prefix in {elapsed:.1f} s"


@pytest.mark.parametrize("entries", [
    [{"Key": "p/a", "Value": base64.b64encode(b"x").decode(), "ModifyIndex": 5, "Flags": 0, "Session": "s"}],
    [{"Key": "p/a", "Value": None, "ModifyIndex": 5}, {"Key": "p/b"}, {"Key": "q/c", "Value": "eA=="}],
    [{"Key": "p/a", "Value": "not base64!"}, {"Key": "p/b", "Value": "eA=="}],
    [{"Key": 5, "Value": "eA=="}, {"Key": "p/b", "Value": "eA==", "ModifyIndex": "7"}],
    [{"Key": "p/a", "Value": "eA==", "ModifyIndex": 2**70}],
    [],
])
def test_the_c_decoded_kv_reply_agrees_with_the_lenient_one(entries: list[dict[str, Any]]) -> None:
    """Lists and watches decode Consul's reply in one msgspec call; anything unusual takes the lenient path."""
    from waypost.backends.consul import _decode_entries, _items, _Reply

    body = json.dumps(entries)
    settings = _backend_settings()
    assert _items(_Reply(200, 1, body), settings)[0] == _decode_entries(json.loads(body), "p/")
    assert _items(_Reply(200, 1, " \n"), settings)[0] == {}  # an empty reply: nothing under the prefix


def _backend_settings() -> Any:
    from waypost.backends.consul import ConsulBackend, _Settings
    from waypost.core import parse_url

    defaults = {o.name: o.default for o in ConsulBackend.options}
    return _Settings.from_url(parse_url("consul://127.0.0.1:1"), {**defaults, "prefix": "p/"})


def test_the_read_budget_owes_at_most_one_answer_and_waits_at_most_watch_wait() -> None:
    from waypost.backends.consul import _ReadBudget

    budget = _ReadBudget(1 << 20, longest=2.5)
    waits = [budget.spend(300_000) for _ in range(200)]  # 200 answers fetched early (fenced writes)
    assert max(waits) <= 300_000 / (1 << 20) + 0.01, "fenced answers piled up into a long silence"
    assert _ReadBudget(1024, longest=2.5).spend(10_000_000) == 2.5
    assert _ReadBudget(0, longest=2.5).spend(10_000_000) == 0.0


@pytest.mark.parametrize("rate", ["1", "1023.5", "-1", "nan", "inf", "fast"])
def test_a_watch_rate_that_would_starve_a_watch_is_a_config_error(rate: str) -> None:
    with pytest.raises(waypost.ConfigError, match="watch_rate"):
        waypost.connect(f"consul://127.0.0.1:1?watch_rate={rate}")


def test_declared_options_and_capabilities() -> None:
    from waypost.backends.consul import ConsulBackend

    names = {o.name for o in ConsulBackend.options}
    assert names == {"timeout", "token", "ca_cert", "client_cert", "client_key", "tls_verify", "tls_server_name",
                     "prefix", "dc", "consistency", "watch_wait", "watch_rate"}
    assert [o.name for o in ConsulBackend.options if o.secret] == ["token"]
    assert waypost.Capability.WATCH_HISTORY not in ConsulBackend.capabilities
    assert ConsulBackend.__doc__ is not None
    assert "2 x ttl" in ConsulBackend.__doc__


# -- faults ----------------------------------------------------------------------------------------


def _backend(url: str, **options: Any) -> Any:
    from waypost.backends.consul import ConsulBackend
    from waypost.core import parse_url

    defaults = {o.name: o.default for o in ConsulBackend.options}
    return ConsulBackend.from_url(parse_url(url), {**defaults, **options})


def test_a_retried_create_finds_its_own_write(consul_server: servers.ConsulServer, ns: str) -> None:
    """A create retried after a lost reply: the key is held by our session with our value, so it succeeds."""
    a, b = _backend(consul_server.url), _backend(consul_server.url)
    try:
        lease = a.grant_lease(10.0)
        key = f"v1/instances/{ns}/c/e/{lease.id:x}"
        a.create(lease, key, b"v1")
        a.create(lease, key, b"v1")  # the retry: not a conflict
        with pytest.raises(waypost.AlreadyRegistered):
            a.create(lease, key, b"v2")  # ours, but another value: a real conflict
        other = b.grant_lease(10.0)
        with pytest.raises(waypost.AlreadyRegistered):
            b.create(other, key, b"v1")  # the same value under another session: not b's
        assert a.list(f"v1/instances/{ns}/") == [(key, b"v1")]
    finally:
        a.close()
        b.close()


def test_binary_values_round_trip_unchanged(consul_server: servers.ConsulServer, runtimes: list[waypost.Runtime],
                                           ns: str) -> None:
    """Binary values round-trip through the transaction API (base64 on the wire) unchanged."""
    rt = _connect(runtimes, consul_server.url)
    key = f"v1/instances/{ns}/c/raw/{rt.instance_id:x}"
    value = bytes(range(256))
    rt.backend.create(rt.lease, key, value)
    assert _raw(consul_server).kv.get(key)[1]["Value"] == value
    status, body = consul_server.http_get(f"/v1/kv/{key}")
    assert status == 200
    assert base64.b64decode(json.loads(body)[0]["Value"]) == value
    assert rt.backend.list(f"v1/instances/{ns}/") == [(key, value)]


# -- scale ------------------------------------------------------------------------------------------

def _connections_to(port: int) -> int:
    """Established TCP connections from this process's host to 127.0.0.1:port (/proc/net/tcp)."""
    count = 0
    with open("/proc/net/tcp") as table:
        for line in table.readlines()[1:]:
            fields = line.split()
            remote, state = fields[2], fields[3]
            if state == "01" and int(remote.split(":")[1], 16) == port:
                count += 1
    return count


@pytest.mark.slow
def test_a_thousand_runtimes_in_one_process_on_a_default_agent(server_factory: Any, ns: str,
                                                               lease_losses: LeaseLosses) -> None:
    """A default agent allows 200 connections per client address: Runtime #201 used to fail."""
    server = server_factory("consul", session_ttl_min="1s")  # the agent's connection limits left at default
    made: list[waypost.Runtime] = []
    try:
        for _ in range(1000):
            made.append(waypost.connect(server.url, ttl=10.0))
        for n, rt in enumerate(made[:50]):
            rt.namespace(ns).component("c").endpoint(f"e{n}").register(TransportType.tcp(f"h:{n}"))
        watches = [rt.watch(Query.namespace(ns)) for rt in made[:100]]  # 100 watches of one prefix
        wait_until(lambda: all(len(w.instances) == 50 for w in watches), 20.0, what="every watch sees all 50")
        assert _connections_to(server.port) <= 16 + 1, "more connections than the pool and one shared query"
        keepalive = made[0].keepalive_interval
        renewed_at = time.monotonic()
        wait_until(lambda: time.monotonic() - renewed_at > keepalive * 1.5, keepalive * 3, interval=0.2,
                   what="every Runtime renewed once")
        assert lease_losses.calls == [], f"{len(lease_losses.calls)} lease losses"
        for watch in watches:
            watch.close()
    finally:
        for rt in made:
            rt.close()
    assert _connections_to(server.port) <= 16


def test_watches_of_one_prefix_share_one_blocking_query(consul_server: servers.ConsulServer,
                                                        runtimes: list[waypost.Runtime], ns: str) -> None:
    a, b = _connect(runtimes, consul_server.url), _connect(runtimes, consul_server.url)
    watches = [rt.watch(Query.namespace(ns)) for rt in (a, b) for _ in range(5)]
    feeds = [t for t in threading.enumerate() if t.name == "waypost-consul-watch"]
    assert len(feeds) == 1, f"{len(feeds)} blocking-query threads for 10 watches of one prefix"
    other = a.watch(Query.namespace(f"{ns}-other"))
    assert len([t for t in threading.enumerate() if t.name == "waypost-consul-watch"]) == 2
    reg = b.namespace(ns).component("c").endpoint("e").register(TransportType.tcp("h:1"))
    wait_until(lambda: all(w.instances == [reg.instance] for w in watches), 5.0, what="every watch sees it")
    for watch in (*watches, other):
        watch.close()
    wait_until(lambda: not [t for t in threading.enumerate() if t.name.startswith("waypost-consul-watch")],
               5.0, what="the feed and the watches' threads gone")
