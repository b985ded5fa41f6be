"""The conformance tests (design §5). Subclass :class:`BackendConformance` to run them."""

from __future__ import annotations

import asyncio
import json
import logging
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from typing import Any

import pytest

import waypost
from waypost import Added, Capability, Query, Removed, Resynced, TransportType
from waypost.core import faults, hookimpl, random_instance_id

from ._harness import Harness, wait_until

__all__ = ["BackendConformance"]

GRACE = 0.5  # scheduling slack on a loaded 2-core machine


def _tcp(n: int) -> TransportType:
    return TransportType.tcp(f"127.0.0.1:{9000 + n}")


class _LeaseEvents:
    """Observer plugin recording lease-loss hook calls."""

    def __init__(self) -> None:
        self.calls: list[tuple[int, int | None, str]] = []

    @hookimpl
    def waypost_on_lease_lost(self, runtime: Any, old_instance_id: int, new_instance_id: int | None,
                              reason: str) -> None:
        self.calls.append((old_instance_id, new_instance_id, reason))


class BackendConformance:
    """Every test a waypost backend must pass. Provide a ``harness`` fixture."""

    @pytest.fixture
    def harness(self) -> Harness:
        raise NotImplementedError("override the `harness` fixture in your BackendConformance subclass")

    @pytest.fixture
    def backend(self, harness: Harness) -> Iterator[Harness]:
        yield harness
        harness.cleanup()

    @pytest.fixture
    def ns(self) -> str:
        """A namespace no other test uses, so one store serves the whole suite."""
        return f"conf-{uuid.uuid4().hex[:12]}"

    @staticmethod
    def require(harness: Harness, capability: Capability) -> None:
        if capability not in harness.capabilities:
            pytest.skip(f"backend declares no {capability.value!r} capability")

    @staticmethod
    def require_server(harness: Harness) -> Any:
        if harness.server is None:
            if Capability.CROSS_HOST in harness.capabilities:
                pytest.fail("a cross-host backend must give the suite its server's fault hooks")
            pytest.skip("backend declares no 'cross-host' capability: no server to fault")
        return harness.server

    # -- registration ---------------------------------------------------------------
    def test_register_list_unregister(self, backend: Harness, ns: str) -> None:
        rt = backend.connect()
        ep = rt.namespace(ns).component("backend").endpoint("generate")
        reg = ep.register(_tcp(1), device_type="cuda", request_plane_codec="msgpack")
        [listed] = ep.list_instances()
        assert listed == reg.instance
        assert listed.instance_id == rt.instance_id != 0
        assert listed.device_type == waypost.DeviceType.CUDA
        reg.unregister()
        assert ep.list_instances() == []
        assert not reg.active

    def test_list_is_sorted_and_scoped_by_query_level(self, backend: Harness, ns: str) -> None:
        rts = [backend.connect() for _ in range(3)]
        for rt in rts:
            for comp, ep in (("a", "x"), ("a", "y"), ("b", "x")):
                rt.namespace(ns).component(comp).endpoint(ep).register(_tcp(1))
        observer = rts[0]
        everything = observer.list_instances(Query.namespace(ns))
        assert len(everything) == 9
        assert everything == sorted(everything, key=str)
        assert len(observer.list_instances(Query.component(ns, "a"))) == 6
        assert len(observer.list_instances(Query.endpoint(ns, "a", "y"))) == 3
        assert {i.instance_id for i in everything} == {rt.instance_id for rt in rts}

    def test_prefixes_match_on_segment_boundaries(self, backend: Harness, ns: str) -> None:
        rt = backend.connect()
        for namespace, comp, ep in ((ns, "comp", "ep"), (f"{ns}-a", "comp", "ep"),
                                    (ns, "comp2", "ep"), (ns, "comp", "ep2")):
            rt.namespace(namespace).component(comp).endpoint(ep).register(_tcp(1))
        assert len(rt.list_instances(Query.namespace(ns))) == 3
        assert len(rt.list_instances(Query.component(ns, "comp"))) == 2
        assert len(rt.list_instances(Query.endpoint(ns, "comp", "ep"))) == 1
        with rt.watch(Query.component(ns, "comp")) as watch:
            assert {str(i.endpoint) for i in watch.instances} == {"ep", "ep2"}

    def test_register_is_create_only_across_runtimes(self, backend: Harness, ns: str) -> None:
        first, second = backend.connect(), backend.connect()
        reg = first.namespace(ns).component("c").endpoint("e").register(_tcp(1))
        key = reg.instance.key
        with pytest.raises(waypost.AlreadyRegistered):
            second.backend.create(second.lease, key, reg.instance.to_json())
        [listed] = first.list_instances(Query.namespace(ns))
        assert listed == reg.instance  # nothing overwritten

    def test_chosen_instance_id_is_exclusive(self, backend: Harness, ns: str) -> None:
        self.require(backend, Capability.CHOSEN_INSTANCE_ID)
        chosen = random_instance_id()
        first = backend.connect(instance_id=chosen)
        assert first.instance_id == chosen
        first.namespace(ns).component("c").endpoint("e").register(_tcp(1))

        def second_runtime_registers() -> None:
            # The clash may surface when the lease is granted or at the first registration.
            second = backend.connect(instance_id=chosen)
            second.namespace(ns).component("c").endpoint("e").register(_tcp(2))

        with pytest.raises(waypost.AlreadyRegistered):
            second_runtime_registers()
        assert [i.transport for i in first.list_instances(Query.namespace(ns))] == [_tcp(1)]

    def test_a_lost_lease_never_touches_the_new_holder_of_its_id(self, backend: Harness, ns: str) -> None:
        """A loses its lease; B is granted the same id and registers the same key.

        A's late calls (unregister, keepalive, update, close) must leave B's registration alone.
        """
        self.require(backend, Capability.CHOSEN_INSTANCE_ID)
        a, b = backend.connect().backend, backend.connect().backend
        chosen = random_instance_id()
        long_ttl = max(backend.ttl * 30, 30.0)  # nothing may expire on its own during the test
        lease_a = a.grant_lease(long_ttl, preferred_id=chosen)
        key = waypost.Instance(ns, "c", "e", chosen, _tcp(1)).key
        a.create(lease_a, key, b"from a")
        b.revoke_lease(chosen)  # A's lease is gone, as if expired; A does not know yet
        lease_b = b.grant_lease(long_ttl, preferred_id=chosen)
        b.create(lease_b, key, b"from b")
        a.delete(lease_a, key)  # A's late unregister
        assert b.list(f"v1/instances/{ns}/") == [(key, b"from b")]
        with pytest.raises(waypost.LeaseLost):
            a.keep_alive(lease_a)
        with pytest.raises(waypost.LeaseLost):
            a.replace(lease_a, key, b"from a again")
        a.revoke_lease(chosen)  # A closing
        assert b.list(f"v1/instances/{ns}/") == [(key, b"from b")]
        b.keep_alive(lease_b)
        b.revoke_lease(chosen)
        assert b.list(f"v1/instances/{ns}/") == []

    def test_reregister_in_same_runtime_updates(self, backend: Harness, ns: str) -> None:
        rt = backend.connect()
        ep = rt.namespace(ns).component("c").endpoint("e")
        first = ep.register(_tcp(1))
        second = ep.register(_tcp(2), metadata={"v": 2})
        assert first is second
        [listed] = ep.list_instances()
        assert listed.transport == _tcp(2)
        assert listed.metadata == {"v": 2}

    def test_all_fields_and_metadata_round_trip(self, backend: Harness, ns: str) -> None:
        rt = backend.connect()
        metadata = {"model": "llama", "nested": {"n": [1, 2.5, None, True]}, "unicode": "héllo ✓"}
        transports = [TransportType.tcp("10.0.0.5:9000/x/y"), TransportType.http("http://h:8/p?q=1"),
                      TransportType.nats_tcp("ns_comp.ep-1")]
        for n, transport in enumerate(transports):
            rt.namespace(ns).component("c").endpoint(f"e{n}").register(
                transport, device_type="cpu", request_plane_codec="json", metadata=metadata)
        listed = rt.list_instances(Query.namespace(ns))
        assert [i.transport for i in listed] == transports
        assert all(i.metadata == metadata and i.request_plane_codec == "json" for i in listed)

    def test_instance_id_is_shared_by_a_runtimes_endpoints(self, backend: Harness, ns: str) -> None:
        rt = backend.connect()
        regs = [rt.namespace(ns).component("c").endpoint(f"e{n}").register(_tcp(n)) for n in range(3)]
        assert {r.instance.instance_id for r in regs} == {rt.instance_id}

    # -- liveness ---------------------------------------------------------------------
    def test_graceful_close_removes_registrations_at_once(self, backend: Harness, ns: str) -> None:
        observer, rt = backend.connect(), backend.connect()
        for n in range(3):
            rt.namespace(ns).component("c").endpoint(f"e{n}").register(_tcp(n))
        with observer.watch(Query.namespace(ns)) as watch:
            assert len(watch.instances) == 3
            rt.close()
            assert observer.list_instances(Query.namespace(ns)) == []
            wait_until(lambda: watch.instances == [], GRACE, what="watch sees the close")

    def test_unregister_removes_at_once(self, backend: Harness, ns: str) -> None:
        observer, rt = backend.connect(), backend.connect()
        reg = rt.namespace(ns).component("c").endpoint("e").register(_tcp(1))
        with observer.watch(Query.namespace(ns)) as watch:
            reg.unregister()
            assert observer.list_instances(Query.namespace(ns)) == []
            event = watch.wait_for(lambda e: isinstance(e, Removed), GRACE)
            assert event is not None and event.instance.instance_id == rt.instance_id  # type: ignore[union-attr]

    def test_crashed_runtime_disappears_within_ttl_and_bound(self, backend: Harness, ns: str) -> None:
        observer, rt = backend.connect(), backend.connect()
        rt.namespace(ns).component("c").endpoint("e").register(_tcp(1))
        with observer.watch(Query.namespace(ns)) as watch:
            assert len(watch.instances) == 1
            crashed_at = time.monotonic()
            faults.crash(rt)
            event = watch.wait_for(lambda e: isinstance(e, Removed), backend.ttl + backend.expiry_bound + GRACE)
            assert event is not None, "a crashed Runtime's registration outlived ttl + expiry_bound"
            # The last keepalive was at most ttl/3 before the crash: expiring sooner than
            # ttl/2 after it would also reap live Runtimes that are merely slow.
            assert time.monotonic() - crashed_at >= backend.ttl / 2, "expired before its ttl"
        assert observer.list_instances(Query.namespace(ns)) == []

    def test_crash_expires_with_no_other_runtime_alive(self, backend: Harness, ns: str) -> None:
        self.require(backend, Capability.SERVER_EXPIRY)
        rt = backend.connect()
        rt.namespace(ns).component("c").endpoint("e").register(_tcp(1))
        faults.crash(rt)
        # The fault itself: nobody is connected for ttl + bound, so only the store can expire it.
        time.sleep(backend.ttl + backend.expiry_bound + GRACE)
        observer = backend.connect()
        assert observer.list_instances(Query.namespace(ns)) == []

    def test_killed_process_disappears_within_ttl_and_bound(self, backend: Harness, ns: str) -> None:
        self.require(backend, Capability.CROSS_PROCESS)
        observer = backend.connect()
        with observer.watch(Query.namespace(ns)) as watch:
            worker = backend.spawn_worker([f"{ns}/c/e1", f"{ns}/c/e2"])
            wait_until(lambda: len(watch.instances) == 2, 5.0, what="worker's registrations seen")
            assert {i.instance_id for i in watch.instances} == {worker.instance_id}
            killed_at = time.monotonic()
            worker.process.send_signal(signal.SIGKILL)
            wait_until(lambda: watch.instances == [], backend.ttl + backend.expiry_bound + GRACE,
                       what="killed worker's registrations removed")
            assert time.monotonic() - killed_at <= backend.ttl + backend.expiry_bound + GRACE

    def test_stopped_process_disappears_at_once(self, backend: Harness, ns: str) -> None:
        self.require(backend, Capability.CROSS_PROCESS)
        observer = backend.connect()
        worker = backend.spawn_worker([f"{ns}/c/e"])
        assert len(observer.list_instances(Query.namespace(ns))) == 1
        worker.stop()
        assert observer.list_instances(Query.namespace(ns)) == []

    def test_keepalive_holds_registration_for_three_ttls(self, backend: Harness, ns: str) -> None:
        observer, rt = backend.connect(), backend.connect()
        reg = rt.namespace(ns).component("c").endpoint("e").register(_tcp(1))
        with observer.watch(Query.namespace(ns)) as watch:
            removed = watch.wait_for(lambda e: isinstance(e, Removed), backend.ttl * 3.5)
            assert removed is None, f"a live Runtime's registration was removed: {removed}"
        assert observer.list_instances(Query.namespace(ns)) == [reg.instance]

    def test_many_endpoints_share_one_keepalive(self, backend: Harness, ns: str) -> None:
        rt = backend.connect()
        for n in range(20):
            rt.namespace(ns).component("c").endpoint(f"e{n}").register(_tcp(n))
        calls: dict[str, int] = {}
        for method in ("keep_alive", "create", "replace", "grant_lease"):
            original = getattr(rt.backend, method)

            def counted(*args: Any, _name: str = method, _original: Any = original) -> Any:
                calls[_name] = calls.get(_name, 0) + 1
                return _original(*args)

            setattr(rt.backend, method, counted)  # instruments the real backend; the store is untouched
        wait_until(lambda: calls.get("keep_alive", 0) >= 3, backend.ttl * 2 + GRACE,
                   what="three keepalives")
        seen = dict(calls)  # keepalives come ttl/3 apart: polling sees the third before a fourth
        assert set(seen) == {"keep_alive"} and seen["keep_alive"] <= 4, (
            f"keeping 20 endpoints alive took per-endpoint store calls: {seen}")

    # -- lease loss --------------------------------------------------------------------
    def test_revoked_lease_reregisters_without_phantoms(self, backend: Harness, ns: str) -> None:
        events = _LeaseEvents()
        waypost.register_plugin(events)
        try:
            observer, rt = backend.connect(), backend.connect()
            comp = rt.namespace(ns).component("c")
            comp.endpoint("kept").register(_tcp(1))
            comp.endpoint("dropped").register(_tcp(2)).unregister()
            old_id = rt.instance_id
            with observer.watch(Query.namespace(ns)) as watch:
                observer.backend.revoke_lease(old_id)
                wait_until(lambda: events.calls, backend.ttl + GRACE * 2, what="lease-lost hook")
                [(old, new, _)] = events.calls
                assert old == old_id and new == rt.instance_id
                expected = [i.endpoint for i in observer.list_instances(Query.namespace(ns))]
                assert expected == ["kept"]
                wait_until(lambda: [i.instance_id for i in watch.instances] == [rt.instance_id], GRACE * 2,
                           what="watch converges on the re-registration")
                assert all(i.endpoint != "dropped" for e in _drain(watch) if isinstance(e, Added)
                           for i in [e.instance])
        finally:
            waypost.core.plugin_manager().unregister(events)

    def test_lease_expired_while_paused_reregisters(self, backend: Harness, ns: str) -> None:
        observer, rt = backend.connect(), backend.connect()
        rt.namespace(ns).component("c").endpoint("e").register(_tcp(1))
        with observer.watch(Query.namespace(ns)) as watch:
            faults.pause_keepalive(rt, backend.ttl * 2 + backend.expiry_bound)
            assert watch.wait_for(lambda e: isinstance(e, Removed),
                                  backend.ttl * 2 + backend.expiry_bound + GRACE) is not None
            wait_until(lambda: [i.instance_id for i in watch.instances] == [rt.instance_id],
                       backend.ttl * 2 + backend.expiry_bound + GRACE * 2, what="re-registration after pause")
        assert [i.endpoint for i in observer.list_instances(Query.namespace(ns))] == ["e"]

    def test_lease_loss_can_shut_the_runtime_down(self, backend: Harness, ns: str) -> None:
        observer = backend.connect()
        rt = backend.connect(on_lease_lost="shutdown")
        rt.namespace(ns).component("c").endpoint("e").register(_tcp(1))
        observer.backend.revoke_lease(rt.instance_id)
        wait_until(lambda: rt.closed, backend.ttl + GRACE * 2, what="Runtime shut down after lease loss")
        with pytest.raises(waypost.Closed):
            rt.namespace(ns).component("c").endpoint("e").register(_tcp(1))
        assert observer.list_instances(Query.namespace(ns)) == []

    # -- watch ---------------------------------------------------------------------------
    def test_watch_gives_snapshot_then_ordered_events(self, backend: Harness, ns: str) -> None:
        rt = backend.connect()
        comp = rt.namespace(ns).component("c")
        comp.endpoint("a").register(_tcp(1))
        with rt.watch(Query.namespace(ns)) as watch:
            first = watch.get(timeout=GRACE)
            assert isinstance(first, Added) and first.instance.endpoint == "a"
            reg_b = comp.endpoint("b").register(_tcp(2))
            comp.endpoint("a").register(_tcp(3))
            reg_b.unregister()
            got = [watch.get(timeout=GRACE * 4) for _ in range(3)]
            assert [(type(e).__name__, e.instance.endpoint) for e in got] == [  # type: ignore[union-attr]
                ("Added", "b"), ("Added", "a"), ("Removed", "b")]
            assert got[1].instance.transport == _tcp(3)  # type: ignore[union-attr]

    def test_watch_is_gap_free_under_concurrent_writes(self, backend: Harness, ns: str) -> None:
        writers = [backend.connect() for _ in range(3)]
        observer = backend.connect()
        stop = threading.Event()

        def churn(rt: waypost.Runtime, seed: int) -> None:
            n = 0
            while not stop.is_set() and n < 60:
                reg = rt.namespace(ns).component("c").endpoint(f"e{seed}-{n % 7}").register(_tcp(n))
                if n % 3 == 0:
                    reg.unregister()
                n += 1

        threads = [threading.Thread(target=churn, args=(rt, i)) for i, rt in enumerate(writers)]
        for t in threads:
            t.start()
        try:
            with observer.watch(Query.namespace(ns)) as watch:
                for t in threads:
                    t.join(timeout=60)
                state: dict[str, waypost.Instance] = {}
                expected = {i.key: i for i in observer.list_instances(Query.namespace(ns))}

                def replay() -> bool:
                    for event in _drain(watch):
                        if isinstance(event, Added):
                            state[event.instance.key] = event.instance
                        elif isinstance(event, Removed):
                            state.pop(event.instance.key, None)
                    return state == expected

                wait_until(replay, GRACE * 6, what="events replay to the final listing")
        finally:
            stop.set()

    def test_closing_a_watch_releases_its_threads(self, backend: Harness, ns: str) -> None:
        rt = backend.connect()
        baseline = threading.active_count()
        watches = [rt.watch(Query.namespace(ns)) for _ in range(5)]
        clients = [rt.namespace(ns).component("c").endpoint("e").client() for _ in range(2)]
        for watch in watches:
            watch.close()
        for client in clients:
            client.close()
        wait_until(lambda: threading.active_count() <= baseline, 5.0, what="watch threads released")
        with pytest.raises(waypost.Closed):
            watches[0].get(timeout=0)

    def test_client_follows_instances_and_picks(self, backend: Harness, ns: str) -> None:
        caller = backend.connect()
        servers = [backend.connect() for _ in range(3)]
        client = caller.namespace(ns).component("c").endpoint("e").client(down_period=60)
        with pytest.raises(waypost.NoInstances):
            client.wait_for_instances(timeout=0.05)
        for n, rt in enumerate(servers):
            rt.namespace(ns).component("c").endpoint("e").register(_tcp(n))
        client.wait_for_instances(timeout=5, count=3)
        ids = {rt.instance_id for rt in servers}
        assert {client.round_robin().instance_id for _ in range(3)} == ids
        client.report_instance_down(servers[0].instance_id)
        assert servers[0].instance_id not in {client.random().instance_id for _ in range(20)}
        assert client.direct(servers[1].instance_id).instance_id == servers[1].instance_id
        servers[1].close()
        wait_until(lambda: len(client.instances()) == 2, 5.0, what="client drops a closed server")
        client.close()

    # -- Dynamo's other record kinds: model cards, event channels, event sources ------------------
    def test_model_cards_register_list_and_unregister(self, backend: Harness, ns: str) -> None:
        rt, other = backend.connect(), backend.connect()
        ep = rt.namespace(ns).component("c").endpoint("e")
        instance = ep.register(_tcp(1))
        base = ep.register_model(_CARD)
        lora = ep.register_model(_card("My-LoRA.v2"), lora="My-LoRA.v2")
        other.namespace(ns).component("d").endpoint("e").register_model(_CARD)
        hex_id = f"{rt.instance_id:x}"
        assert [m.key for m in rt.list_models(f"{ns}.c.e")] == [f"v1/mdc/{ns}/c/e/{hex_id}",
                                                                 f"v1/mdc/{ns}/c/e/{hex_id}/my-lora_v2"]
        assert rt.list_models(f"{ns}.c.e") == [base.model, lora.model]
        assert len(rt.list_models(Query.namespace(ns))) == 3 and rt.list_models(f"{ns}x") == []
        assert rt.list_instances(Query.namespace(ns)) == [instance.instance]  # the kinds never mix
        stored = backend.peek(base.model.key.encode())
        assert stored == base.model.to_json() and bytes(base.model.card_json) == _CARD_BYTES, (
            "a model card must be stored as Dynamo writes it, card_json byte for byte")
        assert (base.model.display_name, base.model.model_type, base.model.lora, lora.model.lora) == (
            "probe-model", "Chat", None, "my-lora_v2")
        again = ep.register_model(_CARD)  # the same slot again: an update, not a conflict
        assert again.model == base.model and len(rt.list_models(f"{ns}.c.e")) == 2
        lora.unregister()
        assert rt.list_models(f"{ns}.c.e") == [base.model]
        assert rt.list_instances(Query.namespace(ns)) == [instance.instance]  # a card's removal leaves the instance

    def test_watch_models_sees_added_updated_and_removed(self, backend: Harness, ns: str) -> None:
        rt = backend.connect()
        ep = rt.namespace(ns).component("c").endpoint("e")
        with rt.watch_models(Query.namespace(ns)) as models, rt.watch(Query.namespace(ns)) as instances:
            card = ep.register_model(_CARD)
            added = models.wait_for(lambda e: isinstance(e, Added), GRACE * 4)
            assert isinstance(added, Added) and added.instance == card.model
            card.update_taints(["zeta", "alpha"])
            updated = models.wait_for(lambda e: isinstance(e, waypost.Updated), GRACE * 4)
            assert isinstance(updated, waypost.Updated), "a taint update must reach watchers as Updated"
            assert (updated.previous.taints, updated.instance.taints) == ((), ("alpha", "zeta"))
            assert bytes(updated.instance.card_json) == _CARD_BYTES.replace(
                b'"runtime_config":{}', b'"runtime_config":{"taints":["alpha","zeta"]}')
            assert rt.list_models(Query.namespace(ns)) == [card.model] and card.model.taints == ("alpha", "zeta")
            card.unregister()
            removed = models.wait_for(lambda e: isinstance(e, Removed), GRACE * 4)
            assert isinstance(removed, Removed) and removed.instance.key == card.model.key
            assert instances.get(timeout=0) is None, "a watch of instances saw a model card"

    def test_model_cards_follow_the_lease(self, backend: Harness, ns: str) -> None:
        observer, rt = backend.connect(), backend.connect()
        ep = rt.namespace(ns).component("c").endpoint("e")
        ep.register(_tcp(1))
        card = ep.register_model(_CARD)
        card.update_taints(["t"])
        with observer.watch_models(Query.namespace(ns)) as watch:
            observer.backend.revoke_lease(rt.instance_id)
            wait_until(lambda: observer.list_models(Query.namespace(ns)) == [card.model],
                       backend.ttl + GRACE * 4, what="the card re-registered after the lease loss")
            assert card.model.taints == ("t",), "a re-registered card must keep its taints"
            rt.close()
            assert observer.list_models(Query.namespace(ns)) == [], "close() must remove the cards at once"
            wait_until(lambda: watch.instances == [], GRACE * 4, what="the watch sees the close")
        crashed = backend.connect()
        crashed.namespace(ns).component("c").endpoint("e").register_model(_CARD)
        with observer.watch_models(Query.namespace(ns)) as watch:
            assert len(watch.instances) == 1
            faults.crash(crashed)
            assert watch.wait_for(lambda e: isinstance(e, Removed), backend.ttl + backend.expiry_bound + GRACE), (
                "a crashed Runtime's model card outlived ttl + expiry_bound")

    def test_model_card_input_errors_are_config_errors(self, backend: Harness, ns: str) -> None:
        rt = backend.connect()
        ep = rt.namespace(ns).component("c").endpoint("e")
        for bad, fragment in (([1], "JSON object"), ("{nope", "not JSON"), ({"x": object()}, "not JSON data")):
            with pytest.raises(waypost.ConfigError, match=fragment):
                ep.register_model(bad)  # type: ignore[arg-type]
        with pytest.raises(waypost.ConfigError, match="LoRA name"):
            ep.register_model(_CARD, lora="")
        instance = ep.register(_tcp(1))
        with pytest.raises(waypost.ConfigError, match="only model cards have taints"):
            instance.update_taints(["x"])
        card = ep.register_model(_CARD)
        with pytest.raises(waypost.ConfigError, match="printable"):
            card.update_taints(["bad\n"])
        with pytest.raises(waypost.ConfigError, match=r"reserved prefix 'dynamo\.topology/'"):
            card.update_taints(["ok", "dynamo.topology/zone"])
        with pytest.raises(waypost.ConfigError, match="not one string"):
            card.update_taints("gpu")  # a str is an Iterable[str]: it would be the taints g, p, u
        assert [m.taints for m in rt.list_models(Query.namespace(ns))] == [()]

    def test_event_channels_and_sources_written_by_dynamo_are_read(self, backend: Harness, ns: str) -> None:
        rt = backend.connect()
        publisher = random_instance_id() >> 12  # Dynamo's publisher ids are below 2**53
        records = _event_records(ns, publisher)
        for key, value in records.items():
            backend.plant(key.encode(), value)
        [channel] = rt.list_event_channels(Query.namespace(ns))
        [source] = rt.list_event_sources(f"{ns}.c.e")
        assert (channel.topic, channel.address, channel.namespace, channel.endpoint) == (
            "kv-events", "tcp://127.0.0.1:36997", ns, "e")
        assert (source.publisher_id, source.topic) == (publisher, "kv-events")
        assert {channel.key: channel.to_json(), source.key: source.to_json()} == records, (
            "event records must re-encode byte for byte")
        assert rt.list_event_channels(f"{ns}.other") == []
        with rt.watch_event_channels(Query.namespace(ns)) as watch:
            assert watch.instances == [channel]
        assert rt.list_instances(Query.namespace(ns)) == [] and rt.list_models(Query.namespace(ns)) == []

    def test_hostile_model_cards_and_event_records_are_skipped(self, backend: Harness, ns: str,
                                                               caplog: pytest.LogCaptureFixture) -> None:
        rt = backend.connect()
        good = rt.namespace(ns).component("c").endpoint("good").register_model(_CARD)
        hex_id = f"{rt.instance_id:x}"
        card = _CARD_BYTES.decode()

        def model(endpoint: str, card_json: str = card, suffix: str = "", **extra: object) -> bytes:
            tail = f',"model_suffix":{json.dumps(suffix)}' if suffix else ""
            fields = "".join(f",{json.dumps(k)}:{json.dumps(v)}" for k, v in extra.items())
            return (f'{{"type":"Model","namespace":"{ns}","component":"c","endpoint":"{endpoint}",'
                    f'"instance_id":{rt.instance_id},"card_json":{card_json}{tail}{fields}}}').encode()

        base = f"v1/mdc/{ns}/c"
        hostile = {
            f"{base}/outofrange/{hex_id}": model("outofrange", '{"display_name":"m","x":1e400}'),
            f"{base}/array/{hex_id}": model("array", "[1,2]"),
            f"{base}/deep/{hex_id}": model("deep", '{"a":' * 2000 + "1" + "}" * 2000),
            f"{base}/notutf8/{hex_id}": model("notutf8", card).replace(b"probe-model", b"probe\xffmodel"),
            f"{base}/badsuffix/{hex_id}/Not Slug": model("badsuffix", suffix="Not Slug"),
            f"{base}/mismatch/{hex_id}/other": model("mismatch", suffix="lora"),
            f"{base}/endpoint/{hex_id}": waypost.Instance(ns, "c", "endpoint", rt.instance_id, _tcp(1)).to_json(),
        }
        for key, value in {**hostile, **_event_records(ns, 7, transport='{"kind":["Zmq"],"config":5}')}.items():
            backend.plant(key.encode(), value)
        with caplog.at_level(logging.DEBUG, logger="waypost"):
            assert rt.list_models(Query.namespace(ns)) == [good.model]
            with rt.watch_models(Query.namespace(ns)) as watch:
                assert watch.instances == [good.model]
            [channel] = rt.list_event_channels(Query.namespace(ns))
            assert (channel.transport_kind, channel.address) == (None, None)  # not strings: not guessed at
        warnings = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
        for key in hostile:
            expected = 0 if key.endswith(f"/endpoint/{hex_id}") else 1  # another record kind: quietly
            assert sum(key in w for w in warnings) == expected, (key, [w for w in warnings if key in w])

    def test_async_model_cards(self, backend: Harness, ns: str) -> None:
        url, options = backend.url, {"ttl": backend.ttl, **backend.options}

        async def main() -> None:
            async with waypost.aio.connect(url, **options) as rt, rt.watch_models(Query.namespace(ns)) as models:
                card = await rt.namespace(ns).component("c").endpoint("e").register_model(_CARD, lora="a")
                assert await rt.list_models(ns) == [card.model]
                assert isinstance(await models.wait_for(lambda e: isinstance(e, Added), GRACE * 4), Added)
                await card.update_taints({"x"})
                updated = await models.wait_for(lambda e: isinstance(e, waypost.Updated), GRACE * 4)
                assert isinstance(updated, waypost.Updated) and updated.instance.taints == ("x",)
                await card.unregister()
                assert await rt.list_models(ns) == []

        asyncio.run(main())

    # -- bad data and bad input -----------------------------------------------------------
    def test_corrupt_and_foreign_values_are_skipped(self, backend: Harness, ns: str) -> None:
        rt = backend.connect()
        good = rt.namespace(ns).component("c").endpoint("good").register(_tcp(1))
        base = f"v1/instances/{ns}/c"
        hex_id = f"{rt.instance_id:x}"
        junk = {
            f"{base}/garbage/{hex_id}": b"\x00not json\xff",
            f"{base}/model/{hex_id}": b'{"type":"Model","name":"llama"}',
            f"{base}/mismatch/{hex_id}": waypost.Instance(ns, "c", "other", rt.instance_id, _tcp(2)).to_json(),
            f"{base}/truncated/{hex_id}": good.instance.to_json()[:-5],
        }
        for key, value in junk.items():
            rt.backend.create(rt.lease, key, value)
        assert rt.list_instances(Query.namespace(ns)) == [good.instance]
        with rt.watch(Query.namespace(ns)) as watch:
            assert watch.instances == [good.instance]
            rt.backend.replace(rt.lease, f"{base}/garbage/{hex_id}", b"[1, 2")
            later = rt.namespace(ns).component("c").endpoint("later").register(_tcp(3))
            wait_until(lambda: later.instance in watch.instances, GRACE * 4, what="watch survives junk")

    # -- hostile store: what other writers, versions and users may leave --------------------------
    def test_hostile_values_are_skipped_with_one_warning_each(self, backend: Harness, ns: str,
                                                             caplog: pytest.LogCaptureFixture) -> None:
        rt = backend.connect()
        good = rt.namespace(ns).component("c").endpoint("good").register(_tcp(1))
        skipped = _Skips()
        waypost.register_plugin(skipped)
        try:
            hostile = _hostile_values(ns, rt.instance_id)
            for key, value in hostile.items():
                backend.plant(key.encode(), value)
            with caplog.at_level(logging.DEBUG, logger="waypost"):
                assert rt.list_instances(Query.namespace(ns)) == [good.instance]
                assert rt.list_instances(Query.namespace(ns)) == [good.instance]
                with rt.watch(Query.namespace(ns)) as watch:
                    assert watch.instances == [good.instance]
        finally:
            waypost.unregister_plugin(skipped)
        warnings = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
        for key in hostile:
            expected = 0 if "/foreign" in key else 1  # another record kind is skipped quietly
            assert sum(key in w for w in warnings) == expected, (key, [w for w in warnings if key in w])
            assert key in skipped.keys, f"no waypost_on_value_skipped for {key}"

    def test_a_live_watch_keeps_serving_through_hostile_writes(self, backend: Harness, ns: str) -> None:
        rt = backend.connect()
        first = rt.namespace(ns).component("c").endpoint("first").register(_tcp(1))
        with rt.watch(Query.namespace(ns)) as watch, rt.namespace(ns).component("c").endpoint("later").client() as c:
            for key, value in _hostile_values(ns, rt.instance_id).items():
                backend.plant(key.encode(), value)
            later = rt.namespace(ns).component("c").endpoint("later").register(_tcp(2))
            wait_until(lambda: sorted(watch.instances, key=str) == sorted([first.instance, later.instance], key=str),
                       GRACE * 6, what="the watch still serves the valid instances")
            c.wait_for_instances(timeout=GRACE * 6)
            assert rt.list_instances(Query.namespace(ns)) == sorted([first.instance, later.instance], key=str)

    def test_hostile_keys_are_skipped(self, backend: Harness, ns: str) -> None:
        rt = backend.connect()
        good = rt.namespace(ns).component("c").endpoint("good").register(_tcp(1))
        value = good.instance.to_json()
        hex_id = f"{rt.instance_id:x}"
        keys = [f"v1/instances/{ns}/c/good/{hex_id.upper()}X", f"v1/instances/{ns}/c/good/0{hex_id}",
                f"v1/instances/{ns}/c/good/{hex_id}/extra", f"v1/instances/{ns}/c/good/", f"v1/instances/{ns}/c/good",
                f"v1/instances/{ns}/c/good/{'f' * 40}", f"v1/instances/{ns}/C/good/{hex_id}"]
        raw_keys = [k.encode() for k in keys]
        if backend.raw_put is not None:  # keys only another writer can make: not UTF-8
            raw_keys += [f"v1/instances/{ns}/c/\xff".encode("latin-1") + f"/{hex_id}".encode(),
                         f"v1/instances/{ns}/".encode() + b"\xc3\x28/c/e/1"]
        for key in raw_keys:
            backend.plant(key, value)
        assert rt.list_instances(Query.namespace(ns)) == [good.instance]
        with rt.watch(Query.namespace(ns)) as watch:
            assert watch.instances == [good.instance]
            later = rt.namespace(ns).component("c").endpoint("later").register(_tcp(2))
            wait_until(lambda: later.instance in watch.instances, GRACE * 4, what="the watch still works")

    def test_nothing_outside_dynamos_buckets_is_touched(self, backend: Harness, ns: str) -> None:
        rt = backend.connect()
        stale = waypost.Instance(ns, "c", "e", random_instance_id(), _tcp(9)).to_json()
        outside = {f"v1/instancesX/{ns}/c/e/1".encode(): stale, f"v1/mdcX/{ns}/c/e/1".encode(): stale,
                   f"v1/other/{ns}/c/e/1".encode(): stale,
                   f"v1/instances-{ns}/c/e/1".encode(): stale, f"{ns}/v1/instances/{ns}/c/e/1".encode(): stale}
        for key, value in outside.items():
            backend.plant(key, value)
        reg = rt.namespace(ns).component("c").endpoint("e").register(_tcp(1))
        with rt.watch(Query.all()):
            assert reg.instance in rt.list_instances()
            reg.unregister()
        crashed = backend.connect()
        crashed.namespace(ns).component("c").endpoint("gone").register(_tcp(2))
        faults.crash(crashed)
        observer = backend.connect()
        wait_until(lambda: observer.list_instances(Query.namespace(ns)) == [],
                   backend.ttl + backend.expiry_bound + GRACE * 4, what="the crashed Runtime expired")
        observer.backend.revoke_lease(crashed.instance_id)
        rt.close()
        for key, value in outside.items():
            assert backend.peek(key) == value, f"{key!r} outside Dynamo's buckets was changed"

    def test_bad_input_is_a_clear_error_and_stores_nothing(self, backend: Harness, ns: str) -> None:
        rt = backend.connect()
        comp = rt.namespace(ns).component("c")
        with pytest.raises(ValueError, match=r"\[a-z0-9_-\]"):
            comp.endpoint("Bad Name")
        with pytest.raises(waypost.ConfigError, match="metadata"):
            comp.endpoint("e").register(_tcp(1), metadata={"x": object()})
        with pytest.raises(waypost.ConfigError, match="device_type"):
            comp.endpoint("e").register(_tcp(1), device_type="tpu")
        assert rt.list_instances(Query.namespace(ns)) == []
        with pytest.raises(waypost.ConfigError, match="no_such_option"):
            backend.connect(no_such_option=1)

    # -- unreachable store and server faults ------------------------------------------
    def test_unreachable_store_is_a_typed_error_in_bounded_time(self, backend: Harness) -> None:
        if backend.unreachable_url is None:
            if Capability.CROSS_HOST in backend.capabilities:
                pytest.fail("a cross-host backend must give the suite an unreachable_url")
            pytest.skip("backend declares no 'cross-host' capability: nothing to be unreachable")
        started = time.monotonic()
        with pytest.raises(waypost.BackendUnavailable) as caught:
            waypost.connect(backend.unreachable_url, **{"ttl": backend.ttl, **backend.options, "timeout": 1.0})
        assert time.monotonic() - started < 10
        assert caught.value.__cause__ is not None, "the client library's error is not chained as the cause"

    def test_server_restart_converges(self, backend: Harness, ns: str) -> None:
        server = self.require_server(backend)
        observer, rt = backend.connect(), backend.connect()
        rt.namespace(ns).component("c").endpoint("e").register(_tcp(1))
        first_id = rt.instance_id
        with observer.watch(Query.namespace(ns)) as watch:
            server.restart()
            bound = backend.interrupt_bound + backend.ttl * 2
            wait_until(lambda: _listed_ids(observer, ns) == [rt.instance_id], bound,
                       what="registration back after restart")
            wait_until(lambda: [i.instance_id for i in watch.instances] == [rt.instance_id], bound,
                       what="watch converges after restart")
        if Capability.CHOSEN_INSTANCE_ID in backend.capabilities:
            assert rt.instance_id == first_id, "the Runtime's instance id changed although the store lets it keep it"

    def test_server_paused_past_ttl_converges_without_phantoms(self, backend: Harness, ns: str) -> None:
        server = self.require_server(backend)
        observer, rt = backend.connect(), backend.connect()
        comp = rt.namespace(ns).component("c")
        comp.endpoint("kept").register(_tcp(1))
        dropped = comp.endpoint("dropped").register(_tcp(2))
        errors: list[BaseException] = []

        def unregister_during_outage() -> None:
            try:
                dropped.unregister()  # must not raise: a failed delete is retried in the background
            except BaseException as exc:
                errors.append(exc)

        with observer.watch(Query.namespace(ns)) as watch:
            server.pause()
            unregistering = threading.Thread(target=unregister_during_outage, daemon=True)
            try:
                time.sleep(backend.ttl * 2)  # the fault itself: the server stays paused past the ttl
                unregistering.start()
                wait_until(lambda: not dropped.active, 5.0, what="unregister forgets the endpoint at once")
            finally:
                server.resume()
            bound = backend.interrupt_bound + backend.ttl * 3
            unregistering.join(bound)
            assert not unregistering.is_alive() and errors == []
            wait_until(lambda: [i.endpoint for i in _safe_list(observer, ns)] == ["kept"], bound,
                       what="only the kept endpoint listed after pause")
            wait_until(lambda: [i.endpoint for i in watch.instances] == ["kept"], bound,
                       what="watch converges after pause")
            assert [i.instance_id for i in watch.instances] == [rt.instance_id]

    def test_silent_server_interrupts_watch_within_the_bound_and_fails_calls(self, backend: Harness,
                                                                             ns: str) -> None:
        """A paused server (partition, SIGSTOP) is reported within max(ttl, 1 s) + the bound, calls fail in time."""
        server = self.require_server(backend)
        if "timeout" not in {o.name for o in backend.backend_class.options}:
            pytest.fail("a backend with a server must bound its calls with a `timeout` option")
        writer, observer = backend.connect(), backend.connect(timeout=1.0)
        with observer.watch(Query.namespace(ns)) as watch:
            server.pause()
            try:
                paused_at = time.monotonic()
                bound = max(backend.ttl, 1.0) + backend.interrupt_bound
                assert watch.wait_for(lambda e: isinstance(e, waypost.Interrupted), bound + GRACE) is not None, (
                    f"a watch on a silent server stayed silent for {bound + GRACE:.1f} s")
                assert time.monotonic() - paused_at <= bound + GRACE
                started = time.monotonic()
                with pytest.raises(waypost.BackendUnavailable):
                    observer.list_instances(Query.namespace(ns))
                assert time.monotonic() - started < 1.0 * 2 + GRACE, "a call outlived its timeout"
            finally:
                server.resume()
            assert watch.wait_for(lambda e: isinstance(e, Resynced), backend.interrupt_bound + backend.ttl * 3)
            reg = writer.namespace(ns).component("c").endpoint("after").register(_tcp(1))
            wait_until(lambda: reg.instance in watch.instances, backend.ttl * 2 + GRACE, what="changes after")

    def test_dead_server_interrupts_watch_and_recovers(self, backend: Harness, ns: str) -> None:
        server = self.require_server(backend)
        observer, rt = backend.connect(), backend.connect()
        rt.namespace(ns).component("c").endpoint("e").register(_tcp(1))
        with observer.watch(Query.namespace(ns)) as watch:
            server.kill()
            interrupted = watch.wait_for(lambda e: isinstance(e, waypost.Interrupted), backend.interrupt_bound)
            assert interrupted is not None, "a watch on a dead server stayed silent"
            with pytest.raises(waypost.BackendUnavailable):
                observer.list_instances(Query.namespace(ns))
            server.restart()
            resynced = watch.wait_for(lambda e: isinstance(e, Resynced), backend.interrupt_bound * 2)
            assert resynced is not None
            wait_until(lambda: [i.instance_id for i in watch.instances] == [rt.instance_id],
                       backend.interrupt_bound + backend.ttl * 2, what="watch converges after restart")


    def test_closing_the_backend_closes_its_watches(self, backend: Harness, ns: str) -> None:
        store = backend.connect().backend
        baseline = threading.active_count()
        sink = _Sink()
        store.watch(f"v1/instances/{ns}/", sink)
        assert sink.calls[0][0] == "reset"
        store.close()
        wait_until(lambda: threading.active_count() <= baseline, 5.0, what="the watch's threads gone")
        with pytest.raises(waypost.Closed):
            store.list(f"v1/instances/{ns}/")
        calls = len(sink.calls)
        other = backend.connect()
        with other.watch(Query.namespace(ns)) as live:  # a change the closed watch would have seen
            reg = other.namespace(ns).component("c").endpoint("e").register(_tcp(1))
            wait_until(lambda: reg.instance in live.instances, GRACE * 4, what="a live watch sees the change")
        assert len(sink.calls) == calls, "a closed watch still called its sink"

    def test_closing_a_watch_is_prompt(self, backend: Harness, ns: str) -> None:
        rt = backend.connect()
        watch = rt.watch(Query.namespace(ns))
        started = time.monotonic()
        watch.close()
        assert time.monotonic() - started < 1.0, "closing an idle watch waited for the store"

    def test_closing_a_watch_is_prompt_even_on_a_paused_server(self, backend: Harness, ns: str) -> None:
        server = self.require_server(backend)
        observer = backend.connect()
        watch = observer.watch(Query.namespace(ns))
        server.pause()
        try:
            started = time.monotonic()
            watch.close()
            assert time.monotonic() - started < max(backend.ttl, 1.0) + 2.0, "closing a watch hung on the server"
        finally:
            server.resume()

    # -- options, URLs and installation ------------------------------------------------------
    def test_prefix_option_isolates_deployments(self, backend: Harness, ns: str) -> None:
        if "prefix" not in {o.name for o in backend.backend_class.options}:
            with pytest.raises(waypost.ConfigError, match="prefix"):  # not silently ignored
                backend.connect(prefix="tenant-a")
            return
        tag = uuid.uuid4().hex[:8]
        first, second = backend.prefixes or (f"{tag}-a", f"{tag}-b")
        a, also_a, b = (backend.connect(prefix=p) for p in (first, first, second))
        reg = a.namespace(ns).component("c").endpoint("e").register(_tcp(1))
        assert also_a.list_instances(Query.namespace(ns)) == [reg.instance]
        assert b.list_instances(Query.namespace(ns)) == []
        with b.watch(Query.namespace(ns)) as watch:
            b_reg = b.namespace(ns).component("c").endpoint("e").register(_tcp(2))  # same key, other deployment
            wait_until(lambda: watch.instances == [b_reg.instance], GRACE * 4, what="b sees only its own")
        assert also_a.list_instances(Query.namespace(ns)) == [reg.instance]

    def test_bad_urls_and_options_are_config_errors(self, backend: Harness) -> None:
        scheme = backend.url.partition("://")[0]
        cases = {f"{backend.url}{'&' if '?' in backend.url else '?'}no_such_option=1": "no_such_option",
                 **backend.bad_urls}
        for url, fragment in cases.items():
            with pytest.raises(waypost.ConfigError) as caught:
                waypost.connect(url, ttl=backend.ttl)
            assert fragment in str(caught.value), f"{url}: {caught.value}"
        for bad_ttl in (float("nan"), -1, "soon", backend.backend_class.min_ttl / 2):
            with pytest.raises(waypost.ConfigError, match="ttl"):
                waypost.connect(backend.url, **{**backend.options, "ttl": bad_ttl})
        assert scheme in backend.backend_class.schemes

    def test_missing_client_library_names_the_extra(self, backend: Harness) -> None:
        cls = backend.backend_class
        assert waypost.core.missing_requirements(cls) == [], "the suite runs where the backend is installed"
        if not cls.requires:
            return  # nothing to take away: the backend needs no client library
        code = (f"import sys\nfor m in {list(cls.requires)!r}: sys.modules[m] = None\n"
                "import waypost, json\n"
                "try:\n    waypost.connect(sys.argv[1], **json.loads(sys.argv[2]))\n"
                "except waypost.BackendNotInstalled as exc:\n    print(exc)\n")
        options = json.dumps({k: v for k, v in backend.options.items() if isinstance(v, str | int | float)})
        done = subprocess.run([sys.executable, "-c", code, backend.url, options], capture_output=True, text=True,
                              timeout=60, check=True)
        assert f"pip install '{cls.distribution}[{cls.extra}]'" in done.stdout, done.stdout + done.stderr

    # -- the asyncio API, on this backend ---------------------------------------------------------
    def test_async_api_registers_lists_watches_and_picks(self, backend: Harness, ns: str) -> None:
        url, options = backend.url, {"ttl": backend.ttl, **backend.options}

        async def main() -> None:
            async with waypost.aio.connect(url, **options) as rt, waypost.aio.connect(url, **options) as peer:
                ep = rt.namespace(ns).component("c").endpoint("e")
                async with rt.watch(Query.namespace(ns)) as events, ep.client() as client:
                    reg = await ep.register(_tcp(1), metadata={"n": 1})
                    assert await rt.list_instances(f"{ns}.c") == [reg.instance]
                    added = await events.wait_for(lambda e: isinstance(e, Added), GRACE * 4)
                    assert isinstance(added, Added) and added.instance == reg.instance
                    peer_reg = await peer.namespace(ns).component("c").endpoint("e").register(_tcp(2))
                    await client.wait_for_instances(timeout=5, count=2)
                    assert {client.round_robin().instance_id for _ in range(2)} == {rt.instance_id, peer.instance_id}
                    await peer_reg.unregister()
                    removed = await events.wait_for(lambda e: isinstance(e, Removed), GRACE * 4)
                    assert isinstance(removed, Removed) and removed.instance.instance_id == peer.instance_id
                    await reg.unregister()
                    assert await ep.list_instances() == []

        asyncio.run(main())

    def test_async_watch_reports_a_dead_server_and_recovers(self, backend: Harness, ns: str) -> None:
        server = self.require_server(backend)
        url, options = backend.url, {"ttl": backend.ttl, **backend.options}
        writer = backend.connect()
        writer.namespace(ns).component("c").endpoint("e").register(_tcp(1))

        async def main() -> None:
            async with waypost.aio.connect(url, **options) as rt, rt.watch(Query.namespace(ns)) as events:
                server.kill()
                try:
                    interrupted = await events.wait_for(lambda e: isinstance(e, waypost.Interrupted),
                                                        backend.interrupt_bound)
                    assert interrupted is not None, "an asyncio watch on a dead server stayed silent"
                finally:
                    server.restart()
                assert await events.wait_for(lambda e: isinstance(e, Resynced), backend.interrupt_bound * 2)

        asyncio.run(main())


