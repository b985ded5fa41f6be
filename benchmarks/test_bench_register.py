"""Register / unregister one endpoint in a Runtime that already holds its lease.

waypost: ``Endpoint.register(...)`` / ``Registration.unregister()``.
raw:     a create-only put of the same key and JSON (built with ``json.dumps``
         each time, as a raw user would) attached to an existing lease / a delete.
tooz:    ``join_group(group, capabilities)`` / ``leave_group(group)``.

Two passes: ``test_register`` times each implementation with pytest-benchmark
(contiguous rounds), and ``test_register_interleaved`` alternates the
implementations round by round so that load drift on a shared machine hits
them equally; the report quotes the interleaved medians.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from _common import METRICS, NAMESPACE, encode, instance_dict, instance_key, interleaved
from _tooz import make_member

COMPONENT = "reg"
ENDPOINT = "generate"

Ops = tuple[Callable[[], None], Callable[[], None], Callable[[], None]]  # register, unregister, close


def _rounds(mode: Any) -> int:
    return mode.rounds(200, 5)


def make(target: Any, impl: str, suffix: str = "") -> Ops:
    """(register, unregister, close) of one endpoint for ``impl``."""
    comp = COMPONENT + suffix
    if impl == "waypost":
        import waypost

        rt = target.connect(ttl=10)
        ep = rt.namespace(NAMESPACE).component(comp).endpoint(ENDPOINT)
        transport = waypost.TransportType.tcp("127.0.0.1:42043/6f64a219dfbb2106/bench/backend/generate")
        held: list[Any] = []

        def register() -> None:
            held.append(ep.register(transport=transport, device_type="cuda", request_plane_codec="msgpack"))

        def unregister() -> None:
            held.pop().unregister()

        def close() -> None:
            rt.close()

        return register, unregister, close
    if impl == "raw":
        store = target.raw()
        # Nobody keeps it alive (waypost's Runtime does, in a thread): long enough for the whole test on a
        # loaded machine (at ttl = 10 s a slow run lost it: "lease not found", Consul "invalid session").
        lease = store.grant(3600)
        instance_id = getattr(lease, "id", None) or 0x7A11_0000_0000_0001
        key = instance_key(NAMESPACE, comp, ENDPOINT, instance_id)

        def raw_register() -> None:
            store.create(lease, key, encode(instance_dict(NAMESPACE, comp, ENDPOINT, instance_id)))

        def raw_close() -> None:
            store.revoke(lease)
            store.close()

        return raw_register, lambda: store.delete(key), raw_close
    if target.tooz_url is None:
        pytest.skip(target.tooz_skip or "no tooz driver")
    member = make_member(target, f"bench-reg-member{suffix}", ttl=10)
    group = f"{NAMESPACE}.{comp}"
    member.ensure_group(group)
    caps = instance_dict(NAMESPACE, comp, ENDPOINT, 0x7A11_0000_0000_0002)
    return lambda: member.join(group, caps), lambda: member.leave(group), member.stop


@pytest.mark.parametrize("op", ["register", "unregister"])
@pytest.mark.parametrize("impl", ["waypost", "raw", "tooz"])
def test_register(benchmark: Any, target: Any, mode: Any, impl: str, op: str) -> None:
    benchmark.group = f"{op}[{target.name}]"
    benchmark.extra_info.update(op=op, backend=target.name, impl=impl)
    if impl == "tooz" and target.tooz_python:
        pytest.skip("tooz runs in another process here: timed in the interleaved pass only")
    register, unregister, close = make(target, impl)
    present: list[bool] = []

    def do_register() -> None:
        register()
        present.append(True)

    def do_unregister() -> None:
        unregister()
        present.clear()

    try:
        if op == "register":
            benchmark.pedantic(do_register, setup=lambda: present and do_unregister(), rounds=_rounds(mode),
                               warmup_rounds=2)
        else:
            benchmark.pedantic(do_unregister, setup=do_register, rounds=_rounds(mode), warmup_rounds=2)
        if present:
            do_unregister()
    finally:
        close()


@pytest.mark.timeout(900)
def test_register_interleaved(target: Any, mode: Any) -> None:
    impls = ["waypost", "raw"] + (["tooz"] if target.tooz_url else [])
    ops = {impl: make(target, impl, suffix="-il") for impl in impls}
    try:
        reg = interleaved({i: (None, ops[i][0], ops[i][1]) for i in impls}, mode.rounds(300, 5))
        unreg = interleaved({i: (ops[i][0], ops[i][1], None) for i in impls}, mode.rounds(300, 5))
    finally:
        for _, _, close in ops.values():
            close()
    for impl in impls:
        METRICS.median("register", target.name, impl, reg[impl], "s", note="interleaved")
        METRICS.median("unregister", target.name, impl, unreg[impl], "s", note="interleaved")
