"""Interop with the real NVIDIA Dynamo 1.6.1 (ai-dynamo-runtime + ai-dynamo wheels), on the file store and on etcd.

Real Dynamo processes (tests/dynamo/worker.py and client.py, and
``python -m dynamo.frontend``) run from the venv ``scripts/install-dynamo``
makes; waypost runs here. Every test runs on both stores:

- what a Dynamo worker registers (instance, base model card, LoRA card), waypost
  lists and watches: Added, Updated on ``update_model_taints``, Removed on a
  graceful shutdown and, after SIGKILL, within the store's bound;
- every record kind the worker writes (with event channels and sources) decodes
  in waypost and re-encodes to the stored bytes exactly;
- what waypost registers, Dynamo's ``Client.instance_ids()`` and the frontend's
  ``GET /v1/models`` see, and stop seeing on ``unregister()``, ``close()`` and a
  SIGKILL of the waypost process;
- taints waypost writes reach Dynamo's MDC watcher (``FpmEventSubscriber``).

Timing bounds: the file store's TTL is Dynamo's fixed 10 s (waypost shares it:
``ttl=10``); on etcd, Dynamo's lease TTL is set to 5 s (``ETCD_LEASE_TTL``, default
30) and waypost's to 2 s. The figures measured are printed at the end of the module
(docs/dynamo-interop.md has a run's).

If the Dynamo venv is missing, every test fails saying how to install it.
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import queue
import shutil
import subprocess
import sys
import threading
import time
import uuid
from collections import defaultdict
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Generic, TypeVar

import pytest

import servers  # tests/servers/, on sys.path through tests/conftest.py
import waypost
from servers.dynamo import (
    HELPERS,
    DynamoClient,
    DynamoFrontend,
    DynamoMissing,
    DynamoProcess,
    DynamoWorker,
    dynamo_env,
    dynamo_python,
    etcd_records,
    file_store_records,
    text_card,
)
from waypost import Added, RecordEvent, Removed, Updated, Watch

pytestmark = pytest.mark.slow

R = TypeVar("R")

BACKENDS = ["file", "etcd"]
FILE_TTL = 10.0  # Dynamo's file store TTL: fixed in 1.6.1; waypost must use the same when sharing
DYNAMO_ETCD_LEASE_TTL = 5  # ETCD_LEASE_TTL for the Dynamo processes (Dynamo's default: 30 s)
WAYPOST_ETCD_TTL = 2.0
SLACK = 5.0  # a loaded 2-core machine: scheduling delays on top of every bound
#: How long after a SIGKILL its records may still be seen. File store: stale after the TTL since the
#: last touch (Dynamo and waypost both touch every TTL/3 and reap every TTL/3; waypost's watch scans
#: every 0.25 s). etcd: the lease expires within its TTL of the last keepalive.
_FILE_KILL_BOUND = FILE_TTL + 2 * FILE_TTL / 3 + SLACK
KILL_BOUND = {
    "file": {"dynamo": _FILE_KILL_BOUND, "waypost": _FILE_KILL_BOUND},
    "etcd": {"dynamo": DYNAMO_ETCD_LEASE_TTL + SLACK, "waypost": WAYPOST_ETCD_TTL + SLACK},
}
WAIT = 30.0  # deadline of a wait for something that should take milliseconds (generous: shared CI machine)


# -- figures --------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def figures(pytestconfig: pytest.Config) -> Iterator[dict[str, list[float]]]:
    """Measured delays (seconds) by name, printed at the end of the module."""
    measured: dict[str, list[float]] = defaultdict(list)
    yield measured
    if not measured:
        return
    if os.environ.get("WAYPOST_DYNAMO_FIGURES"):  # a JSON file to write them to, e.g. for the docs
        Path(os.environ["WAYPOST_DYNAMO_FIGURES"]).write_text(json.dumps(measured, indent=1, sort_keys=True))
    reporter = pytestconfig.pluginmanager.getplugin("terminalreporter")
    capture = pytestconfig.pluginmanager.getplugin("capturemanager")
    if reporter is None or capture is None:
        return
    with capture.global_and_fixture_disabled():  # as capsys.disabled(): shown without -s too
        reporter.write_line("")
        reporter.write_line("Dynamo interop figures (seconds from the cause to the effect; min / max):")
        for name, values in sorted(measured.items()):
            reporter.write_line(f"  {name:<76} {min(values):7.3f} / {max(values):7.3f}  (n={len(values)})")


# -- stores ---------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def dynamo_py() -> str:
    """The Dynamo venv's python; a missing venv fails every test, saying how to install it."""
    try:
        return dynamo_python()
    except DynamoMissing as exc:
        pytest.fail(str(exc), pytrace=False)


