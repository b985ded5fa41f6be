"""Naming rules, handles and endpoint ids (design §2)."""

from __future__ import annotations

import threading

import pytest

import waypost
from waypost import EndpointId, InvalidName


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


@pytest.mark.parametrize("text", ["ns.comp", "a/b/c/d", "dyn://", "NS.comp.ep"])
def test_endpoint_id_rejects_bad_text(text: str) -> None:
    with pytest.raises(InvalidName):
        EndpointId.parse(text)
