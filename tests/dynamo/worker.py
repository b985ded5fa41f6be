"""A real NVIDIA Dynamo worker (ai-dynamo-runtime 1.6.1), run with the Dynamo venv's python.

Serves one endpoint, registers a base model card and (optionally) a LoRA card,
optionally publishes KV events and metrics (event channels and sources), and
speaks JSON lines: one line per registration step (``{"event": "registered",
"kind": ..., "t0": ..., "t": ...}``), then ``{"event": "ready", "instance_id": ...}``.
``t0`` and ``t`` are ``time.time()`` right before the step's call and right after
it returned, so a reader on the same machine can measure when the write reached it.

Stdin commands, one per line; each is answered by one JSON line
``{"event": COMMAND, "ok": true|false, "t0": start, "t": end, ...}``::

    taints a,b,c          update_model_taints(endpoint, {"a", "b", "c"}); "taints" alone clears them
    unregister-lora       unregister_model(endpoint, lora_name=<the LoRA>)
    unregister-model      unregister_model(endpoint)
    unregister-instance   endpoint.unregister_endpoint_instance()
    register-instance     endpoint.register_endpoint_instance()
    quit                  graceful shutdown

Closing stdin, ``quit``, SIGTERM and SIGINT all shut down gracefully
(``DistributedRuntime.shutdown()``: every record this process wrote is deleted),
then print ``{"event": "exited"}``.

Environment (Dynamo's own): ``DYN_DISCOVERY_BACKEND`` (``file`` or ``etcd``),
``DYN_FILE_KV`` or ``ETCD_ENDPOINTS`` (and ``ETCD_LEASE_TTL``); the loopback
settings below are defaulted here because Dynamo would otherwise bind and
advertise the host's non-loopback address.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import sys
import threading
import time
from collections.abc import AsyncIterator
from typing import Any

os.environ.setdefault("DYN_DISCOVERY_BACKEND", "file")
os.environ.setdefault("DYN_REQUEST_PLANE", "tcp")
os.environ.setdefault("DYN_TCP_RPC_HOST", "127.0.0.1")
os.environ.setdefault("DYN_TCP_RESPONSE_STREAM_HOST", "127.0.0.1")
os.environ.setdefault("DYN_EVENT_PLANE_HOST", "127.0.0.1")
os.environ.setdefault("DYN_LOG", "warn")

# (after the defaults above: Dynamo reads them when it loads)
from dynamo.llm import (
    KvEventPublisher,
    ModelInput,
    ModelType,
    WorkerMetricsPublisher,
    WorkerType,
    register_model,
    unregister_model,
    update_model_taints,
)
from dynamo.runtime import DistributedRuntime, Endpoint


def out(**fields: Any) -> None:
    fields.setdefault("t", time.time())
    print(json.dumps(fields), flush=True)


async def handler(request: Any, context: Any = None) -> AsyncIterator[Any]:
    """A Text chat model: answers one fixed message (the frontend forwards OpenAI requests)."""
    if isinstance(request, dict) and "messages" in request:
        chunk = {"id": "chatcmpl-1", "object": "chat.completion.chunk", "created": int(time.time()),
                 "model": request.get("model", "")}
        yield {**chunk, "choices": [{"index": 0, "delta": {"role": "assistant", "content": "hello from dynamo"},
                                     "finish_reason": None}]}
        yield {**chunk, "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]}
        return
    yield {"echo": request}


async def register(endpoint: Endpoint, args: argparse.Namespace, lora: str | None = None) -> None:
    await register_model(ModelInput.Text, ModelType.Chat, endpoint, args.model_path, lora or args.model_name,
                         worker_type=WorkerType.Aggregated, skip_model_assets=True, lora_name=lora,
                         base_model_path=args.model_path if lora else None)


async def run_command(endpoint: Endpoint, args: argparse.Namespace, line: str) -> bool:
    """Run one stdin command and answer it; False when it is ``quit``."""
    command, _, arg = line.strip().partition(" ")
    if not command:
        return True
    if command == "quit":
        return False
    t0 = time.time()
    extra: dict[str, Any] = {}
    try:
        if command == "taints":
            taints = {t for t in arg.split(",") if t}
            await update_model_taints(endpoint, taints)
            extra["taints"] = sorted(taints)
        elif command == "unregister-lora":
            await unregister_model(endpoint, lora_name=args.lora)
        elif command == "unregister-model":
            await unregister_model(endpoint)
        elif command == "unregister-instance":
            await endpoint.unregister_endpoint_instance()
        elif command == "register-instance":
            await endpoint.register_endpoint_instance()
        else:
            raise ValueError(f"unknown command {command!r}")
    except Exception as exc:  # report it and keep serving: the test decides
        out(event=command, ok=False, t0=t0, error=repr(exc))
    else:
        out(event=command, ok=True, t0=t0, **extra)
    return True


async def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--endpoint", default="ns1.comp1.gen", help="namespace.component.endpoint")
    ap.add_argument("--model-name", default="base-model")
    ap.add_argument("--model-path", default="/nonexistent/base-model")
    ap.add_argument("--lora", default="my-lora", help="the LoRA's name; '' for none")
    ap.add_argument("--no-model", action="store_true", help="serve the endpoint only")
    ap.add_argument("--kv-events", action="store_true",
                    help="a KvEventPublisher (v1/event_channels + v1/event_sources); binds 0.0.0.0, hard-coded")
    ap.add_argument("--metrics", action="store_true",
                    help="a WorkerMetricsPublisher (v1/event_channels); binds 0.0.0.0, hard-coded")
    args = ap.parse_args()

    loop = asyncio.get_running_loop()
    backend = os.environ["DYN_DISCOVERY_BACKEND"]
    runtime = DistributedRuntime(loop, backend, os.environ["DYN_REQUEST_PLANE"])
    endpoint = runtime.endpoint(args.endpoint)
    instance_id = endpoint.connection_id()
    t0 = time.time()
    # serve_endpoint() returns a Future that runs until shutdown; it registers the instance asynchronously.
    serving = asyncio.ensure_future(endpoint.serve_endpoint(handler))
    client = await endpoint.client()
    deadline = time.monotonic() + 30
    while instance_id not in client.instance_ids():
        if serving.done() or time.monotonic() > deadline:
            out(event="error", error=f"instance never registered ({serving!r})")
            sys.exit(1)
        await asyncio.sleep(0.005)
    out(event="registered", kind="instance", t0=t0)
    if not args.no_model:
        t0 = time.time()
        await register(endpoint, args)
        out(event="registered", kind="model", name=args.model_name, t0=t0)
        if args.lora:
            t0 = time.time()
            await register(endpoint, args, args.lora)
            out(event="registered", kind="lora", name=args.lora, t0=t0)
    publishers: list[Any] = []  # kept referenced: dropping one unregisters it
    if args.kv_events:
        publishers.append(KvEventPublisher(endpoint, kv_block_size=16))
        out(event="registered", kind="kv_event_publisher")
    if args.metrics:
        metrics = WorkerMetricsPublisher()
        await metrics.create_endpoint(endpoint)
        publishers.append(metrics)
        out(event="registered", kind="metrics_publisher")
    out(event="ready", backend=backend, endpoint=args.endpoint, instance_id=instance_id, pid=os.getpid())

    # stdin is read by a daemon thread (a blocked readline never delays the exit);
    # SIGTERM and SIGINT take the same graceful path as closing stdin.
    queue: asyncio.Queue[str | None] = asyncio.Queue()

    def read_stdin() -> None:
        for line in sys.stdin:
            loop.call_soon_threadsafe(queue.put_nowait, line)
        loop.call_soon_threadsafe(queue.put_nowait, None)

    threading.Thread(target=read_stdin, daemon=True).start()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, queue.put_nowait, None)
    while (line := await queue.get()) is not None and await run_command(endpoint, args, line):
        pass
    out(event="exiting")
    runtime.shutdown()
    try:
        await asyncio.wait_for(serving, timeout=10)
    except Exception as exc:  # the serve future may end with an error once the runtime is down
        out(event="serve_ended", error=repr(exc))
    out(event="exited")


if __name__ == "__main__":
    asyncio.run(main())