@pytest.fixture(scope="module")
def interop_etcd() -> Iterator[servers.EtcdServer]:
    """One etcd for the module's etcd tests (each test has its own namespace)."""
    with servers.EtcdServer() as etcd:
        yield etcd


@dataclass
class Store:
    """One discovery store shared by waypost (here) and Dynamo (child processes)."""

    backend: str
    python: str  # the Dynamo venv's
    workdir: Path
    root: Path | None = None  # file store
    etcd: servers.EtcdServer | None = None
    runtimes: list[waypost.Runtime] = field(default_factory=list)
    processes: list[DynamoProcess] = field(default_factory=list)

    @property
    def url(self) -> str:
        return f"file://{self.root}" if self.etcd is None else self.etcd.url

    @property
    def options(self) -> dict[str, Any]:
        """waypost's options: Dynamo's TTL on the file store, a short lease on etcd."""
        return {"ttl": FILE_TTL} if self.etcd is None else {"ttl": WAYPOST_ETCD_TTL}

    def connect(self) -> waypost.Runtime:
        runtime = waypost.connect(self.url, **self.options)
        self.runtimes.append(runtime)
        return runtime

    def env(self, **extra: str) -> dict[str, str]:
        if self.etcd is None:
            return dynamo_env("file", file_root=self.root, extra=extra)
        return dynamo_env("etcd", etcd_endpoint=self.etcd.client_url, etcd_lease_ttl=DYNAMO_ETCD_LEASE_TTL,
                          extra=extra)

    def stored(self, namespace: str) -> dict[str, bytes]:
        """Every record of ``namespace``, as stored (the file's bytes, the etcd value)."""
        if self.etcd is None:
            assert self.root is not None
            everything = file_store_records(self.root)
        else:
            everything = {key: value for key, (value, _) in etcd_records(self.etcd.client_url).items()}
        return {key: value for key, value in everything.items() if _in_namespace(key, namespace)}

    def leases(self, namespace: str) -> dict[str, int]:
        assert self.etcd is not None
        return {key: lease for key, (_, lease) in etcd_records(self.etcd.client_url).items()
                if _in_namespace(key, namespace)}

    def track(self, process: DynamoProcess) -> DynamoProcess:
        self.processes.append(process)
        return process

    def worker(self, endpoint: str, **kwargs: Any) -> DynamoWorker:
        worker = DynamoWorker(self.python, self.env(), self.workdir, endpoint, **kwargs)
        self.track(worker)
        return worker

    def client(self, endpoint: str, **kwargs: Any) -> DynamoClient:
        client = DynamoClient(self.python, self.env(), self.workdir, endpoint, **kwargs)
        self.track(client)
        return client

    def frontend(self, namespace: str) -> DynamoFrontend:
        # DYN_NAMESPACE: the frontend lists this test's models only (etcd is shared by the module).
        frontend = DynamoFrontend(self.python, self.env(DYN_NAMESPACE=namespace), self.workdir)
        self.track(frontend)
        return frontend

    def waypost_process(self, endpoint: str, model: str, lora: str) -> DynamoProcess:
        """A waypost Runtime in a child process (the project's python), to be SIGKILLed."""
        env = {k: v for k, v in os.environ.items() if not k.startswith(("DYN_", "WAYPOST_", "ETCD_"))}
        argv = [sys.executable, str(HELPERS / "waypost_worker.py"), self.url, json.dumps(self.options), endpoint,
                "--model", model, "--lora", lora]
        process = DynamoProcess("waypost-worker", argv, env, self.workdir)
        self.track(process)
        return process

    def close(self) -> None:
        for process in reversed(self.processes):
            process.close()
        for runtime in self.runtimes:
            runtime.close()


