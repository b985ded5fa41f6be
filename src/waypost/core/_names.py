"""Naming rules shared by every handle and every backend key.

A segment (namespace part, component, endpoint) matches ``^[a-z0-9_-]+$`` and
is 1..63 characters long. A child namespace is written ``parent.child``, each
part a valid segment.
"""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass

from ._errors import InvalidName

__all__ = ["EndpointId", "service_name", "validate_namespace", "validate_segment"]

_SEGMENT = re.compile(r"[a-z0-9_-]{1,63}")
_RULE = "1 to 63 characters from [a-z0-9_-]"
_SLUG_UNSAFE = re.compile(r"[^a-z0-9_-]")


def validate_segment(kind: str, value: object) -> str:
    """Return ``value`` if it is a valid segment, else raise :class:`InvalidName`."""
    if not isinstance(value, str) or not _segment_ok(value):
        raise InvalidName(f"invalid {kind} name {value!r}: must be {_RULE}")
    return value


def validate_namespace(value: object) -> str:
    """Validate a namespace, possibly nested as ``parent.child``."""
    if not isinstance(value, str) or not value:
        raise InvalidName(f"invalid namespace name {value!r}: must be {_RULE}, "
                          "with '.' between the parts of a child namespace")
    if not _namespace_ok(value):
        bad = next(part for part in value.split(".") if not _segment_ok(part))
        raise InvalidName(
            f"invalid namespace name {value!r}: part {bad!r} must be {_RULE} "
            "(a child namespace is written 'parent.child')"
        )
    return value


# Names repeat across thousands of decoded instances: remember the verdicts.
@functools.lru_cache(maxsize=4096)
def _segment_ok(value: str) -> bool:
    return _SEGMENT.fullmatch(value) is not None


@functools.lru_cache(maxsize=4096)
def _namespace_ok(value: str) -> bool:
    return all(_segment_ok(part) for part in value.split("."))


def service_name(namespace: str, component: str) -> str:
    """Dynamo's service name: the slug of ``{namespace}_{component}``."""
    slug = _SLUG_UNSAFE.sub("_", f"{namespace}_{component}".lower())
    return slug.lstrip("_")


@dataclass(frozen=True, order=True)
class EndpointId:
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
            raise InvalidName(f"endpoint id must be a string, got {type(text).__name__}")
        body = text.removeprefix("dyn://")
        parts = body.split("/") if "/" in body else body.rsplit(".", 2)
        if len(parts) != 3:
            raise InvalidName(
                f"invalid endpoint id {text!r}: expected 'dyn://ns.comp.ep', "
                "'ns.comp.ep' or 'ns/comp/ep'"
            )
        return cls(*parts)
