"""URLs, options and the environment: how ``connect()`` decides what to build.

Precedence for every option: keyword argument > URL query > environment >
default. The URL itself comes from the ``url`` argument, else ``WAYPOST_URL``,
else Dynamo's variables (``DYN_DISCOVERY_BACKEND`` = ``etcd`` | ``file`` |
``mem`` with ``ETCD_ENDPOINTS`` / ``DYN_FILE_KV``), else the embedded default
``file://`` in the default directory.
"""

from __future__ import annotations

import math
import os
import re
import time
import warnings
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from ._errors import ConfigError
from ._spi import Option, ParsedURL

__all__ = [
    "check_timeout",
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


def resolve_url(url: str | None, environ: Mapping[str, str] | None = None) -> str:
    """Pick the discovery URL: argument, ``WAYPOST_URL``, Dynamo's variables, default."""
    env = os.environ if environ is None else environ
    if url:
        return url
    if env.get("WAYPOST_URL"):
        return env["WAYPOST_URL"]
    backend = env.get("DYN_DISCOVERY_BACKEND", "").strip().lower()
    if backend == "etcd":
        return _etcd_url_from_env(env.get("ETCD_ENDPOINTS", "http://127.0.0.1:2379"))
    if backend == "file":
        return _file_url(env.get("DYN_FILE_KV"))
    if backend in ("mem", "memory"):
        return "memory://"
    if backend:
        raise ConfigError(f"DYN_DISCOVERY_BACKEND={backend!r} is not supported: expected etcd, file or mem")
    return _file_url(env.get("DYN_FILE_KV"))


def _file_url(path: str | None) -> str:
    """``DYN_FILE_KV`` is a plain path (maybe relative, maybe with ``%``): quote it into a URL."""
    from urllib.parse import quote

    return "file://" + quote(os.path.abspath(path)) if path else DEFAULT_URL


def _etcd_url_from_env(endpoints: str) -> str:
    """``ETCD_ENDPOINTS`` is Dynamo's comma-separated list of ``http(s)://host:port``."""
    tls = False
    hosts = []
    for raw in endpoints.split(","):
        item = raw.strip()
        if not item:
            continue
        if item.startswith("https://"):
            tls = True
        hosts.append(item.split("://", 1)[-1].rstrip("/"))
    return ("etcds://" if tls else "etcd://") + ",".join(hosts)


def resolve_options(
    declared: Iterable[Option],
    kwargs: Mapping[str, Any],
    query: Mapping[str, str],
    environ: Mapping[str, str] | None = None,
    env_names: Mapping[str, str] | None = None,
    where: str = "backend",
) -> dict[str, Any]:
    """Merge and parse options; unknown names are a :class:`ConfigError`."""
    env = os.environ if environ is None else environ
    by_name = {opt.name: opt for opt in declared}
    kwargs = _rename_aliases(by_name.values(), kwargs, "keyword argument", where)
    query = _rename_aliases(by_name.values(), query, "URL query parameter", where)
    for source, names in (("keyword argument", kwargs), ("URL query parameter", query)):
        unknown = sorted(set(names) - set(by_name))
        if unknown:
            raise ConfigError(
                f"unknown {source} {', '.join(map(repr, unknown))} for {where}: "
                f"allowed are {', '.join(sorted(by_name)) or 'none'}"
            )
    result: dict[str, Any] = {}
    for name, opt in by_name.items():
        # A backend's own variable (e.g. ETCD_LEASE_TTL) first, then the option's (WAYPOST_TTL).
        env_candidates = [n for n in ((env_names or {}).get(name), opt.env) if n]
        env_name = next((n for n in env_candidates if env.get(n) not in (None, "")), None)
        if name in kwargs:
            raw, origin = kwargs[name], f"keyword argument {name}"
        elif name in query:
            raw, origin = query[name], f"URL query parameter {name}"
        elif env_name is not None:
            raw, origin = env[env_name], f"environment variable {env_name}"
        else:
            result[name] = opt.default
            continue
        try:
            result[name] = opt.parse(raw)
        except (TypeError, ValueError) as exc:
            if opt.secret:  # the parser's message may quote the value
                raise ConfigError(f"invalid {origin} (value hidden): {opt.help or 'see the backend docs'}") from None
            raise ConfigError(f"invalid {origin}={_short(raw)}: {exc}") from None
    return result


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
