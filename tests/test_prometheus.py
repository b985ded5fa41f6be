"""waypost.contrib.prometheus: counters driven by the real Runtime and memory backend."""

from __future__ import annotations

import asyncio
import importlib
import sys
import time
import uuid
from collections.abc import Callable, Iterator

import prometheus_client
import pytest
from prometheus_client import CollectorRegistry

import waypost
from waypost.contrib import prometheus as wp_metrics
from waypost.core._plugins import plugin_manager
from waypost.core._watch import InstanceView

TCP = waypost.TransportType.tcp
DEADLINE = 5.0


@pytest.fixture
def url() -> str:
    return f"memory://prom-{uuid.uuid4().hex[:10]}"


@pytest.fixture
def registry() -> Iterator[CollectorRegistry]:
    registry = CollectorRegistry()
    yield registry
    wp_metrics.uninstall()


@pytest.fixture
def metrics(registry: CollectorRegistry) -> wp_metrics.WaypostMetrics:
    return wp_metrics.install(registry)


@pytest.fixture
def observer(url: str) -> Iterator[waypost.Runtime]:
    with waypost.connect(url) as rt:
        yield rt


def sample(registry: CollectorRegistry, name: str, **labels: str) -> float:
    value = registry.get_sample_value(name, labels)
    return 0.0 if value is None else value


def wait_until(predicate: Callable[[], bool], what: str, timeout: float = DEADLINE) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"{what} not reached within {timeout} s"
        time.sleep(0.005)


EP = {"namespace": "ns", "component": "comp", "endpoint": "gen"}


def test_registrations_and_unregistrations_are_counted(
    url: str, registry: CollectorRegistry, metrics: wp_metrics.WaypostMetrics
) -> None:
    with waypost.connect(url) as rt:
        ep = rt.namespace("ns").component("comp").endpoint("gen")
        reg = ep.register(TCP("h:1"))
        assert sample(registry, "waypost_registrations_total", **EP) == 1
        ep.register(TCP("h:2"))  # an update writes the store too
        assert sample(registry, "waypost_registrations_total", **EP) == 2
        reg.unregister()
        assert sample(registry, "waypost_unregistrations_total", **EP) == 1
        reg.unregister()  # nothing removed: nothing counted
        assert sample(registry, "waypost_unregistrations_total", **EP) == 1
        rt.namespace("ns").component("comp").endpoint("aux").register(TCP("h:3"))
    # closing the Runtime removed "aux"
    assert sample(registry, "waypost_unregistrations_total", namespace="ns", component="comp", endpoint="aux") == 1
    assert sample(registry, "waypost_registrations_total", namespace="ns", component="comp", endpoint="aux") == 1


def test_the_asyncio_facade_moves_the_same_counters(
    url: str, registry: CollectorRegistry, metrics: wp_metrics.WaypostMetrics
) -> None:
    async def main() -> None:
        async with waypost.aio.connect(url) as rt:
            reg = await rt.namespace("ns").component("comp").endpoint("gen").register(TCP("h:1"))
            await reg.unregister()

    asyncio.run(main())
    assert sample(registry, "waypost_registrations_total", **EP) == 1
    assert sample(registry, "waypost_unregistrations_total", **EP) == 1


def test_lease_loss_is_counted(url: str, registry: CollectorRegistry, metrics: wp_metrics.WaypostMetrics,
                               observer: waypost.Runtime) -> None:
    labels = {"backend": "memory", "outcome": "reregistered"}
    with waypost.connect(url, ttl=0.3) as rt:
        rt.namespace("ns").component("comp").endpoint("gen").register(TCP("h:1"))
        observer.backend.revoke_lease(rt.instance_id)
        wait_until(lambda: sample(registry, "waypost_lease_lost_total", **labels) == 1, "the lease-lost hook")
        # it re-registered under a live lease (not counted as a new registration)
        wait_until(lambda: len(observer.list_instances()) == 1, "the re-registration")
        assert sample(registry, "waypost_registrations_total", **EP) == 1


def test_lease_loss_with_shutdown_is_counted_as_shutdown(
    url: str, registry: CollectorRegistry, metrics: wp_metrics.WaypostMetrics, observer: waypost.Runtime
) -> None:
    rt = waypost.connect(url, ttl=0.3, on_lease_lost="shutdown")
    try:
        rt.namespace("ns").component("comp").endpoint("gen").register(TCP("h:1"))
        observer.backend.revoke_lease(rt.instance_id)
        wait_until(lambda: sample(registry, "waypost_lease_lost_total", backend="memory", outcome="shutdown") == 1,
                   "the lease-lost hook")
        wait_until(lambda: rt.closed, "the Runtime shutting down")
        assert sample(registry, "waypost_lease_lost_total", backend="memory", outcome="reregistered") == 0
    finally:
        rt.close()


