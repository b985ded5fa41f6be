"""The `waypost` command: list, watch, register, backends, doctor, and its error handling."""

from __future__ import annotations

import json
import os
import queue
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from click.testing import CliRunner

import waypost
from waypost import TransportType
from waypost.contrib.cli import cli


class Lines:
    """A child process's stdout lines, read by a thread so tests can wait with deadlines."""

    def __init__(self, process: subprocess.Popen[str]) -> None:
        self.process = process
        self._lines: queue.SimpleQueue[str] = queue.SimpleQueue()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        for line in self.process.stdout:  # type: ignore[union-attr]
            self._lines.put(line.rstrip("\n"))

    def wait_for(self, text: str, timeout: float = 10.0) -> str:
        deadline = time.monotonic() + timeout
        while (left := deadline - time.monotonic()) > 0:
            try:
                line = self._lines.get(timeout=left)
            except queue.Empty:
                break
            if text in line:
                return line
        raise AssertionError(f"no line containing {text!r} within {timeout} s")


@pytest.fixture
def url(tmp_path: Path) -> str:
    return f"file://{tmp_path}"


@pytest.fixture
def runtime(url: str) -> Iterator[waypost.Runtime]:
    with waypost.connect(url) as rt:
        yield rt


@pytest.fixture
def spawn() -> Iterator[list[subprocess.Popen[str]]]:
    procs: list[subprocess.Popen[str]] = []
    yield procs
    for proc in procs:
        if proc.poll() is None:
            proc.kill()
        proc.wait()
        if proc.stdout is not None:
            proc.stdout.close()