def _in_namespace(key: str, namespace: str) -> bool:
    # v1/instances/{ns}/..., v1/mdc/{ns}/..., v1/event_*/namespace/{ns}/...
    parts = key.split("/")
    return len(parts) > 3 and (parts[2] == namespace or parts[2:4] == ["namespace", namespace])


@pytest.fixture(params=BACKENDS)
def store(request: pytest.FixtureRequest, dynamo_py: str, tmp_path: Path) -> Iterator[Store]:
    if request.param == "file":
        made = Store("file", dynamo_py, tmp_path, root=tmp_path / "kv")
        # waypost first: it creates the store's directories (0700) before Dynamo would.
        made.connect()
    else:
        made = Store("etcd", dynamo_py, tmp_path, etcd=request.getfixturevalue("interop_etcd"))
    try:
        yield made
    finally:
        made.close()


def new_namespace() -> str:
    return f"ix{uuid.uuid4().hex[:10]}"


# -- helpers --------------------------------------------------------------------------------------


class TimedWatch(Generic[R]):
    """A watch drained by a thread of its own: each event carries when it arrived, not when the test looked."""

    def __init__(self, watch: Watch[R]) -> None:
        self.watch = watch
        self._events: queue.Queue[tuple[float, RecordEvent[R]]] = queue.Queue()
        self.log: list[RecordEvent[R]] = []  # every event, in order
        self.error: BaseException | None = None
        threading.Thread(target=self._drain, name="interop-watch", daemon=True).start()

    def _drain(self) -> None:
        try:
            for event in self.watch:  # ends when the watch is closed
                self.log.append(event)
                self._events.put((time.time(), event))
        except BaseException as exc:
            self.error = exc

    def next(self, wanted: Callable[[Any], bool], count: int, timeout: float, what: str) -> list[tuple[float, Any]]:
        """The next ``count`` events that satisfy ``wanted`` (others are passed over), with their arrival times."""
        found: list[tuple[float, Any]] = []
        deadline = time.monotonic() + timeout
        while len(found) < count:
            try:
                arrived, event = self._events.get(timeout=max(deadline - time.monotonic(), 0.001))
            except queue.Empty:
                raise AssertionError(f"{what}: {len(found)} of {count} events within {timeout:.0f} s "
                                     f"(watch error: {self.error!r}); events so far: {self.log}") from None
            if wanted(event):
                found.append((arrived, event))
        return found

    def arrived(self) -> list[tuple[float, Any]]:
        """The events that arrived since the last look, without waiting."""
        events = []
        with contextlib.suppress(queue.Empty):
            while True:
                events.append(self._events.get_nowait())
        return events


def kinds(watch: TimedWatch[Any]) -> list[tuple[str, str]]:
    """What a watch delivered, as ``(event type, key)``."""
    return [(type(e).__name__, getattr(getattr(e, "instance", None), "key", "")) for e in watch.log]


def tcp_transport(runtime: waypost.Runtime, endpoint: str) -> waypost.TransportType:
    # Dynamo's own shape: HOST:PORT/{instance id:x}/{ns}/{comp}/{ep}; nothing listens on port 1.
    return waypost.TransportType.tcp(f"127.0.0.1:1/{runtime.instance_id:x}/{endpoint}")


# -- 1. a real Dynamo worker, seen by waypost -----------------------------------------------------


