"""URLs, options and the environment: how ``connect()`` decides what to build.

The URL comes from the ``url`` argument, else ``WAYPOST_URL``, else Dynamo's
variables (``DYN_DISCOVERY_BACKEND`` = ``etcd`` | ``file`` | ``mem`` with
``ETCD_ENDPOINTS`` / ``DYN_FILE_KV``), else the embedded default ``file://``
in the default directory. A URL naming no host (``consul://``, ``etcd://``)
takes its hosts from the variables its backend declares (:class:`URLEnv`:
``CONSUL_HTTP_ADDR``; ``ETCD_ENDPOINTS`` then ``ETCDCTL_ENDPOINTS``), where
``https://`` means the TLS scheme.

Precedence for every option: keyword argument > URL query > waypost's own
variable (``WAYPOST_*``) > Dynamo's > the tool's (``CONSUL_*``,
``ETCDCTL_*``) > default: the option's :attr:`Option.env` in order, then the
backend's ``runtime_option_env``. :func:`explain_url` and
:func:`explain_options` say where each value came from (``waypost doctor``).
"""

from __future__ import annotations

import math
import os
import re
import time
import warnings
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import msgspec

from ._errors import ConfigError
from ._spi import Env, Option, ParsedURL, URLEnv

__all__ = [
    "Setting",
    "check_timeout",
    "explain_options",
    "explain_url",
    "parse_bool",
    "parse_choice",
    "parse_float",
    "parse_int",
    "parse_str",
    "parse_url",
    "resolve_options",
    "resolve_url",
]

DEFAULT_URL = "file://"


_EXAMPLES = "file:///path, memory://name, etcd://host:port, redis://host:port/0, consul://host:port"
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


def parse_url(url: str) -> ParsedURL:
    """Split ``scheme://[user[:password]@]host[:port][,host[:port]…][/path][?query]``.

    Error messages never quote what may be a secret: the user info, the
    query, or text where a port should be.
    """
    from urllib.parse import parse_qsl, unquote  # at connect, not at `import waypost`

    if not isinstance(url, str):
        raise ConfigError(f"a discovery URL is a string such as {_EXAMPLES}; got {type(url).__name__}")
    if "://" not in url:
        raise ConfigError(f"invalid discovery URL {_redact_raw(url)!r}: expected scheme://…, e.g. {_EXAMPLES}")
    if (bad := _CONTROL.search(url)) is not None:
        raise ConfigError(f"invalid discovery URL: a control character (code {ord(bad.group()):#04x}) at position "
                          f"{bad.start()}; percent-encode it")
    scheme, _, rest = url.partition("://")
    scheme = scheme.lower()
    if not re.fullmatch(r"[a-z][a-z0-9+.-]*", scheme):
        raise ConfigError(f"invalid discovery URL: {scheme[:40]!r} is not a URL scheme; expected e.g. {_EXAMPLES}")
    authority = re.split(r"[/?#]", rest, maxsplit=1)[0]
    if "@" in rest and "@" not in authority and authority not in ("", "localhost"):
        # A user or password with an unencoded / ? or #: say nothing of what we saw.
        raise ConfigError(
            f"invalid {scheme}:// URL: its user info holds '/', '?' or '#'; "
            "percent-encode special characters in the user and password (e.g. '/' as %2F)"
        )
    rest, _, query_text = rest.partition("?")
    netloc, slash, path = rest.partition("/")
    path = slash + path
    username = password = None
    if "@" in netloc:
        userinfo, _, netloc = netloc.rpartition("@")
        user_part, colon, password_part = userinfo.partition(":")
        username = unquote(user_part) or None
        password = unquote(password_part) if colon else None
    hosts = tuple(_parse_host(h, url, scheme) for h in netloc.split(",") if h)
    try:
        query = dict(parse_qsl(query_text, keep_blank_values=True, strict_parsing=bool(query_text)))
    except ValueError:
        raise ConfigError(f"invalid query string in discovery URL {scheme}://…: expected key=value&…") from None
    return ParsedURL(scheme, hosts, path, username, password, query, netloc)


