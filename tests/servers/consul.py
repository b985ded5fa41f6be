"""Real Consul 1.8 dev agent: :class:`ConsulServer` (in-memory, loopback only, optional TLS and ACLs)."""

from __future__ import annotations

import json

from . import _process
from ._process import DEFAULT_START_TIMEOUT, HOST, _env_without, _http_request, _Server, _write_config
from .tls import TLSFiles


class ConsulServer(_Server):
    """A real Consul 1.8 agent in ``-dev`` mode (in-memory: a restart loses
    all state), loopback-only, with DNS, gRPC and serf WAN disabled.

    - ``tls``: HTTPS on ``port`` and the plain HTTP port disabled;
      ``client_cert_auth`` sets ``verify_incoming_https``.
    - ``acl_token``: ACLs enabled with ``default_policy = "deny"`` and this
      token as master (and agent) token; anonymous requests are denied.
    - ``session_ttl_min``: e.g. ``"1s"`` to allow short session TTLs
      (Consul's default minimum is 10s).

    ``url`` is ``consul://127.0.0.1:PORT`` (``consuls://`` with TLS).
    """

    kind = "consul"
    scheme = "consul"
    tls_scheme = "consuls"

    def __init__(
        self,
        tls: TLSFiles | None = None,
        acl_token: str | None = None,
        *,
        client_cert_auth: bool = False,
        session_ttl_min: str | None = None,
        node_name: str = "waypost-test",
        datacenter: str = "dc1",
        extra_hcl: str = "",
        start_timeout: float = DEFAULT_START_TIMEOUT,
    ):
        super().__init__("consul", tls=tls, start_timeout=start_timeout)
        self.acl_token = acl_token
        self.client_cert_auth = client_cert_auth
        self.session_ttl_min = session_ttl_min
        self.node_name = node_name
        self.datacenter = datacenter
        self.extra_hcl = extra_hcl
        self.config_path = self.workdir / "consul.hcl"
        self.server_port: int | None = None
        self.serf_lan_port: int | None = None

    def _pick_ports(self) -> None:
        self.port = _process.free_port()
        self.server_port = _process.free_port()
        self.serf_lan_port = _process.free_port()

    def _before_spawn(self) -> None:
        j = json.dumps  # JSON strings are valid HCL strings
        ports = [
            f"server = {self.server_port}",
            f"serf_lan = {self.serf_lan_port}",
            "serf_wan = -1",
            "dns = -1",
            "grpc = -1",
        ]
        if self.tls:
            ports += ["http = -1", f"https = {self.port}"]
        else:
            ports += [f"http = {self.port}", "https = -1"]
        lines = [
            f"datacenter = {j(self.datacenter)}",
            f"node_name = {j(self.node_name)}",
            "disable_update_check = true",
            "disable_anonymous_signature = true",
            f"ports {{ {', '.join(ports)} }}",
        ]
        if self.session_ttl_min:
            lines.append(f"session_ttl_min = {j(self.session_ttl_min)}")
        if self.tls:
            lines += [
                f"ca_file = {j(self.tls.ca)}",
                f"cert_file = {j(self.tls.server_cert)}",
                f"key_file = {j(self.tls.server_key)}",
                "verify_incoming = false",
                "verify_incoming_rpc = false",
                f"verify_incoming_https = {'true' if self.client_cert_auth else 'false'}",
            ]
        if self.acl_token:
            lines.append(
                'acl { enabled = true, default_policy = "deny", '
                "enable_token_persistence = false, "
                f"tokens {{ master = {j(self.acl_token)}, agent = {j(self.acl_token)} }} }}"
            )
        if self.extra_hcl:
            lines.append(self.extra_hcl)
        _write_config(self.config_path, lines)

    def _argv(self) -> list[str]:
        return [
            self.binary,
            "agent",
            "-dev",
            "-bind",
            HOST,
            "-client",
            HOST,
            "-serf-lan-bind",
            HOST,
            "-dns-port",
            "-1",
            "-grpc-port",
            "-1",
            "-serf-wan-port",
            "-1",
            "-log-level",
            "info",
            "-config-file",
            str(self.config_path),
        ]

    def _env(self) -> dict:
        # Don't let CONSUL_* variables (e.g. CONSUL_HTTP_ADDR) leak in.
        env = _env_without("CONSUL_")
        env["CHECKPOINT_DISABLE"] = "1"
        return env

    def _headers(self) -> dict:
        return {"X-Consul-Token": self.acl_token} if self.acl_token else {}

    def http_get(self, path: str, timeout: float = 2.0) -> tuple[int, bytes]:
        """GET ``path`` on the agent's HTTP(S) API (with the ACL token if any)."""
        return _http_request(self.port, "GET", path, tls=self.tls, headers=self._headers(), timeout=timeout)

    def _ready(self) -> bool:
        status, body = _http_request(self.port, "GET", "/v1/status/leader", tls=self.tls)
        if status != 200 or json.loads(body) in ("", None):
            return False
        if self.acl_token:
            status, _ = self.http_get("/v1/acl/token/self")
            if status != 200:
                return False
        # Sessions need the node registered with a passing serfHealth check.
        status, body = self.http_get(f"/v1/health/node/{self.node_name}")
        if status != 200:
            return False
        checks = json.loads(body) or []
        return any(c.get("CheckID") == "serfHealth" and c.get("Status") == "passing" for c in checks)