def test_dynamo_worker_seen_by_waypost(store: Store, figures: dict[str, list[float]]) -> None:
    """Instance, base card, LoRA card: listed exactly, byte for byte; Added, Updated on taints, Removed on shutdown."""
    ns = new_namespace()
    runtime = store.connect()
    models = TimedWatch(runtime.watch_models(ns))
    instances = TimedWatch(runtime.watch(ns))
    worker = store.worker(f"{ns}.comp.gen", model="base-model", lora="my-lora").start()
    worker.check_loopback_only()
    iid = worker.instance_id
    base_key, lora_key = f"v1/mdc/{ns}/comp/gen/{iid:x}", f"v1/mdc/{ns}/comp/gen/{iid:x}/my-lora"

    # Added, for each record, soon after the worker wrote it.
    [(seen_instance, added_instance)] = instances.next(lambda e: isinstance(e, Added), 1, WAIT,
                                                       "the worker's instance Added")
    added = {e.instance.key: (t, e)
             for t, e in models.next(lambda e: isinstance(e, Added), 2, WAIT, "the worker's two cards Added")}
    assert sorted(added) == [base_key, lora_key]
    assert added_instance.instance.instance_id == iid
    # From the Dynamo call's start (the event often arrives before the call returns).
    figures[f"{store.backend}: Dynamo serve_endpoint() called -> waypost watch Added"].append(
        seen_instance - worker.registered_at("instance")[0])
    for key, kind in ((base_key, "model"), (lora_key, "lora")):
        figures[f"{store.backend}: Dynamo register_model() called -> waypost watch_models Added"].append(
            added[key][0] - worker.registered_at(kind)[0])

    # Exactly those records.
    [instance] = runtime.list_instances(ns)
    assert (instance.namespace, instance.component, instance.endpoint, instance.instance_id) == (ns, "comp", "gen", iid)
    assert instance.transport.kind == "tcp"
    assert instance.transport.address.startswith("127.0.0.1:")
    assert instance.transport.address.endswith(f"/{iid:x}/{ns}/comp/gen")
    cards = {card.key: card for card in runtime.list_models(ns)}
    assert sorted(cards) == [base_key, lora_key]
    base, lora = cards[base_key], cards[lora_key]
    assert (base.lora, base.display_name, base.slug, base.taints) == (None, "base-model", "base-model", ())
    assert (lora.lora, lora.model_suffix, lora.display_name, lora.slug) == ("my-lora", "my-lora", "my-lora", "my-lora")
    assert lora.card["lora"] == {"name": "my-lora"}
    for card in (base, lora):
        assert (card.namespace, card.component, card.endpoint, card.instance_id) == (ns, "comp", "gen", iid)
        assert (card.model_type, card.model_input, card.worker_type, card.context_length) == (
            "Chat", "Text", "aggregated", 0)
    assert runtime.list_event_channels(ns) == [] and runtime.list_event_sources(ns) == []

    # Byte for byte, and nothing stored that waypost does not list.
    stored = store.stored(ns)
    assert sorted(stored) == sorted([instance.key, base_key, lora_key])
    assert stored[instance.key] == instance.to_json()
    assert stored[base_key] == base.to_json()
    assert stored[lora_key] == lora.to_json()
    assert bytes(base.card_json) in stored[base_key]
    if store.etcd is not None:  # one lease for everything, and its id is the instance id
        assert set(store.leases(ns).values()) == {iid}

    # update_model_taints -> Updated (the base card only); clearing them -> Updated again.
    answer = worker.command("taints zeta,alpha")
    [(seen, updated)] = models.next(lambda e: isinstance(e, Updated), 1, WAIT, "Updated on taints")
    assert updated.instance.key == base_key
    assert (updated.instance.taints, updated.previous.taints) == (("alpha", "zeta"), ())
    assert updated.previous == base
    figures[f"{store.backend}: Dynamo update_model_taints() called -> waypost watch_models Updated"].append(
        seen - answer["t0"])
    stored = store.stored(ns)
    assert stored[base_key] == updated.instance.to_json()
    assert b'"taints":["alpha","zeta"]' in stored[base_key]
    assert stored[lora_key] == lora.to_json()  # untouched
    worker.command("taints")
    [(_, cleared)] = models.next(lambda e: isinstance(e, Updated), 1, WAIT, "Updated on clearing taints")
    assert (cleared.instance.key, cleared.instance.taints, cleared.previous.taints) == (base_key, (), ("alpha", "zeta"))
    assert cleared.instance.card["runtime_config"]["taints"] == []
    assert store.stored(ns)[base_key] == cleared.instance.to_json()

    # Graceful shutdown: Removed for everything.
    asked = worker.shutdown()
    removed = models.next(lambda e: isinstance(e, Removed), 2, WAIT, "the cards Removed on shutdown")
    assert sorted(e.instance.key for _, e in removed) == [base_key, lora_key]
    [(gone, removed_instance)] = instances.next(lambda e: isinstance(e, Removed), 1, WAIT,
                                                "the instance Removed on shutdown")
    assert removed_instance.instance.instance_id == iid
    figures[f"{store.backend}: Dynamo runtime.shutdown() -> waypost watch Removed (instance)"].append(gone - asked)
    figures[f"{store.backend}: Dynamo runtime.shutdown() -> waypost watch_models Removed (cards)"].append(
        max(t for t, _ in removed) - asked)
    assert runtime.list_instances(ns) == [] and runtime.list_models(ns) == []
    assert store.stored(ns) == {}
    # Nothing else came: no event for the LoRA card on a taint update, no resync.
    log = kinds(models)
    assert sorted(log[:2]) == [("Added", base_key), ("Added", lora_key)]
    assert log[2:4] == [("Updated", base_key)] * 2
    assert sorted(log[4:]) == [("Removed", base_key), ("Removed", lora_key)]
    assert kinds(instances) == [("Added", instance.key), ("Removed", instance.key)]


