"""The plugin manager: hookspecs, entry points and lazy backend loading."""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass
from importlib import metadata
from typing import TYPE_CHECKING, Any

import pluggy

from . import hookspecs
from ._errors import BackendNotInstalled

if TYPE_CHECKING:
    from ._spi import Backend

__all__ = [
    "BackendEntry",
    "backend_class",
    "installed_backends",
    "notify",
    "plugin_manager",
    "register_plugin",
    "unregister_plugin",
]

BACKEND_GROUP = "waypost.backends"
PLUGIN_GROUP = "waypost.plugins"
_log = logging.getLogger("waypost")
_lock = threading.RLock()
_manager: pluggy.PluginManager | None = None
_loaded_schemes: set[str] = set()
# TLS schemes share their plain twin's extra.
_EXTRAS = {"etcds": "etcd", "rediss": "redis", "consuls": "consul"}


def plugin_manager() -> pluggy.PluginManager:
    """The process-wide plugin manager (observer plugins loaded on first use)."""
    global _manager
    with _lock:
        if _manager is None:
            manager = pluggy.PluginManager(hookspecs.PROJECT)
            manager.add_hookspecs(hookspecs)
            _load_observers(manager)
            _manager = manager
        return _manager


def _load_observers(manager: pluggy.PluginManager) -> None:
    """Load ``waypost.plugins`` entry points; a broken one is logged and skipped, never fatal."""
    for ep in metadata.entry_points(group=PLUGIN_GROUP):
        try:
            manager.register(ep.load(), name=ep.name)
        except Exception:
            _log.exception("waypost observer plugin %r (%s) failed to load; skipped", ep.name, ep.value)


def unregister_plugin(plugin: object) -> None:
    """Remove a plugin registered with :func:`register_plugin`."""
    plugin_manager().unregister(plugin)


def register_plugin(plugin: object, name: str | None = None) -> None:
    """Register an observer (or backend) plugin object or module."""
    plugin_manager().register(plugin, name)


@dataclass(frozen=True)
class BackendEntry:
    """An installed backend plugin as its entry point declares it."""

    scheme: str
    value: str
    distribution: str
    version: str


def installed_backends() -> list[BackendEntry]:
    """Every backend entry point in group ``waypost.backends``, sorted by scheme."""
    entries = []
    for ep in metadata.entry_points(group=BACKEND_GROUP):
        dist = ep.dist
        entries.append(
            BackendEntry(ep.name, ep.value, dist.name if dist else "?", dist.version if dist else "?")
        )
    return sorted(entries, key=lambda e: e.scheme)


def backend_class(scheme: str) -> type[Backend]:
    """Load the plugin owning ``scheme`` (only that one) and return its Backend class."""
    manager = plugin_manager()
    with _lock:
        if scheme not in _loaded_schemes:
            _load_scheme(manager, scheme)
            _loaded_schemes.add(scheme)
    cls: type[Backend] | None = manager.hook.waypost_backend_class(scheme=scheme)
    if cls is None:
        known = ", ".join(sorted({e.scheme for e in installed_backends()})) or "none"
        raise BackendNotInstalled(
            f"no waypost backend is installed for scheme {scheme!r}: installed schemes are {known}"
        )
    return cls


def _load_scheme(manager: pluggy.PluginManager, scheme: str) -> None:
    for ep in metadata.entry_points(group=BACKEND_GROUP, name=scheme):
        if manager.get_plugin(ep.value) is not None:
            continue
        try:
            plugin = ep.load()
        except ImportError as exc:
            raise BackendNotInstalled(
                f"the {scheme}:// backend could not be imported ({exc}); "
                f"is its extra installed? e.g. pip install 'waypost[{_EXTRAS.get(scheme, scheme)}]'"
            ) from exc
        if manager.is_registered(plugin):
            continue
        manager.register(plugin, name=ep.value)


def notify(hook_name: str, **kwargs: Any) -> None:
    """Call an observer hook, logging (never raising) what a plugin raised."""
    hook = getattr(plugin_manager().hook, hook_name)
    if not hook.get_hookimpls():  # the common case: nobody listens, so skip pluggy's call machinery
        return
    try:
        hook(**kwargs)
    except Exception:
        _log.exception("waypost plugin hook %s raised; ignored", hook_name)
