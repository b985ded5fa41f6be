"""Finding backends (entry points naming classes) and calling observer plugins (pluggy).

Backends: the entry-point group ``waypost.backends`` maps a URL scheme to a
:class:`~waypost.core.Backend` class (``etcd = "waypost.backends.etcd:EtcdBackend"``).
Only the class for the scheme in use is imported, and only when it is first
used; ``importlib.metadata`` itself is imported on that first use too, so
``import waypost`` stays light. :func:`register_backend` adds a class in-process.

Observers: pluggy, project ``waypost``, hookspecs in :mod:`waypost.core.hookspecs`.
"""

from __future__ import annotations

import logging
import threading
from typing import TYPE_CHECKING, Any

import msgspec

from ._errors import BackendNotInstalled

if TYPE_CHECKING:
    import pluggy

    from ._spi import Backend

__all__ = [
    "BackendEntry",
    "backend_class",
    "installed_backends",
    "missing_requirements",
    "notify",
    "plugin_manager",
    "register_backend",
    "register_plugin",
    "unregister_plugin",
]

BACKEND_GROUP = "waypost.backends"
PLUGIN_GROUP = "waypost.plugins"
_log = logging.getLogger("waypost")
_lock = threading.RLock()
_manager: pluggy.PluginManager | None = None
_classes: dict[str, type[Backend]] = {}  # scheme -> class, loaded or registered


# Observers ------------------------------------------------------------------------------------

def plugin_manager() -> pluggy.PluginManager:
    """The process-wide plugin manager (observer plugins loaded on first use)."""
    global _manager
    with _lock:
        if _manager is None:
            import pluggy

            from . import hookspecs

            manager = pluggy.PluginManager(hookspecs.PROJECT)
            manager.add_hookspecs(hookspecs)
            _load_observers(manager)
            _manager = manager
        return _manager


def _load_observers(manager: pluggy.PluginManager) -> None:
    """Load ``waypost.plugins`` entry points; a broken one is logged and skipped, never fatal."""
    from importlib import metadata

    for ep in metadata.entry_points(group=PLUGIN_GROUP):
        try:
            manager.register(ep.load(), name=ep.name)
        except Exception:
            _log.exception("waypost observer plugin %r (%s) failed to load; skipped", ep.name, ep.value)


def register_plugin(plugin: object, name: str | None = None) -> None:
    """Register an observer plugin: an object or module implementing ``waypost_on_*`` hooks."""
    plugin_manager().register(plugin, name)


def unregister_plugin(plugin: object) -> None:
    """Remove a plugin registered with :func:`register_plugin`."""
    plugin_manager().unregister(plugin)


def notify(hook_name: str, **kwargs: Any) -> None:
    """Call an observer hook, logging (never raising) what a plugin raised."""
    hook = getattr(plugin_manager().hook, hook_name)
    if not hook.get_hookimpls():  # the common case: nobody listens, so skip pluggy's call machinery
        return
    try:
        hook(**kwargs)
    except Exception:
        _log.exception("waypost plugin hook %s raised; ignored", hook_name)


# Backends ---------------------------------------------------------------------------------------

class BackendEntry(msgspec.Struct, frozen=True, gc=False):
    """An installed backend as its entry point declares it."""

    scheme: str
    value: str
    distribution: str
    version: str


def installed_backends() -> list[BackendEntry]:
    """Every backend entry point in group ``waypost.backends`` (and registered class), sorted by scheme."""
    from importlib import metadata

    entries: dict[str, BackendEntry] = {}
    for ep in metadata.entry_points(group=BACKEND_GROUP):
        dist = ep.dist
        entries.setdefault(ep.name, BackendEntry(ep.name, ep.value, dist.name if dist else "?",
                                                 dist.version if dist else "?"))
    with _lock:
        for scheme, cls in _classes.items():
            entries.setdefault(scheme, BackendEntry(scheme, f"{cls.__module__}:{cls.__qualname__}",
                                                    cls.distribution, "-"))
    return sorted(entries.values(), key=lambda e: e.scheme)


def register_backend(cls: type[Backend]) -> None:
    """Serve ``cls.schemes`` with ``cls`` in this process, without an entry point (tests, embedding)."""
    from ._spi import Backend

    if not (isinstance(cls, type) and issubclass(cls, Backend)) or not cls.schemes:
        raise TypeError(f"register_backend() takes a waypost.core.Backend subclass with schemes, got {cls!r}")
    with _lock:
        for scheme in cls.schemes:
            _classes[scheme] = cls


def backend_class(scheme: str) -> type[Backend]:
    """The Backend class serving ``scheme``; only its module is imported, once."""
    with _lock:
        cls = _classes.get(scheme)
        if cls is None:
            cls = _classes[scheme] = _load_class(scheme)
        return cls


def _load_class(scheme: str) -> type[Backend]:
    from importlib import metadata

    from ._spi import Backend

    found = list(metadata.entry_points(group=BACKEND_GROUP, name=scheme))
    if not found:
        known = ", ".join(e.scheme for e in installed_backends()) or "none"
        raise BackendNotInstalled(f"no waypost backend is installed for scheme {scheme!r}: installed schemes "
                                  f"are {known}")
    ep = found[0]
    if len({e.value for e in found}) > 1:
        _log.warning("several backends claim %s://: %s; using %s", scheme, ", ".join(e.value for e in found),
                     ep.value)
    where = f"{ep.value} (from {ep.dist.name if ep.dist else 'an unknown distribution'})"
    try:
        cls = ep.load()
    except Exception as exc:
        raise BackendNotInstalled(f"the {scheme}:// backend {where} could not be imported: {exc}") from exc
    if not (isinstance(cls, type) and issubclass(cls, Backend)):
        raise BackendNotInstalled(f"the {scheme}:// entry point {where} does not name a waypost.core.Backend "
                                  "class")
    if scheme not in cls.schemes:
        raise BackendNotInstalled(f"the {scheme}:// entry point {where} names {cls.__name__}, which serves "
                                  f"{', '.join(cls.schemes) or 'no scheme'}")
    return cls


def missing_requirements(cls: type[Backend]) -> list[str]:
    """The modules ``cls.requires`` that cannot be imported here."""
    import importlib.util

    missing = []
    for module in cls.requires:
        try:
            if importlib.util.find_spec(module) is None:
                missing.append(module)
        except (ImportError, ValueError):
            missing.append(module)
    return missing


def require_installed(cls: type[Backend], scheme: str) -> None:
    """:class:`BackendNotInstalled` naming the extra to install if ``cls`` lacks a module it needs."""
    missing = missing_requirements(cls)
    if missing:
        hint = f"pip install '{cls.distribution}[{cls.extra}]'" if cls.extra else f"install {', '.join(missing)}"
        raise BackendNotInstalled(f"the {scheme}:// backend needs {', '.join(missing)}, which is not installed: "
                                  f"{hint}")
