"""Queries map to key prefixes that match on '/' boundaries (design §3)."""

from __future__ import annotations

import pytest

from waypost import Instance, Query, TransportType


def test_prefixes() -> None:
    assert Query.all().prefix == "v1/instances/"
    assert Query.namespace("ns").prefix == "v1/instances/ns/"
    assert Query.component("ns", "c").prefix == "v1/instances/ns/c/"
    assert Query.endpoint("ns", "c", "e").prefix == "v1/instances/ns/c/e/"


def test_prefix_matches_on_boundaries_only() -> None:
    query = Query.namespace("ns")
    assert query.matches_key("v1/instances/ns/c/e/1")
    assert not query.matches_key("v1/instances/ns-a/c/e/1")
    assert not query.matches_key("v1/instances/nsx/c/e/1")
    instance = Instance("ns-a", "c", "e", 1, TransportType.tcp("x"))
    assert not query.matches(instance) and Query.namespace("ns-a").matches(instance)


@pytest.mark.parametrize(("text", "levels"), [
    (None, ()), ("", ()), ("*", ()), ("dynamo", ("dynamo",)), ("dynamo.backend", ("dynamo", "backend")),
    ("dynamo.backend.generate", ("dynamo", "backend", "generate")), ("dyn://a.b.c", ("a", "b", "c")),
    ("p.c/comp", ("p.c", "comp")), ("p.c.comp.ep", ("p.c", "comp", "ep")),
])
def test_parse(text: str | None, levels: tuple[str, ...]) -> None:
    assert Query.parse(text).levels == levels


def test_queries_are_values() -> None:
    assert Query.component("a", "b") == Query.parse("a.b")
    assert len({Query.all(), Query.all()}) == 1
    with pytest.raises(AttributeError):
        Query.all().levels = ("x",)  # type: ignore[misc]


def test_bad_queries_name_the_problem() -> None:
    with pytest.raises(ValueError, match="'B C'"):
        Query.component("a", "B C")
    assert Query.component("a", "B").levels == ("a", "B")  # Dynamo writes such names: queries reach them
    with pytest.raises(ValueError, match="at most 3 levels"):
        Query("a", "b", "c", "d")
