"""The ``waypost`` commands: list, watch, register, backends, doctor (and demo, from ``_demo``)."""

from __future__ import annotations

import json
import os
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, BinaryIO

import click

import waypost
import waypost.core
from waypost import EndpointId, Query, TransportType, WaypostError
from waypost.core import (
    RUNTIME_OPTIONS,
    Setting,
    backend_class,
    explain_options,
    explain_url,
    installed_backends,
    missing_requirements,
    parse_url,
    resolve_url,
)

from . import _format

__all__ = ["cli"]

URL_HELP = ("discovery URL, e.g. file:///tmp/kv, etcd://127.0.0.1:2379, redis://host:6379/0; "
            "default: $WAYPOST_URL, then Dynamo's DYN_DISCOVERY_BACKEND variables, then the file:// default")


class _Group(click.Group):
    """Turns waypost's errors into one line on stderr and exit code 1 (no traceback)."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except WaypostError as exc:
            raise click.ClickException(_one_line(exc)) from None


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split()) or type(exc).__name__


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(waypost.__version__, prog_name="waypost")
def cli() -> None:
    """Service discovery for distributed runtimes, wire-compatible with NVIDIA Dynamo.

    Start with `waypost demo`; QUERY is `ns`, `ns.comp` or `ns.comp.ep` (all when omitted).
    """


def url_option(func: Callable[..., Any]) -> Callable[..., Any]:
    return click.option("--url", default=None, metavar="URL", help=URL_HELP)(func)


def _query(text: str | None) -> Query:
    try:
        return Query.parse(text)
    except ValueError as exc:  # InvalidName is a ValueError too
        raise click.BadParameter(_one_line(exc), param_hint="QUERY") from None


@contextmanager
def stop_on_signals() -> Iterator[threading.Event]:
    """An event set by Ctrl-C or SIGTERM, so long-running commands can clean up and exit 0."""
    stop = threading.Event()
    previous = {sig: signal.signal(sig, lambda *_: stop.set()) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield stop
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


KINDS = {"instances": "instances", "models": "models", "event-channels": "event channels",
         "event-sources": "event sources"}


def kind_option(func: Callable[..., Any]) -> Callable[..., Any]:
    """Which of Dynamo's record kinds a command reads: ``--models`` and so on (default: endpoint instances)."""
    for flag, help_text in (("--event-sources", "event sources (v1/event_sources)"),
                            ("--event-channels", "event channels (v1/event_channels)"),
                            ("--models", "model cards (v1/mdc)")):
        func = click.option(flag, "kind", flag_value=flag[2:], help=f"{help_text} instead of endpoint instances")(func)
    return click.option("--instances", "kind", flag_value="instances", default=True,
                        help="endpoint instances (v1/instances; the default)")(func)


def _lister(runtime: waypost.Runtime, kind: str) -> Callable[[Query], list[Any]]:
    readers: dict[str, Callable[[Query], list[Any]]] = {
        "instances": runtime.list_instances, "models": runtime.list_models,
        "event-channels": runtime.list_event_channels, "event-sources": runtime.list_event_sources}
    return readers[kind]


def _watcher(runtime: waypost.Runtime, kind: str) -> Callable[[Query], waypost.Watch[Any]]:
    watchers: dict[str, Callable[[Query], waypost.Watch[Any]]] = {
        "instances": runtime.watch, "models": runtime.watch_models,
        "event-channels": runtime.watch_event_channels, "event-sources": runtime.watch_event_sources}
    return watchers[kind]


# list -------------------------------------------------------------------------------------

@cli.command("list")
@click.argument("query", required=False)
@kind_option
@url_option
@click.option("--json", "as_json", is_flag=True, help="one JSON object (the stored value) per line")
def list_command(query: str | None, kind: str, url: str | None, as_json: bool) -> None:
    """List the instances (or models, event channels, event sources) matching QUERY, sorted."""
    parsed = _query(query)
    with waypost.connect(url) as runtime:
        records = _lister(runtime, kind)(parsed)
    if as_json:
        for record in records:
            click.echo(_format.json_line(_format.record_json(record)))
    elif records:
        click.echo(_format.record_table(records))
    else:
        click.echo(f"no {KINDS[kind]} match {parsed}", err=True)


