"""Careless callers and leaky secrets (issue 9, items 2, 6 and 7): a clear error of a documented type,
naming what was wrong and what is allowed; no secret in any repr, str or message; no raw control
character on a terminal."""

from __future__ import annotations

import json
import math
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

import waypost
from waypost import Query, TransportType
from waypost.core import parse_url

SECRET = "S3CRET-pw"


# -- secrets ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("url", [
    f"redis://default:{SECRET}",                       # the host forgotten: the password looks like a port
    f"redis//h:6379/0?password={SECRET}",              # no "://"
    f"redis://user:{SECRET}/x@h:6379/0",                # an unencoded / in the password
    f"etcd://root:{SECRET}@h:99999",
    f"etcd://root:{SECRET}@[::1:2379",
    f"consul://h:8500?token={SECRET}&token",
    f"redis://h:6379/0?password={SECRET}&ttl=soon",
    f"redis://h:6379/0?password={SECRET}&nope=1",
    f"etcd://root:{SECRET}@h:2379\n",
])
def test_no_error_about_a_url_quotes_its_secrets(url: str) -> None:
    with pytest.raises(waypost.ConfigError) as caught:
        waypost.connect(url, timeout=0.2)
    assert SECRET not in str(caught.value) and SECRET not in repr(caught.value)


def test_no_repr_or_str_shows_a_secret() -> None:
    parsed = parse_url(f"redis://user:{SECRET}@h:6379/0?password={SECRET}&token={SECRET}")
    for text in (repr(parsed), str(parsed), parsed.redacted):
        assert SECRET not in text
    assert "password" in repr(parsed)  # the option's name is shown, not its value
    with waypost.connect("memory://secrets?ttl=5") as rt:
        assert SECRET not in repr(rt) + repr(rt.url)


def test_credentials_without_a_host_never_show_either() -> None:
    with pytest.raises(waypost.WaypostError) as caught:  # the default host: nothing listens there
        waypost.connect(f"redis://user:{SECRET}@127.0.0.1:1/0", timeout=0.2)
    assert SECRET not in str(caught.value)


def test_a_secret_option_that_does_not_parse_is_not_quoted(tmp_path: Path) -> None:
    from waypost.core import Option, parse_int, resolve_options

    with pytest.raises(waypost.ConfigError) as caught:
        resolve_options([Option("password", parse_int(), secret=True)], {"password": SECRET}, {})
    assert SECRET not in str(caught.value) and "hidden" in str(caught.value)


# -- careless arguments -----------------------------------------------------------------------------

@pytest.mark.parametrize(("options", "names"), [
    ({"ttl": 10**400}, "ttl"), ({"ttl": math.nan}, "ttl"), ({"ttl": True}, "ttl"), ({"ttl": "soon"}, "ttl"),
    ({"instance_id": math.inf}, "instance_id"), ({"instance_id": 1.5}, "instance_id"),
    ({"instance_id": True}, "instance_id"), ({"instance_id": -1}, "instance_id"),
    ({"instance_id": 2**64}, "instance_id"), ({"instance_id": "0x"}, "instance_id"),
    ({"max_queued": 0}, "max_queued"), ({"on_lease_lost": "panic"}, "on_lease_lost"),
])
def test_bad_runtime_options_are_config_errors_naming_the_option(options: dict[str, object], names: str) -> None:
    with pytest.raises(waypost.ConfigError, match=names) as caught:
        waypost.connect("memory://careless", **options)
    assert len(str(caught.value)) < 300


@pytest.mark.parametrize(("url", "fragment"), [
    ("etcd://h:\u00b2", "invalid port"),              # a Unicode digit
    ("etcd://h:\u0661\u0662", "invalid port"),        # Arabic-Indic digits
    ("file:///tmp/a%00b", "NUL"),
    ("file:///tmp/a\x00b", "control character"),
    ("redis://[::1/0", "IPv6"),
    ("ht tp://x", "scheme"),
])
def test_odd_urls_are_config_errors_saying_what_is_wrong(url: str, fragment: str) -> None:
    with pytest.raises(waypost.ConfigError, match=fragment):
        waypost.connect(url)


def test_an_at_sign_in_a_file_path_is_just_a_character(tmp_path: Path) -> None:
    with waypost.connect(f"file://{tmp_path}/with@sign", ttl=2.0) as rt:
        assert rt.list_instances() == []
    assert (tmp_path / "with@sign" / "v1" / "instances").is_dir()


