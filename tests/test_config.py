"""connect(): URL parsing, option precedence, Dynamo's environment (design §4)."""

from __future__ import annotations

import logging

import pytest

import waypost
from waypost.core import Option, explain_options, parse_float, parse_url, resolve_options, resolve_url


def test_parse_url_parts_and_redaction() -> None:
    url = parse_url("redis://alice:s3cr%40t@h1:6379,[::1]:7000/2?prefix=x")
    assert url.scheme == "redis" and url.hosts == (("h1", 6379), ("::1", 7000))
    assert (url.username, url.password, url.path, dict(url.query)) == ("alice", "s3cr@t", "/2", {"prefix": "x"})
    assert "s3cr" not in repr(url) and "s3cr" not in str(url)
    assert url.redacted == "redis://alice:***@h1:6379,::1:7000/2"


@pytest.mark.parametrize("bad", ["nothing", "etcd://h:99999", "etcd://h:port", 42])
def test_bad_urls_are_config_errors(bad: object) -> None:
    with pytest.raises(waypost.ConfigError):
        parse_url(bad)  # type: ignore[arg-type]


@pytest.mark.parametrize("url", ["redis://admin:12/34@h:6379/0", "redis://admin:ab?cd@h", "etcd://u:p#q@h:1"])
def test_unencoded_specials_in_credentials_are_refused_without_echo(url: str) -> None:
    with pytest.raises(waypost.ConfigError, match="percent-encode") as info:
        parse_url(url)
    secret = url.split("://")[1].rpartition("@")[0].partition(":")[2]
    assert secret not in str(info.value) and secret[:2] not in str(info.value)


def test_relative_dyn_file_kv_becomes_absolute(monkeypatch: pytest.MonkeyPatch, tmp_path: object) -> None:
    monkeypatch.chdir(str(tmp_path))
    assert resolve_url(None, {"DYN_FILE_KV": "kv"}) == f"file://{tmp_path}/kv"


def test_waypost_env_then_the_backend_env_for_ttl() -> None:
    declared = [Option("ttl", parse_float(1, 100), 10.0, env="WAYPOST_TTL")]
    env_names = {"ttl": "ETCD_LEASE_TTL"}
    assert resolve_options(declared, {}, {}, {"WAYPOST_TTL": "4"}, env_names)["ttl"] == 4.0
    assert resolve_options(declared, {}, {}, {"ETCD_LEASE_TTL": "6"}, env_names)["ttl"] == 6.0
    # waypost's own variable beats Dynamo's (it was the other way round before the precedence table)
    assert resolve_options(declared, {}, {}, {"WAYPOST_TTL": "4", "ETCD_LEASE_TTL": "6"}, env_names)["ttl"] == 4.0


def test_bad_url_error_never_shows_the_password() -> None:
    with pytest.raises(waypost.ConfigError) as info:
        parse_url("no-scheme-user:hunter2@host")
    assert "hunter2" not in str(info.value)


@pytest.mark.parametrize(("env", "expected"), [
    ({}, "file://"),
    ({"WAYPOST_URL": "memory://x", "DYN_DISCOVERY_BACKEND": "etcd"}, "memory://x"),
    ({"DYN_DISCOVERY_BACKEND": "etcd"}, "etcd://127.0.0.1:2379"),
    ({"DYN_DISCOVERY_BACKEND": "etcd", "ETCD_ENDPOINTS": "http://a:1,http://b:2"}, "etcd://a:1,b:2"),
    ({"DYN_DISCOVERY_BACKEND": "etcd", "ETCD_ENDPOINTS": "https://a:1"}, "etcds://a:1"),
    ({"DYN_DISCOVERY_BACKEND": "etcd", "ETCDCTL_ENDPOINTS": "c:3"}, "etcd://c:3"),
    ({"DYN_DISCOVERY_BACKEND": "etcd", "ETCD_ENDPOINTS": "a:1", "ETCDCTL_ENDPOINTS": "c:3"}, "etcd://a:1"),
    ({"ETCD_ENDPOINTS": "http://a:1", "CONSUL_HTTP_ADDR": "c:1"}, "file://"),  # they never choose the backend
    ({"DYN_DISCOVERY_BACKEND": "file", "DYN_FILE_KV": "/srv/kv"}, "file:///srv/kv"),
    ({"DYN_FILE_KV": "/srv/kv"}, "file:///srv/kv"),
    ({"DYN_FILE_KV": "/tmp/a%41b c"}, "file:///tmp/a%2541b%20c"),
    ({"DYN_DISCOVERY_BACKEND": "mem"}, "memory://"),
])
def test_url_resolution_precedence(env: dict[str, str], expected: str) -> None:
    assert resolve_url(None, env) == expected
    assert resolve_url("memory://arg", env) == "memory://arg"