def _card(name: str) -> dict[str, Any]:
    """A model deployment card as Dynamo 1.6 writes one (``card_json``), trimmed."""
    return {"display_name": name, "slug": name, "source_path": "/nonexistent/model", "model_info": None,
            "tokenizer": None, "context_length": 0, "kv_cache_block_size": 0, "migration_limit": 0,
            "model_type": "Chat", "model_input": "Text", "worker_type": "aggregated", "needs": [],
            "runtime_config": {}, "media_decoder": None, "media_fetcher": None}


_CARD = _card("probe-model")
_CARD_BYTES = json.dumps(_CARD, separators=(",", ":")).encode()


def _event_records(ns: str, publisher: int,
                   transport: str = '{"kind":"Zmq","config":{"endpoint":"tcp://127.0.0.1:36997"}}') -> dict[str, bytes]:
    """An event channel and an event source exactly as a Dynamo 1.6 KvEventPublisher writes them."""
    scope = f'{{"kind":"endpoint","endpoint":{{"namespace":"{ns}","component":"c","name":"e"}}}}'
    path = f"namespace/{ns}/component/c/endpoint/e/topic/kv-events/{publisher:x}"
    channel = (f'{{"type":"EventChannel","scope":{scope},"topic":"kv-events","instance_id":{publisher},'
               f'"transport":{transport}}}')
    source = (f'{{"type":"EventSource","scope":{scope},"topic":"kv-events","publisher_id":{publisher},'
              f'"metadata":{{"kv_state_endpoint":{{"namespace":"{ns}","component":"c","name":"e"}},'
              f'"worker":{{"worker_id":12345,"dp_rank":0}},"publisher_id":{publisher}}}}}')
    return {f"v1/event_channels/{path}": channel.encode(), f"v1/event_sources/{path}": source.encode()}