def _parse_host(text: str, url: str, scheme: str) -> tuple[str, int | None]:
    if text.startswith("["):  # [ipv6]:port
        host, closed, port_text = text[1:].partition("]")
        if not closed or (port_text and not port_text.startswith(":")):
            raise ConfigError(f"invalid IPv6 host in {scheme}:// URL: expected [address] or [address]:port")
        port_text = port_text.removeprefix(":")
    else:
        host, _, port_text = text.partition(":")
    if not port_text:
        return host, None
    # Never quote it: a password given without a host (redis://user:pw) lands here.
    if not (port_text.isascii() and port_text.isdigit()) or not 0 < int(port_text) < 65536:
        raise ConfigError(f"invalid port in {scheme}:// URL: expected a number from 1 to 65535 after the host "
                          "(give credentials as user:password@host)")
    return host, int(port_text)


def _redact_raw(url: str) -> str:
    """A URL we could not parse, shortened, without its query and anything that may be user info."""
    text = url.split("?", 1)[0]
    if "@" in text:
        scheme, sep, _ = text.partition("://")
        text = f"{scheme}{sep}***@{text.rpartition('@')[2]}" if sep else f"***@{text.rpartition('@')[2]}"
    return text if len(text) <= 80 else text[:80] + "…"


class Setting(msgspec.Struct, frozen=True):
    """One resolved setting and where it came from (what ``waypost doctor`` prints).

    ``source`` is ``"argument"`` (the URL given to ``connect``), ``"keyword"``,
    ``"URL"``, ``"URL query"``, ``"env NAME"`` (``variable`` is ``NAME``) or
    ``"default"``. A secret's value shows in neither ``repr`` nor :attr:`shown`.
    """

    name: str
    value: Any
    source: str
    variable: str | None = None
    secret: bool = False

    @property
    def shown(self) -> str:
        """The value as text: ``-`` when unset, ``***`` for a secret."""
        if self.value is None or self.value == "":
            return "-"
        if self.secret:
            return "***"
        if isinstance(self.value, bool):
            return "true" if self.value else "false"
        return str(self.value)

    def __repr__(self) -> str:
        return f"Setting({self.name!r}, {self.shown!r}, source={self.source!r})"


def resolve_url(url: str | None, environ: Mapping[str, str] | None = None) -> str:
    """Pick the discovery URL: argument, ``WAYPOST_URL``, Dynamo's variables, default.

    A URL naming no host gets its hosts (and TLS) from its backend's :class:`URLEnv`.
    """
    return explain_url(url, environ)[0]


def explain_url(url: str | None, environ: Mapping[str, str] | None = None) -> tuple[str, tuple[Setting, ...]]:
    """:func:`resolve_url`, with where the URL came from: settings ``url`` and, for backends
    declaring a :class:`URLEnv`, ``hosts`` and ``tls``."""
    env = os.environ if environ is None else environ
    text, source, fallback = _pick_url(url, env)
    variable = source.removeprefix("env ") if source.startswith("env ") else None
    parsed = parse_url(text)
    url_env = _url_env(parsed.scheme)
    if url_env is None and fallback is None:
        return text, (Setting("url", parsed.redacted, source, variable),)
    url_env = url_env or URLEnv()
    tls = url_env.tls_scheme is not None and parsed.scheme == url_env.tls_scheme
    if parsed.hosts:
        hosts = Setting("hosts", ",".join(_host_text(h, p) for h, p in parsed.hosts), "URL")
        return text, (Setting("url", parsed.redacted, source, variable), hosts, Setting("tls", tls, "URL"))
    hosts, tls_from = Setting("hosts", fallback, "default"), Setting("tls", tls, "URL")
    for name in url_env.hosts:
        if not (raw := env.get(name, "").strip()):
            continue
        found, https = _addresses(name, raw)
        if found:
            hosts = Setting("hosts", found, f"env {name}", name)
            if https and not tls:
                tls, tls_from = True, Setting("tls", True, f"env {name} (https://)", name)
            break
    for name in url_env.tls:
        if not (raw := env.get(name, "").strip()):
            continue
        try:
            wanted = parse_bool(raw)
        except ValueError as exc:
            raise ConfigError(f"invalid environment variable {name}={_short(raw)}: {exc}") from None
        if wanted and not tls:  # false never turns off what https:// asked for (as the tools do)
            tls, tls_from = True, Setting("tls", True, f"env {name}", name)
    scheme = parsed.scheme
    if tls and scheme != url_env.tls_scheme:
        if url_env.tls_scheme is None:
            raise ConfigError(f"{tls_from.variable} asks for TLS, but {scheme}:// has no TLS scheme")
        scheme = url_env.tls_scheme
    text = _with_hosts(text, scheme, hosts.value or "")
    try:
        parsed = parse_url(text)
    except ConfigError as exc:
        raise ConfigError(f"{exc} (hosts from {hosts.variable})") from None
    return text, (Setting("url", parsed.redacted, source, variable), hosts, tls_from)


