"""The tools' environment variables (issue 12, item 4): one test per variable, then `waypost doctor`
reaching real servers configured by nothing but those variables.

Precedence: keyword > URL > waypost's own variable > Dynamo's > the tool's > default. Unit tests pass
the environment explicitly; the server tests clear every WAYPOST_/DYN_/ETCD_/ETCDCTL_/CONSUL_ variable
first, so what they set is all there is.
"""

from __future__ import annotations

import logging
import os
import subprocess
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

import servers
import waypost
from waypost.backends.consul import ConsulBackend
from waypost.backends.etcd import EtcdBackend
from waypost.contrib.cli import cli
from waypost.core import RUNTIME_OPTIONS, Setting, explain_options, explain_url, resolve_url

TOKEN = "5e3c0a6f-1b2d-4c8e-9f70-tokentokentok"
ROOT_PW = "r00t:pw@/?#"  # URL-hostile, and holds the separator of ETCDCTL_USER
PREFIXES = ("WAYPOST_", "DYN_", "ETCD_", "ETCDCTL_", "CONSUL_")


def options(cls: Any, environ: Mapping[str, str], **kwargs: Any) -> dict[str, Setting]:
    return explain_options((*RUNTIME_OPTIONS, *cls.options), kwargs, {}, environ, cls.runtime_option_env)


def value(cls: Any, name: str, environ: Mapping[str, str], **kwargs: Any) -> Any:
    return options(cls, environ, **kwargs)[name].value


def source(cls: Any, name: str, environ: Mapping[str, str]) -> str:
    return options(cls, environ)[name].source


# -- Consul: the agent's address ----------------------------------------------------------------

@pytest.mark.parametrize(("url", "addr", "expected"), [
    ("consul://", "10.0.0.7:8500", "consul://10.0.0.7:8500"),
    ("consul://", "http://10.0.0.7:8500/", "consul://10.0.0.7:8500"),
    ("consul://", "https://agent.example:8501", "consuls://agent.example:8501"),
    ("consul://", "agent.example", "consul://agent.example"),  # the backend's default port
    ("consul://", "[::1]:8500", "consul://[::1]:8500"),
    ("consul://?dc=dc2&timeout=3", "h:1", "consul://h:1?dc=dc2&timeout=3"),
    ("consuls://", "http://h:1", "consuls://h:1"),  # the URL asked for TLS: a variable does not undo it
    ("consul://127.0.0.1:8500", "https://elsewhere:1", "consul://127.0.0.1:8500"),  # the URL names a host
])
def test_consul_http_addr_fills_in_the_agent(url: str, addr: str, expected: str) -> None:
    assert resolve_url(url, {"CONSUL_HTTP_ADDR": addr}) == expected


def test_consul_http_addr_source_and_default() -> None:
    _, (url, hosts, tls) = explain_url("consul://", {"CONSUL_HTTP_ADDR": "https://h:1"})
    assert (url.value, url.source) == ("consuls://h:1", "argument")
    assert (hosts.value, hosts.source, hosts.variable) == ("h:1", "env CONSUL_HTTP_ADDR", "CONSUL_HTTP_ADDR")
    assert (tls.value, tls.source) == (True, "env CONSUL_HTTP_ADDR (https://)")
    text, (_, hosts, tls) = explain_url("consul://", {})
    assert text == "consul://" and (hosts.shown, hosts.source, tls.value) == ("-", "default", False)


@pytest.mark.parametrize("addr", ["unix:///var/run/consul.sock", "http://user:hunter2@h:1", "h:1/v1", "h:port"])
def test_consul_http_addr_that_cannot_be_used_is_an_error_without_its_value(addr: str) -> None:
    with pytest.raises(waypost.ConfigError, match="CONSUL_HTTP_ADDR") as caught:
        resolve_url("consul://", {"CONSUL_HTTP_ADDR": addr})
    assert "hunter2" not in str(caught.value) and "consul.sock" not in str(caught.value)


@pytest.mark.parametrize(("environ", "expected"), [
    ({"CONSUL_HTTP_SSL": "true"}, "consuls://"),  # then the backend's default, 127.0.0.1:8501
    ({"CONSUL_HTTP_SSL": "1", "CONSUL_HTTP_ADDR": "h:8501"}, "consuls://h:8501"),
    ({"CONSUL_HTTP_SSL": "false", "CONSUL_HTTP_ADDR": "h:8500"}, "consul://h:8500"),
    ({"CONSUL_HTTP_SSL": "false", "CONSUL_HTTP_ADDR": "https://h:8501"}, "consuls://h:8501"),  # false never undoes
])
def test_consul_http_ssl_asks_for_tls(environ: dict[str, str], expected: str) -> None:
    assert resolve_url("consul://", environ) == expected
    assert resolve_url("consul://h:1", environ) == "consul://h:1"  # a URL naming a host keeps its scheme