# watch ------------------------------------------------------------------------------------

@cli.command()
@click.argument("query", required=False)
@kind_option
@url_option
@click.option("--json", "as_json", is_flag=True, help="one JSON object per event")
def watch(query: str | None, kind: str, url: str | None, as_json: bool) -> None:
    """Print the instances (or models, …) matching QUERY, then every change, with timestamps, until Ctrl-C."""
    parsed = _query(query)
    with waypost.connect(url) as runtime, stop_on_signals() as stop, _watcher(runtime, kind)(parsed) as events:
        if not as_json:
            click.echo(f"watching {KINDS[kind]} of {parsed} on {runtime.backend.describe()} (Ctrl-C to stop)",
                       err=True)
        while not stop.is_set():
            event = events.get(timeout=0.2)
            if event is not None:
                click.echo(_format.json_line(_format.event_json(event)) if as_json else _format.event_line(event))


# register ---------------------------------------------------------------------------------

def parse_transport(text: str) -> TransportType:
    """``tcp://host:port[/path]``, ``http(s)://…`` (kept whole) or ``nats://subject``."""
    scheme, sep, rest = text.partition("://")
    if sep and rest:
        if scheme == "tcp":
            return TransportType.tcp(rest)
        if scheme in ("http", "https"):
            return TransportType.http(text)
        if scheme in ("nats", "nats_tcp"):
            return TransportType.nats_tcp(rest)
    raise click.BadParameter(f"{text!r}: expected tcp://host:port, http(s)://host:port/path or nats://subject",
                             param_hint="--transport")


def parse_metadata(pairs: tuple[str, ...]) -> dict[str, str] | None:
    metadata: dict[str, str] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise click.BadParameter(f"{pair!r}: expected key=value", param_hint="--metadata")
        metadata[key] = value
    return metadata or None


@cli.command()
@click.argument("endpoint")
@click.option("--transport", "transport_text", required=True, metavar="ADDRESS",
              help="tcp://host:port, http(s)://host:port/path or nats://subject")
@click.option("--metadata", "-m", multiple=True, metavar="KEY=VALUE", help="string metadata; repeatable")
@click.option("--device-type", type=click.Choice(["cpu", "cuda"]), default=None)
@click.option("--ttl", type=float, default=None, help="lease ttl in seconds (default 10)")
@click.option("--model-card", "card_file", type=click.File("rb"), default=None, metavar="FILE",
              help="also publish this model deployment card (Dynamo's card_json, a JSON object; - for stdin)")
@click.option("--lora", default=None, metavar="NAME", help="the card is for this LoRA adapter (needs --model-card)")
@url_option
def register(endpoint: str, transport_text: str, metadata: tuple[str, ...], device_type: str | None,
             ttl: float | None, card_file: BinaryIO | None, lora: str | None, url: str | None) -> None:
    """Register ENDPOINT (ns.comp.ep) and keep it alive until Ctrl-C or SIGTERM, then remove it.

    With --model-card, the endpoint also serves that model (Dynamo's frontend lists a model once
    both its card and an instance of its endpoint are registered).
    """
    endpoint_id = EndpointId.parse(endpoint)
    transport = parse_transport(transport_text)
    if lora is not None and card_file is None:
        raise click.BadParameter("--lora names the LoRA adapter of a --model-card: give one", param_hint="--lora")
    card = _read_card(card_file) if card_file is not None else None  # checked before anything is registered
    options = {} if ttl is None else {"ttl": ttl}
    with stop_on_signals() as stop, waypost.connect(url, **options) as runtime:
        registration = runtime.endpoint(endpoint_id).register(transport, device_type=device_type,
                                                              metadata=parse_metadata(metadata))
        model = "" if card is None else f" serving {_register_card(runtime, endpoint_id, card, lora)}"
        click.echo(f"registered {endpoint_id} as instance {_format.short_id(runtime.instance_id)} "
                   f"({transport}){model} on {runtime.backend.describe()}; Ctrl-C to remove it")
        while not stop.wait(0.2):
            if runtime.closed:  # on_lease_lost=shutdown: nothing is registered any more
                raise click.ClickException("the lease was lost and the Runtime shut down; the endpoint is gone")
        registration.unregister()
    click.echo(f"removed {endpoint_id} instance {_format.short_id(registration.instance.instance_id)}")


