"""A worker process of ``waypost demo``: one Runtime serving ``demo/backend/generate``.

Usage: ``python -m waypost.contrib.cli._demo_worker URL NAME RUN_ID TTL PORT``.
It registers, then waits; SIGTERM or SIGINT closes its Runtime (which removes
the registration at once) and exits 0. SIGKILL is the crash the demo shows.
"""

from __future__ import annotations

import os
import signal
import sys
import threading

import waypost


def main(argv: list[str]) -> int:
    url, name, run_id, ttl, port = argv
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    with waypost.connect(url, ttl=float(ttl)) as runtime:
        endpoint = runtime.namespace("demo").component("backend").endpoint("generate")
        # Nothing listens on the port: the demo is about discovery, not requests.
        endpoint.register(waypost.TransportType.tcp(f"127.0.0.1:{port}"),
                          metadata={"worker": name, "run": run_id, "pid": os.getpid()})
        while not stop.wait(0.5):
            pass
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