def test_consul_http_ssl_that_is_no_boolean_is_an_error() -> None:
    with pytest.raises(waypost.ConfigError, match="CONSUL_HTTP_SSL='maybe'"):
        resolve_url("consul://", {"CONSUL_HTTP_SSL": "maybe"})


# -- Consul: options ------------------------------------------------------------------------------

def test_consul_http_token() -> None:
    setting = options(ConsulBackend, {"CONSUL_HTTP_TOKEN": TOKEN})["token"]
    assert (setting.value, setting.source, setting.shown) == (TOKEN, "env CONSUL_HTTP_TOKEN", "***")
    assert TOKEN not in repr(setting)
    assert value(ConsulBackend, "token", {"CONSUL_HTTP_TOKEN": TOKEN}, token="kw") == "kw"


def test_consul_http_token_file(tmp_path: Path) -> None:
    token_file = tmp_path / "token"
    token_file.write_text(f"  {TOKEN}\n")
    both = {"CONSUL_HTTP_TOKEN_FILE": str(token_file), "CONSUL_HTTP_TOKEN": "from-the-variable"}
    setting = options(ConsulBackend, both)["token"]
    assert (setting.value, setting.source) == (TOKEN, "env CONSUL_HTTP_TOKEN_FILE")  # the file wins, as in consul
    token_file.write_text("\n")  # an empty file counts as unset
    assert value(ConsulBackend, "token", both) == "from-the-variable"


def test_consul_http_token_file_errors_name_the_file_never_the_token(tmp_path: Path) -> None:
    missing = tmp_path / "no-such-token"
    with pytest.raises(waypost.ConfigError, match="CONSUL_HTTP_TOKEN_FILE") as caught:
        options(ConsulBackend, {"CONSUL_HTTP_TOKEN_FILE": str(missing), "CONSUL_HTTP_TOKEN": TOKEN})
    assert str(missing) in str(caught.value) and TOKEN not in str(caught.value)
    binary = tmp_path / "binary"
    binary.write_bytes(b"\xff\xfe" + TOKEN.encode())
    with pytest.raises(waypost.ConfigError, match="not UTF-8") as caught:
        options(ConsulBackend, {"CONSUL_HTTP_TOKEN_FILE": str(binary)})
    assert TOKEN not in str(caught.value)
    # A keyword wins: the file is not even read.
    assert value(ConsulBackend, "token", {"CONSUL_HTTP_TOKEN_FILE": str(missing)}, token="kw") == "kw"


@pytest.mark.parametrize(("text", "expected"), [("false", False), ("0", False), ("true", True), ("", True)])
def test_consul_http_ssl_verify(text: str, expected: bool) -> None:
    assert value(ConsulBackend, "tls_verify", {"CONSUL_HTTP_SSL_VERIFY": text}) is expected
    with pytest.raises(waypost.ConfigError, match="CONSUL_HTTP_SSL_VERIFY"):
        options(ConsulBackend, {"CONSUL_HTTP_SSL_VERIFY": "sometimes"})


def test_consul_tls_server_name() -> None:
    assert value(ConsulBackend, "tls_server_name", {"CONSUL_TLS_SERVER_NAME": "consul.internal"}) == "consul.internal"
    assert source(ConsulBackend, "tls_server_name", {}) == "default"


@pytest.mark.parametrize(("variable", "option"), [
    ("CONSUL_CACERT", "ca_cert"), ("CONSUL_CLIENT_CERT", "client_cert"), ("CONSUL_CLIENT_KEY", "client_key"),
])
def test_consul_tls_files(variable: str, option: str) -> None:
    assert value(ConsulBackend, option, {variable: "~/pem/x.pem"}) == os.path.expanduser("~/pem/x.pem")
    assert source(ConsulBackend, option, {variable: "/x.pem"}) == f"env {variable}"


# -- etcd: endpoints ------------------------------------------------------------------------------

