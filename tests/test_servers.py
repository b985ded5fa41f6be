"""The test-server harness itself: real etcd / Redis / Consul start, answer,
restart, pause, and speak TLS. Uses only stdlib sockets / ssl / http.client."""

from __future__ import annotations

import base64
import http.client
import json
import os
import socket
import ssl
import tempfile

import pytest

# tests/conftest.py puts tests/ on sys.path and re-exports the fixtures from
# the same `servers` package; import it under that name (not tests.servers) so
# there is only one copy of the package and of its session servers.
import servers as S

# The directory `import servers` needs on sys.path (tests/), for child Pythons.
TESTS_DIR = os.path.dirname(os.path.dirname(os.path.abspath(S.__file__)))

# ---------------------------------------------------------------- helpers


def http_req(port, method, path, body=None, tls=None, headers=None, timeout=3.0, client_cert=True):
    if tls is not None:
        ctx = tls.client_context(client_cert=client_cert)
        conn = http.client.HTTPSConnection(S.HOST, port, timeout=timeout, context=ctx)
    else:
        conn = http.client.HTTPConnection(S.HOST, port, timeout=timeout)
    try:
        data = body if body is None or isinstance(body, bytes) else json.dumps(body).encode()
        conn.request(method, path, body=data, headers=headers or {})
        r = conn.getresponse()
        return r.status, r.read()
    finally:
        conn.close()


def b64(s: str) -> str:
    return base64.b64encode(s.encode()).decode()


def etcd_put(srv, key, value):
    st, body = http_req(srv.port, "POST", "/v3/kv/put", {"key": b64(key), "value": b64(value)}, tls=srv.tls)
    assert st == 200, body


def etcd_get(srv, key):
    st, body = http_req(srv.port, "POST", "/v3/kv/range", {"key": b64(key)}, tls=srv.tls)
    assert st == 200, body
    kvs = json.loads(body).get("kvs") or []
    return base64.b64decode(kvs[0]["value"]).decode() if kvs else None


def redis_raw(port, *args, tls=None, timeout=2.0):
    """Send commands (each a tuple) on one connection, return the reply lines."""
    sock = socket.create_connection((S.HOST, port), timeout=timeout)
    if tls is not None:
        sock = tls.client_context().wrap_socket(sock, server_hostname=S.HOST)
    try:
        out = []
        f = sock.makefile("rb")
        for cmd in args:
            sock.sendall(S._resp_command(*cmd))
            out.append(f.readline().rstrip(b"\r\n"))
        return out
    finally:
        sock.close()


@pytest.fixture
def tls(tmp_path):
    return S.make_tls(tmp_path / "tls")


# ---------------------------------------------------------------- generic


def test_missing_binaries_give_clear_error(tmp_path, monkeypatch):
    monkeypatch.setenv("WAYPOST_SERVERS_DIR", str(tmp_path))
    with pytest.raises(S.ServerBinaryMissing, match="scripts/install-servers"):
        S.EtcdServer()
    with pytest.raises(S.ServerBinaryMissing):
        S.RedisServer()
    with pytest.raises(S.ServerBinaryMissing):
        S.ConsulServer()


def test_bad_arguments_leave_no_temp_dir(tmp_path, monkeypatch):
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    with pytest.raises(ValueError, match="needs tls"):
        S.EtcdServer(client_cert_auth=True)
    with pytest.raises(ValueError, match="acl_user"):
        S.RedisServer(acl_user=("user", "pw"))
    assert list(tmp_path.iterdir()) == []


def test_free_port_is_loopback_and_distinct():
    ports = {S.free_port() for _ in range(20)}
    assert len(ports) == 20
    for p in ports:
        s = socket.socket()
        s.bind((S.HOST, p))  # still free
        s.close()


def test_make_tls_files_are_private(tls):
    import stat

    for name in ("ca", "server_cert", "server_key", "client_cert", "client_key"):
        path = getattr(tls, name)
        assert os.path.isfile(path)
        assert stat.S_IMODE(os.stat(path).st_mode) == 0o600


# ---------------------------------------------------------------- etcd


@pytest.mark.parametrize("version", ["3.5", "3.4"])
def test_etcd_start_restart_pause(version):
    with S.EtcdServer(version) as e:
        assert e.url == f"etcd://127.0.0.1:{e.port}"
        assert e.endpoint == f"127.0.0.1:{e.port}"
        st, body = http_req(e.port, "GET", "/version")
        assert st == 200
        assert json.loads(body)["etcdserver"].startswith(version)
        etcd_put(e, "k", "v1")
        port = e.port

        e.restart()
        assert e.port == port
        assert etcd_get(e, "k") == "v1"  # same data dir

        e.kill()
        assert not e.running
        e.kill()  # twice is fine
        e.start()
        assert e.port == port
        assert etcd_get(e, "k") == "v1"

        e.pause()
        with pytest.raises(OSError):  # socket.timeout is an OSError
            http_req(e.port, "GET", "/health", timeout=0.3)
        e.resume()
        assert etcd_get(e, "k") == "v1"
    assert not e.running
    e.stop()  # after close: no-op
    e.close()


