"""Register / unregister one endpoint in a Runtime that already holds its lease.

waypost: ``Endpoint.register(...)`` / ``Registration.unregister()``.
raw:     a create-only put of the same key and JSON (built with ``json.dumps``
         each time, as a raw user would) attached to an existing lease / a delete.
tooz:    ``join_group(group, capabilities)`` / ``leave_group(group)``.
"""

from __future__ import annotations

from typing import Any

import pytest
from _common import NAMESPACE, encode, instance_dict, instance_key
from _tooz import ToozMember

COMPONENT = "reg"
ENDPOINT = "generate"


def _rounds(mode: Any) -> int:
    return mode.rounds(200, 5)


@pytest.mark.parametrize("op", ["register", "unregister"])
@pytest.mark.parametrize("impl", ["waypost", "raw", "tooz"])
def test_register(benchmark: Any, target: Any, mode: Any, impl: str, op: str) -> None:
    benchmark.group = f"{op}[{target.name}]"
    benchmark.extra_info.update(op=op, backend=target.name, impl=impl)
    if impl == "waypost":
        _waypost(benchmark, target, mode, op)
    elif impl == "raw":
        _raw(benchmark, target, mode, op)
    else:
        _tooz(benchmark, target, mode, op)


def _waypost(benchmark: Any, target: Any, mode: Any, op: str) -> None:
    import waypost

    transport = waypost.TransportType.tcp("127.0.0.1:42043/6f64a219dfbb2106/bench/backend/generate")
    with target.connect(ttl=10) as rt:
        ep = rt.namespace(NAMESPACE).component(COMPONENT).endpoint(ENDPOINT)
        held: list[Any] = []

        def register() -> None:
            held.append(ep.register(transport=transport, device_type="cuda", request_plane_codec="msgpack"))

        def unregister() -> None:
            held.pop().unregister()

        if op == "register":
            benchmark.pedantic(register, setup=lambda: held and unregister(), rounds=_rounds(mode),
                               warmup_rounds=2)
        else:
            benchmark.pedantic(unregister, setup=register, rounds=_rounds(mode), warmup_rounds=2)
        if held:
            unregister()


def _raw(benchmark: Any, target: Any, mode: Any, op: str) -> None:
    store = target.raw()
    lease = store.grant(10)
    instance_id = getattr(lease, "id", None) or 0x7A11_0000_0000_0001
    key = instance_key(NAMESPACE, COMPONENT, ENDPOINT, instance_id)
    present: list[bool] = []

    def register() -> None:
        store.create(lease, key, encode(instance_dict(NAMESPACE, COMPONENT, ENDPOINT, instance_id)))
        present.append(True)

    def unregister() -> None:
        store.delete(key)
        present.clear()

    try:
        if op == "register":
            benchmark.pedantic(register, setup=lambda: present and unregister(), rounds=_rounds(mode),
                               warmup_rounds=2)
        else:
            benchmark.pedantic(unregister, setup=register, rounds=_rounds(mode), warmup_rounds=2)
        if present:
            unregister()
    finally:
        store.revoke(lease)
        store.close()


def _tooz(benchmark: Any, target: Any, mode: Any, op: str) -> None:
    if target.tooz_url is None:
        pytest.skip(target.tooz_skip or "no tooz driver")
    member = ToozMember(target.tooz_url, "bench-reg-member", ttl=10)
    group = f"{NAMESPACE}.{COMPONENT}"
    member.ensure_group(group)
    caps = instance_dict(NAMESPACE, COMPONENT, ENDPOINT, 0x7A11_0000_0000_0002)
    present: list[bool] = []

    def register() -> None:
        member.join(group, caps)
        present.append(True)

    def unregister() -> None:
        member.leave(group)
        present.clear()

    try:
        if op == "register":
            benchmark.pedantic(register, setup=lambda: present and unregister(), rounds=_rounds(mode),
                               warmup_rounds=2)
        else:
            benchmark.pedantic(unregister, setup=register, rounds=_rounds(mode), warmup_rounds=2)
        if present:
            unregister()
    finally:
        member.stop()