def _read_card(card_file: BinaryIO) -> bytes:
    card = card_file.read(waypost.core.MAX_VALUE_BYTES + 1)
    if len(card) > waypost.core.MAX_VALUE_BYTES:
        raise click.BadParameter(f"the card has more than the {waypost.core.MAX_VALUE_BYTES} bytes a value may have",
                                 param_hint="--model-card")
    try:
        parsed = json.loads(card)
    except ValueError as exc:
        raise click.BadParameter(f"the card is not JSON: {exc}", param_hint="--model-card") from None
    if not isinstance(parsed, dict):
        raise click.BadParameter(f"the card must be a JSON object, got a JSON {type(parsed).__name__}",
                                 param_hint="--model-card")
    return card


def _register_card(runtime: waypost.Runtime, endpoint_id: EndpointId, card: bytes, lora: str | None) -> str:
    try:
        model = runtime.endpoint(endpoint_id).register_model(card, lora=lora).model
    except waypost.ConfigError as exc:
        raise click.BadParameter(_one_line(exc), param_hint="--model-card") from None
    name = _format.printable(model.display_name or model.slug or "?")
    return f"model {name}" + (f" (LoRA {model.lora})" if model.lora else "")


# backends ---------------------------------------------------------------------------------

@cli.command()
@click.option("--json", "as_json", is_flag=True, help="one JSON object per backend")
def backends(as_json: bool) -> None:
    """The installed backend plugins: scheme, distribution, capabilities and options."""
    entries = installed_backends()
    for entry in entries:
        info = describe_backend(entry.scheme)
        if as_json:
            click.echo(_format.json_line({"scheme": entry.scheme, "entry_point": entry.value,
                                          "distribution": entry.distribution, "version": entry.version, **info}))
            continue
        # One block per backend class: TLS twins (etcds://, rediss://…) share their plain twin's.
        twins = [e.scheme for e in entries if (e.value, e.distribution) == (entry.value, entry.distribution)]
        if twins[0] != entry.scheme:
            continue
        schemes = ", ".join(f"{scheme}://" for scheme in twins)
        click.echo(f"{schemes}  {entry.distribution} {entry.version}  ({entry.value})")
        if "error" in info:
            click.echo(f"  cannot load: {info['error']}")
            continue
        if info["missing"]:
            click.echo(f"  not installed: needs {', '.join(info['missing'])}: {info['install']}")
        click.echo(f"  capabilities: {', '.join(info['capabilities']) or 'none'}")
        click.echo(f"  min ttl:      {info['min_ttl']:g} s")
        click.echo("  options:" if info["options"] else "  options:      none")
        rows = [(f"    {o['name']}", "-" if o["default"] in (None, "") else str(o["default"]),
                 o["help"] + (f" [env {o['env']}]" if o["env"] else "")) for o in info["options"]]
        if rows:
            click.echo(_format.table(("    NAME", "DEFAULT", "MEANING"), rows))


    if not as_json:
        names = ", ".join(f"{o.name} (default {o.default})" for o in RUNTIME_OPTIONS)
        click.echo(f"every backend also takes the Runtime options: {names}")


def describe_backend(scheme: str) -> dict[str, Any]:
    """Capabilities and options of the backend serving ``scheme``, or the reason it did not load."""
    try:
        cls = backend_class(scheme)
    except Exception as exc:  # a broken third-party plugin must not take the listing down
        return {"error": f"{type(exc).__name__}: {_one_line(exc)}"}
    return {
        "capabilities": sorted(c.value for c in cls.capabilities),
        "min_ttl": cls.min_ttl,
        "extra": cls.extra,
        "missing": missing_requirements(cls),
        "install": f"pip install '{cls.distribution}[{cls.extra}]'" if cls.extra else None,
        "options": [{"name": o.name, "default": None if o.secret else o.default, "help": o.help,
                     "env": ", ".join(v.name for v in o.env_vars) or None} for o in cls.options],
    }


# doctor -----------------------------------------------------------------------------------

@dataclass
class _Step:
    name: str
    ok: bool
    seconds: float
    detail: str