def test_dynamo_worker_with_an_upper_case_component_is_listed(store: Store) -> None:
    """Dynamo accepts names waypost would not register (`VllmWorker`): waypost reads, queries and picks them."""
    ns = new_namespace()
    runtime = store.connect()
    worker = store.worker(f"{ns}.VllmWorker.generate", model="upper-model", lora="").start()
    stored = store.stored(ns)  # Dynamo wrote them (the worker is ready)
    assert sorted(stored) == [f"v1/instances/{ns}/VllmWorker/generate/{worker.instance_id:x}",
                              f"v1/mdc/{ns}/VllmWorker/generate/{worker.instance_id:x}"]
    assert [i.instance_id for i in runtime.list_instances(ns)] == [worker.instance_id]
    assert [card.display_name for card in runtime.list_models(ns)] == ["upper-model"]
    with runtime.client(f"{ns}/VllmWorker/generate") as client:
        client.wait_for_instances(timeout=5)
        assert client.round_robin().instance_id == worker.instance_id


# -- 2. every record kind, byte for byte ----------------------------------------------------------


def _unshare() -> list[str]:
    unshare = shutil.which("unshare")
    if unshare is None:
        pytest.fail("`unshare` (util-linux) is needed: Dynamo's event publishers bind 0.0.0.0, so the worker that "
                    "makes event channels runs in a private network namespace", pytrace=False)
    return [unshare, "--user", "--map-root-user", "--net"]