def _pick_url(url: str | None, env: Mapping[str, str]) -> tuple[str, str, str | None]:
    """``(url, source, hosts when no variable names any)``."""
    if url:
        return url, "argument", None
    if env.get("WAYPOST_URL"):
        return env["WAYPOST_URL"], "env WAYPOST_URL", None
    backend = env.get("DYN_DISCOVERY_BACKEND", "").strip().lower()
    if backend == "etcd":  # hosts from ETCD_ENDPOINTS (the etcd backend's URLEnv), else Dynamo's default
        return "etcd://", "env DYN_DISCOVERY_BACKEND", "127.0.0.1:2379"
    if backend == "file":
        return _file_url(env.get("DYN_FILE_KV")), "env DYN_DISCOVERY_BACKEND", None
    if backend in ("mem", "memory"):
        return "memory://", "env DYN_DISCOVERY_BACKEND", None
    if backend:
        raise ConfigError(f"DYN_DISCOVERY_BACKEND={backend!r} is not supported: expected etcd, file or mem")
    if env.get("DYN_FILE_KV"):
        return _file_url(env["DYN_FILE_KV"]), "env DYN_FILE_KV", None
    return DEFAULT_URL, "default", None


def _url_env(scheme: str) -> URLEnv | None:
    from ._plugins import backend_class

    try:
        return backend_class(scheme).url_env
    except Exception:  # not installed or broken: connect() and `waypost doctor` report it, with its own words
        return None


def _host_text(host: str, port: int | None) -> str:
    host = f"[{host}]" if ":" in host else host
    return host if port is None else f"{host}:{port}"


def _addresses(name: str, raw: str) -> tuple[str, bool]:
    """``[http(s)://]host[:port][,…]`` as URL hosts, and whether one said ``https://``.

    Messages never quote the variable: it may hold credentials.
    """
    found: list[str] = []
    https = False
    for item in (part.strip() for part in raw.split(",")):
        if not item:
            continue
        scheme, sep, address = item.partition("://")
        if sep:
            scheme = scheme.lower()
            if scheme not in ("http", "https"):
                shown = f"{scheme}:// addresses" if re.fullmatch(r"[a-z][a-z0-9+.-]{0,15}", scheme) else "that address"
                raise ConfigError(f"environment variable {name}: waypost cannot use {shown}; "
                                  "expected [http(s)://]host[:port]")
            https = https or scheme == "https"
        else:
            address = item
        address = address.rstrip("/")
        if not address or re.search(r"[/?#@\x00-\x20\x7f]", address):
            raise ConfigError(f"environment variable {name} holds an address waypost cannot use: expected "
                              "[http(s)://]host[:port], comma-separated")
        found.append(address)
    return ",".join(found), https


