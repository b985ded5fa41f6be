"""Prometheus metrics for waypost: an observer plugin over the ``waypost_on_*`` hooks.

Needs the ``prometheus`` extra (``pip install 'waypost[prometheus]'``)::

    import prometheus_client
    from waypost.contrib import prometheus as waypost_metrics

    metrics = waypost_metrics.install()          # counts into prometheus_client.REGISTRY
    prometheus_client.start_http_server(9100)    # or however the process exposes metrics
    ...
    waypost_metrics.uninstall(metrics)           # stop counting, drop the series

``install(registry)`` counts into another :class:`prometheus_client.CollectorRegistry`
(installing twice on one registry returns the plugin already installed).
The plugin class, :class:`WaypostMetrics`, may also be registered by hand with
:func:`waypost.register_plugin`.

Metrics (all counters; labels are bounded: names of namespaces, components and
endpoints, never instance ids, keys or free-text reasons):

``waypost_registrations_total{namespace, component, endpoint}``
    ``register()`` calls that wrote the store (new registrations and updates;
    the silent re-registration after a lease loss is counted by
    ``waypost_lease_lost_total`` instead).
``waypost_unregistrations_total{namespace, component, endpoint}``
    removals, by ``unregister()`` or by closing the Runtime.
``waypost_lease_lost_total{backend, outcome}``
    lost leases; ``backend`` is the URL scheme, ``outcome`` is
    ``reregistered`` or ``shutdown`` (``on_lease_lost="shutdown"``).
``waypost_watch_resyncs_total{namespace, component, endpoint}``
    watch re-lists after lost history or a reconnect; the labels are the
    watched query's levels (``""`` for a level the query leaves open).
``waypost_watch_interruptions_total{namespace, component, endpoint}``
    watches that lost their store (they retry, then resync); labels as above.
``waypost_values_skipped_total{namespace, component, endpoint}``
    stored values that did not decode; labels from the key when it is a well
    formed instance key, else ``""``.

Hooks run on waypost's threads; incrementing a counter is thread-safe and fast.
"""

from __future__ import annotations

import contextlib
import threading
from typing import TYPE_CHECKING

try:
    import prometheus_client
    from prometheus_client import CollectorRegistry, Counter
except ImportError as exc:
    raise ImportError(
        "waypost.contrib.prometheus needs the prometheus-client package: pip install 'waypost[prometheus]'",
        name=__name__,
    ) from exc

from waypost import CodecError, EndpointId, InvalidName, hookimpl, register_plugin, unregister_plugin
from waypost.core import parse_instance_key, plugin_manager

if TYPE_CHECKING:
    from waypost import Instance, Query, Runtime

__all__ = ["WaypostMetrics", "install", "uninstall"]

_ENDPOINT_LABELS = ("namespace", "component", "endpoint")


