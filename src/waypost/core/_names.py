"""Naming rules shared by every handle and every backend key.

A segment (namespace part, component, endpoint) matches ``^[a-z0-9_-]+$`` and
is 1..63 characters long. A child namespace is written ``parent.child``, each
part a valid segment.

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

__all__ = ["EndpointId", "service_name", "validate_namespace", "validate_segment"]

MAX_SEGMENT = 63
_SEGMENT = re.compile(r"[a-z0-9_-]{1,63}")
# One pass over the whole text: every repetition starts at a '.', so the match
# is linear (no backtracking blow-up on long hostile names).
_NAMESPACE = re.compile(r"[a-z0-9_-]{1,63}(?:\.[a-z0-9_-]{1,63})*")
_RULE = "1 to 63 characters from [a-z0-9_-]"
_SLUG_UNSAFE = re.compile(r"[^a-z0-9_-]")
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
        validate_namespace(self.namespace)
        validate_segment("component", self.component)
        validate_segment("endpoint", self.name)

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
