"""The shipped conformance suite against real etcd: 3.5 and 3.4, and 3.5 with mutual TLS + user/password."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import servers  # tests/servers/, on sys.path through tests/conftest.py
from waypost.contrib.conformance import BackendConformance, Harness

PASSWORD = "c0nf:pw@/?#"  # URL-hostile on purpose
TIMEOUT = 2.0  # etcd calls; keeps the fault tests (paused, dead server) short


def _ready(server: Any) -> Any:
    """Undo what a failed fault test may have left (a paused or stopped server)."""
    if server.paused:
        server.resume()
    if not server.running:
        server.start()
    return server


def _closed_port_url(scheme: str) -> str:
    return f"{scheme}://127.0.0.1:{servers.free_port()}"


def _raw(server: Any) -> dict[str, Any]:
    """Plant and read keys (any bytes) as another etcd client would, with pyetcd."""
    import pyetcd

    def client() -> Any:
        return pyetcd.client(host=servers.HOST, port=server.port, timeout=5)

    def put(key: bytes, value: bytes) -> None:
        raw = client()
        try:
            raw.put(key, value)
        finally:
            raw.close()

    def get(key: bytes) -> bytes | None:
        raw = client()
        try:
            value, _ = raw.get(key)
        finally:
            raw.close()
        return None if value is None else bytes(value)

    return {"raw_put": put, "raw_get": get}


def _enable_auth(server: Any, tls: Any) -> None:
    base = [servers.find_binary("etcdctl"), f"--endpoints={server.client_url}", f"--cacert={tls.ca}",
            f"--cert={tls.client_cert}", f"--key={tls.client_key}", "--command-timeout=5s"]
    env = {k: v for k, v in os.environ.items() if not k.startswith("ETCDCTL_")}
    for args in (["user", "add", "root", f"--new-user-password={PASSWORD}", "--interactive=false"],
                 ["auth", "enable"]):
        done = subprocess.run([*base, *args], capture_output=True, text=True, timeout=30, env=env, check=False)
        assert done.returncode == 0, done.stderr


@pytest.fixture(scope="module", params=["3.5", "3.4"])
def plain_etcd(request: pytest.FixtureRequest) -> Iterator[Any]:
    with servers.EtcdServer(version=request.param) as server:
        yield server


@pytest.fixture(scope="module")
def secure_etcd(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Any, Any]]:
    tls = servers.make_tls(Path(tmp_path_factory.mktemp("etcd-tls")))
    with servers.EtcdServer(tls=tls, client_cert_auth=True) as server:
        _enable_auth(server, tls)
        yield server, tls


BAD_URLS = {
    "etcd://": "at least one host",
    "etcd://127.0.0.1:99999": "invalid port",
    "etcd://root@127.0.0.1:1": "both user and password",
    "etcd://127.0.0.1:1?ca_cert=/etc/hostname": "TLS scheme",
    "etcds://127.0.0.1:1?client_key=/etc/hostname": "go together",
    "etcds://127.0.0.1:1?ca_cert=/nonexistent/ca.pem": "no such file",
}


class TestEtcdConformance(BackendConformance):
    @pytest.fixture
    def harness(self, plain_etcd: Any) -> Harness:
        server = _ready(plain_etcd)
        return Harness(url=server.url, options={"timeout": TIMEOUT}, ttl=1.0, expiry_bound=1.0, server=server,
                       restart_loses_data=False, unreachable_url=_closed_port_url("etcd"), bad_urls=BAD_URLS,
                       **_raw(server))


class TestEtcdSecureConformance(BackendConformance):
    """``etcds://`` with a CA-verified server, a client certificate, and user/password auth.

    A restart drops etcd's auth tokens, so the fault tests also exercise token renewal.
    """

    @pytest.fixture
    def harness(self, secure_etcd: tuple[Any, Any]) -> Harness:
        server, tls = secure_etcd
        options = {"timeout": TIMEOUT, "ca_cert": tls.ca, "client_cert": tls.client_cert, "client_key": tls.client_key,
                   "user": "root", "password": PASSWORD}
        return Harness(url=_ready(server).url, options=options, ttl=1.0, expiry_bound=1.0, server=server,
                       restart_loses_data=False, unreachable_url=_closed_port_url("etcds"), bad_urls=BAD_URLS)