def waypost_process(procs: list[subprocess.Popen[str]], *args: str) -> tuple[subprocess.Popen[str], Lines]:
    proc = subprocess.Popen([sys.executable, "-m", "waypost", *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    procs.append(proc)
    return proc, Lines(proc)


# -- list ----------------------------------------------------------------------------------

def test_list_prints_a_table(url: str, runtime: waypost.Runtime) -> None:
    runtime.endpoint("dynamo.backend.generate").register(TransportType.tcp("10.0.0.5:9000"), device_type="cuda",
                                                         metadata={"model": "llama"})
    result = CliRunner().invoke(cli, ["list", "--url", url])
    assert result.exit_code == 0, result.output
    header, row = result.stdout.splitlines()
    assert header.split() == ["NAMESPACE", "COMPONENT", "ENDPOINT", "INSTANCE", "TRANSPORT", "DEVICE", "METADATA"]
    assert row.split() == ["dynamo", "backend", "generate", f"{runtime.instance_id:x}", "tcp:10.0.0.5:9000",
                           "cuda", '{"model":"llama"}']


def test_list_json_lines_are_the_stored_values_and_queries_filter(url: str, runtime: waypost.Runtime) -> None:
    for name in ("dynamo.backend.generate", "dynamo.backend.health", "dynamo.frontend.http", "other.x.y"):
        runtime.endpoint(name).register(TransportType.tcp("h:1"))
    result = CliRunner().invoke(cli, ["list", "dynamo.backend", "--url", url, "--json"])
    assert result.exit_code == 0, result.output
    values = [json.loads(line) for line in result.stdout.splitlines()]
    assert [v["endpoint"] for v in values] == ["generate", "health"]
    assert all(v["type"] == "Endpoint" and v["instance_id"] == runtime.instance_id for v in values)
    everything = CliRunner().invoke(cli, ["list", "--json"], env={"WAYPOST_URL": url})
    assert len(everything.stdout.splitlines()) == 4


def test_list_with_nothing_says_so_on_stderr(url: str) -> None:
    result = CliRunner().invoke(cli, ["list", "ns", "--url", url])
    assert result.exit_code == 0
    assert result.stdout == ""
    assert "no instances match ns" in result.stderr


# -- errors ----------------------------------------------------------------------------------

@pytest.mark.parametrize(("args", "message"), [
    (["list", "--url", "bogus"], "invalid discovery URL"),
    (["list", "--url", "nosuch://x"], "no waypost backend is installed for scheme 'nosuch'"),
    (["list", "--url", "file:///tmp/x?nope=1"], "unknown URL query parameter 'nope'"),
    (["list", "Bad Name"], "invalid namespace name"),
    (["register", "a.b.c", "--transport", "ftp://x"], "expected tcp://host:port"),
    (["register", "a.b", "--transport", "tcp://h:1"], "invalid endpoint id"),
    (["register", "a.b.c", "--transport", "tcp://h:1", "-m", "novalue"], "expected key=value"),
])
def test_errors_are_one_clear_line_without_traceback(args: list[str], message: str) -> None:
    result = CliRunner().invoke(cli, args)
    assert result.exit_code != 0
    assert message in result.stderr
    assert "Traceback" not in result.output
    error_lines = [line for line in result.stderr.splitlines() if line.startswith("Error")]
    assert len(error_lines) == 1


def test_file_store_that_cannot_be_used_is_an_error_line(tmp_path: Path) -> None:
    (tmp_path / "afile").write_text("x")
    result = CliRunner().invoke(cli, ["list", "--url", f"file://{tmp_path}/afile"])
    assert result.exit_code == 1
    assert result.stderr.startswith("Error: file:// store:")
    assert "not a directory" in result.stderr


# -- backends and doctor ----------------------------------------------------------------------

def test_backends_lists_the_built_in_plugins() -> None:
    result = CliRunner().invoke(cli, ["backends"])
    assert result.exit_code == 0, result.output
    assert "file://  waypost" in result.stdout
    assert "capabilities: chosen-instance-id, cross-process" in result.stdout
    assert "stale_after" in result.stdout
    entries = {e["scheme"]: e for e in map(json.loads, CliRunner().invoke(cli, ["backends", "--json"]).stdout
                                           .splitlines())}
    assert {"file", "memory"} <= entries.keys()
    assert entries["memory"]["capabilities"] == ["chosen-instance-id", "server-expiry"]
    assert [o["name"] for o in entries["file"]["options"]] == ["stale_after", "poll_interval", "watcher"]
    for entry in entries.values():  # an entry that cannot load reports why instead of crashing the command
        assert "capabilities" in entry or entry["error"]


def test_doctor_reports_a_working_store(url: str) -> None:
    result = CliRunner().invoke(cli, ["doctor", url])
    assert result.exit_code == 0, result.output
    assert "(from argument)" in result.stdout
    for step in ("plugin", "connect", "register", "list", "unregister", "list again", "close"):
        assert f"[ok  ] {step} " in result.stdout
    assert "all checks passed" in result.stdout
    assert list(Path(url.removeprefix("file://"), "v1", "instances").iterdir()) == []


def _settings(stdout: str) -> dict[str, list[str]]:
    """The doctor's settings table: name -> [value, source words…]."""
    lines = stdout.split("settings (keyword > URL > WAYPOST_* > Dynamo's > the tool's > default):\n")[1]
    rows = [line.split() for line in lines.splitlines()[1:] if line.startswith("  ")]
    return {row[0]: row[1:] for row in rows}


def test_doctor_prints_every_setting_with_its_source(url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("WAYPOST_URL", raising=False)
    monkeypatch.setenv("WAYPOST_TTL", "3")
    result = CliRunner().invoke(cli, ["doctor", f"{url}?poll_interval=0.5"])
    assert result.exit_code == 0, result.output
    rows = _settings(result.stdout)
    assert rows["ttl"] == ["3.0", "env", "WAYPOST_TTL"]
    assert rows["poll_interval"] == ["0.5", "URL", "query"]
    assert rows["stale_after"] == ["-", "default"]
    assert rows["on_lease_lost"] == ["reregister", "default"]
    assert "hosts" not in rows  # only backends with a URLEnv have hosts to fill in
    from_env = CliRunner().invoke(cli, ["doctor"], env={"WAYPOST_URL": url})
    assert f"URL: {url}  (from env WAYPOST_URL)" in from_env.stdout


def test_doctor_masks_secrets_and_shows_where_hosts_came_from(monkeypatch: pytest.MonkeyPatch) -> None:
    secret = "9a8b7c6d-secret-token"
    monkeypatch.setenv("CONSUL_HTTP_TOKEN", secret)
    monkeypatch.setenv("CONSUL_HTTP_ADDR", "127.0.0.1:1")
    result = CliRunner().invoke(cli, ["doctor", "consul://?timeout=0.2"])
    assert result.exit_code == 1  # nothing listens there
    assert secret not in result.output
    rows = _settings(result.stdout)
    assert rows["token"] == ["***", "env", "CONSUL_HTTP_TOKEN"]
    assert rows["hosts"] == ["127.0.0.1:1", "env", "CONSUL_HTTP_ADDR"]
    assert rows["tls"] == ["false", "URL"]
    assert rows["timeout"] == ["0.2", "URL", "query"]
    assert "URL: consul://127.0.0.1:1  (from argument)" in result.stdout
    assert "[FAIL] connect" in result.stdout


def test_doctor_reports_a_bad_variable_and_exits_1(url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WAYPOST_TTL", "soon")
    result = CliRunner().invoke(cli, ["doctor", url])
    assert result.exit_code == 1
    assert "ConfigError: invalid environment variable WAYPOST_TTL='soon'" in result.stdout
    assert "[FAIL] connect" in result.stdout


def test_doctor_exits_1_on_a_broken_store(tmp_path: Path) -> None:
    (tmp_path / "afile").write_text("x")
    result = CliRunner().invoke(cli, ["doctor", "--url", f"file://{tmp_path}/afile"])
    assert result.exit_code == 1
    assert "[FAIL] connect" in result.stdout
    assert "not a directory" in result.stdout


# -- long-running commands, as real processes -----------------------------------------------------

def test_watch_prints_timestamped_events_until_ctrl_c(url: str, runtime: waypost.Runtime,
                                                      spawn: list[subprocess.Popen[str]]) -> None:
    first = runtime.endpoint("ns.comp.a").register(TransportType.tcp("h:1"))
    proc, lines = waypost_process(spawn, "watch", "ns", "--url", url)
    snapshot = lines.wait_for("ns/comp/a")
    assert f"+ ns/comp/a  {runtime.instance_id:x}  tcp:h:1" in snapshot
    assert (snapshot[2], snapshot[5], snapshot[8]) == (":", ":", ".")  # HH:MM:SS.mmm
    runtime.endpoint("ns.comp.b").register(TransportType.http("http://h:8/p"), metadata={"k": 1})
    assert '+ ns/comp/b' in lines.wait_for("ns/comp/b")
    first.unregister()
    assert "- ns/comp/a" in lines.wait_for("- ns/comp/a")
    proc.send_signal(signal.SIGINT)
    assert proc.wait(timeout=10) == 0


def test_watch_json_lines(url: str, runtime: waypost.Runtime, spawn: list[subprocess.Popen[str]]) -> None:
    proc, lines = waypost_process(spawn, "watch", "--json", "--url", url)
    runtime.endpoint("ns.comp.a").register(TransportType.tcp("h:1"))
    event = json.loads(lines.wait_for('"added"'))
    assert event["key"] == f"v1/instances/ns/comp/a/{runtime.instance_id:x}"
    assert event["instance"]["transport"] == {"tcp": "h:1"}
    assert event["time"].endswith("Z")
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=10) == 0


def test_register_keeps_alive_until_sigterm_then_removes(url: str, runtime: waypost.Runtime,
                                                         spawn: list[subprocess.Popen[str]]) -> None:
    proc, lines = waypost_process(spawn, "register", "ns.comp.ep", "--transport", "nats://ns_comp.ep",
                                  "-m", "model=llama", "-m", "gpu=0", "--device-type", "cuda", "--ttl", "1",
                                  "--url", url)
    assert "registered ns/comp/ep as instance" in lines.wait_for("registered")
    [instance] = runtime.list_instances()
    assert instance.transport == TransportType.nats_tcp("ns_comp.ep")
    assert instance.metadata == {"model": "llama", "gpu": "0"}
    assert instance.device_type == "cuda"
    with runtime.watch() as watch:  # kept alive past several ttls
        assert watch.wait_for(lambda e: isinstance(e, waypost.Removed), 2.5) is None
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=10) == 0
    assert runtime.list_instances() == []


def test_python_dash_m_waypost_and_light_import() -> None:
    version = subprocess.run([sys.executable, "-m", "waypost", "--version"], capture_output=True, text=True,
                             check=True, timeout=60)
    assert version.stdout.strip() == f"waypost, version {waypost.__version__}"
    probe = "import sys, waypost; print('click' in sys.modules)"
    light = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True, timeout=60)
    assert light.stdout.strip() == "False"


# -- Dynamo's other record kinds -------------------------------------------------------------------

CARD = {"display_name": "probe-model", "slug": "probe-model", "model_type": "Chat", "model_input": "Text",
        "worker_type": "aggregated", "context_length": 4096, "runtime_config": {"taints": ["gpu"]}}


def test_list_models_table_and_json(url: str, runtime: waypost.Runtime) -> None:
    endpoint = runtime.endpoint("dynamo.backend.generate")
    endpoint.register(TransportType.tcp("h:1"))
    endpoint.register_model(CARD)
    endpoint.register_model(CARD, lora="My LoRA")
    result = CliRunner().invoke(cli, ["list", "--models", "--url", url])
    assert result.exit_code == 0, result.output
    header, base, lora = result.stdout.splitlines()
    assert header.split() == ["NAMESPACE", "COMPONENT", "ENDPOINT", "INSTANCE", "MODEL", "LORA", "TYPE", "TAINTS"]
    assert base.split() == ["dynamo", "backend", "generate", f"{runtime.instance_id:x}", "probe-model", "-",
                            "Chat", "gpu"]
    assert lora.split()[5] == "my_lora"
    as_json = CliRunner().invoke(cli, ["list", "dynamo", "--models", "--json", "--url", url])
    values = [json.loads(line) for line in as_json.stdout.splitlines()]
    assert [v["type"] for v in values] == ["Model", "Model"]
    assert values[0]["card_json"] == CARD and values[1]["model_suffix"] == "my_lora"
    nothing = CliRunner().invoke(cli, ["list", "--event-channels", "--url", url])
    assert nothing.exit_code == 0 and "no event channels match *" in nothing.stderr


def test_watch_models_shows_taint_updates(url: str, runtime: waypost.Runtime,
                                          spawn: list[subprocess.Popen[str]]) -> None:
    proc, lines = waypost_process(spawn, "watch", "--models", "--json", "--url", url)
    card = runtime.endpoint("ns.comp.gen").register_model(CARD)
    added = json.loads(lines.wait_for('"added"'))
    assert added["key"] == f"v1/mdc/ns/comp/gen/{runtime.instance_id:x}"
    card.update_taints(["b", "a"])
    updated = json.loads(lines.wait_for('"updated"'))
    assert updated["instance"]["card_json"]["runtime_config"]["taints"] == ["a", "b"]
    assert updated["previous"]["card_json"]["runtime_config"]["taints"] == ["gpu"]
    card.unregister()
    assert json.loads(lines.wait_for('"removed"'))["key"] == added["key"]
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=10) == 0