def test_unknown_dynamo_backend_is_an_error() -> None:
    with pytest.raises(waypost.ConfigError, match="nats"):
        resolve_url(None, {"DYN_DISCOVERY_BACKEND": "nats"})


def test_option_precedence_kwarg_over_query_over_env_over_default() -> None:
    declared = [Option("ttl", parse_float(1, 100), 10.0, env="TTL_ENV")]
    assert resolve_options(declared, {}, {}, {})["ttl"] == 10.0
    assert resolve_options(declared, {}, {}, {"TTL_ENV": "3"})["ttl"] == 3.0
    assert resolve_options(declared, {}, {"ttl": "4"}, {"TTL_ENV": "3"})["ttl"] == 4.0
    assert resolve_options(declared, {"ttl": 5}, {"ttl": "4"}, {"TTL_ENV": "3"})["ttl"] == 5.0


def test_option_precedence_across_every_tier_with_its_source() -> None:
    # keyword > URL > waypost's own variable > Dynamo's > the tool's > default
    declared = [Option("t", parse_float(0, 100), 1.0, env=("WAYPOST_T", "DYN_T", "TOOL_T"))]
    env = {"WAYPOST_T": "4", "DYN_T": "3", "TOOL_T": "2"}
    tiers = [({"t": 6}, {"t": "5"}, env, 6.0, "keyword"), ({}, {"t": "5"}, env, 5.0, "URL query"),
             ({}, {}, env, 4.0, "env WAYPOST_T"), ({}, {}, {"DYN_T": "3", "TOOL_T": "2"}, 3.0, "env DYN_T"),
             ({}, {}, {"TOOL_T": "2", "DYN_T": ""}, 2.0, "env TOOL_T"), ({}, {}, {}, 1.0, "default")]
    for kwargs, query, environ, value, source in tiers:
        setting = explain_options(declared, kwargs, query, environ)["t"]
        assert (setting.value, setting.source) == (value, source)


def test_bad_and_unknown_options_name_what_is_allowed() -> None:
    with pytest.raises(waypost.ConfigError, match=r"ttl.*from 0\.1"):
        waypost.connect("memory://cfg", ttl="soon")
    with pytest.raises(waypost.ConfigError, match=r"'colour'.*allowed are.*ttl"):
        waypost.connect("memory://cfg", colour="blue")
    with pytest.raises(waypost.ConfigError, match="URL query parameter 'colour'"):
        waypost.connect("memory://cfg?colour=blue")
    with pytest.raises(waypost.ConfigError, match="on_lease_lost"):
        waypost.connect("memory://cfg", on_lease_lost="panic")


def test_secret_option_values_are_never_echoed() -> None:
    declared = [Option("password", int, secret=True)]
    with pytest.raises(waypost.ConfigError) as info:
        resolve_options(declared, {"password": "hunter2"}, {}, {})
    assert "hunter2" not in str(info.value)


def test_environment_ttl_and_url_query(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WAYPOST_URL", "memory://from-env?ttl=3")
    with waypost.connect() as rt:
        assert rt.ttl == 3.0 and rt.backend.describe() == "memory://from-env"
    with waypost.connect(ttl=2) as rt:
        assert rt.ttl == 2.0


def test_runtime_repr_and_logs_hide_credentials(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, logger="waypost")
    with waypost.connect("memory://user:hunter2@creds") as rt:
        rt.namespace("n").component("c").endpoint("e").register(waypost.TransportType.tcp("x"))
        assert "hunter2" not in repr(rt)
    assert "hunter2" not in caplog.text


def test_unknown_scheme_lists_installed_ones() -> None:
    with pytest.raises(waypost.BackendNotInstalled, match="memory"):
        waypost.connect("gopher://h:1")