def test_queries_are_queries_or_their_text_and_anything_else_is_a_config_error() -> None:
    with pytest.raises(waypost.ConfigError, match="a query is a string"):
        Query.parse(1)  # type: ignore[arg-type]
    with pytest.raises(waypost.ConfigError, match=r"ns, ns\.comp or ns\.comp\.ep"):
        Query.parse("a/b/c/d")
    with pytest.raises(waypost.ConfigError, match="at most 3 levels"):
        Query("a", "b", "c", "d")
    with waypost.connect("memory://queries", ttl=5) as rt:
        reg = rt.endpoint("ns.c.e").register(TransportType.tcp("h:1"))
        assert rt.list_instances("ns") == rt.list_instances("ns.c") == rt.list_instances(Query.namespace("ns"))
        assert rt.list_instances("ns/c/e") == [reg.instance]
        with rt.watch("ns.c") as watch:
            assert watch.instances == [reg.instance]
        with pytest.raises(waypost.ConfigError):
            rt.list_instances(42)  # type: ignore[arg-type]


@pytest.mark.parametrize("timeout", [math.nan, -1, "1", True])
def test_a_timeout_is_honoured_or_rejected(timeout: object) -> None:
    with waypost.connect("memory://timeouts", ttl=5) as rt, rt.watch() as watch:
        client = rt.endpoint("ns.c.e").client()
        for call in (lambda: watch.get(timeout=timeout), lambda: client.wait_for_instances(timeout=timeout),
                     lambda: watch.wait_for(lambda e: True, timeout)):
            with pytest.raises(waypost.ConfigError, match="timeout"):
                call()  # type: ignore[no-untyped-call]


def test_tiny_and_infinite_timeouts_are_honoured() -> None:
    with waypost.connect("memory://timeouts2", ttl=5) as rt, rt.watch() as watch:
        started = time.monotonic()
        for _ in range(200):
            assert watch.get(timeout=1e-9) is None
        assert time.monotonic() - started < 2.0
        client = rt.endpoint("ns.c.e").client()
        threading.Timer(0.05, lambda: rt.endpoint("ns.c.e").register(TransportType.tcp("h:1"))).start()
        assert len(client.wait_for_instances(timeout=math.inf)) == 1


# -- the CLI: one line, never a traceback, never raw stored text ---------------------------------------

def cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "waypost", *args], capture_output=True, text=True, timeout=60,
                          check=False, env=env)


@pytest.mark.parametrize("args", [
    ["list", "--url", f"redis://default:{SECRET}"],
    ["list", "--url", "etcd://h:\u00b2"],
    ["list", "a/b/c/d", "--url", "memory://"],
    ["list", "Bad Name", "--url", "memory://"],
    ["register", "ns.c.e", "--transport", "tcp://h:1", "--url", "memory://", "--metadata", "novalue"],
    ["register", "ns.c", "--transport", "tcp://h:1", "--url", "memory://"],
    ["watch", "--url", "file:///tmp/a%00b"],
    ["doctor", f"redis://u:{SECRET}@h:99999"],
])
def test_the_cli_answers_bad_arguments_with_one_line(args: list[str]) -> None:
    result = cli(*args)
    assert result.returncode in (1, 2), result
    assert "Traceback" not in result.stderr and SECRET not in result.stderr + result.stdout
    assert result.stderr.strip(), "no message at all"


def test_the_cli_escapes_stored_text_and_keeps_json_exact(tmp_path: Path) -> None:
    """What another writer stored (waypost refuses to write it) reaches the terminal escaped."""
    from waypost.backends.file import encode_name

    url = f"file://{tmp_path}/store"
    hostile = "h:1\x1b[2J\x1b]0;pwned\x07\nFAKE  ROW  0000"
    with waypost.connect(url, ttl=10) as rt:
        value = {"type": "Endpoint", "component": "c", "endpoint": "e", "namespace": "ns", "instance_id": 1,
                 "transport": {"tcp": hostile}, "metadata": {"note": "\x1b[31mred\u202e"}}
        bucket = tmp_path / "store" / "v1" / "instances"
        (bucket / encode_name("ns/c/e/1")).write_bytes(json.dumps(value).encode())
        assert len(rt.list_instances()) == 1
        table = cli("list", "--url", url)
        assert table.returncode == 0, table.stderr
        assert "\x1b" not in table.stdout and "\u202e" not in table.stdout and "\x07" not in table.stdout
        assert len(table.stdout.strip().splitlines()) == 2  # the header and one row: no forged row
        as_json = cli("list", "--json", "--url", url)
        [line] = as_json.stdout.splitlines()
        assert json.loads(line)["transport"]["tcp"] == hostile