def test_register_with_a_model_card_publishes_both_until_sigterm(url: str, runtime: waypost.Runtime, tmp_path: Path,
                                                                 spawn: list[subprocess.Popen[str]]) -> None:
    card_file = tmp_path / "card.json"
    card_file.write_text(json.dumps(CARD))
    proc, lines = waypost_process(spawn, "register", "ns.comp.gen", "--transport", "tcp://127.0.0.1:9", "--ttl", "1",
                                  "--model-card", str(card_file), "--lora", "adapter-1", "--url", url)
    assert "serving model probe-model (LoRA adapter-1)" in lines.wait_for("registered")
    [instance] = runtime.list_instances()
    [model] = runtime.list_models()
    assert (model.instance_id, model.lora, model.card) == (instance.instance_id, "adapter-1", CARD)
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=10) == 0
    assert runtime.list_instances() == [] and runtime.list_models() == []


@pytest.mark.parametrize(("card", "message"), [
    ("[1, 2]", "must be a JSON object"),
    ("{not json", "is not JSON"),
])
def test_register_refuses_a_card_that_is_not_a_json_object(url: str, tmp_path: Path, card: str,
                                                           message: str) -> None:
    card_file = tmp_path / "card.json"
    card_file.write_text(card)
    result = CliRunner().invoke(cli, ["register", "a.b.c", "--transport", "tcp://h:1", "--model-card",
                                      str(card_file), "--url", url])
    assert result.exit_code == 2 and message in result.output and "Traceback" not in result.output


