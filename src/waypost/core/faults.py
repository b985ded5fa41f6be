"""Fault injection for tests: what a crashed or paused process does to its Runtime.

The conformance suite (and a backend's own tests) use these to put a Runtime
in the states a real fleet meets, without private methods::

    from waypost.core import faults

    faults.crash(runtime)                  # like SIGKILL: no unregister, no revoke
    faults.pause_keepalive(runtime, 5.0)   # like SIGSTOP for 5 s: the lease may expire

Both accept a :class:`waypost.Runtime` or a :class:`waypost.aio.Runtime`.
"""

from __future__ import annotations

from typing import Any

from ._runtime import Runtime

__all__ = ["crash", "pause_keepalive"]


def _sync(runtime: Any) -> Runtime:
    sync = getattr(runtime, "sync", runtime)  # an asyncio Runtime wraps a sync one
    if not isinstance(sync, Runtime):
        raise TypeError(f"expected a waypost Runtime, got {type(runtime).__name__}")
    return sync


def crash(runtime: Any) -> None:
    """Stop ``runtime`` as a killed process would: its keepalive, watches and connections end, nothing
    is unregistered and the lease is not revoked (it expires in the store)."""
    _sync(runtime)._abandon()


def pause_keepalive(runtime: Any, seconds: float) -> None:
    """Skip ``runtime``'s keepalives for ``seconds``, as if the process were paused: the lease may
    expire meanwhile, and the Runtime then recovers (or shuts down) as after any lease loss."""
    _sync(runtime)._pause_keepalive(seconds)