@pytest.mark.parametrize("version", ["3.5", "3.4"])
def test_etcd_tls(tls, version):
    with S.EtcdServer(version, tls=tls, client_cert_auth=True) as e:
        assert e.url.startswith("etcds://127.0.0.1:")
        etcd_put(e, "secure", "yes")
        assert etcd_get(e, "secure") == "yes"
        # no client cert -> refused
        with pytest.raises((ssl.SSLError, ConnectionError, OSError)):
            http_req(e.port, "GET", "/health", tls=tls, client_cert=False)
        # plain HTTP to the TLS port -> no valid answer
        try:
            st, _ = http_req(e.port, "GET", "/health")
        except (http.client.HTTPException, OSError):
            pass
        else:
            assert st == 400


def test_etcd_cluster_member_kill_restart():
    with S.EtcdCluster(3) as c:
        assert len(c.members) == 3
        assert len(c.endpoints) == 3
        assert c.url == "etcd://" + ",".join(c.endpoints)
        etcd_put(c.members[0], "c", "1")
        assert etcd_get(c.members[2], "c") == "1"
        old = c.leader()
        port = old.port
        old.kill()
        # A proposal in flight when the leader dies is dropped by etcd and the
        # plain HTTP request then hangs until etcd's request timeout (real
        # clients retry): wait for the new leader first.
        new = c.leader()
        assert new is not old
        follower = next(m for m in c.members if m.running and m is not new)
        etcd_put(follower, "c", "2")  # quorum of 2 remains
        old.start()
        assert old.port == port
        assert old.endpoint in c.endpoints
        assert etcd_get(old, "c") == "2"
        c.leader()


# ---------------------------------------------------------------- redis


def test_redis_start_restart_pause():
    with S.RedisServer() as r:
        assert r.url == f"redis://127.0.0.1:{r.port}/0"
        assert redis_raw(r.port, ("PING",), ("SET", "k", "v"), ("GET", "k")) == [b"+PONG", b"+OK", b"$1"]
        port = r.port
        r.restart()
        assert r.port == port
        assert redis_raw(r.port, ("GET", "k")) == [b"$-1"]  # no persistence, by design
        r.pause()
        with pytest.raises(OSError):
            redis_raw(r.port, ("PING",), timeout=0.3)
        r.resume()
        assert r.command("PING") == b"+PONG"
        r.kill()
        r.start()
        assert r.command("PING") == b"+PONG"


def test_redis_password_and_acl_user():
    with S.RedisServer(password="s3cret") as r:
        assert redis_raw(r.port, ("PING",))[0].startswith(b"-NOAUTH")
        assert redis_raw(r.port, ("AUTH", "s3cret"), ("PING",)) == [b"+OK", b"+PONG"]
        assert r.auth_url == f"redis://:s3cret@127.0.0.1:{r.port}/0"
    with S.RedisServer(acl_user=("wp", "pw", "waypost:*")) as r:
        assert redis_raw(r.port, ("PING",))[0].startswith(b"-NOAUTH")
        out = redis_raw(
            r.port,
            ("AUTH", "wp", "pw"),
            ("SET", "waypost:a", "1"),
            ("SET", "other", "1"),
            ("PUBLISH", "waypost:ch", "x"),
            ("PUBLISH", "other", "x"),
        )
        assert out[0] == b"+OK"
        assert out[1] == b"+OK"
        assert out[2].startswith(b"-NOPERM")
        assert out[3] == b":0"
        assert out[4].startswith(b"-NOPERM")
        assert r.auth_url == f"redis://wp:pw@127.0.0.1:{r.port}/0"


def test_redis_tls(tls):
    with S.RedisServer(tls=tls, password="pw") as r:
        assert r.url.startswith("rediss://127.0.0.1:")
        assert redis_raw(r.port, ("AUTH", "pw"), ("PING",), tls=tls) == [b"+OK", b"+PONG"]
        # plain text to the TLS port gets no RESP answer
        try:
            out = redis_raw(r.port, ("PING",), timeout=1.0)
        except OSError:
            out = None
        assert out != [b"+PONG"]


# ---------------------------------------------------------------- consul


def test_consul_start_restart_pause():
    with S.ConsulServer(session_ttl_min="1s") as c:
        assert c.url == f"consul://127.0.0.1:{c.port}"
        st, body = http_req(c.port, "GET", "/v1/status/leader")
        assert st == 200
        assert json.loads(body)
        st, _ = http_req(c.port, "PUT", "/v1/kv/waypost/x", b"1")
        assert st == 200
        st, body = http_req(c.port, "PUT", "/v1/session/create", {"TTL": "1s"})
        assert st == 200, body
        port = c.port
        c.pause()
        with pytest.raises(OSError):
            http_req(c.port, "GET", "/v1/status/leader", timeout=0.3)
        c.resume()
        c.restart()
        assert c.port == port
        st, _ = http_req(c.port, "GET", "/v1/kv/waypost/x")
        assert st == 404  # -dev keeps state in memory only