class WaypostMetrics:
    """The observer plugin: owns the counters and increments them from waypost's hooks.

    :param registry: where the counters are registered (default
        :data:`prometheus_client.REGISTRY`). One instance per registry: the
        metric names are fixed, so a second one on the same registry is a
        ``ValueError`` from prometheus-client (use :func:`install`, which
        returns the existing one).
    """

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = prometheus_client.REGISTRY if registry is None else registry
        self.registrations = Counter(
            "waypost_registrations", "Endpoint instances registered or updated by register().",
            _ENDPOINT_LABELS, registry=self.registry)
        self.unregistrations = Counter(
            "waypost_unregistrations", "Endpoint instances removed by unregister or Runtime close.",
            _ENDPOINT_LABELS, registry=self.registry)
        self.lease_lost = Counter(
            "waypost_lease_lost", "Leases lost by a Runtime (expired, revoked, store restarted).",
            ("backend", "outcome"), registry=self.registry)
        self.watch_resyncs = Counter(
            "waypost_watch_resyncs", "Watches that re-listed after lost history or a reconnect.",
            _ENDPOINT_LABELS, registry=self.registry)
        self.watch_interruptions = Counter(
            "waypost_watch_interruptions", "Watches that lost their store (they retry and resync).",
            _ENDPOINT_LABELS, registry=self.registry)
        self.values_skipped = Counter(
            "waypost_values_skipped", "Stored values under v1/instances that did not decode.",
            _ENDPOINT_LABELS, registry=self.registry)

    @property
    def counters(self) -> tuple[Counter, ...]:
        """Every counter this plugin registered."""
        return (self.registrations, self.unregistrations, self.lease_lost, self.watch_resyncs,
                self.watch_interruptions, self.values_skipped)

    # hooks --------------------------------------------------------------------------------
    @hookimpl
    def waypost_on_registered(self, runtime: Runtime, instance: Instance) -> None:
        self.registrations.labels(instance.namespace, instance.component, instance.endpoint).inc()

    @hookimpl
    def waypost_on_unregistered(self, runtime: Runtime, instance: Instance) -> None:
        self.unregistrations.labels(instance.namespace, instance.component, instance.endpoint).inc()

    @hookimpl
    def waypost_on_lease_lost(
        self, runtime: Runtime, old_instance_id: int, new_instance_id: int | None, reason: str
    ) -> None:
        outcome = "shutdown" if new_instance_id is None else "reregistered"
        self.lease_lost.labels(runtime.url.scheme, outcome).inc()

    @hookimpl
    def waypost_on_watch_resynced(self, query: Query, reason: str, added: int, removed: int) -> None:
        self.watch_resyncs.labels(*_query_labels(query)).inc()

    @hookimpl
    def waypost_on_watch_interrupted(self, query: Query, reason: str) -> None:
        self.watch_interruptions.labels(*_query_labels(query)).inc()

    @hookimpl
    def waypost_on_value_skipped(self, key: str, reason: str) -> None:
        self.values_skipped.labels(*_key_labels(key)).inc()

    def __repr__(self) -> str:
        return f"<WaypostMetrics registry={self.registry!r}>"


def _query_labels(query: Query) -> tuple[str, str, str]:
    levels = (*query.levels, "", "", "")
    return levels[0], levels[1], levels[2]


def _key_labels(key: str) -> tuple[str, str, str]:
    # Only names that pass waypost's naming rule become label values: a garbage key
    # cannot inject arbitrary strings (or unbounded label sets) into the metrics.
    try:
        namespace, component, endpoint, _ = parse_instance_key(key)
        EndpointId(namespace, component, endpoint)  # checks every name
    except (CodecError, InvalidName):
        return "", "", ""
    return namespace, component, endpoint


_installed: dict[int, WaypostMetrics] = {}  # id(registry) -> plugin
_lock = threading.Lock()


def install(registry: CollectorRegistry | None = None) -> WaypostMetrics:
    """Count waypost's events into ``registry`` (default: prometheus-client's global one).

    Registers a :class:`WaypostMetrics` plugin with :func:`waypost.register_plugin`
    and returns it; a second call for the same registry returns the same plugin.
    """
    target = prometheus_client.REGISTRY if registry is None else registry
    with _lock:
        plugin = _installed.get(id(target))
        if plugin is None:
            plugin = WaypostMetrics(target)
            try:
                register_plugin(plugin, name=f"waypost.contrib.prometheus:{id(target):x}")
            except BaseException:
                _unregister_collectors(plugin)
                raise
            _installed[id(target)] = plugin
        return plugin


def uninstall(plugin: WaypostMetrics | None = None) -> None:
    """Stop counting and remove the counters from their registry.

    ``plugin`` is what :func:`install` returned; ``None`` uninstalls every
    plugin :func:`install` registered. Uninstalling twice is harmless.
    """
    with _lock:
        plugins = list(_installed.values()) if plugin is None else [plugin]
        for item in plugins:
            if _installed.get(id(item.registry)) is item:
                del _installed[id(item.registry)]
            if plugin_manager().is_registered(item):
                unregister_plugin(item)
            _unregister_collectors(item)


def _unregister_collectors(plugin: WaypostMetrics) -> None:
    for counter in plugin.counters:
        with contextlib.suppress(KeyError):  # already removed
            plugin.registry.unregister(counter)
