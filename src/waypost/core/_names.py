"""Naming rules shared by every handle and every backend key.

A segment (namespace part, component, endpoint) that waypost *registers*
matches ``^[a-z0-9_-]+$`` and is 1..63 characters long. A child namespace is
written ``parent.child``, each part a valid segment.

Names waypost *reads* (in stored records, queries and endpoint ids) follow
the wider rule of what Dynamo's runtime accepts and writes (``VllmWorker``,
``comp~X``, ``gen+1`` are all real): 1..255 printable ASCII characters other
than space, ``.`` and ``/``. So a Dynamo deployment's endpoints are listed,
watched and picked whatever their names, while waypost's own registrations
stay within the strict rule.

Every check accepts any object and raises :class:`InvalidName` (never
``TypeError``, ``RecursionError`` or a huge message): names come from users,
environment variables and the store alike. The rule rejects by construction
control characters, NUL, lone surrogates and anything non-ASCII.
"""

from __future__ import annotations

import functools
import re

import msgspec

from ._errors import InvalidName, shorten

__all__ = ["EndpointId", "service_name", "validate_dynamo_namespace", "validate_dynamo_segment", "validate_namespace",
           "validate_segment"]

MAX_SEGMENT = 63
_SEGMENT = re.compile(r"[a-z0-9_-]{1,63}")
# One pass over the whole text: every repetition starts at a '.', so the match
# is linear (no backtracking blow-up on long hostile names).
_NAMESPACE = re.compile(r"[a-z0-9_-]{1,63}(?:\.[a-z0-9_-]{1,63})*")
_RULE = "1 to 63 characters from [a-z0-9_-]"
_SLUG_UNSAFE = re.compile(r"[^a-z0-9_-]")
# What Dynamo accepts: printable ASCII from '!' to '~' except '.' (0x2e) and '/' (0x2f).
_DYNAMO_SEGMENT = re.compile(r"[!-\-0-~]{1,255}")
_DYNAMO_NAMESPACE = re.compile(r"[!-\-0-~]{1,255}(?:\.[!-\-0-~]{1,255})*")
_DYNAMO_RULE = "1 to 255 printable ASCII characters other than space, '.' and '/'"
_CACHED_NAMESPACE = 255  # longer namespaces are checked every time, never cached


def validate_segment(kind: str, value: object) -> str:
    """Return ``value`` if it is a valid segment, else raise :class:`InvalidName`."""
    if not isinstance(value, str):
        raise InvalidName(f"invalid {kind} name {shorten(value)}: must be a str of {_RULE}, "
                          f"got {type(value).__name__}")
    if not segment_ok(value):
        raise InvalidName(f"invalid {kind} name {shorten(value)}: must be {_RULE}")
    return value


def validate_namespace(value: object) -> str:
    """Validate a namespace, possibly nested as ``parent.child``."""
    if not isinstance(value, str):
        raise InvalidName(f"invalid namespace name {shorten(value)}: must be a str of {_RULE}, "
                          f"with '.' between the parts of a child namespace; got {type(value).__name__}")
    if not value:
        raise InvalidName(f"invalid namespace name {value!r}: must be {_RULE}, "
                          "with '.' between the parts of a child namespace")
    if not namespace_ok(value):
        bad = next(part for part in value.split(".") if not segment_ok(part))
        raise InvalidName(
            f"invalid namespace name {shorten(value)}: part {shorten(bad)} must be {_RULE} "
            "(a child namespace is written 'parent.child')"
        )
    return value


def validate_dynamo_segment(kind: str, value: object) -> str:
    """Like :func:`validate_segment`, with the rule of names Dynamo writes (for reading)."""
    if not isinstance(value, str) or not dynamo_segment_ok(value):
        got = "" if isinstance(value, str) else f", got {type(value).__name__}"
        raise InvalidName(f"invalid {kind} name {shorten(value)}: must be {_DYNAMO_RULE}{got}")
    return value