def test_consul_acl():
    with S.ConsulServer(acl_token="root-token") as c:
        st, _ = http_req(c.port, "PUT", "/v1/kv/waypost/x", b"1")
        assert st == 403
        st, _ = http_req(c.port, "PUT", "/v1/kv/waypost/x", b"1", headers={"X-Consul-Token": "root-token"})
        assert st == 200
        st, _ = http_req(c.port, "GET", "/v1/kv/waypost/x", headers={"X-Consul-Token": "wrong"})
        assert st == 403


def test_consul_tls(tls):
    with S.ConsulServer(tls=tls, client_cert_auth=True) as c:
        assert c.url.startswith("consuls://127.0.0.1:")
        st, body = http_req(c.port, "GET", "/v1/status/leader", tls=tls)
        assert st == 200
        assert json.loads(body)
        with pytest.raises((ssl.SSLError, ConnectionError, OSError)):
            http_req(c.port, "GET", "/v1/status/leader", tls=tls, client_cert=False)


# ---------------------------------------------------------------- fixtures


def test_session_fixtures(etcd_server, redis_server, consul_server):
    assert etcd_server.running
    assert redis_server.running
    assert consul_server.running
    assert redis_server.command("PING") == b"+PONG"


def test_factories(server_factory, tls_files):
    a = server_factory("redis")
    b = server_factory("redis", password="x")
    e = server_factory("etcd", "3.4", tls=tls_files)
    c = server_factory("etcd-cluster", size=1)
    assert len(c.members) == 1
    assert len({a.port, b.port, e.port}) == 3
    assert a.running
    assert b.running
    assert e.running


# ---------------------------------------------------------------- robustness


def test_port_clash_is_retried(monkeypatch):
    busy = socket.socket()
    busy.bind((S.HOST, 0))
    busy.listen(1)
    real = S.free_port
    calls = []

    def fake():
        calls.append(1)
        return busy.getsockname()[1] if len(calls) == 1 else real()

    # The servers look free_port up in servers._process at call time.
    monkeypatch.setattr(S._process, "free_port", fake)
    try:
        with S.RedisServer() as r:
            assert len(calls) == 2  # the busy port, then a free one: the clash was retried
            assert r.port != busy.getsockname()[1]
            assert r.command("PING") == b"+PONG"
    finally:
        busy.close()


def test_start_failure_reports_log_tail():
    r = S.RedisServer(extra_config="no-such-directive yes")
    try:
        with pytest.raises(S.ServerError, match="no-such-directive"):
            r.start(timeout=10)
        assert not r.running
    finally:
        r.close()


def test_atexit_cleans_up_processes():
    import subprocess
    import sys
    import time

    code = (
        f"import sys; sys.path.insert(0, {TESTS_DIR!r})\n"
        "import servers as S\n"
        "r = S.RedisServer().start(); e = S.EtcdServer().start(); c = S.ConsulServer().start()\n"
        "r.pause()\n"
        "print(r.pid, e.pid, c.pid)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=False)
    assert out.returncode == 0, out.stderr
    pids = [int(p) for p in out.stdout.split()]
    assert len(pids) == 3
    for pid in pids:
        deadline = time.monotonic() + 10
        while True:
            try:
                os.kill(pid, 0)
            except ProcessLookupError:
                break
            # a zombie of ours would not exist: the child python reaped it
            assert time.monotonic() < deadline, f"server pid {pid} left behind"
            time.sleep(0.05)


def test_atexit_removes_temp_dirs():
    import subprocess
    import sys

    code = (
        f"import sys; sys.path.insert(0, {TESTS_DIR!r})\n"
        "import servers as S\n"
        "r = S.RedisServer().start(); c = S.EtcdCluster(1).start(); idle = S.RedisServer()\n"
        "print(r.workdir, c.workdir, idle.workdir)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=False)
    assert out.returncode == 0, out.stderr
    dirs = out.stdout.split()
    assert len(dirs) == 3
    assert [d for d in dirs if os.path.exists(d)] == []


def test_servers_die_with_a_killed_parent():
    """No atexit when the test process is SIGKILLed: PDEATHSIG must do it."""
    import signal
    import subprocess
    import sys
    import time

    assert S._SETPRIV is not None, "setpriv (util-linux) is needed so servers die with the test process"
    code = (
        f"import sys, time; sys.path.insert(0, {TESTS_DIR!r})\n"
        "import servers as S\n"
        "r = S.RedisServer().start(); e = S.EtcdServer().start()\n"
        "print(r.pid, e.pid, flush=True)\n"
        "time.sleep(60)\n"
    )
    child = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    try:
        pids = [int(p) for p in child.stdout.readline().split()]
        assert len(pids) == 2
    finally:
        child.send_signal(signal.SIGKILL)
        child.wait()
    for pid in pids:
        deadline = time.monotonic() + 10
        while True:
            try:
                os.kill(pid, 0)
            except ProcessLookupError:
                break
            assert time.monotonic() < deadline, f"server pid {pid} left behind"
            time.sleep(0.05)