def _with_hosts(url: str, scheme: str, hosts: str) -> str:
    """``url`` (naming no host) with ``scheme`` and ``hosts``; its user info, path and query kept."""
    rest = url.partition("://")[2]
    head, question, query = rest.partition("?")
    netloc, slash, path = head.partition("/")
    userinfo = netloc.rpartition("@")[0] + "@" if "@" in netloc else ""
    return f"{scheme}://{userinfo}{hosts}{slash}{path}{question}{query}"


def _file_url(path: str | None) -> str:
    """``DYN_FILE_KV`` is a plain path (maybe relative, maybe with ``%``): quote it into a URL."""
    from urllib.parse import quote

    return "file://" + quote(os.path.abspath(path)) if path else DEFAULT_URL


def resolve_options(
    declared: Iterable[Option],
    kwargs: Mapping[str, Any],
    query: Mapping[str, str],
    environ: Mapping[str, str] | None = None,
    env_names: Mapping[str, str] | None = None,
    where: str = "backend",
) -> dict[str, Any]:
    """Merge and parse options; unknown names are a :class:`ConfigError`.

    ``env_names`` maps an option to one more variable, read after the option's own (the backend's
    ``runtime_option_env``).
    """
    return {name: s.value for name, s in explain_options(declared, kwargs, query, environ, env_names, where).items()}


def explain_options(
    declared: Iterable[Option],
    kwargs: Mapping[str, Any],
    query: Mapping[str, str],
    environ: Mapping[str, str] | None = None,
    env_names: Mapping[str, str] | None = None,
    where: str = "backend",
) -> dict[str, Setting]:
    """:func:`resolve_options`, with where each value came from."""
    env = os.environ if environ is None else environ
    by_name = {opt.name: opt for opt in declared}
    kwargs = _rename_aliases(by_name.values(), kwargs, "keyword argument", where)
    query = _rename_aliases(by_name.values(), query, "URL query parameter", where)
    for kind, names in (("keyword argument", kwargs), ("URL query parameter", query)):
        unknown = sorted(set(names) - set(by_name))
        if unknown:
            raise ConfigError(
                f"unknown {kind} {', '.join(map(repr, unknown))} for {where}: "
                f"allowed are {', '.join(sorted(by_name)) or 'none'}"
            )
    result: dict[str, Setting] = {}
    for name, opt in by_name.items():
        variable = None
        if name in kwargs:
            raw, source, origin = kwargs[name], "keyword", f"keyword argument {name}"
        elif name in query:
            raw, source, origin = query[name], "URL query", f"URL query parameter {name}"
        elif (found := _from_environment(opt, (env_names or {}).get(name), env)) is not None:
            variable, raw = found
            source, origin = f"env {variable}", f"environment variable {variable}"
        else:
            result[name] = Setting(name, opt.default, "default", secret=opt.secret)
            continue
        try:
            value = opt.parse(raw)
        except (TypeError, ValueError) as exc:
            if opt.secret:  # the parser's message may quote the value
                raise ConfigError(f"invalid {origin} (value hidden): {opt.help or 'see the backend docs'}") from None
            raise ConfigError(f"invalid {origin}={_short(raw)}: {exc}") from None
        result[name] = Setting(name, value, source, variable, opt.secret)
    return result


_MAX_ENV_FILE = 64 * 1024


def _from_environment(opt: Option, extra: str | None, env: Mapping[str, str]) -> tuple[str, str] | None:
    """``(variable, text)`` of the first of the option's variables that is set, else ``None``."""
    for var in (*opt.env_vars, *((Env(extra),) if extra else ())):
        text = env.get(var.name)
        if text and (value := _read_env(var, text)):
            return var.name, value
    return None