def validate_dynamo_namespace(value: object) -> str:
    """Like :func:`validate_namespace`, with the rule of names Dynamo writes (for reading)."""
    if not isinstance(value, str) or not dynamo_namespace_ok(value):
        got = "" if isinstance(value, str) else f", got {type(value).__name__}"
        raise InvalidName(f"invalid namespace name {shorten(value)}: must be {_DYNAMO_RULE} "
                          f"(a child namespace is written 'parent.child'){got}")
    return value


def dynamo_segment_ok(value: str) -> bool:
    """True if ``value`` (a str) is a segment Dynamo could have written."""
    return len(value) <= 255 and (_segment_ok(value) or _DYNAMO_SEGMENT.fullmatch(value) is not None)


def dynamo_namespace_ok(value: str) -> bool:
    """True if ``value`` (a str) is a (possibly dotted) namespace Dynamo could have written."""
    if len(value) <= _CACHED_NAMESPACE and _namespace_ok(value):
        return True
    return len(value) <= 4096 and _DYNAMO_NAMESPACE.fullmatch(value) is not None


def segment_ok(value: str) -> bool:
    """True if ``value`` (a str) is a valid segment; the verdicts of short names are cached."""
    return len(value) <= MAX_SEGMENT and _segment_ok(value)


def namespace_ok(value: str) -> bool:
    """True if ``value`` (a str) is a valid, possibly dotted, namespace."""
    if len(value) > _CACHED_NAMESPACE:  # do not let hostile megabyte names fill the cache
        return _NAMESPACE.fullmatch(value) is not None
    return _namespace_ok(value)


# Names repeat across thousands of handles and decoded values: remember the
# verdicts, for names short enough that the cache stays small (4096 x 255 chars).
@functools.lru_cache(maxsize=4096)
def _segment_ok(value: str) -> bool:
    return _SEGMENT.fullmatch(value) is not None


@functools.lru_cache(maxsize=4096)
def _namespace_ok(value: str) -> bool:
    return _NAMESPACE.fullmatch(value) is not None


def service_name(namespace: str, component: str) -> str:
    """Dynamo's service name: the slug of ``{namespace}_{component}``."""
    slug = _SLUG_UNSAFE.sub("_", f"{namespace}_{component}".lower())
    return slug.lstrip("_")


class EndpointId(msgspec.Struct, frozen=True, order=True, gc=False):
    """The address of an endpoint: ``namespace/component/name``.

    ``str()`` gives ``ns/comp/name``; :attr:`url` gives ``dyn://ns.comp.name``.
    """

    namespace: str
    component: str
    name: str

    def __post_init__(self) -> None:
        # An address: it may name a Dynamo endpoint outside waypost's stricter rule for what it registers.
        validate_dynamo_namespace(self.namespace)
        validate_dynamo_segment("component", self.component)
        validate_dynamo_segment("endpoint", self.name)

    def __str__(self) -> str:
        return f"{self.namespace}/{self.component}/{self.name}"

    @property
    def url(self) -> str:
        return f"dyn://{self.namespace}.{self.component}.{self.name}"

    @classmethod
    def parse(cls, text: str) -> EndpointId:
        """Parse ``dyn://ns.comp.ep``, ``ns.comp.ep`` or ``ns/comp/ep``.

        With dots, the last two parts are the component and the endpoint, so a
        child namespace parses too: ``dyn://parent.child.comp.ep``.
        """
        if not isinstance(text, str):
            raise InvalidName(f"invalid endpoint id {shorten(text)}: must be a str like 'dyn://ns.comp.ep', "
                              f"'ns.comp.ep' or 'ns/comp/ep', got {type(text).__name__}")
        body = text.removeprefix("dyn://")
        parts = body.split("/") if "/" in body else body.rsplit(".", 2)
        if len(parts) != 3:
            raise InvalidName(
                f"invalid endpoint id {shorten(text)}: expected 'dyn://ns.comp.ep', "
                "'ns.comp.ep' or 'ns/comp/ep'"
            )
        return cls(*parts)
