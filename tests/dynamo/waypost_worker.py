"""A waypost Runtime in a process of its own, run with the *project's* python (not the Dynamo venv's).

The interop tests SIGKILL it to check that real Dynamo processes drop what a
crashed waypost process registered. Usage::

    waypost_worker.py URL OPTIONS_JSON ns/comp/ep [--model NAME] [--lora NAME]

Registers the endpoint instance (transport ``tcp 127.0.0.1:1/<id>/ns/comp/ep``),
a Text chat model card named ``--model`` and a LoRA card ``--lora``, prints
``{"event": "ready", "instance_id": N, "t": time.time()}``, and closes the
Runtime gracefully (printing ``{"event": "exited"}``) when stdin closes.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests/, for servers.dynamo

import waypost
from servers.dynamo import text_card


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("url")
    ap.add_argument("options", type=json.loads)
    ap.add_argument("endpoint", help="ns/comp/ep")
    ap.add_argument("--model")
    ap.add_argument("--lora")
    args = ap.parse_args()
    with waypost.connect(args.url, **args.options) as runtime:
        endpoint = runtime.endpoint(args.endpoint)
        endpoint.register(transport=waypost.TransportType.tcp(f"127.0.0.1:1/{runtime.instance_id:x}/{args.endpoint}"))
        if args.model:
            endpoint.register_model(text_card(args.model))
            if args.lora:
                endpoint.register_model(text_card(args.lora, lora=True, base=args.model), lora=args.lora)
        print(json.dumps({"event": "ready", "instance_id": runtime.instance_id, "t": time.time()}), flush=True)
        sys.stdin.read()  # returns when the parent closes our stdin
    print(json.dumps({"event": "exited", "t": time.time()}), flush=True)


if __name__ == "__main__":
    main()
