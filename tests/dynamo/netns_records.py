"""Every record kind a real Dynamo worker writes, read back by waypost, inside a private network namespace.

Run with the *project's* python by tests/test_dynamo_interop.py, as
``unshare -rn python netns_records.py --backend file|etcd --workdir DIR``:
Dynamo's KvEventPublisher and WorkerMetricsPublisher bind ``tcp://0.0.0.0:0``
(hard-coded in 1.6.1; ``DYN_EVENT_PLANE_HOST`` only changes what they
advertise), so the worker that makes event channels and sources runs where
"every address" is a loopback device nobody else can reach. The store (a file
store, or an etcd started here) and waypost run in the namespace too.

Prints one JSON object: the worker's ``instance_id`` and, before and after a
taint update, ``stored`` (every record as stored, base64) and ``listed``
(what waypost lists, each record's ``to_json()``, base64), by key.
"""

from __future__ import annotations

import argparse
import base64
import fcntl
import json
import socket
import struct
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests/, for servers

import waypost
from servers import EtcdServer
from servers.dynamo import DynamoWorker, dynamo_env, dynamo_python, etcd_records, file_store_records
from waypost.contrib.conformance import wait_until

NAMESPACE, ENDPOINT = "netns", "netns.worker.gen"


def loopback_up() -> None:
    """``ip link set lo up`` without iproute2 (a new network namespace starts with lo down)."""
    siocgifflags, siocsifflags, iff_up = 0x8913, 0x8914, 0x1
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        flags = struct.unpack("16sH", fcntl.ioctl(s, siocgifflags, struct.pack("16sH", b"lo", 0)))[1]
        fcntl.ioctl(s, siocsifflags, struct.pack("16sH", b"lo", flags | iff_up))


#: What the worker writes, by bucket: its instance, base and LoRA cards, kv-events and kv_metrics channels,
#: and the kv-events source.
EXPECTED = {"instances": 1, "mdc": 2, "event_channels": 2, "event_sources": 1}


def bucket_counts(records: dict[str, bytes]) -> dict[str, int]:
    counts: dict[str, int] = {}
    for key in records:
        bucket = key.split("/")[1]
        counts[bucket] = counts.get(bucket, 0) + 1
    return counts


def b64(value: bytes) -> str:
    return base64.b64encode(value).decode()


def snapshot(runtime: waypost.Runtime, stored: dict[str, bytes]) -> dict[str, Any]:
    listed: list[Any] = [*runtime.list_instances(NAMESPACE), *runtime.list_models(NAMESPACE),
                         *runtime.list_event_channels(NAMESPACE), *runtime.list_event_sources(NAMESPACE)]
    return {"stored": {key: b64(value) for key, value in stored.items()},
            "listed": {record.key: b64(record.to_json()) for record in listed}}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--backend", choices=["file", "etcd"], required=True)
    ap.add_argument("--workdir", type=Path, required=True)
    args = ap.parse_args()
    loopback_up()
    python = dynamo_python()
    etcd = None
    if args.backend == "file":
        root = args.workdir / "kv"
        url, options = f"file://{root}", {"ttl": 10.0}
        env = dynamo_env("file", file_root=root)

        def stored() -> dict[str, bytes]:
            return file_store_records(root)
    else:
        etcd = EtcdServer(workdir=str(args.workdir / "etcd")).start()
        url, options = etcd.url, {"ttl": 5.0}
        env = dynamo_env("etcd", etcd_endpoint=etcd.client_url)

        def stored() -> dict[str, bytes]:
            return {key: value for key, (value, _) in etcd_records(etcd.client_url).items()}
    try:
        with waypost.connect(url, **options) as runtime:  # first: it creates the file store's directories
            worker = DynamoWorker(python, env, args.workdir, ENDPOINT, args=["--kv-events", "--metrics"]).start()
            try:
                # The publishers register their channels and sources asynchronously, after "ready".
                wait_until(lambda: bucket_counts(stored()) == EXPECTED, 30.0, what="the worker's records all stored")
                result: dict[str, Any] = {"instance_id": worker.instance_id, "before": snapshot(runtime, stored())}
                worker.command("taints zeta,alpha")
                wait_until(lambda: any(card.taints for card in runtime.list_models(NAMESPACE)), 30.0,
                           what="waypost lists the tainted card")
                result["after_taints"] = snapshot(runtime, stored())
                worker.shutdown()
                result["after_shutdown"] = snapshot(runtime, stored())
            finally:
                worker.close()
    finally:
        if etcd is not None:
            etcd.close()
    print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