def test_watch_resyncs_and_interruptions_are_counted_by_query(
    registry: CollectorRegistry, metrics: wp_metrics.WaypostMetrics
) -> None:
    # The core's watch sink, driven as a backend drives it after a reconnect.
    view = InstanceView(waypost.Query.component("ns", "comp"), lambda events: None)
    view.reset([], None)  # the first snapshot is not a resync
    labels = {"namespace": "ns", "component": "comp", "endpoint": ""}
    assert sample(registry, "waypost_watch_resyncs_total", **labels) == 0
    view.interrupted("connection refused")
    view.interrupted("connection refused")  # reported once per outage
    assert sample(registry, "waypost_watch_interruptions_total", **labels) == 1
    view.reset([], "reconnected")
    assert sample(registry, "waypost_watch_resyncs_total", **labels) == 1

    everything = InstanceView(waypost.Query.all(), lambda events: None)
    everything.reset([], "history compacted")
    assert sample(registry, "waypost_watch_resyncs_total", namespace="", component="", endpoint="") == 1


def test_skipped_values_are_counted_with_bounded_labels(
    url: str, registry: CollectorRegistry, metrics: wp_metrics.WaypostMetrics, observer: waypost.Runtime
) -> None:
    good_key = f"v1/instances/ns/comp/gen/{observer.instance_id:x}"
    bad_key = "v1/instances/ns/comp/gen/not-hex"
    observer.backend.create(observer.lease, good_key, b"not json")
    observer.backend.create(observer.lease, bad_key, b"{}")
    with waypost.connect(url) as rt:
        assert rt.list_instances() == []
    assert sample(registry, "waypost_values_skipped_total", **EP) == 1
    assert sample(registry, "waypost_values_skipped_total", namespace="", component="", endpoint="") == 1


def test_exposition_has_the_documented_names_and_no_instance_ids(
    url: str, registry: CollectorRegistry, metrics: wp_metrics.WaypostMetrics
) -> None:
    with waypost.connect(url) as rt:
        rt.namespace("ns").component("comp").endpoint("gen").register(TCP("h:1"))
        instance_id = rt.instance_id
    text = prometheus_client.generate_latest(registry).decode()
    for name in ("registrations", "unregistrations", "lease_lost", "watch_resyncs", "watch_interruptions",
                 "values_skipped"):
        assert f"# TYPE waypost_{name}_total counter" in text or f"# TYPE waypost_{name} counter" in text
    assert 'waypost_registrations_total{component="comp",endpoint="gen",namespace="ns"} 1.0' in text
    assert str(instance_id) not in text
    assert f"{instance_id:x}" not in text


def test_install_is_idempotent_and_uninstall_stops_counting(url: str, registry: CollectorRegistry) -> None:
    metrics = wp_metrics.install(registry)
    assert wp_metrics.install(registry) is metrics
    assert plugin_manager().is_registered(metrics)
    other_registry = CollectorRegistry()
    other = wp_metrics.install(other_registry)
    assert other is not metrics

    with waypost.connect(url) as rt:
        ep = rt.namespace("ns").component("comp").endpoint("gen")
        ep.register(TCP("h:1"))
        assert sample(registry, "waypost_registrations_total", **EP) == 1
        assert sample(other_registry, "waypost_registrations_total", **EP) == 1

        wp_metrics.uninstall(metrics)
        wp_metrics.uninstall(metrics)  # harmless
        assert not plugin_manager().is_registered(metrics)
        assert registry.get_sample_value("waypost_registrations_total", EP) is None  # series dropped
        ep.register(TCP("h:2"))
        assert sample(other_registry, "waypost_registrations_total", **EP) == 2

        # installing again starts fresh counters on the same registry
        again = wp_metrics.install(registry)
        assert again is not metrics
        ep.register(TCP("h:3"))
        assert sample(registry, "waypost_registrations_total", **EP) == 1

    wp_metrics.uninstall()  # every installed plugin
    assert not plugin_manager().is_registered(other)
    assert not plugin_manager().is_registered(again)


def test_install_defaults_to_the_global_registry(url: str) -> None:
    metrics = wp_metrics.install()
    try:
        assert metrics.registry is prometheus_client.REGISTRY
        before = sample(prometheus_client.REGISTRY, "waypost_registrations_total", **EP)
        with waypost.connect(url) as rt:
            rt.namespace("ns").component("comp").endpoint("gen").register(TCP("h:1"))
        assert sample(prometheus_client.REGISTRY, "waypost_registrations_total", **EP) == before + 1
    finally:
        wp_metrics.uninstall(metrics)
    assert prometheus_client.REGISTRY.get_sample_value("waypost_registrations_total", EP) is None


def test_a_hand_registered_plugin_works_too(url: str, registry: CollectorRegistry) -> None:
    metrics = wp_metrics.WaypostMetrics(registry)
    waypost.register_plugin(metrics)
    try:
        with waypost.connect(url) as rt:
            rt.namespace("ns").component("comp").endpoint("gen").register(TCP("h:1"))
        assert sample(registry, "waypost_registrations_total", **EP) == 1
    finally:
        plugin_manager().unregister(metrics)


def test_missing_prometheus_client_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "prometheus_client", None)  # as if not installed
    monkeypatch.delitem(sys.modules, "waypost.contrib.prometheus")
    with pytest.raises(ImportError, match=r"pip install 'waypost\[prometheus\]'"):
        importlib.import_module("waypost.contrib.prometheus")