def _timed(name: str, action: Callable[[], str]) -> _Step:
    started = time.perf_counter()
    try:
        detail = action()
    except Exception as exc:  # the doctor reports every failure instead of crashing
        return _Step(name, False, time.perf_counter() - started, f"{type(exc).__name__}: {_one_line(exc)}")
    return _Step(name, True, time.perf_counter() - started, detail)


@cli.command()
@click.argument("url_argument", metavar="[URL]", required=False)
@url_option
def doctor(url_argument: str | None, url: str | None) -> None:
    """Show every setting and where it came from, time one register/list/unregister round trip and
    report; exit 1 if anything fails."""
    url = url_argument or url
    try:
        resolved, url_settings = explain_url(url)
    except WaypostError as exc:
        raise click.ClickException(_one_line(exc)) from None
    head = url_settings[0]
    click.echo(f"URL: {head.value}  (from {head.source})")
    click.echo(_settings_table(resolved, url_settings))
    steps = _doctor_steps(url)
    for step in steps:
        mark = "ok  " if step.ok else "FAIL"
        click.echo(f"[{mark}] {step.name:<12} {step.seconds * 1000:8.1f} ms  {step.detail}")
    if all(step.ok for step in steps):
        total = sum(step.seconds for step in steps) * 1000
        click.echo(f"all checks passed in {total:.1f} ms")
    else:
        click.echo("some checks failed", err=True)
        sys.exit(1)


def _settings_table(resolved: str, url_settings: tuple[Setting, ...]) -> str:
    """Every setting connect() would use, where it came from, secrets masked; a problem as one line."""
    rows = [(f"  {s.name}", s.shown, s.source) for s in url_settings[1:]]
    try:
        parsed = parse_url(resolved)
        cls = backend_class(parsed.scheme)
        options = explain_options((*RUNTIME_OPTIONS, *cls.options), {}, parsed.query,
                                  env_names=cls.runtime_option_env, where=f"{parsed.scheme}://")
    except Exception as exc:  # the connect step reports it again, with the round trip's verdict
        rows.append(("  options", "?", f"{type(exc).__name__}: {_one_line(exc)}"))
    else:
        rows += [(f"  {s.name}", s.shown, s.source) for s in options.values()]
    return ("settings (keyword > URL > WAYPOST_* > Dynamo's > the tool's > default):\n"
            + _format.table(("  NAME", "VALUE", "FROM"), rows))


def _doctor_steps(url: str | None) -> list[_Step]:
    scheme = parse_url(resolve_url(url)).scheme
    steps = [_timed("plugin", lambda: _plugin_detail(scheme))]
    holder: dict[str, Any] = {}

    def connect() -> str:
        holder["rt"] = runtime = waypost.connect(url)
        return f"{runtime.backend.describe()}, instance {_format.short_id(runtime.instance_id)}"

    steps.append(_timed("connect", connect))
    runtime: waypost.Runtime | None = holder.get("rt")
    if runtime is None:
        return steps
    def close() -> str:
        runtime.close()
        return "registrations removed, lease revoked"

    try:
        steps += _round_trip(runtime)
    finally:
        steps.append(_timed("close", close))
    return steps


def _plugin_detail(scheme: str) -> str:
    cls = backend_class(scheme)
    return f"{cls.__module__}.{cls.__name__} ({', '.join(sorted(c.value for c in cls.capabilities)) or '-'})"


def _round_trip(runtime: waypost.Runtime) -> list[_Step]:
    endpoint = runtime.namespace("waypost-doctor").component(f"probe-{os.getpid()}").endpoint("ping")
    registrations: list[waypost.Registration] = []

    def register() -> str:
        registrations.append(endpoint.register(TransportType.tcp("127.0.0.1:1")))
        return registrations[0].instance.key

    def unregister() -> str:
        registrations[0].unregister()
        return "removed"

    steps = [_timed("register", register)]
    if not steps[-1].ok:
        return steps

    def listed(expect: bool) -> str:
        found = [i.instance_id for i in endpoint.list_instances()]
        if (runtime.instance_id in found) != expect:
            raise AssertionError("the probe is missing" if expect else "the probe is still listed")
        return f"{len(found)} instance(s)"

    steps.append(_timed("list", lambda: listed(True)))
    steps.append(_timed("unregister", unregister))
    steps.append(_timed("list again", lambda: listed(False)))
    return steps