def _hostile_values(ns: str, instance_id: int) -> dict[str, bytes]:
    """Values other writers could leave under ``ns``: each key names an endpoint its value breaks."""
    hex_id = f"{instance_id:x}"
    deep = b'{"a":' * 1000 + b"1" + b"}" * 1000

    def value(endpoint: str, **fields: object) -> dict[str, object]:
        return {"type": "Endpoint", "component": "c", "endpoint": endpoint, "namespace": ns,
                "instance_id": instance_id, "transport": {"tcp": "h:1"}, **fields}

    def encoded(endpoint: str, **fields: object) -> bytes:
        return json.dumps(value(endpoint, **fields), separators=(",", ":")).encode()

    def with_raw(endpoint: str, field: str, raw: bytes) -> bytes:
        return encoded(endpoint)[:-1] + b',"' + field.encode() + b'":' + raw + b"}"

    hostile = {
        "deep": with_raw("deep", "metadata", deep),
        "deepunknown": with_raw("deepunknown", "future", deep),
        "surrogate": encoded("surrogate").replace(b'"h:1"', b'"h\\ud800"'),
        "surrogatemeta": with_raw("surrogatemeta", "metadata", b'{"k":"\\udc00"}'),
        "notutf8": encoded("notutf8").replace(b'"h:1"', b'"h\xff\xfe"'),
        "notutf8unknown": with_raw("notutf8unknown", "future", b'"\xc3\x28"'),
        "wrongtypes": encoded("wrongtypes", instance_id=str(instance_id), transport=["tcp", "h:1"]),
        "wrongenum": encoded("wrongenum", device_type=1, request_plane_codec="zip"),
        "mismatch": encoded("other"),
        "badid": encoded("badid", instance_id=instance_id + 1),
        "hugeid": encoded("hugeid").replace(str(instance_id).encode(), b"1" * 30),
        "huge": encoded("huge", metadata={"blob": "x" * 300_000}),
        "null": b"null", "array": b"[1,2]", "number": b"42", "empty": b"", "truncated": encoded("truncated")[:-9],
        "badname": encoded("badname", namespace=ns + "\n"),
        "foreign": json.dumps({"type": "Model", "namespace": ns, "component": "c", "endpoint": "foreign",
                               "instance_id": instance_id, "card_json": {}}).encode(),
    }
    return {f"v1/instances/{ns}/c/{name}/{hex_id}": data for name, data in hostile.items()}


