"""The shipped conformance suite against real Consul 1.8 dev agents: plain, ACL (deny by default) and TLS."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import consul
import pytest

import servers
import waypost
from waypost import TransportType
from waypost.contrib.conformance import BackendConformance, Harness

TTL = 1.0
# Consul expires a session 2 x TTL after its last renewal: ttl + ttl, plus a little for the Raft apply.
EXPIRY_BOUND = TTL + 0.3
# A silent agent is noticed within max(ttl, 1) s plus this.
INTERRUPT_BOUND = 2.0
MASTER_TOKEN = "5c0a7e52-8d7c-4c55-9a53-waypost0test"
# The narrowest policy the backend documents (module docstring, "ACL policy").
POLICY = """
key_prefix "v1/instances/" { policy = "write" }
key_prefix "v1/mdc/" { policy = "write" }
key_prefix "v1/event_channels/" { policy = "read" }
key_prefix "v1/event_sources/" { policy = "read" }
key_prefix "waypost/leases/" { policy = "write" }
session_prefix "" { policy = "write" }
"""
# What the ACL run adds so that the suite can try two deployments side by side (option `prefix`).
ISOLATION = ("iso-a/", "iso-b/")
ISOLATION_POLICY = "".join(f'key_prefix "{p}" {{ policy = "write" }}\n' for p in ISOLATION)


def _ready(server: servers.ConsulServer) -> servers.ConsulServer:
    """Undo what a failed fault test may have left (paused or stopped agent)."""
    if server.paused:
        server.resume()
    if not server.running:
        server.start()
    return server


BAD_URLS = {
    "consul://user:hunter2@127.0.0.1:8500": "token",
    "consul://h1:8500,h2:8500": "one Consul agent",
    "consul://127.0.0.1:8500/some/path": "prefix",
    "consul://127.0.0.1:8500?consistency=eventual": "consistency",
    "consul://127.0.0.1:8500?ca_cert=/etc/hostname": "TLS scheme",
    "consuls://127.0.0.1:1?client_cert=/etc/hostname": "go together",
}


def _raw(server: servers.ConsulServer) -> dict[str, Any]:
    """Plant and read KV entries (any key bytes) as another Consul client would, with the agent's token."""
    from urllib.parse import quote_from_bytes

    from servers._process import _http_request

    def path(key: bytes) -> str:
        return "/v1/kv/" + quote_from_bytes(key, safe="/")

    def put(key: bytes, value: bytes) -> None:
        status, body = _http_request(server.port, "PUT", path(key), body=value, tls=server.tls,
                                     headers={"X-Consul-Token": MASTER_TOKEN} if server.acl_token else None)
        assert status == 200, body

    def get(key: bytes) -> bytes | None:
        status, body = _http_request(server.port, "GET", path(key) + "?raw", tls=server.tls,
                                     headers={"X-Consul-Token": MASTER_TOKEN} if server.acl_token else None)
        return body if status == 200 else None

    return {"raw_put": put, "raw_get": get}


def _harness(server: servers.ConsulServer, scheme: str, **options: object) -> Harness:
    return Harness(url=_ready(server).url, options=options, ttl=TTL, expiry_bound=EXPIRY_BOUND, server=server,
                   restart_loses_data=True, unreachable_url=f"{scheme}://127.0.0.1:{servers.free_port()}",
                   interrupt_bound=INTERRUPT_BOUND, bad_urls=BAD_URLS, **_raw(server))


@pytest.fixture(scope="module")
def plain_consul() -> Iterator[servers.ConsulServer]:
    with servers.ConsulServer(session_ttl_min="1s") as server:
        yield server


def _policy_token(server: servers.ConsulServer, rules: str = POLICY + ISOLATION_POLICY) -> str:
    """A new token holding only ``rules`` (default: POLICY), made with the master token."""
    client = consul.Consul(host="127.0.0.1", port=server.port, token=MASTER_TOKEN)
    headers = {"X-Consul-Token": MASTER_TOKEN}
    name = f"waypost-{uuid.uuid4().hex[:12]}"
    for path, body in (("/v1/acl/policy", {"Name": name, "Rules": rules}),
                       ("/v1/acl/token", {"Policies": [{"Name": name}]})):
        response = client.http.put(lambda r: r, path, data=json.dumps(body), headers=headers)
        assert response.code == 200, response.body
    return str(json.loads(response.body)["SecretID"])


@pytest.fixture(scope="module")
def acl_consul() -> Iterator[servers.ConsulServer]:
    with servers.ConsulServer(acl_token=MASTER_TOKEN, session_ttl_min="1s") as server:
        yield server


@pytest.fixture(scope="module")
def tls_consul(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[servers.ConsulServer, servers.TLSFiles]]:
    tls = servers.make_tls(Path(tmp_path_factory.mktemp("consul-tls")))
    with servers.ConsulServer(tls=tls, client_cert_auth=True, session_ttl_min="1s") as server:
        yield server, tls


class TestConsulConformance(BackendConformance):
    @pytest.fixture
    def harness(self, plain_consul: servers.ConsulServer) -> Harness:
        return _harness(plain_consul, "consul")


class TestConsulACLConformance(BackendConformance):
    """ACLs on with ``default_policy = "deny"``; each test gets a token with only the documented policy.

    A dev agent forgets the tokens it made when it restarts, so the tests that
    restart it use the master token (from its configuration) instead.
    """

    @pytest.fixture
    def harness(self, acl_consul: servers.ConsulServer, request: pytest.FixtureRequest) -> Harness:
        server = _ready(acl_consul)
        restarts = any(name in request.node.name for name in ("restart", "dead_server"))
        harness = _harness(server, "consul", token=MASTER_TOKEN if restarts else _policy_token(server))
        harness.prefixes = ISOLATION
        return harness


class TestConsulTLSConformance(BackendConformance):
    """``consuls://`` with a CA-verified agent that requires a client certificate."""

    @pytest.fixture
    def harness(self, tls_consul: tuple[servers.ConsulServer, servers.TLSFiles]) -> Harness:
        server, tls = tls_consul
        return _harness(server, "consuls", ca_cert=str(tls.ca), client_cert=str(tls.client_cert),
                        client_key=str(tls.client_key))


def test_a_write_the_acl_denies_is_an_authentication_error(acl_consul: servers.ConsulServer) -> None:
    instances_only = POLICY.replace('key_prefix "v1/mdc/" { policy = "write" }', "")
    with waypost.connect(_ready(acl_consul).url, ttl=TTL, token=_policy_token(acl_consul, instances_only)) as rt:
        endpoint = rt.namespace("acl").component("c").endpoint("e")
        endpoint.register(TransportType.tcp("127.0.0.1:1"))
        with pytest.raises(waypost.AuthenticationError, match=r"may not write v1/mdc/acl/c/e/.*ACL policy"):
            endpoint.register_model({"display_name": "m"})
