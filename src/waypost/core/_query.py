"""Queries: which instances to list or watch, as key prefixes (design §3)."""

from __future__ import annotations

from ._errors import ConfigError
from ._instance import KEY_ROOT, Instance
from ._names import EndpointId, validate_dynamo_namespace, validate_dynamo_segment

__all__ = ["Query"]

_LABELLED = frozenset({"v1/event_channels", "v1/event_sources"})


class Query:
    """All instances, or those of one namespace, component or endpoint.

    Build one with ``Query.all()``, ``Query.namespace(ns)``,
    ``Query.component(ns, comp)`` or ``Query.endpoint(ns, comp, ep)``, or parse
    ``ns``, ``ns.comp``, ``ns.comp.ep`` with :meth:`parse`. :attr:`prefix` ends
    with ``/`` so that prefixes match on ``/`` boundaries only:
    ``Query.namespace("ns")`` never matches namespace ``ns-a``.
    """

    __slots__ = ("levels",)
    levels: tuple[str, ...]

    def __init__(self, *levels: str) -> None:
        if len(levels) > 3:
            raise ConfigError(f"a Query has at most 3 levels (namespace, component, endpoint), got {len(levels)}")
        if levels:  # a query reads: any name Dynamo could have written
            validate_dynamo_namespace(levels[0])
        for kind, value in zip(("component", "endpoint"), levels[1:], strict=False):
            validate_dynamo_segment(kind, value)
        object.__setattr__(self, "levels", tuple(levels))

    def __setattr__(self, name: str, value: object) -> None:
        raise AttributeError("Query is immutable")

    @classmethod
    def all(cls) -> Query:
        return cls()

    @classmethod
    def namespace(cls, namespace: str) -> Query:
        return cls(namespace)

    @classmethod
    def component(cls, namespace: str, component: str) -> Query:
        return cls(namespace, component)

    @classmethod
    def endpoint(cls, namespace: str, component: str, endpoint: str) -> Query:
        return cls(namespace, component, endpoint)

    @classmethod
    def from_endpoint_id(cls, endpoint_id: EndpointId) -> Query:
        return cls(endpoint_id.namespace, endpoint_id.component, endpoint_id.name)

    @classmethod
    def parse(cls, text: str | None) -> Query:
        """``""``/``None``/``*`` → all; else ``ns``, ``ns.comp``, ``ns.comp.ep`` or with ``/``.

        With dots, a namespace of more than one part is written
        ``parent.child`` and only the last two parts of a longer text are the
        component and endpoint; use ``/`` to query a component of a child
        namespace unambiguously (``parent.child/comp``).
        """
        if text is not None and not isinstance(text, str):
            raise ConfigError(f"a query is a string such as 'ns', 'ns.comp' or 'ns.comp.ep', or a Query; "
                              f"got {type(text).__name__}")
        if not text or text == "*":
            return cls()
        body = text.removeprefix("dyn://").strip("/")
        parts = body.split("/") if "/" in body else body.split(".")
        if "/" not in body and len(parts) > 3:
            parts = [".".join(parts[:-2]), *parts[-2:]]
        if len(parts) > 3:
            raise ConfigError(f"invalid query {text[:80]!r}: expected ns, ns.comp or ns.comp.ep")
        return cls(*parts)

    @classmethod
    def of(cls, query: Query | str | None) -> Query:
        """``query`` as a Query: a Query as it is, a string through :meth:`parse`, ``None`` for all."""
        return query if isinstance(query, Query) else cls.parse(query)

    @property
    def prefix(self) -> str:
        """The key prefix of the endpoint instances this query names."""
        return "/".join([KEY_ROOT, *self.levels]) + "/"

    def prefix_of(self, bucket: str) -> str:
        """The key prefix of this query's records in ``bucket`` (``v1/instances``, ``v1/mdc``, …).

        Instances and model cards are keyed ``{bucket}/{ns}/{comp}/{ep}/…``;
        event channels and sources ``{bucket}/namespace/{ns}/component/{comp}/endpoint/{ep}/…``.
        """
        if bucket in _LABELLED:
            labelled = [part for label, level in zip(("namespace", "component", "endpoint"), self.levels,
                                                      strict=False) for part in (label, level)]
            return "/".join([bucket, *labelled]) + "/"
        return "/".join([bucket, *self.levels]) + "/"

    def matches_key(self, key: str) -> bool:
        return key.startswith(self.prefix)

    def matches(self, instance: Instance) -> bool:
        fields = (instance.namespace, instance.component, instance.endpoint)
        return fields[: len(self.levels)] == self.levels

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Query) and other.levels == self.levels

    def __hash__(self) -> int:
        return hash(self.levels)

    def __str__(self) -> str:
        return ".".join(self.levels) if self.levels else "*"

    def __repr__(self) -> str:
        return f"Query({', '.join(map(repr, self.levels))})"
