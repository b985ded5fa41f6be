"""The ``waypost`` commands: list, watch, register, backends, doctor (and demo, from ``_demo``)."""

from __future__ import annotations

import os
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import click

import waypost
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


# list -------------------------------------------------------------------------------------

@cli.command("list")
@click.argument("query", required=False)
@url_option
@click.option("--json", "as_json", is_flag=True, help="one JSON object (the stored value) per line")
def list_command(query: str | None, url: str | None, as_json: bool) -> None:
    """List the instances matching QUERY, sorted."""
    parsed = _query(query)
    with waypost.connect(url) as runtime:
        instances = runtime.list_instances(parsed)
    if as_json:
        for instance in instances:
            click.echo(_format.json_line(instance.to_dict()))
    elif instances:
        click.echo(_format.instance_table(instances))
    else:
        click.echo(f"no instances match {parsed}", err=True)


# watch ------------------------------------------------------------------------------------

@cli.command()
@click.argument("query", required=False)
@url_option
@click.option("--json", "as_json", is_flag=True, help="one JSON object per event")
def watch(query: str | None, url: str | None, as_json: bool) -> None:
    """Print the instances matching QUERY, then every change, with timestamps, until Ctrl-C."""
    parsed = _query(query)
    with waypost.connect(url) as runtime, runtime.watch(parsed) as events, stop_on_signals() as stop:
        if not as_json:
            click.echo(f"watching {parsed} on {runtime.backend.describe()} (Ctrl-C to stop)", err=True)
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
@url_option
def register(endpoint: str, transport_text: str, metadata: tuple[str, ...], device_type: str | None,
             ttl: float | None, url: str | None) -> None:
    """Register ENDPOINT (ns.comp.ep) and keep it alive until Ctrl-C or SIGTERM, then remove it."""
    endpoint_id = EndpointId.parse(endpoint)
    transport = parse_transport(transport_text)
    options = {} if ttl is None else {"ttl": ttl}
    with stop_on_signals() as stop, waypost.connect(url, **options) as runtime:
        registration = runtime.endpoint(endpoint_id).register(transport, device_type=device_type,
                                                              metadata=parse_metadata(metadata))
        click.echo(f"registered {endpoint_id} as instance {_format.short_id(runtime.instance_id)} "
                   f"({transport}) on {runtime.backend.describe()}; Ctrl-C to remove it")
        while not stop.wait(0.2):
            if runtime.closed:  # on_lease_lost=shutdown: nothing is registered any more
                raise click.ClickException("the lease was lost and the Runtime shut down; the endpoint is gone")
        registration.unregister()
    click.echo(f"removed {endpoint_id} instance {_format.short_id(registration.instance.instance_id)}")


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