@pytest.mark.parametrize(("url", "environ", "expected"), [
    ("etcd://", {"ETCDCTL_ENDPOINTS": "127.0.0.1:2379"}, "etcd://127.0.0.1:2379"),
    ("etcd://", {"ETCDCTL_ENDPOINTS": "http://a:1, http://b:2"}, "etcd://a:1,b:2"),
    ("etcd://", {"ETCDCTL_ENDPOINTS": "https://a:1,https://b:2"}, "etcds://a:1,b:2"),
    ("etcd://?timeout=2", {"ETCDCTL_ENDPOINTS": "a:1"}, "etcd://a:1?timeout=2"),
    ("etcd://root:pw@", {"ETCDCTL_ENDPOINTS": "a:1"}, "etcd://root:pw@a:1"),  # the URL's user info is kept
    ("etcd://", {"ETCD_ENDPOINTS": "http://d:1", "ETCDCTL_ENDPOINTS": "c:1"}, "etcd://d:1"),  # Dynamo's first
    ("etcd://", {"ETCD_ENDPOINTS": "https://d:1"}, "etcds://d:1"),
    ("etcd://x:9", {"ETCD_ENDPOINTS": "d:1", "ETCDCTL_ENDPOINTS": "c:1"}, "etcd://x:9"),
    ("etcd://", {}, "etcd://"),  # nothing to fill in: the backend says it needs a host
])
def test_etcd_endpoints_and_etcdctl_endpoints(url: str, environ: dict[str, str], expected: str) -> None:
    assert resolve_url(url, environ) == expected


def test_etcd_url_without_any_host_still_says_so() -> None:
    with pytest.raises(waypost.ConfigError, match="at least one host"):
        waypost.connect("etcd://")


# -- etcd: options --------------------------------------------------------------------------------

@pytest.mark.parametrize(("dynamo", "etcdctl", "option"), [
    ("ETCD_AUTH_CA", "ETCDCTL_CACERT", "ca_cert"),
    ("ETCD_AUTH_CLIENT_CERT", "ETCDCTL_CERT", "client_cert"),
    ("ETCD_AUTH_CLIENT_KEY", "ETCDCTL_KEY", "client_key"),
])
def test_etcdctl_tls_files_when_dynamos_are_unset(dynamo: str, etcdctl: str, option: str) -> None:
    assert (value(EtcdBackend, option, {etcdctl: "/ctl.pem"}), source(EtcdBackend, option, {etcdctl: "/c"})) == (
        "/ctl.pem", f"env {etcdctl}")
    assert value(EtcdBackend, option, {etcdctl: "/ctl.pem", dynamo: "/dyn.pem"}) == "/dyn.pem"


def test_etcdctl_user_is_user_colon_password() -> None:
    found = options(EtcdBackend, {"ETCDCTL_USER": f"root:{ROOT_PW}"})
    assert (found["user"].value, found["user"].source) == ("root", "env ETCDCTL_USER")
    assert (found["password"].value, found["password"].shown) == (ROOT_PW, "***")  # split at the first ':'
    assert ROOT_PW not in repr(found)
    only_user = options(EtcdBackend, {"ETCDCTL_USER": "root"})
    assert (only_user["user"].value, only_user["password"].value) == ("root", None)  # waypost never prompts
    dynamo = options(EtcdBackend, {"ETCDCTL_USER": "root:x", "ETCD_AUTH_USERNAME": "dyn", "ETCD_AUTH_PASSWORD": "y"})
    assert (dynamo["user"].source, dynamo["password"].source) == ("env ETCD_AUTH_USERNAME", "env ETCD_AUTH_PASSWORD")


def test_etcd_lease_ttl_comes_after_waypost_ttl() -> None:
    assert value(EtcdBackend, "ttl", {"ETCD_LEASE_TTL": "7"}) == 7.0
    assert value(EtcdBackend, "ttl", {"ETCD_LEASE_TTL": "7", "WAYPOST_TTL": "3"}) == 3.0


def test_secret_from_a_variable_is_never_echoed_by_a_parser() -> None:
    declared = [waypost.core.Option("password", int, env="PW", secret=True)]
    with pytest.raises(waypost.ConfigError, match="environment variable PW") as caught:
        explain_options(declared, {}, {}, {"PW": "hunter2"})
    assert "hunter2" not in str(caught.value)


def test_backends_command_lists_every_variable() -> None:
    result = CliRunner().invoke(cli, ["backends"])
    assert result.exit_code == 0, result.output
    assert "[env CONSUL_HTTP_TOKEN_FILE, CONSUL_HTTP_TOKEN]" in result.stdout
    assert "[env ETCD_AUTH_USERNAME, ETCDCTL_USER]" in result.stdout


# -- real servers, reached with nothing but the tools' variables -----------------------------------

