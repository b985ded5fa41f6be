"""Naming rules, handles and endpoint ids (design §2)."""

from __future__ import annotations

import threading

import pytest

import waypost
from waypost import EndpointId, InvalidName, Query
from waypost.core._errors import shorten
from waypost.core._names import validate_namespace, validate_segment


@pytest.mark.parametrize("bad", ["", "A", "has space", "dot.ted", "x" * 64, "ü", "a/b", None, 5])
def test_invalid_segment_names_the_rule_and_the_value(bad: object) -> None:
    with waypost.connect("memory://names") as rt, pytest.raises(InvalidName) as info:
        rt.namespace("ns").component(bad)  # type: ignore[arg-type]
    assert isinstance(info.value, ValueError)
    assert "[a-z0-9_-]" in str(info.value) and repr(bad) in str(info.value)


@pytest.mark.parametrize("good", ["a", "0", "a-b_c", "x" * 63])
def test_valid_segments(good: str) -> None:
    assert EndpointId(good, good, good).name == good


def test_child_namespace_is_dotted_and_each_part_checked() -> None:
    with waypost.connect("memory://names") as rt:
        child = rt.namespace("parent").namespace("child")
        assert child.name == "parent.child"
        with pytest.raises(InvalidName, match="'Bad'"):
            rt.namespace("parent.Bad")
        with pytest.raises(InvalidName):
            rt.namespace("parent..child")


def test_component_cache_returns_same_object_across_threads() -> None:
    with waypost.connect("memory://names") as rt:
        ns = rt.namespace("ns")
        seen: list[object] = []
        threads = [threading.Thread(target=lambda: seen.append(ns.component("c"))) for _ in range(16)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert len({id(c) for c in seen}) == 1
        assert rt.namespace("ns") is ns


def test_service_name_is_dynamos_slug() -> None:
    with waypost.connect("memory://names") as rt:
        assert rt.namespace("dynamo").component("backend").service_name() == "dynamo_backend"
        assert rt.namespace("p.c").component("x").service_name() == "p_c_x"
        assert rt.namespace("_lead").component("x").service_name() == "lead_x"


@pytest.mark.parametrize("text", ["dyn://ns.comp.ep", "ns.comp.ep", "ns/comp/ep"])
def test_endpoint_id_parses_every_form(text: str) -> None:
    eid = EndpointId.parse(text)
    assert (str(eid), eid.url) == ("ns/comp/ep", "dyn://ns.comp.ep")


def test_endpoint_id_parses_child_namespace() -> None:
    assert EndpointId.parse("dyn://p.c.comp.ep") == EndpointId("p.c", "comp", "ep")


@pytest.mark.parametrize("text", ["ns.comp", "a/b/c/d", "dyn://", "n s.comp.ep", "ns/co mp/ep", "ns/comp/e\x1bp"])
def test_endpoint_id_rejects_bad_text(text: str) -> None:
    with pytest.raises(InvalidName):
        EndpointId.parse(text)


@pytest.mark.parametrize("text", ["dynamo/VllmWorker/generate", "My-ns_1/comp~X/gen+1", "dyn://NS.Comp.Ep"])
def test_endpoint_ids_address_the_names_dynamo_writes(text: str) -> None:
    """A real Dynamo 1.6 worker serves `ns.VllmWorker.generate`: an address (a query, a client) must
    reach it, while what waypost itself registers keeps the strict rule."""
    eid = EndpointId.parse(text)
    assert EndpointId.parse(str(eid)) == eid
    assert Query.from_endpoint_id(eid).levels == (eid.namespace, eid.component, eid.name)
    with waypost.connect("memory://names") as rt:
        with pytest.raises(InvalidName, match=r"\[a-z0-9_-\]"):
            rt.register(eid, waypost.TransportType.tcp("h:1"))
        with pytest.raises(InvalidName, match=r"\[a-z0-9_-\]"):
            rt.endpoint(eid)  # a handle serves: waypost's own rule
        assert rt.list_instances(Query.from_endpoint_id(eid)) == []


@pytest.mark.parametrize("bad", ["abc\n", "\nabc", "a\x00", "\ud800", "a\u200bb", "\uff41", b"abc", ["a"],
                                 10**5000, 1.5], ids=lambda v: shorten(v, 20))
def test_names_refuse_hostile_values_with_a_short_message(bad: object) -> None:
    for check in (lambda: validate_segment("component", bad), lambda: validate_namespace(bad),
                  lambda: EndpointId("ns", "comp", bad)):  # type: ignore[arg-type]
        with pytest.raises(InvalidName) as info:
            check()
        message = str(info.value)
        assert len(message) < 300 and message.isprintable()
        assert "[a-z0-9_-]" in message or "printable ASCII characters other than space, '.' and '/'" in message


@pytest.mark.parametrize("bad", ["x" * 1_000_000, "a." * 100_000 + "A", "." * 1_000_000])
def test_huge_names_give_short_messages(bad: str) -> None:
    with pytest.raises(InvalidName) as info:
        validate_namespace(bad)
    assert len(str(info.value)) < 300


def test_long_valid_namespaces_are_checked_in_linear_time() -> None:
    name = "a." * 200_000 + "a"
    assert validate_namespace(name) == name
    with pytest.raises(InvalidName):
        validate_namespace(name + ".")


@pytest.mark.parametrize("text", [None, 5, b"ns.comp.ep", ["ns", "comp", "ep"], "x" * 1_000_000, "ns.comp.\ud800"],
                         ids=lambda v: shorten(v, 20))
def test_endpoint_id_parse_refuses_hostile_text(text: object) -> None:
    with pytest.raises(InvalidName) as info:
        EndpointId.parse(text)  # type: ignore[arg-type]
    assert len(str(info.value)) < 300 and str(info.value).isprintable()
