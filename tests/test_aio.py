"""waypost.aio against the real in-process memory backend.

Every test drives its own event loop with ``asyncio.run``; waits are on
conditions with deadlines, never fixed sleeps.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import inspect
import textwrap
import threading
import time
import uuid
from collections.abc import Awaitable, Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest

import waypost
from waypost import aio
from waypost.core import Closed

TCP = waypost.TransportType.tcp
DEADLINE = 5.0


# helpers -----------------------------------------------------------------------------------------
@pytest.fixture
def url() -> str:
    return f"memory://aio-{uuid.uuid4().hex[:10]}"


@pytest.fixture
def peer(url: str) -> Iterator[waypost.Runtime]:
    """Another (synchronous) Runtime on the same store: "another process"."""
    with waypost.connect(url, ttl=1.0) as rt:
        yield rt


def run(coro: Awaitable[Any]) -> Any:
    async def main() -> Any:
        return await coro

    return asyncio.run(main())


async def eventually(predicate: Callable[[], bool], timeout: float = DEADLINE, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} not reached within {timeout} s")
        await asyncio.sleep(0.005)


def threads_named(name: str) -> int:
    return sum(t.name == name for t in threading.enumerate())


async def wait_threads(name: str, count: int, timeout: float = DEADLINE) -> None:
    await eventually(lambda: threads_named(name) == count, timeout, f"{count} {name} threads")


async def next_event(events: aio.Watch) -> waypost.Event:
    event = await events.get(timeout=DEADLINE)
    assert event is not None, "no event within the deadline"
    return event


# connect + handles ---------------------------------------------------------------------------------
def test_connect_as_context_manager_and_awaitable(url: str) -> None:
    async def main() -> None:
        async with aio.connect(url, ttl=1.0) as rt:
            assert isinstance(rt, aio.Runtime)
            assert not rt.sync.closed
            assert rt.ttl == 1.0
            assert rt.url.scheme == "memory"
            assert rt.instance_id == rt.sync.instance_id
            assert "aio.Runtime" in repr(rt)
        assert rt.closed

        rt2 = await aio.connect(url)
        assert not rt2.sync.closed
        await rt2.close()
        await rt2.close()  # idempotent
        assert rt2.closed

        wrapped = aio.Runtime(waypost.connect(url))
        async with wrapped:
            assert not wrapped.closed
        assert wrapped.sync.closed

    run(main())


def test_waypost_aio_is_this_module() -> None:
    assert waypost.aio is aio
    for name in aio.__all__:
        assert getattr(aio, name).__module__ == "waypost.contrib.aio"


def test_handles_are_plain_cached_calls(url: str) -> None:
    async def main() -> None:
        async with aio.connect(url) as rt:
            ns = rt.namespace("dynamo")
            assert rt.namespace("dynamo") is ns
            comp = ns.component("backend")
            assert ns.component("backend") is comp
            ep = comp.endpoint("generate")
            assert ep.id == waypost.EndpointId("dynamo", "backend", "generate")
            assert ep.name == "generate"
            assert ep.runtime is rt
            assert comp.runtime is rt
            assert comp.service_name() == "dynamo_backend"
            assert ns.namespace("child").name == "dynamo.child"
            assert rt.endpoint("dyn://dynamo.backend.generate").id == ep.id
            assert rt.endpoint(ep.id).component is comp
            assert ns.query.levels == ("dynamo",)
            assert comp.query.levels == ("dynamo", "backend")
            assert ep.query.prefix == "v1/instances/dynamo/backend/generate/"
            # the very same handle classes as the synchronous API, bound to this Runtime
            assert type(ns) is type(rt.sync.namespace("dynamo")) is waypost.Namespace
            assert type(ep) is waypost.Endpoint and ns is not rt.sync.namespace("dynamo")
            assert rt.sync.namespace("dynamo").component("backend").endpoint("generate").id == ep.id
            # names are checked on construction, with waypost's error
            with pytest.raises(waypost.InvalidName):
                rt.namespace("Bad Name")
            with pytest.raises(waypost.InvalidName):
                ns.component("UPPER")
            with pytest.raises(waypost.InvalidName):
                comp.endpoint("a/b")

    run(main())


# registration + listing -------------------------------------------------------------------------------
def test_register_list_and_unregister(url: str, peer: waypost.Runtime) -> None:
    async def main() -> None:
        async with aio.connect(url, ttl=1.0) as rt:
            comp = rt.namespace("ns").component("comp")
            reg = await comp.endpoint("gen").register(TCP("10.0.0.1:1"), device_type="cuda", metadata={"m": 1})
            assert isinstance(reg, aio.Registration)
            assert reg.sync.active
            assert reg.instance.instance_id == rt.instance_id
            assert reg.instance.metadata == {"m": 1}
            assert reg.endpoint_id == waypost.EndpointId("ns", "comp", "gen")
            assert rt.registrations() == [reg]

            other = peer.namespace("ns").component("comp").endpoint("aux").register(TCP("10.0.0.2:2"))
            expected = sorted([reg.instance, other.instance])
            assert await comp.list_instances() == expected
            assert await rt.namespace("ns").list_instances() == expected
            assert await rt.list_instances() == expected
            assert await rt.list_instances(waypost.Query.endpoint("ns", "comp", "gen")) == [reg.instance]
            assert await comp.endpoint("gen").list_instances() == [reg.instance]
            assert peer.list_instances(comp.query) == expected  # the sync world sees it too

            # re-registering the same endpoint updates it
            again = await rt.register(reg.endpoint_id, TCP("10.0.0.1:9"))
            assert again == reg
            assert (await comp.endpoint("gen").list_instances())[0].transport == TCP("10.0.0.1:9")

            await reg.unregister()
            assert not reg.active
            await reg.unregister()  # no-op
            assert await comp.list_instances() == [other.instance]
            assert rt.registrations() == []

            async with await comp.endpoint("tmp").register(TCP("10.0.0.3:3")) as scoped:
                assert [i.endpoint for i in await comp.list_instances()] == ["aux", "tmp"]
            assert not scoped.active
            assert await comp.list_instances() == [other.instance]

            await comp.endpoint("last").register(TCP("10.0.0.4:4"))
        # closing the Runtime removed what it registered
        assert peer.list_instances() == [other.instance]

    run(main())


# watches ----------------------------------------------------------------------------------------------
def test_async_for_gets_snapshot_then_events(url: str, peer: waypost.Runtime) -> None:
    async def main() -> None:
        async with aio.connect(url, ttl=1.0) as rt:
            first = peer.namespace("ns").component("comp").endpoint("a").register(TCP("h:1"))
            seen: list[waypost.Event] = []
            async with rt.watch(waypost.Query.component("ns", "comp")) as events:
                assert isinstance(events, aio.Watch)
                assert events.instances == [first.instance]
                async for event in events:
                    seen.append(event)
                    if len(seen) == 1:  # the snapshot came first; now change the store
                        second = await rt.namespace("ns").component("comp").endpoint("b").register(TCP("h:2"))
                        await second.unregister()
                    if len(seen) == 3:
                        break
                assert seen == [waypost.Added(first.instance), waypost.Added(second.instance),
                                waypost.Removed(second.instance)]
                # polling: nothing more is pending
                assert await events.get(timeout=0) is None
                assert await events.get(timeout=0.05) is None
                first.unregister()
                assert await next_event(events) == waypost.Removed(first.instance)
                assert events.instances == []
            assert events.closed
            with pytest.raises(waypost.Closed):
                await events.get(timeout=0)

    run(main())


def test_handles_watch_and_await_form(url: str, peer: waypost.Runtime) -> None:
    async def main() -> None:
        async with aio.connect(url) as rt:
            ep = rt.namespace("ns").component("comp").endpoint("a")
            events = await ep.watch()  # awaited: closed by hand
            try:
                other = peer.namespace("ns").component("comp").endpoint("b").register(TCP("h:2"))
                mine = await ep.register(TCP("h:1"))
                assert await next_event(events) == waypost.Added(mine.instance)  # b is not under ep
                ev = await events.wait_for(lambda e: isinstance(e, waypost.Removed), timeout=0.05)
                assert ev is None
            finally:
                await events.close()
            async with rt.namespace("ns").watch() as ns_events, ep.component.watch() as comp_events:
                for w in (ns_events, comp_events):
                    got = {await next_event(w), await next_event(w)}
                    assert got == {waypost.Added(mine.instance), waypost.Added(other.instance)}

    run(main())


def test_watch_sees_another_runtime_close(url: str) -> None:
    async def main() -> None:
        async with aio.connect(url) as rt, aio.connect(url) as other:
            reg = await other.namespace("ns").component("c").endpoint("e").register(TCP("h:1"))
            async with rt.watch() as events:
                assert await next_event(events) == waypost.Added(reg.instance)
                await other.close()
                assert await next_event(events) == waypost.Removed(reg.instance)

    run(main())


def test_watch_sees_lease_loss_and_reregistration(url: str, peer: waypost.Runtime) -> None:
    async def main() -> None:
        async with aio.connect(url, ttl=0.3) as rt:
            reg = await rt.namespace("ns").component("c").endpoint("e").register(TCP("h:1"))
            old = reg.instance
            async with rt.watch() as events:
                assert await next_event(events) == waypost.Added(old)
                await asyncio.to_thread(peer.backend.revoke_lease, old.instance_id)
                assert await next_event(events) == waypost.Removed(old)
                added = await next_event(events)
                assert isinstance(added, waypost.Added)
                # (memory honours the old id as the preferred one; stores that pick ids may change it)
                assert added.instance.instance_id == rt.instance_id
                assert reg.instance == added.instance
                assert reg.active

    run(main())


def test_closing_a_watch_ends_async_for_in_another_task(url: str) -> None:
    async def main() -> None:
        async with aio.connect(url) as rt:
            events = await rt.watch()
            seen: list[waypost.Event] = []

            async def consume() -> None:
                async for event in events:
                    seen.append(event)

            consumer = asyncio.create_task(consume())
            reg = await rt.namespace("ns").component("c").endpoint("e").register(TCP("h:1"))
            await eventually(lambda: len(seen) == 1, what="the Added event")
            await events.close()
            await asyncio.wait_for(consumer, DEADLINE)  # iteration ended, no error
            assert seen == [waypost.Added(reg.instance)]
            await events.close()  # idempotent

    run(main())


def test_closing_the_runtime_ends_watches_and_clients(url: str) -> None:
    async def main() -> None:
        rt = await aio.connect(url)
        events = await rt.watch()
        client = await rt.namespace("ns").component("c").endpoint("e").client()

        async def drain() -> int:
            return len([e async for e in events])

        drained = asyncio.create_task(drain())
        waiter = asyncio.create_task(client.wait_for_instances())
        await rt.close()
        assert await asyncio.wait_for(drained, DEADLINE) == 0
        with pytest.raises(waypost.Closed):
            await asyncio.wait_for(waiter, DEADLINE)
        assert events.closed
        assert client.closed

    run(main())


def test_closing_releases_threads(url: str) -> None:
    base_watch = threads_named("waypost-memory-watch")
    base_keepalive = threads_named("waypost-keepalive")

    async def main() -> None:
        rt = await aio.connect(url)
        assert threads_named("waypost-keepalive") == base_keepalive + 1
        ep = rt.namespace("ns").component("c").endpoint("e")
        w1 = await rt.watch()
        w2 = await ep.watch()
        client = await ep.client()
        await wait_threads("waypost-memory-watch", base_watch + 3)

        await w1.close()
        await wait_threads("waypost-memory-watch", base_watch + 2)
        await client.close()
        await wait_threads("waypost-memory-watch", base_watch + 1)
        async with rt.watch():
            await wait_threads("waypost-memory-watch", base_watch + 2)
        await wait_threads("waypost-memory-watch", base_watch + 1)
        await rt.close()  # closes w2 too
        assert w2.closed
        await wait_threads("waypost-memory-watch", base_watch)
        await wait_threads("waypost-keepalive", base_keepalive)
        assert rt.sync._watches == set()

    run(main())


def test_waiting_watches_hold_no_thread_and_never_block_the_loop(url: str, peer: waypost.Runtime) -> None:
    async def main() -> None:
        # One executor thread only: if a waiting watch held a thread, the store
        # calls below could never run.
        loop = asyncio.get_running_loop()
        executor = ThreadPoolExecutor(max_workers=1)
        loop.set_default_executor(executor)
        ticks = 0

        async def ticker() -> None:
            nonlocal ticks
            while True:
                ticks += 1
                await asyncio.sleep(0.001)

        tick_task = asyncio.create_task(ticker())
        async with aio.connect(url) as rt:
            watches = [await rt.watch() for _ in range(4)]
            getters = [asyncio.create_task(w.get()) for w in watches]
            start = ticks
            await eventually(lambda: ticks >= start + 50, what="50 ticks while watches wait")
            assert not any(g.done() for g in getters)
            # the single executor thread is free for store calls
            reg = await rt.namespace("ns").component("c").endpoint("e").register(TCP("h:1"))
            assert await asyncio.wait_for(rt.list_instances(), DEADLINE) == [reg.instance]
            done, _ = await asyncio.wait(getters, timeout=DEADLINE)
            assert {g.result() for g in done} == {waypost.Added(reg.instance)}
            assert len(done) == 4
            # events keep flowing while the loop ticks
            start = ticks
            peer.namespace("ns").component("c").endpoint("f").register(TCP("h:2"))
            for w in watches:
                assert isinstance(await next_event(w), waypost.Added)
            await eventually(lambda: ticks > start, what="a tick")
            for w in watches:
                await w.close()
        tick_task.cancel()

    run(main())


def test_waiting_for_watch_events_holds_no_thread(url: str, peer: waypost.Runtime) -> None:
    """Events are handed into the loop by the core watch's notify callback: no executor job waits for them."""

    async def main() -> None:
        loop = asyncio.get_running_loop()
        jobs: list[Any] = []
        executor = concurrent.futures.ThreadPoolExecutor(2)
        original_submit = executor.submit

        def counted(fn: Any, *args: Any, **kwargs: Any) -> Any:
            jobs.append(fn)
            return original_submit(fn, *args, **kwargs)

        executor.submit = counted  # type: ignore[method-assign]
        loop.set_default_executor(executor)
        async with aio.connect(url) as rt, rt.watch() as events:
            opened = len(jobs)
            waiting = asyncio.ensure_future(next_event(events))
            await asyncio.sleep(0)  # the task is now awaiting the event
            peer.namespace("ns").component("c").endpoint("e").register(TCP("h:1"))
            event = await waiting
            assert isinstance(event, waypost.Added)
            assert len(jobs) == opened, "waiting for an event ran something in the executor"

    run(main())


