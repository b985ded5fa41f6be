"""A Runtime in a child process, for the suite's cross-process tests.

Usage: ``python -m waypost.contrib.conformance._worker URL OPTIONS_JSON ns/comp/ep…``.
Prints ``{"instance_id": N}`` once registered; closes gracefully when stdin closes.
"""

from __future__ import annotations

import json
import sys

import waypost


def main(argv: list[str]) -> int:
    url, options, *endpoints = argv
    with waypost.connect(url, **json.loads(options)) as runtime:
        for endpoint in endpoints:
            runtime.endpoint(endpoint).register(waypost.TransportType.tcp(f"127.0.0.1:1/{endpoint}"))
        print(json.dumps({"instance_id": runtime.instance_id}), flush=True)
        sys.stdin.read()  # returns when the parent closes our stdin
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