@pytest.mark.parametrize("backend", BACKENDS)
def test_every_dynamo_record_kind_round_trips_byte_exact(backend: str, dynamo_py: str, tmp_path: Path,
                                                         figures: dict[str, list[float]]) -> None:
    """Instance, base card, LoRA card, tainted card, 2 event channels, 1 event source: decoded, re-encoded exactly.

    Runs tests/dynamo/netns_records.py (worker, store and waypost) in a private network namespace.
    """
    argv = [*_unshare(), sys.executable, str(HELPERS / "netns_records.py"), "--backend", backend,
            "--workdir", str(tmp_path)]
    started = time.monotonic()
    done = subprocess.run(argv, capture_output=True, text=True, timeout=180, check=False)
    logs = "\n".join(f"== {p.name}\n{p.read_text(errors='replace')[-3000:]}" for p in sorted(tmp_path.glob("*.log")))
    assert done.returncode == 0, f"netns_records.py failed:\n{done.stderr[-4000:]}\n{logs}"
    figures[f"{backend}: the network-namespace round trip (whole run)"].append(time.monotonic() - started)
    result = json.loads(done.stdout)
    iid = result["instance_id"]
    ns, comp, ep = "netns", "worker", "gen"
    for phase in ("before", "after_taints"):
        stored = {k: base64.b64decode(v) for k, v in result[phase]["stored"].items()}
        listed = {k: base64.b64decode(v) for k, v in result[phase]["listed"].items()}
        assert sorted(listed) == sorted(stored), f"{phase}: stored keys waypost does not list, or the reverse"
        for key, value in stored.items():
            assert listed[key] == value, f"{phase}: {key} re-encodes differently:\n{value!r}\n{listed[key]!r}"
        by_bucket: dict[str, list[str]] = defaultdict(list)
        for key in stored:
            by_bucket[key.split("/")[1]].append(key)
        assert sorted(by_bucket) == ["event_channels", "event_sources", "instances", "mdc"]
        assert by_bucket["instances"] == [f"v1/instances/{ns}/{comp}/{ep}/{iid:x}"]
        base_key = f"v1/mdc/{ns}/{comp}/{ep}/{iid:x}"
        assert sorted(by_bucket["mdc"]) == [base_key, f"{base_key}/my-lora"]
        topics = sorted(key.split("/")[-2] for key in by_bucket["event_channels"])
        assert topics == ["kv-events", "kv_metrics"]
        assert [key.split("/")[-2] for key in by_bucket["event_sources"]] == ["kv-events"]
        prefix = f"namespace/{ns}/component/{comp}/endpoint/{ep}/topic/"
        assert all(key.split("/", 2)[2].startswith(prefix) for key in by_bucket["event_channels"] + by_bucket[
            "event_sources"])
        source = json.loads(stored[by_bucket["event_sources"][0]])
        assert source["metadata"]["worker"]["worker_id"] == iid
        base = stored[base_key]
        assert (b'"taints":["alpha","zeta"]' in base) == (phase == "after_taints")
    assert result["after_shutdown"] == {"stored": {}, "listed": {}}


# -- 3. waypost's records, seen by Dynamo's client and frontend -------------------------------------


