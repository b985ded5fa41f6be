"""What a real NVIDIA Dynamo client (ai-dynamo-runtime 1.6.1) sees, as JSON lines; run with the Dynamo venv's python.

Polls ``Client.instance_ids()`` / ``instances()`` of one endpoint (and, with
``--cards``, the model cards Dynamo's MDC watcher holds for its component:
``FpmEventSubscriber.get_model_cards()``, the one Python-visible view of a
card's ``runtime_config.taints``) every ``--interval`` seconds, and prints a
line whenever what it sees changes (the first line is the initial view)::

    {"t": time.time(), "instance_ids": [...], "instances": [{"instance_id", "transport": [kind, address],
     "device_type"}...], "cards": {"<worker id>": {card_json}...}}

Runs until stdin is closed, or SIGTERM / SIGINT. Environment: as for worker.py.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import signal
import sys
import threading
import time
from typing import Any

os.environ.setdefault("DYN_DISCOVERY_BACKEND", "file")
os.environ.setdefault("DYN_REQUEST_PLANE", "tcp")
os.environ.setdefault("DYN_TCP_RPC_HOST", "127.0.0.1")
os.environ.setdefault("DYN_TCP_RESPONSE_STREAM_HOST", "127.0.0.1")
os.environ.setdefault("DYN_EVENT_PLANE_HOST", "127.0.0.1")
os.environ.setdefault("DYN_LOG", "warn")

# (after the defaults above: Dynamo reads them when it loads)
from dynamo.llm import FpmEventSubscriber
from dynamo.runtime import Client, DistributedRuntime


def view(client: Client, subscriber: FpmEventSubscriber | None) -> dict[str, Any]:
    instances = [{"instance_id": i.instance_id, "transport": [i.transport.kind, i.transport.address],
                  "device_type": i.device_type} for i in client.instances()]
    seen: dict[str, Any] = {"instance_ids": sorted(client.instance_ids()),
                            "instances": sorted(instances, key=lambda i: int(i["instance_id"]))}
    if subscriber is not None:
        seen["cards"] = dict(sorted(subscriber.get_model_cards().items()))  # card JSON text: parsed when printed
    return seen


async def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--endpoint", default="ns1.comp1.gen", help="namespace.component.endpoint")
    ap.add_argument("--interval", type=float, default=0.01, help="seconds between two looks")
    ap.add_argument("--cards", action="store_true", help="also show the model cards of the component")
    args = ap.parse_args()

    loop = asyncio.get_running_loop()
    runtime = DistributedRuntime(loop, os.environ["DYN_DISCOVERY_BACKEND"], os.environ["DYN_REQUEST_PLANE"])
    endpoint = runtime.endpoint(args.endpoint)
    client = await endpoint.client()
    subscriber = None
    if args.cards:
        subscriber = FpmEventSubscriber(endpoint)
        subscriber.start_tracking()

    stop = asyncio.Event()

    def wait_for_eof() -> None:
        sys.stdin.read()
        loop.call_soon_threadsafe(stop.set)

    threading.Thread(target=wait_for_eof, daemon=True).start()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    last = None
    while not stop.is_set():
        seen = view(client, subscriber)
        if seen != last:
            cards = {worker: json.loads(card) for worker, card in seen.get("cards", {}).items()}
            print(json.dumps({"t": time.time(), **seen, **({"cards": cards} if subscriber else {})}), flush=True)
            last = seen
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), args.interval)
    if subscriber is not None:
        subscriber.shutdown()
    runtime.shutdown()


if __name__ == "__main__":
    asyncio.run(main())
