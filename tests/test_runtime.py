"""Runtime behaviour that is the core's, not a backend's (memory store underneath)."""

from __future__ import annotations

import asyncio
import threading
import time
import uuid
from typing import Any

import pytest

import waypost
from servers.fixtures import LeaseLosses
from waypost import Query, TransportType
from waypost.contrib.conformance import wait_until
from waypost.core import faults


@pytest.fixture
def url() -> str:
    return f"memory://rt-{uuid.uuid4().hex[:8]}"


def test_registration_context_manager_and_endpoint_lookup(url: str) -> None:
    with waypost.connect(url) as rt:
        with rt.endpoint("dyn://ns.comp.ep").register(TransportType.tcp("h:1")) as reg:
            assert reg.active and rt.list_instances() == [reg.instance]
            assert repr(reg) == "<Registration ns/comp/ep active>"
        assert rt.list_instances() == [] and not reg.active
        reg.unregister()  # a second unregister is a no-op


def test_closed_runtime_refuses_work(url: str) -> None:
    rt = waypost.connect(url)
    rt.close()
    rt.close()  # idempotent
    with pytest.raises(waypost.Closed):
        rt.list_instances()
    with pytest.raises(waypost.Closed):
        rt.namespace("n").component("c").endpoint("e").register(TransportType.tcp("h:1"))
    assert "closed" in repr(rt)


def test_one_keepalive_thread_per_runtime_whatever_the_endpoint_count(url: str) -> None:
    def keepalives() -> int:
        return sum(t.name == "waypost-keepalive" for t in threading.enumerate())

    before = keepalives()
    with waypost.connect(url) as rt:
        for n in range(50):
            rt.namespace("n").component("c").endpoint(f"e{n}").register(TransportType.tcp("h:1"))
        assert keepalives() == before + 1
        assert len(rt.registrations()) == 50


def test_unregister_during_outage_forgets_now_and_deletes_later(url: str) -> None:
    rt = waypost.connect(url)
    reg = rt.namespace("n").component("c").endpoint("e").register(TransportType.tcp("h:1"))
    key = reg.instance.key
    rt.backend.close()  # the store goes away under the Runtime
    reg.unregister()  # does not raise: the delete is retried by the keepalive thread
    assert not reg.active and rt.registrations() == []
    assert rt._pending_deletes == {key}
    faults.crash(rt)


def test_a_rejected_update_leaves_the_registration_intact(url: str) -> None:
    with waypost.connect(url) as rt:
        ep = rt.namespace("n").component("c").endpoint("e")
        reg = ep.register(TransportType.tcp("h:1"))
        with pytest.raises(waypost.ConfigError, match="device_type"):
            ep.register(TransportType.tcp("h:2"), device_type="gpu")
        assert reg.instance.transport == TransportType.tcp("h:1")
        assert rt.list_instances() == [reg.instance]
        reg.unregister()
        assert rt.list_instances() == []


def test_register_after_an_unnoticed_lease_loss_recovers_first(url: str) -> None:
    with waypost.connect(url, ttl=30) as rt, waypost.connect(url) as other:
        rt.namespace("n").component("c").endpoint("a").register(TransportType.tcp("h:1"))
        other.backend.revoke_lease(rt.instance_id)  # the keepalive won't look for 10 s
        reg = rt.namespace("n").component("c").endpoint("b").register(TransportType.tcp("h:2"))
        assert reg.active
        assert [i.endpoint for i in other.list_instances()] == ["a", "b"]


def test_watch_iterates_until_closed(url: str) -> None:
    with waypost.connect(url) as rt:
        rt.namespace("n").component("c").endpoint("e").register(TransportType.tcp("h:1"))
        watch = rt.watch(Query.namespace("n"))
        seen = []
        for event in watch:
            seen.append(event)
            watch.close()
        assert [type(e).__name__ for e in seen] == ["Added"]
        assert watch.closed and "closed" in repr(watch)


def test_client_keeps_last_snapshot_when_its_runtime_closes(url: str) -> None:
    server = waypost.connect(url)
    server.namespace("n").component("c").endpoint("e").register(TransportType.tcp("h:1"))
    caller = waypost.connect(url)
    client = caller.namespace("n").component("c").endpoint("e").client()
    assert len(client.wait_for_instances(timeout=1)) == 1
    caller.close()
    assert len(client.instances()) == 1
    with pytest.raises(waypost.Closed):
        client.wait_for_instances(timeout=1, count=2)
    server.close()