def test_waypost_records_seen_by_dynamo_client_and_frontend(store: Store, figures: dict[str, list[float]]) -> None:
    """Instance + base + LoRA from waypost: in instance_ids() and /v1/models; gone on unregister() and close()."""
    ns = new_namespace()
    endpoint = f"{ns}/comp/gen"
    frontend = store.frontend(ns).launch()
    client = store.client(f"{ns}.comp.gen").launch()
    frontend.wait_ready()
    client.wait_ready()
    frontend.check_loopback_only()
    client.check_loopback_only()
    assert frontend.models() == [] and client.view()["instance_ids"] == []

    runtime = store.connect()
    ep = runtime.endpoint(endpoint)
    mark = client.mark()
    registered = time.time()
    reg = ep.register(transport=tcp_transport(runtime, endpoint))
    ep.register_model(text_card("wp-base"))
    lora = ep.register_model(text_card("wp-lora", lora=True, base="wp-base"), lora="wp-lora")
    modelled = time.time()
    seen, view = client.wait_view(lambda v: v["instance_ids"] == [runtime.instance_id], WAIT,
                                  "the Dynamo client sees waypost's instance", mark)
    assert view["instances"] == [{"instance_id": runtime.instance_id, "device_type": None,
                                  "transport": ["tcp", reg.instance.transport.address]}]
    figures[f"{store.backend}: waypost register -> Dynamo Client.instance_ids()"].append(seen - registered)
    listed = frontend.wait_models(["wp-base", "wp-lora"], WAIT, "the frontend lists waypost's models")
    figures[f"{store.backend}: waypost register_model -> frontend GET /v1/models"].append(listed - modelled)

    # The LoRA's unregister(): the frontend drops it alone.
    asked = time.time()
    lora.unregister()
    figures[f"{store.backend}: waypost unregister (LoRA) -> frontend drops it"].append(
        frontend.wait_models(["wp-base"], WAIT, "the frontend drops the LoRA") - asked)
    # The instance's unregister(): the client drops it, and the frontend the base model (no instance, no model).
    mark, asked = client.mark(), time.time()
    reg.unregister()
    seen, _ = client.wait_view(lambda v: v["instance_ids"] == [], WAIT, "the client drops the instance", mark)
    figures[f"{store.backend}: waypost unregister -> Dynamo Client.instance_ids() drops it"].append(seen - asked)
    frontend.wait_models([], WAIT, "the frontend drops the model with no instance")
    assert [card.lora for card in runtime.list_models(ns)] == [None]  # the base card itself is still there

    # Registered again, then close(): everything goes at once.
    mark = client.mark()
    ep.register(transport=tcp_transport(runtime, endpoint))
    ep.register_model(text_card("wp-lora", lora=True, base="wp-base"), lora="wp-lora")
    client.wait_view(lambda v: v["instance_ids"] == [runtime.instance_id], WAIT, "the client sees it again", mark)
    frontend.wait_models(["wp-base", "wp-lora"], WAIT, "the frontend lists both again")
    mark, asked = client.mark(), time.time()
    runtime.close()
    seen, _ = client.wait_view(lambda v: v["instance_ids"] == [], WAIT, "the client drops it on close()", mark)
    figures[f"{store.backend}: waypost close() -> Dynamo Client.instance_ids() drops it"].append(seen - asked)
    figures[f"{store.backend}: waypost close() -> frontend drops the models"].append(
        frontend.wait_models([], WAIT, "the frontend drops both on close()") - asked)
    assert store.stored(ns) == {}


# -- 4. taints waypost writes, seen by Dynamo --------------------------------------------------------


def test_waypost_taints_seen_by_dynamo(store: Store, figures: dict[str, list[float]]) -> None:
    """update_taints() -> runtime_config.taints in Dynamo's MDC watcher (FpmEventSubscriber.get_model_cards())."""
    ns = new_namespace()
    endpoint = f"{ns}/comp/gen"
    client = store.client(f"{ns}.comp.gen", cards=True).start()
    runtime = store.connect()
    ep = runtime.endpoint(endpoint)
    ep.register(transport=tcp_transport(runtime, endpoint))
    card = ep.register_model(text_card("wp-tainted"))
    worker = str(runtime.instance_id)

    def taints(view: dict[str, Any]) -> Any:
        found = view["cards"].get(worker)
        return None if found is None else found["runtime_config"].get("taints", "absent")

    mark = client.mark()
    client.wait_view(lambda v: taints(v) == "absent", WAIT, "Dynamo's watcher has the card, with no taints")
    asked = time.time()
    card.update_taints(["zeta", "alpha"])
    seen, view = client.wait_view(lambda v: taints(v) == ["alpha", "zeta"], WAIT, "Dynamo sees the taints", mark)
    assert view["cards"][worker]["display_name"] == "wp-tainted"
    assert card.model.taints == ("alpha", "zeta")
    figures[f"{store.backend}: waypost update_taints -> Dynamo MDC watcher"].append(seen - asked)
    mark = client.mark()
    card.update_taints([])
    client.wait_view(lambda v: taints(v) == [], WAIT, "Dynamo sees the taints cleared", mark)
    mark = client.mark()
    runtime.close()
    client.wait_view(lambda v: worker not in v["cards"], WAIT, "Dynamo's watcher drops the card on close()", mark)


# -- SIGKILL, both ways at once ----------------------------------------------------------------------


