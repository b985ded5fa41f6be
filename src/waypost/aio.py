"""waypost for asyncio: the same API as :mod:`waypost`, awaited.

Every name mirrors the synchronous API, so code moves between the two by
adding or removing ``await`` / ``async``::

    import asyncio

    import waypost


    async def main() -> None:
        async with waypost.aio.connect("memory://demo", ttl=5) as rt:   # a waypost.aio.Runtime
            ep = rt.namespace("dynamo").component("backend").endpoint("generate")   # handles: no await

            # serve an endpoint (leaving the block unregisters it)
            async with await ep.register(transport=waypost.TransportType.tcp("10.0.0.5:9000"),
                                         device_type="cuda", metadata={"model": "llama"}) as reg:
                print(reg.instance)

                # list: one store read, sorted
                print(await rt.namespace("dynamo").component("backend").list_instances())
                print(await rt.list_instances(waypost.Query.namespace("dynamo")))

                # find it: a live instance set with pickers (the picks are plain calls)
                async with ep.client() as client:
                    await client.wait_for_instances(timeout=5)
                    instance = client.round_robin()
                    client.report_instance_down(instance.instance_id)

                # watch: the snapshot as Added events, then changes
                async with rt.watch(waypost.Query.component("dynamo", "backend")) as events:
                    async for event in events:
                        print(event)                            # Added / Removed / Resynced / Interrupted
                        if isinstance(event, waypost.Added):
                            break
                    print(await events.get(timeout=0.5))        # None if nothing came in time
                    print(events.instances)                     # the watcher's current view
        # leaving the block unregistered everything and revoked the lease


    asyncio.run(main())

Shapes
    ``connect()``, ``Runtime.watch()``, ``Runtime.client()`` (and the same on
    namespaces, components and endpoints) return a :class:`Pending`: ``await``
    it to get the object (then close it with ``await obj.close()``), or use it
    directly in ``async with`` which opens it and closes it on exit.
    ``register()`` is a coroutine returning a :class:`Registration`, itself an
    async context manager (``async with await ep.register(...) as reg``).
    Handles (``namespace()``, ``component()``, ``endpoint()``) and the
    client's picks (``round_robin()``, ``random()``, ``direct()``,
    ``report_instance_down()``, ``instances()``) are plain calls: they never
    touch the store.

How it runs
    The core is synchronous and thread-safe. Every call that may reach the
    store (connect, register, unregister, list, opening and closing watches,
    clients and the Runtime) runs in the event loop's default executor, never
    on the loop. Watches and clients are fed by the core's watch machinery;
    their events are handed *into* the loop with
    ``loop.call_soon_threadsafe``, so waiting for an event holds no thread on
    the asyncio side. A watch or client belongs to the loop that opened it.

    If a task is cancelled while a Runtime, watch or client is being opened,
    the half-opened object is closed in the background: nothing leaks. A
    cancelled ``register()`` may still take effect (the store write was under
    way); it is owned by the Runtime and removed when the Runtime closes.

Errors
    Exactly the synchronous API's: every failure is a
    :class:`waypost.WaypostError` (``Closed``, ``NoInstances``,
    ``BackendUnavailable``, ``ConfigError``…), raised from the ``await``.

Interoperability
    ``Runtime(sync_runtime)`` wraps an existing :class:`waypost.Runtime`; each
    asyncio object exposes the synchronous object it wraps as ``.sync``. The
    handles (:class:`waypost.Namespace`, :class:`waypost.Component`,
    :class:`waypost.Endpoint`) are the very same classes for both APIs; only
    what their I/O methods return differs.
"""

from .contrib.aio import Client, Pending, Registration, Runtime, Watch, connect

__all__ = ["Client", "Pending", "Registration", "Runtime", "Watch", "connect"]