def test_watch_failure_is_raised_from_async_for(url: str) -> None:
    async def main() -> None:
        async with aio.connect(url) as rt, rt.watch() as events:
            # What a backend does when its watch dies for good: report it to the sink.
            events.sync._view.failed(waypost.BackendUnavailable("store gone"))
            with pytest.raises(waypost.BackendUnavailable, match="store gone"):
                async for _ in events:
                    pass
            with pytest.raises(waypost.BackendUnavailable):  # and again, not a hang
                await events.get(timeout=0)

        async with aio.connect(url) as rt, rt.watch() as events:
            events.sync._view.failed(OSError("raw"))
            with pytest.raises(waypost.WaypostError, match="raw") as info:
                await events.get()
            assert isinstance(info.value.__cause__, OSError)

    run(main())


def test_cancelled_open_closes_the_half_opened_watch(url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    base_watch = threads_named("waypost-memory-watch")

    async def main() -> None:
        async with aio.connect(url) as rt:
            gate = threading.Event()
            entered = threading.Event()
            real_start = rt.sync._start_watch

            def slow_start(query: waypost.Query, *args: Any) -> Any:
                start = real_start(query, *args)

                def gated(view: Any) -> Any:
                    entered.set()
                    gate.wait(DEADLINE)
                    return start(view)

                return gated

            monkeypatch.setattr(rt.sync, "_start_watch", slow_start)
            opening = asyncio.create_task(rt.watch().__aenter__())
            await asyncio.to_thread(entered.wait, DEADLINE)
            opening.cancel()
            with pytest.raises(asyncio.CancelledError):
                await opening
            gate.set()
            await eventually(lambda: threads_named("waypost-memory-watch") == base_watch and not rt.sync._watches,
                             what="the abandoned watch closed")

    run(main())


# clients ----------------------------------------------------------------------------------------------
def test_client_waits_and_picks(url: str, peer: waypost.Runtime) -> None:
    async def main() -> None:
        async with aio.connect(url) as rt, rt.namespace("ns").component("c").endpoint("e").client() as client:
            assert isinstance(client, aio.Client)
            assert client.instances() == []
            with pytest.raises(waypost.NoInstances):
                client.round_robin()
            with pytest.raises(waypost.NoInstances, match="0 instance"):
                await client.wait_for_instances(timeout=0.05)

            waiter = asyncio.create_task(client.wait_for_instances(timeout=DEADLINE, count=2))
            mine = await rt.namespace("ns").component("c").endpoint("e").register(TCP("h:1"))
            theirs = peer.namespace("ns").component("c").endpoint("e").register(TCP("h:2"))
            got = await waiter
            assert got == sorted([mine.instance, theirs.instance]) == client.instances()
            assert await client.wait_for_instances(timeout=0) == got  # already there: no wait
            assert sorted(client.instance_ids()) == sorted([rt.instance_id, peer.instance_id])

            picks = {client.round_robin().instance_id for _ in range(4)}
            assert picks == set(client.instance_ids())
            assert client.random() in got
            assert client.direct(rt.instance_id) == mine.instance
            with pytest.raises(waypost.NotFound, match="3039"):  # a NoInstances too, named in hex as in keys
                client.direct(12345)
            with pytest.raises(waypost.NotFound, match="'3039'"):  # an id given as its hex text is not one
                client.direct("3039")  # type: ignore[arg-type]
            client.report_instance_down(peer.instance_id)
            assert client.available() == [mine.instance]
            assert {client.round_robin().instance_id for _ in range(3)} == {rt.instance_id}

            theirs.unregister()
            await eventually(lambda: client.instances() == [mine.instance], what="the removal")
        assert client.closed

    run(main())


def test_client_close_wakes_waiters_and_is_awaitable(url: str) -> None:
    async def main() -> None:
        async with aio.connect(url) as rt:
            client = await rt.client(waypost.EndpointId("ns", "c", "e"), down_period=0.5)
            assert client.down_period == 0.5
            assert client.sync.endpoint_id == client.endpoint_id
            waiter = asyncio.create_task(client.wait_for_instances())
            await asyncio.sleep(0)  # a yield, not a delay: the task runs until it waits for a change
            assert not waiter.done()
            await client.close()
            with pytest.raises(waypost.Closed):
                await asyncio.wait_for(waiter, DEADLINE)
            with pytest.raises(waypost.Closed):
                await client.wait_for_instances(timeout=1)
            await client.close()  # idempotent
            assert rt.sync._watches == set()

    run(main())


# errors ------------------------------------------------------------------------------------------------
def test_errors_are_waypost_exceptions(url: str, peer: waypost.Runtime) -> None:
    async def main() -> None:
        with pytest.raises(waypost.BackendNotInstalled):
            await aio.connect("nosuchscheme://x")
        with pytest.raises(waypost.ConfigError, match="bogus"):
            async with aio.connect(url, bogus=1):
                pass
        with pytest.raises(waypost.AlreadyRegistered):
            await aio.connect(url, instance_id=peer.instance_id)

        rt = await aio.connect(url)
        ep = rt.namespace("ns").component("c").endpoint("e")
        reg = await ep.register(TCP("h:1"))
        await rt.close()
        assert not reg.active
        with pytest.raises(Closed):
            await ep.register(TCP("h:1"))
        with pytest.raises(Closed):
            await ep.list_instances()
        with pytest.raises(Closed):
            await rt.watch()
        with pytest.raises(Closed):
            async with ep.client():
                pass

    run(main())


def test_pending_is_awaitable_once(url: str) -> None:
    async def main() -> None:
        pending = aio.connect(url)
        assert "connect" in repr(pending)
        rt = await pending
        with pytest.raises(RuntimeError):
            await pending
        await rt.close()

    run(main())


def test_the_module_docstring_example_runs(capsys: pytest.CaptureFixture[str]) -> None:
    doc = aio.__doc__
    assert doc is not None
    example = textwrap.dedent(doc[doc.index("    import asyncio"):doc.index("Shapes")])
    exec(compile(example, "waypost.aio docstring", "exec"), {"__name__": "example"})
    out = capsys.readouterr().out
    assert "Added(instance=Instance(namespace='dynamo'" in out
    assert "dynamo/backend/generate/" in out


# -- the twin cannot drift ------------------------------------------------------------------------

SYNC_ONLY = {"__enter__", "__exit__", "__iter__"}
ASYNC_ONLY = {"__aenter__", "__aexit__", "__aiter__", "__anext__", "sync"}


def _public(obj: object) -> set[str]:
    return {n for n in dir(obj) if not n.startswith("_") or n in SYNC_ONLY | ASYNC_ONLY}


def test_both_apis_expose_the_same_names_and_parameters() -> None:
    """Runtime, Registration, Watch and Client of both APIs: the same public names, the same parameters."""

    async def pairs() -> list[tuple[object, object]]:
        rt = await aio.connect("memory://parity")
        reg = await rt.namespace("ns").component("c").endpoint("e").register(TCP("h:1"))
        watch, client = await rt.watch(), await rt.endpoint("ns.c.e").client()
        made = [(rt.sync, rt), (reg.sync, reg), (watch.sync, watch), (client.sync, client)]
        await rt.close()
        return made

    for sync_obj, async_obj in run(pairs()):
        sync_names, async_names = _public(sync_obj) - SYNC_ONLY, _public(async_obj) - ASYNC_ONLY
        assert sync_names - {"poll_instances"} == async_names, type(async_obj).__name__
        for name in sorted(sync_names & async_names):
            sync_attr, async_attr = getattr(type(sync_obj), name, None), getattr(type(async_obj), name, None)
            if not callable(sync_attr) or isinstance(sync_attr, type):
                continue
            # ``notify`` is the seam the twin itself uses to be woken: the twin has no use for it
            expected = [p.replace(annotation=inspect.Parameter.empty)
                        for p in inspect.signature(sync_attr).parameters.values() if p.name != "notify"]
            got = [p.replace(annotation=inspect.Parameter.empty)
                   for p in inspect.signature(async_attr).parameters.values()]
            assert got == expected, f"{type(async_obj).__name__}.{name}"


def test_the_handles_are_one_implementation() -> None:
    assert not any(isinstance(getattr(aio, n, None), type) and n in {"Namespace", "Component", "Endpoint"}
                   for n in aio.__all__)
    assert set(aio.__all__) == {"Client", "Pending", "Registration", "Runtime", "Watch", "connect"}


def test_async_wait_for_instances_ends_when_its_watch_failed(url: str) -> None:
    """The synchronous client raises NoInstances once its watch failed; the twin used to wait forever."""

    async def main() -> None:
        async with aio.connect(url) as rt, rt.namespace("ns").component("c").endpoint("e").client() as client:
            waiting = asyncio.ensure_future(client.wait_for_instances(timeout=None))
            await asyncio.sleep(0)
            client.sync._view.failed(waypost.BackendUnavailable("store gone"))  # what a dying backend watch does
            with pytest.raises(waypost.NoInstances, match="store gone"):
                await asyncio.wait_for(waiting, 5.0)

    run(main())