# -- model cards: what a careless caller can do --------------------------------------------------

def test_taints_from_a_generator_survive_a_lease_loss_retry(url: str) -> None:
    with waypost.connect(url, ttl=30) as rt, waypost.connect(url) as other:
        card = rt.endpoint("n.c.e").register_model({"display_name": "m"})
        other.backend.revoke_lease(rt.instance_id)  # noticed only by the write: it recovers, then retries
        card.update_taints(t for t in ["beta", "alpha"])
        assert card.model.taints == ("alpha", "beta")
        assert [m.taints for m in other.list_models()] == [("alpha", "beta")]


@pytest.mark.parametrize("taints", ["gpu", b"gpu", None, 5])
def test_taints_that_are_not_an_iterable_of_strings_are_config_errors(url: str, taints: object) -> None:
    with waypost.connect(url) as rt:
        card = rt.endpoint("n.c.e").register_model({"display_name": "m"})
        with pytest.raises(waypost.ConfigError, match="taints must be an iterable of strings"):
            card.update_taints(taints)  # type: ignore[arg-type]

        async def via_aio() -> None:
            async_card = waypost.aio.Registration(waypost.aio.Runtime(rt), card)
            with pytest.raises(waypost.ConfigError, match="taints must be an iterable of strings"):
                await async_card.update_taints(taints)  # type: ignore[arg-type]

        asyncio.run(via_aio())
        assert card.model.taints == ()


def test_a_card_no_reader_would_accept_is_refused_before_it_is_written(url: str) -> None:
    from waypost.core import MAX_VALUE_BYTES

    with waypost.connect(url) as rt:
        endpoint = rt.endpoint("n.c.e")
        with pytest.raises(waypost.ConfigError, match="stored value would have"):
            endpoint.register_model({"display_name": "big", "blob": "x" * (MAX_VALUE_BYTES - 100)})
        card = endpoint.register_model({"display_name": "m"}, lora="l")
        with pytest.raises(waypost.ConfigError, match="stored value would have"):
            card.update_taints(f"taint-{n}" for n in range(25_000))
        assert rt.list_models() == [card.model] and card.model.taints == ()


def test_two_lora_names_with_one_slug_are_refused_not_overwritten(url: str) -> None:
    with waypost.connect(url) as rt:
        endpoint = rt.endpoint("n.c.e")
        first = endpoint.register_model({"display_name": "A.b"}, lora="A.b")
        with pytest.raises(waypost.AlreadyRegistered, match="same slug 'a_b'"):
            endpoint.register_model({"display_name": "a_b"}, lora="a_b")
        assert rt.list_models() == [first.model] and first.model.card["display_name"] == "A.b"
        again = endpoint.register_model({"display_name": "A.b", "v": 2}, lora="A.b")  # the same LoRA: an update
        assert again is first and rt.list_models()[0].card["v"] == 2


def test_a_card_that_is_not_valid_text_is_a_config_error(url: str) -> None:
    with waypost.connect(url) as rt, pytest.raises(waypost.ConfigError, match="not valid text"):
        rt.endpoint("n.c.e").register_model('{"a":"\ud800"}')


def test_a_recovery_slower_than_the_ttl_keeps_its_new_lease_alive(url: str, lease_losses: LeaseLosses) -> None:
    """Found by the soak suite: 200 Runtimes recovering at once on one etcd made every store call slow,
    each replacement lease expired before its endpoints were re-created, and recovery started over forever."""
    with waypost.connect(url, ttl=1.0) as rt, waypost.connect(url, ttl=1.0) as observer:
        component = rt.namespace("n").component("c")
        for n in range(5):
            component.endpoint(f"e{n}").register(TransportType.tcp(f"h:{n}"))
        create = rt.backend.create

        def slow_create(lease: Any, key: str, value: bytes) -> None:  # 1.5 s of writes for a 1 s lease
            time.sleep(0.3)  # the store's latency, not synchronisation
            create(lease, key, value)

        rt.backend.create = slow_create  # type: ignore[method-assign]
        observer.backend.revoke_lease(rt.instance_id)
        wait_until(lambda: lease_losses.calls, 10.0, what="the recovery finished (waypost_on_lease_lost)")
        with observer.watch("n") as watch:
            assert len(watch.instances) == 5
            assert watch.wait_for(lambda e: isinstance(e, waypost.Removed), 2.5) is None, "recovered, then lost"
        assert len(lease_losses.calls) == 1