def _read_env(var: Env, text: str) -> str:
    """What ``var`` (set to ``text``) gives; ``""`` counts as unset. Errors name the file, never its text."""
    if var.file:
        path = os.path.expanduser(text)
        try:
            with open(path, "rb") as file:
                data = file.read(_MAX_ENV_FILE + 1)
        except OSError as exc:
            raise ConfigError(f"environment variable {var.name}: cannot read {path!r}: "
                              f"{exc.strerror or type(exc).__name__}") from None
        if len(data) > _MAX_ENV_FILE:
            raise ConfigError(f"environment variable {var.name}: {path!r} is larger than 64 KiB")
        try:
            text = data.decode("utf-8").strip()
        except UnicodeDecodeError:
            raise ConfigError(f"environment variable {var.name}: {path!r} is not UTF-8 text") from None
    if var.split is not None:
        parts = text.split(var.split, 1)
        text = parts[var.part] if var.part < len(parts) else ""
    return text


def _short(value: object) -> str:
    """``repr(value)``, shortened: an error message never carries a huge value."""
    text = repr(value)
    return text if len(text) <= 80 else f"{text[:60]}…({len(text)} characters)"


def _rename_aliases(declared: Iterable[Option], given: Mapping[str, Any], source: str,
                    where: str) -> Mapping[str, Any]:
    """``given`` with former option names replaced by today's (warning once per use)."""
    renames = {alias: opt.name for opt in declared for alias in opt.aliases}
    if not renames.keys() & given.keys():
        return given
    renamed: dict[str, Any] = {}
    for name, value in given.items():
        new = renames.get(name, name)
        if new != name:
            warnings.warn(f"{source} {name!r} of {where} is now called {new!r}", DeprecationWarning, stacklevel=4)
            if new in given:
                raise ConfigError(f"{source}s {name!r} and {new!r} of {where} are the same option: give one")
        renamed[new] = value
    return renamed


# Parsers for Option.parse ---------------------------------------------------

def parse_float(minimum: float | None = None, maximum: float | None = None) -> Callable[[Any], float]:
    def parse(value: Any) -> float:
        try:
            number = math.nan if isinstance(value, bool) else float(value)
        except (TypeError, ValueError, OverflowError):
            number = math.nan
        if math.isnan(number) or (minimum is not None and number < minimum) or (
            maximum is not None and number > maximum
        ):
            raise ValueError(f"expected a number from {minimum} to {maximum}")
        return number

    return parse


def parse_int(minimum: int | None = None, maximum: int | None = None) -> Callable[[Any], int]:
    def parse(value: Any) -> int:
        # Only integers and integer text: 1.5, True or inf are not silently made into one.
        if isinstance(value, str) and value.strip().isascii():
            try:
                number = int(value, 0)
            except ValueError:
                raise ValueError("expected an integer") from None
        elif isinstance(value, int) and not isinstance(value, bool):
            number = value
        else:
            raise ValueError("expected an integer")
        if (minimum is not None and number < minimum) or (maximum is not None and number > maximum):
            raise ValueError(f"expected an integer from {minimum} to {maximum}")
        return number

    return parse


def parse_bool(value: Any) -> bool:
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in ("1", "true", "yes", "on"):
        return True
    if text in ("0", "false", "no", "off"):
        return False
    raise ValueError("expected true/false (or 1/0, yes/no, on/off)")


def parse_choice(*choices: str) -> Callable[[Any], str]:
    def parse(value: Any) -> str:
        if value not in choices:
            raise ValueError(f"expected one of {', '.join(choices)}")
        return str(value)

    return parse


def parse_str(value: Any) -> str:
    if not isinstance(value, str):
        raise ValueError(f"expected a string, got {type(value).__name__}")
    return value


def check_timeout(value: object, name: str = "timeout") -> float | None:
    """The monotonic deadline of a timeout of ``value`` seconds; ``None`` (wait forever) for ``None`` or inf.

    Anything but ``None`` or a number ≥ 0 is a :class:`ConfigError` naming ``name``.
    """
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ConfigError(f"{name} must be a number of seconds or None, got {type(value).__name__}")
    if math.isnan(value) or value < 0:
        raise ConfigError(f"{name} must be a number of seconds ≥ 0 or None, got {value!r}")
    if math.isinf(value):
        return None
    return time.monotonic() + value