def test_lora_needs_a_model_card(url: str) -> None:
    result = CliRunner().invoke(cli, ["register", "a.b.c", "--transport", "tcp://h:1", "--lora", "x", "--url", url])
    assert result.exit_code == 2 and "--lora" in result.output


def test_hostile_event_records_and_card_text_never_crash_or_reach_the_terminal(url: str, tmp_path: Path,
                                                                              runtime: waypost.Runtime) -> None:
    scope = '{"kind":"endpoint","endpoint":{"namespace":"ns","component":"c","name":"e"}}'
    channel = (f'{{"type":"EventChannel","scope":{scope},"topic":"kv","instance_id":7,'
               '"transport":{"kind":["Zmq"],"config":{"endpoint":5}}}')
    directory = tmp_path / "v1" / "event_channels"
    (directory / ".tmp_planted").write_text(channel)
    os.link(directory / ".tmp_planted", directory / "namespace%2Fns%2Fcomponent%2Fc%2Fendpoint%2Fe%2Ftopic%2Fkv%2F7")
    table = CliRunner().invoke(cli, ["list", "--event-channels", "--url", url])
    assert table.exit_code == 0, table.output
    assert table.stdout.splitlines()[1].split() == ["ns", "c", "e", "kv", "7", "-"]
    runtime.endpoint("ns.c.e").register_model({"display_name": "evil\x9b31m\x1b]0;x\x07"})
    for args in (["list", "--models"], ["list", "--models", "--json"]):
        result = CliRunner().invoke(cli, [*args, "--url", url])
        assert result.exit_code == 0, result.output
        assert not any(c in result.stdout for c in "\x9b\x1b\x07"), result.stdout
    assert json.loads(result.stdout)["card_json"]["display_name"] == "evil\x9b31m\x1b]0;x\x07"  # escaped, not lost