@pytest.fixture
def bare_env(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    """No WAYPOST_*, DYN_*, ETCD_*, ETCDCTL_* or CONSUL_* variable: the test sets what there is."""
    for name in list(os.environ):
        if name.startswith(PREFIXES) and name != "WAYPOST_SERVERS_DIR":  # where the test servers' binaries are
            monkeypatch.delenv(name)
    return monkeypatch


def doctor(url: str, env: Mapping[str, str], caplog: pytest.LogCaptureFixture | None = None) -> Any:
    if caplog is not None:
        caplog.set_level(logging.DEBUG, logger="waypost")
    result = CliRunner().invoke(cli, ["doctor", url], env=dict(env))
    for secret in (TOKEN, ROOT_PW):
        assert secret not in result.output
        assert caplog is None or secret not in caplog.text
    return result


def assert_reached(result: Any, *sources: str) -> None:
    assert result.exit_code == 0, result.output
    assert "[ok  ] register" in result.stdout and "all checks passed" in result.stdout
    for text in sources:
        assert text in result.stdout, result.stdout


@pytest.fixture(scope="module")
def acl_consul() -> Iterator[servers.ConsulServer]:
    with servers.ConsulServer(acl_token=TOKEN, session_ttl_min="1s") as server:
        yield server


@pytest.fixture(scope="module")
def consul_tls(tmp_path_factory: pytest.TempPathFactory) -> servers.TLSFiles:
    return servers.make_tls(tmp_path_factory.mktemp("consul-tls"))


@pytest.fixture(scope="module")
def tls_consul(consul_tls: servers.TLSFiles) -> Iterator[servers.ConsulServer]:
    with servers.ConsulServer(tls=consul_tls, client_cert_auth=True, session_ttl_min="1s") as server:
        yield server


def test_doctor_with_only_consul_http_addr_and_token_reaches_an_acl_agent(
        bare_env: pytest.MonkeyPatch, acl_consul: servers.ConsulServer, caplog: pytest.LogCaptureFixture) -> None:
    env = {"CONSUL_HTTP_ADDR": f"127.0.0.1:{acl_consul.port}", "CONSUL_HTTP_TOKEN": TOKEN}
    result = doctor("consul://", env, caplog)
    assert_reached(result, f"URL: consul://127.0.0.1:{acl_consul.port}", "env CONSUL_HTTP_ADDR",
                   "env CONSUL_HTTP_TOKEN")
    assert any(line.split()[:2] == ["token", "***"] for line in result.stdout.splitlines())
    denied = doctor("consul://", {"CONSUL_HTTP_ADDR": f"127.0.0.1:{acl_consul.port}"})
    assert denied.exit_code == 1 and "AuthenticationError" in denied.stdout


def test_doctor_with_a_consul_token_file(bare_env: pytest.MonkeyPatch, acl_consul: servers.ConsulServer,
                                         tmp_path: Path) -> None:
    token_file = tmp_path / "acl-token"
    token_file.write_text(TOKEN + "\n")
    env = {"CONSUL_HTTP_ADDR": f"http://127.0.0.1:{acl_consul.port}", "CONSUL_HTTP_TOKEN_FILE": str(token_file),
           "CONSUL_HTTP_TOKEN": "not-the-token"}
    assert_reached(doctor("consul://", env), "env CONSUL_HTTP_TOKEN_FILE")
    token_file.unlink()
    missing = doctor("consul://", env)
    assert missing.exit_code == 1 and str(token_file) in missing.stdout


def test_doctor_with_only_consul_variables_reaches_an_mtls_agent(
        bare_env: pytest.MonkeyPatch, tls_consul: servers.ConsulServer, consul_tls: servers.TLSFiles) -> None:
    files = {"CONSUL_CACERT": consul_tls.ca, "CONSUL_CLIENT_CERT": consul_tls.client_cert,
             "CONSUL_CLIENT_KEY": consul_tls.client_key}
    https = {"CONSUL_HTTP_ADDR": f"https://127.0.0.1:{tls_consul.port}", **files}
    assert_reached(doctor("consul://", https), f"URL: consuls://127.0.0.1:{tls_consul.port}",
                   "env CONSUL_HTTP_ADDR (https://)", "env CONSUL_CACERT", "env CONSUL_CLIENT_KEY")
    ssl = {"CONSUL_HTTP_ADDR": f"127.0.0.1:{tls_consul.port}", "CONSUL_HTTP_SSL": "true", **files}
    assert_reached(doctor("consul://", ssl), "env CONSUL_HTTP_SSL")
    no_client_cert = doctor("consul://", {**https, "CONSUL_CLIENT_CERT": "", "CONSUL_CLIENT_KEY": ""})
    assert no_client_cert.exit_code == 1


def test_consul_http_ssl_verify_false_skips_verification(
        bare_env: pytest.MonkeyPatch, tls_consul: servers.ConsulServer, consul_tls: servers.TLSFiles) -> None:
    env = {"CONSUL_HTTP_ADDR": f"https://127.0.0.1:{tls_consul.port}", "CONSUL_CLIENT_CERT": consul_tls.client_cert,
           "CONSUL_CLIENT_KEY": consul_tls.client_key}
    unverified = doctor("consul://", env)  # the system's roots do not know the test CA
    assert unverified.exit_code == 1 and "ca_cert" in unverified.stdout
    with pytest.warns(Warning, match="(?i)unverified|insecure"):  # urllib3 says so, as it should
        assert_reached(doctor("consul://", {**env, "CONSUL_HTTP_SSL_VERIFY": "false"}), "env CONSUL_HTTP_SSL_VERIFY")


def test_consul_tls_server_name_is_the_name_verified(
        bare_env: pytest.MonkeyPatch, tls_consul: servers.ConsulServer, consul_tls: servers.TLSFiles) -> None:
    env = {"CONSUL_HTTP_ADDR": f"https://127.0.0.1:{tls_consul.port}", "CONSUL_CACERT": consul_tls.ca,
           "CONSUL_CLIENT_CERT": consul_tls.client_cert, "CONSUL_CLIENT_KEY": consul_tls.client_key}
    assert_reached(doctor("consul://", {**env, "CONSUL_TLS_SERVER_NAME": "localhost"}), "env CONSUL_TLS_SERVER_NAME")
    # The certificate is valid for 127.0.0.1, the URL's host: only the server name can make it fail.
    wrong = doctor("consul://", {**env, "CONSUL_TLS_SERVER_NAME": "not-the-agent.example"})
    assert wrong.exit_code == 1 and "[FAIL] connect" in wrong.stdout and "TLS" in wrong.stdout


def etcdctl(server: Any, *args: str) -> None:
    argv = [servers.find_binary("etcdctl"), f"--endpoints={server.client_url}", "--dial-timeout=5s"]
    env = {k: v for k, v in os.environ.items() if not k.startswith("ETCDCTL_")}
    done = subprocess.run([*argv, *args], capture_output=True, text=True, timeout=30, env=env, check=False)
    assert done.returncode == 0, done.stderr


@pytest.fixture(scope="module")
def auth_etcd() -> Iterator[servers.EtcdServer]:
    with servers.EtcdServer() as server:
        etcdctl(server, "user", "add", "root", f"--new-user-password={ROOT_PW}", "--interactive=false")
        etcdctl(server, "auth", "enable")
        yield server


def test_doctor_with_only_etcdctl_endpoints_and_user_reaches_an_auth_etcd(
        bare_env: pytest.MonkeyPatch, auth_etcd: servers.EtcdServer, caplog: pytest.LogCaptureFixture) -> None:
    env = {"ETCDCTL_ENDPOINTS": auth_etcd.client_url, "ETCDCTL_USER": f"root:{ROOT_PW}"}
    result = doctor("etcd://", env, caplog)
    assert_reached(result, f"URL: etcd://{auth_etcd.endpoint}", "env ETCDCTL_ENDPOINTS", "env ETCDCTL_USER")
    wrong = doctor("etcd://", {**env, "ETCDCTL_USER": "root:wrong"})
    assert wrong.exit_code == 1 and "[FAIL] connect" in wrong.stdout


def test_doctor_with_only_etcd_endpoints(bare_env: pytest.MonkeyPatch, etcd_server: servers.EtcdServer) -> None:
    assert_reached(doctor("etcd://", {"ETCD_ENDPOINTS": etcd_server.client_url}), "env ETCD_ENDPOINTS")


def test_doctor_with_only_etcdctl_variables_reaches_an_mtls_etcd(
        bare_env: pytest.MonkeyPatch, server_factory: Any, tls_files: servers.TLSFiles) -> None:
    server = server_factory("etcd", tls=tls_files, client_cert_auth=True)
    env = {"ETCDCTL_ENDPOINTS": server.client_url, "ETCDCTL_CACERT": tls_files.ca,
           "ETCDCTL_CERT": tls_files.client_cert, "ETCDCTL_KEY": tls_files.client_key}
    assert server.client_url.startswith("https://")
    assert_reached(doctor("etcd://", env), f"URL: etcds://{server.endpoint}", "env ETCDCTL_ENDPOINTS (https://)",
                   "env ETCDCTL_CACERT", "env ETCDCTL_CERT", "env ETCDCTL_KEY")
    assert doctor("etcd://?timeout=1", {**env, "ETCDCTL_CERT": "", "ETCDCTL_KEY": ""}).exit_code == 1