def test_sigkilled_processes_expire_both_ways(store: Store, figures: dict[str, list[float]]) -> None:
    """A SIGKILLed Dynamo worker leaves waypost's view, a SIGKILLed waypost process Dynamo's, within the bounds.

    Both are killed at the same moment, so the TTL waits overlap.
    """
    ns = new_namespace()
    runtime = store.connect()
    dynamo_models = TimedWatch(runtime.watch_models(f"{ns}/dyn"))
    dynamo_instances = TimedWatch(runtime.watch(f"{ns}/dyn"))
    frontend = store.frontend(ns).launch()
    client = store.client(f"{ns}.wp.gen").launch()
    worker = store.worker(f"{ns}.dyn.gen", model="dyn-base", lora="dyn-lora").launch()
    crashing = store.waypost_process(f"{ns}/wp/gen", "wp-base", "wp-lora").launch()
    for process in (frontend, client, worker):
        process.wait_ready()
    _, ready = crashing.wait_line(lambda line: line.get("event") == "ready", 60, "the waypost process ready")
    waypost_iid = int(ready["instance_id"])
    worker.check_loopback_only()

    dynamo_instances.next(lambda e: isinstance(e, Added), 1, WAIT, "the worker's instance Added")
    dynamo_models.next(lambda e: isinstance(e, Added), 2, WAIT, "the worker's cards Added")
    client.wait_view(lambda v: v["instance_ids"] == [waypost_iid], WAIT, "the client sees the waypost process")
    frontend.wait_models(["dyn-base", "dyn-lora", "wp-base", "wp-lora"], WAIT, "the frontend lists all four")

    killed = worker.kill()
    crashing.kill()
    # What must go, and whose SIGKILL bound applies.
    dropped = {"waypost watch_models: the worker's cards Removed": "dynamo",
               "waypost watch: the worker's instance Removed": "dynamo",
               "frontend: the worker's models dropped": "dynamo",
               "Dynamo client: the waypost process's instance dropped": "waypost",
               "frontend: the waypost process's models dropped": "waypost"}
    removed: dict[str, tuple[TimedWatch[Any], int, set[str]]] = {
        "waypost watch_models: the worker's cards Removed": (dynamo_models, 2, set()),
        "waypost watch: the worker's instance Removed": (dynamo_instances, 1, set())}
    bound = KILL_BOUND[store.backend]
    deadline = time.monotonic() + max(bound.values()) + 20
    gone: dict[str, float] = {}
    while len(gone) < len(dropped) and time.monotonic() < deadline:
        for name, (watch, count, keys) in removed.items():
            for arrived, event in watch.arrived():
                if isinstance(event, Removed):
                    keys.add(event.instance.key)
                    if len(keys) == count:
                        gone.setdefault(name, arrived)
        view = client.view()
        if waypost_iid not in view["instance_ids"]:
            gone.setdefault("Dynamo client: the waypost process's instance dropped", float(view["t"]))
        models = frontend.models()
        if models is not None:
            if not {"dyn-base", "dyn-lora"} & set(models):
                gone.setdefault("frontend: the worker's models dropped", time.time())
            if not {"wp-base", "wp-lora"} & set(models):
                gone.setdefault("frontend: the waypost process's models dropped", time.time())
        time.sleep(0.02)
    delays = {name: at - killed for name, at in gone.items()}
    for name, delay in delays.items():
        figures[f"{store.backend}: SIGKILL -> {name}"].append(delay)
    assert sorted(delays) == sorted(dropped), f"not all seen gone within the deadline: {delays}"
    for name, delay in delays.items():
        limit = bound[dropped[name]]
        assert delay <= limit, f"{name} {delay:.1f} s after the SIGKILL: more than the bound of {limit:.1f} s"
    assert runtime.list_instances(ns) == [] and runtime.list_models(ns) == []


# -- the Dynamo venv must be there ------------------------------------------------------------------


def test_missing_dynamo_venv_fails_loudly(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """No Dynamo venv is a failure naming scripts/install-dynamo, never a skip."""
    monkeypatch.setenv("WAYPOST_DYNAMO_VENV", str(tmp_path / "nowhere"))
    with pytest.raises(DynamoMissing, match=r"scripts/install-dynamo"):
        dynamo_python()