class _Skips:
    """Observer plugin recording waypost_on_value_skipped."""

    def __init__(self) -> None:
        self.keys: set[str] = set()

    @hookimpl
    def waypost_on_value_skipped(self, key: str, reason: str) -> None:
        self.keys.add(key)


class _Sink:
    """A WatchSink that records every call (for the SPI-level tests)."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, Any]] = []

    def reset(self, items: Any, reason: str | None) -> None:
        self.calls.append(("reset", (list(items), reason)))

    def put(self, key: str, value: bytes) -> None:
        self.calls.append(("put", key))

    def delete(self, key: str) -> None:
        self.calls.append(("delete", key))

    def interrupted(self, reason: str) -> None:
        self.calls.append(("interrupted", reason))

    def resumed(self, reason: str) -> None:
        self.calls.append(("resumed", reason))

    def failed(self, error: BaseException) -> None:
        self.calls.append(("failed", error))


def _drain(watch: waypost.Watch[Any]) -> Iterator[waypost.Event]:
    while (event := watch.get(timeout=0)) is not None:
        yield event


def _listed_ids(rt: waypost.Runtime, ns: str) -> list[int]:
    return [i.instance_id for i in _safe_list(rt, ns)]


def _safe_list(rt: waypost.Runtime, ns: str) -> list[waypost.Instance]:
    try:
        return rt.list_instances(Query.namespace(ns))
    except waypost.BackendUnavailable:
        return []
