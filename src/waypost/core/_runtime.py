"""The Runtime: one lease, its registrations, watches and clients; and ``connect()``.

A Runtime holds one lease, kept alive by one background thread however many
endpoints it serves. Its registrations are re-created if the lease is lost.
Its handles (Namespace → Component → Endpoint) live in ``_handles``, shared
with the asyncio twin.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from typing import Any, TypeVar

from ._client import Client
from ._config import parse_choice, parse_float, parse_int, parse_url, resolve_options, resolve_url
from ._errors import AlreadyRegistered, Closed, ConfigError, LeaseLost, WaypostError, shorten
from ._handles import Endpoint, HandleCache, Namespace
from ._instance import KEY_ROOT, DeviceType, Instance, RequestPlaneCodec, TransportType
from ._names import EndpointId
from ._plugins import backend_class, notify, require_installed
from ._query import Query
from ._records import EVENT_CHANNELS, EVENT_SOURCES, MODELS, EventChannel, EventSource, ModelCard, lora_slug, model_card
from ._spi import Backend, Capability, Lease, Option, ParsedURL, WatchHandle
from ._watch import MAX_QUEUED, InstanceView, Watch, decode_items

__all__ = ["RUNTIME_OPTIONS", "Registration", "Runtime", "connect", "random_instance_id"]

_log = logging.getLogger("waypost")
_Tracked = TypeVar("_Tracked", bound="Watch[Any] | Client")

RUNTIME_OPTIONS = (
    Option("ttl", parse_float(0.1, 86400.0), 10.0, "lease time-to-live in seconds", env="WAYPOST_TTL"),
    Option("on_lease_lost", parse_choice("reregister", "shutdown"), "reregister",
           "what to do when the lease is lost: re-register everything, or shut the Runtime down"),
    Option("instance_id", parse_int(1, 2**64 - 1), None,
           "ask for this instance id (backends with the chosen-instance-id capability)"),
    Option("max_queued", parse_int(16, 10_000_000), MAX_QUEUED,
           "events a watch queues for a slow consumer before it drops them and resyncs it"),
)


def connect(url: str | None = None, **options: Any) -> Runtime:
    """Connect to a discovery store and return a :class:`Runtime` holding a fresh lease.

    ``url`` defaults to ``WAYPOST_URL``, then Dynamo's ``DYN_DISCOVERY_BACKEND``
    variables, then the embedded ``file://`` store. Options (keyword > URL
    query > environment > default): ``ttl`` (seconds, default 10),
    ``on_lease_lost`` (``"reregister"`` or ``"shutdown"``), ``instance_id``, and
    whatever the backend declares (see ``waypost backends``). Unknown options
    are a :class:`ConfigError`.
    """
    parsed = parse_url(resolve_url(url))
    cls = backend_class(parsed.scheme)
    require_installed(cls, parsed.scheme)
    runtime_names = {o.name for o in RUNTIME_OPTIONS}
    declared = (*RUNTIME_OPTIONS, *cls.options)
    merged = resolve_options(declared, options, parsed.query, env_names=cls.runtime_option_env,
                             where=f"{parsed.scheme}://")
    backend_options = {k: v for k, v in merged.items() if k not in runtime_names}
    if merged["ttl"] < cls.min_ttl:
        raise ConfigError(f"ttl={merged['ttl']} is below the {parsed.scheme}:// minimum of {cls.min_ttl} s")
    if merged["instance_id"] is not None and Capability.CHOSEN_INSTANCE_ID not in cls.capabilities:
        raise ConfigError(f"the {parsed.scheme}:// backend picks instance ids itself; drop instance_id")
    backend = cls.from_url(parsed, backend_options)
    try:
        return Runtime(backend, parsed, ttl=merged["ttl"], on_lease_lost=merged["on_lease_lost"],
                       instance_id=merged["instance_id"], max_queued=merged["max_queued"])
    except BaseException:
        backend.close()
        raise


class _LostLease(LeaseLost):
    """LeaseLost that remembers which lease a write found lost."""

    def __init__(self, lease: Lease, message: str) -> None:
        super().__init__(message)
        self.lease = lease


ENDPOINT, MODEL = "endpoint", "model"
_Slot = tuple[str, EndpointId, str | None]  # (kind, endpoint, LoRA slug): what one registration occupies


class Registration:
    """One record a Runtime serves: an endpoint instance, or a model card of an endpoint.

    ``unregister()`` (or leaving ``with``) removes it. Its record is built
    with the Runtime's current instance id, so after a lease loss it names the
    new lease.
    """

    def __init__(self, runtime: Runtime, endpoint_id: EndpointId, fields: Mapping[str, Any],
                 kind: str = ENDPOINT, lora: str | None = None) -> None:
        self.runtime = runtime
        self.endpoint_id = endpoint_id
        self.fields = dict(fields)
        self.kind = kind
        self.lora = lora  # the LoRA adapter's slug, for a model card

    @property
    def slot(self) -> _Slot:
        return self.kind, self.endpoint_id, self.lora

    @property
    def record(self) -> Instance | ModelCard:
        """The registered record (an :class:`Instance` or a :class:`ModelCard`)."""
        return self.runtime._record_for(self)

    @property
    def instance(self) -> Instance:
        """The registered endpoint instance, under the Runtime's current instance id."""
        record = self.record
        if not isinstance(record, Instance):
            raise AttributeError(f"{self!r} is a model card: use .model")
        return record

    @property
    def model(self) -> ModelCard:
        """The registered model card, under the Runtime's current instance id."""
        record = self.record
        if not isinstance(record, ModelCard):
            raise AttributeError(f"{self!r} is an endpoint instance: use .instance")
        return record

    @property
    def active(self) -> bool:
        return self.runtime._registrations.get(self.slot) is self

    def update_taints(self, taints: Iterable[str]) -> None:
        """Set a model card's ``runtime_config.taints`` (what Dynamo's ``update_model_taints`` does).

        Watchers of models see an ``Updated`` event, as Dynamo's see ``ModelTaintsUpdated``.
        """
        if isinstance(taints, str | bytes):
            raise ConfigError(f"taints must be an iterable of strings, not one string: {shorten(taints)}")
        try:
            values = list(taints)  # once: a retry after a lease loss must not find a spent generator
        except TypeError:
            raise ConfigError(f"taints must be an iterable of strings, got {type(taints).__name__}") from None
        self.runtime._update_taints(self, values)

    def unregister(self) -> None:
        self.runtime._unregister(self)

    def __enter__(self) -> Registration:
        return self

    def __exit__(self, *exc_info: object) -> None:
        if self.active:
            self.unregister()

    def __repr__(self) -> str:
        what = f"model {self.lora or '(base)'} of " if self.kind == MODEL else ""
        return f"<Registration {what}{self.endpoint_id} {'active' if self.active else 'removed'}>"


class Runtime:
    """A process's connection to discovery: one lease, its registrations, watches and clients."""

    def __init__(self, backend: Backend, url: ParsedURL, *, ttl: float = 10.0,
                 on_lease_lost: str = "reregister", instance_id: int | None = None,
                 max_queued: int = MAX_QUEUED) -> None:
        self.backend = backend
        self.url = url
        self.ttl = ttl
        self.on_lease_lost = on_lease_lost
        self.max_queued = max_queued
        self._lock = threading.RLock()  # guards registrations and the lease; held across store writes
        self._handles_lock = threading.Lock()  # guards open watches; never held on I/O
        self._registrations: dict[_Slot, Registration] = {}
        self._pending_deletes: set[str] = set()  # keys to delete whose first delete failed
        self._handles: HandleCache[Registration, list[Instance], Watch[Instance], Client] = HandleCache(self)
        self._watches: set[Watch[Any] | Client] = set()
        self._last_warning: tuple[str, float] = ("", 0.0)
        self._closed = False
        self._stop = threading.Event()
        self._keepalive_paused_until = 0.0
        self.lease: Lease = backend.grant_lease(ttl, preferred_id=instance_id)
        self._keepalive = threading.Thread(target=self._keepalive_loop, name="waypost-keepalive", daemon=True)
        self._keepalive.start()

    # identity ---------------------------------------------------------------
    @property
    def instance_id(self) -> int:
        return self.lease.id

    @property
    def closed(self) -> bool:
        return self._closed

    def __repr__(self) -> str:
        return f"<Runtime {self.url.redacted} instance_id={self.instance_id:x}{' closed' if self._closed else ''}>"

    # handles ----------------------------------------------------------------
    def namespace(self, name: str) -> Namespace[Registration, list[Instance], Watch[Instance], Client]:
        """The namespace ``name`` (``parent.child`` for a child); the same object for the same name."""
        return self._handles.namespace(name)

    def endpoint(self, endpoint_id: EndpointId | str) -> Endpoint[Registration, list[Instance], Watch[Instance],
                                                                  Client]:
        """The endpoint named by an :class:`EndpointId` or its text (``dyn://ns.comp.ep``, ``ns/comp/ep``)."""
        return self._handles.endpoint(endpoint_id)

    # registration -------------------------------------------------------------
    def _check_open(self) -> None:
        if self._closed:
            raise Closed(f"{self!r} is closed")

    def register(
        self,
        endpoint_id: EndpointId | str,
        transport: TransportType,
        device_type: DeviceType | str | None = None,
        request_plane_codec: RequestPlaneCodec | str | None = None,
        metadata: Mapping[str, Any] | None = None,
    ) -> Registration:
        """Register (create-only) or, if this Runtime already serves it, update ``endpoint_id``.

        If the lease turns out to be lost, the Runtime recovers first (new lease,
        everything re-registered) and then registers; with
        ``on_lease_lost="shutdown"`` it raises :class:`LeaseLost` instead.
        """
        fields = {"transport": transport, "device_type": device_type,
                  "request_plane_codec": request_plane_codec, "metadata": metadata}
        registration, record = self._register((ENDPOINT, _endpoint_id(endpoint_id), None), fields)
        _log.debug("registered %s", record)
        notify("waypost_on_registered", runtime=self, instance=record)
        return registration

    def register_model(self, endpoint_id: EndpointId | str, card: Mapping[str, Any] | bytes | str, *,
                       lora: str | None = None) -> Registration:
        """Publish a model card for ``endpoint_id`` (create-only; an update if this Runtime has it already).

        ``card`` is Dynamo's model deployment card (``card_json``): a mapping or
        its JSON text, kept byte for byte. ``lora`` names a LoRA adapter (its
        slug names the record); ``None`` is the base model. Like an instance,
        the card is attached to the Runtime's lease, re-registered after a lease
        loss and removed by ``unregister()`` or ``close()``.
        """
        slug = None if lora is None else lora_slug(lora)
        slot = (MODEL, _endpoint_id(endpoint_id), slug)
        with self._lock:
            existing = self._registrations.get(slot)
        if existing is not None and existing.fields["lora"] != lora:
            # Two names, one slug, one key: Dynamo would overwrite; refuse rather than lose a card.
            raise AlreadyRegistered(f"LoRA {lora!r} has the same slug {slug!r} (the same key) as LoRA "
                                    f"{existing.fields['lora']!r}, which this Runtime already serves")
        registration, record = self._register(slot, {"card": card, "lora": lora})
        registration.fields["card"] = record.card_json  # checked once: kept as bytes
        _log.debug("registered model %s", record)
        return registration

    def _register(self, slot: _Slot, fields: dict[str, Any]) -> tuple[Registration, Any]:
        """Write ``slot``'s record; after a lost lease, recover first (unless the Runtime shuts down)."""
        try:
            return self._register_once(slot, fields)
        except _LostLease as exc:
            # Recover outside the lock: recovery may wait for the store, and close() needs the lock.
            self._handle_lease_loss(exc.lease, str(exc))
            if self.on_lease_lost == "shutdown":
                raise
            return self._register_once(slot, fields)

    def _register_once(self, slot: _Slot, fields: dict[str, Any]) -> tuple[Registration, Any]:
        with self._lock:
            self._check_open()
            lease = self.lease
            record = self._build(slot, fields)  # validates before any store write
            try:
                return self._write_registration(slot, record, fields), record
            except LeaseLost as exc:
                raise _LostLease(lease, str(exc)) from exc

    def _write_registration(self, slot: _Slot, record: Instance | ModelCard, fields: dict[str, Any]) -> Registration:
        """Store ``record``; only once the store took it does the registration change (lock held)."""
        key, value = record.key, record.to_json()
        existing = self._registrations.get(slot)
        if existing is not None:
            self.backend.replace(self.lease, key, value)
            existing.fields = fields
            return existing
        try:
            self.backend.create(self.lease, key, value)
        except (AlreadyRegistered, ConfigError, LeaseLost):
            raise
        except WaypostError:
            # The write may have landed before the reply was lost: never leave a key
            # that our keepalive would keep alive with nobody tracking it.
            self._pending_deletes.add(key)
            raise
        self._pending_deletes.discard(key)
        kind, endpoint_id, lora = slot
        registration = self._registrations[slot] = Registration(self, endpoint_id, fields, kind, lora)
        return registration

    def _build(self, slot: _Slot, fields: Mapping[str, Any]) -> Instance | ModelCard:
        kind, eid, _ = slot
        if kind == MODEL:
            return model_card(eid.namespace, eid.component, eid.name, self.lease.id, fields["card"], fields["lora"])
        return Instance(eid.namespace, eid.component, eid.name, self.lease.id, **fields)

    def _record_for(self, registration: Registration) -> Instance | ModelCard:
        return self._build(registration.slot, registration.fields)

    def _update_taints(self, registration: Registration, taints: list[str]) -> None:
        if registration.kind != MODEL:
            raise ConfigError(f"{registration!r} is an endpoint instance: only model cards have taints")
        for attempt in range(2):
            with self._lock:
                self._check_open()
                if self._registrations.get(registration.slot) is not registration:
                    raise ConfigError(f"{registration!r} is not registered any more")
                lease = self.lease
                card = self._build(registration.slot, registration.fields)
                assert isinstance(card, ModelCard)
                tainted = card.with_taints(taints)
                try:
                    self.backend.replace(lease, tainted.key, tainted.to_json())
                except LeaseLost as exc:
                    lost = _LostLease(lease, str(exc))
                else:
                    registration.fields["card"] = tainted.card_json
                    return
            self._handle_lease_loss(lost.lease, str(lost))  # outside the lock, as for register()
            if attempt or self.on_lease_lost == "shutdown":
                raise lost

    def _unregister(self, registration: Registration) -> None:
        """Forget the registration now; delete its key now, or from the keepalive thread if the store fails.

        Either way it is never re-registered after a lease loss (no phantom).
        """
        with self._lock:
            if self._registrations.get(registration.slot) is not registration:
                return
            del self._registrations[registration.slot]
            record = self._record_for(registration)
            if not self._closed:
                try:
                    self.backend.delete(self.lease, record.key)
                except WaypostError as exc:
                    self._pending_deletes.add(record.key)
                    _log.warning("could not delete %s now (%s); the keepalive thread retries", record, exc)
        self._notify_unregistered([registration])

    def _notify_unregistered(self, registrations: Iterable[Registration]) -> None:
        for registration in registrations:
            if registration.kind == ENDPOINT:  # the observer hooks are about endpoint instances
                notify("waypost_on_unregistered", runtime=self, instance=self._record_for(registration))

    def registrations(self) -> list[Registration]:
        """This Runtime's active registrations (a snapshot; it never waits for a store write)."""
        return list(self._registrations.copy().values())

    # reading ------------------------------------------------------------------
    def list_instances(self, query: Query | str | None = None) -> list[Instance]:
        """Every instance matching ``query`` (a :class:`Query` or its text; default: all), sorted; one read."""
        return self._list(KEY_ROOT, query)

    def list_models(self, query: Query | str | None = None) -> list[ModelCard]:
        """Every model card (``v1/mdc``) of the endpoints ``query`` names, sorted; one read."""
        return self._list(MODELS, query)

    def list_event_channels(self, query: Query | str | None = None) -> list[EventChannel]:
        """Every event channel (``v1/event_channels``) scoped to what ``query`` names, sorted; one read."""
        return self._list(EVENT_CHANNELS, query)

    def list_event_sources(self, query: Query | str | None = None) -> list[EventSource]:
        """Every event source (``v1/event_sources``) scoped to what ``query`` names, sorted; one read."""
        return self._list(EVENT_SOURCES, query)

    def _list(self, bucket: str, query: Query | str | None) -> list[Any]:
        query = Query.of(query)
        self._check_open()
        return sorted(decode_items(self.backend.list(query.prefix_of(bucket)), query, bucket).values(), key=str)

    def _start_watch(self, query: Query, bucket: str = KEY_ROOT) -> Callable[[InstanceView[Any]], WatchHandle]:
        def start(view: InstanceView[Any]) -> WatchHandle:
            return self.backend.watch(query.prefix_of(bucket), view)

        return start

    def watch(self, query: Query | str | None = None, *,
              notify: Callable[[], None] | None = None) -> Watch[Instance]:
        """Watch ``query`` (default: all): the current instances as ``Added``, then changes.

        ``notify`` is called from the watch's thread whenever events are ready
        (the seam for event loops; see :class:`Watch`).
        """
        return self._watch(KEY_ROOT, query, notify)

    def watch_models(self, query: Query | str | None = None, *,
                     notify: Callable[[], None] | None = None) -> Watch[ModelCard]:
        """Watch the model cards of ``query``: ``Added``, ``Updated`` (e.g. taints), ``Removed``."""
        return self._watch(MODELS, query, notify)

    def watch_event_channels(self, query: Query | str | None = None, *,
                             notify: Callable[[], None] | None = None) -> Watch[EventChannel]:
        """Watch the event channels scoped to what ``query`` names."""
        return self._watch(EVENT_CHANNELS, query, notify)

    def watch_event_sources(self, query: Query | str | None = None, *,
                            notify: Callable[[], None] | None = None) -> Watch[EventSource]:
        """Watch the event sources scoped to what ``query`` names."""
        return self._watch(EVENT_SOURCES, query, notify)

    def _watch(self, bucket: str, query: Query | str | None, notify: Callable[[], None] | None) -> Watch[Any]:
        query = Query.of(query)
        self._check_open()
        return self._track(Watch(query, self._start_watch(query, bucket), on_close=self._forget, notify=notify,
                                 max_queued=self.max_queued, bucket=bucket))

    def client(self, endpoint_id: EndpointId | str, down_period: float = 5.0, *,
               notify: Callable[[], None] | None = None) -> Client:
        """A live, watch-fed set of ``endpoint_id``'s instances with pickers; see :class:`Client`."""
        endpoint_id = _endpoint_id(endpoint_id)
        self._check_open()
        return self._track(Client(endpoint_id, self._start_watch(Query.from_endpoint_id(endpoint_id)),
                                  down_period=down_period, on_close=self._forget, notify=notify))

    def _track(self, closable: _Tracked) -> _Tracked:
        """Remember an open watch or client so ``close()`` closes it, unless close already ran."""
        with self._handles_lock:
            if not self._closed:
                self._watches.add(closable)
                return closable
        closable.close()
        raise Closed(f"{self!r} closed while the watch was starting")

    def _forget(self, watch: Watch[Any] | Client) -> None:
        with self._handles_lock:
            self._watches.discard(watch)

    # lease ----------------------------------------------------------------------
    @property
    def keepalive_interval(self) -> float:
        return self.ttl / 3

    def _keepalive_loop(self) -> None:
        last_ok = time.monotonic()
        while not self._stop.wait(self._next_keepalive_delay(last_ok)):
            if time.monotonic() < self._keepalive_paused_until:
                continue
            lease = self.lease
            try:
                self.backend.keep_alive(lease)
                last_ok = time.monotonic()
                self._retry_pending_deletes()
            except LeaseLost as exc:
                self._handle_lease_loss(lease, str(exc))
                last_ok = time.monotonic()
            except WaypostError as exc:
                self._warn_keepalive(f"keepalive of lease {lease.id:x} failed ({exc}); retrying")
            except Exception:  # never let the keepalive thread die silently
                _log.exception("keepalive of lease %x raised; retrying", lease.id)

    def _warn_keepalive(self, message: str) -> None:
        """Log a failed keepalive; the same failure again only every 30 s (it is retried every ttl/12)."""
        last, at = self._last_warning
        now = time.monotonic()
        if message != last or now - at >= 30.0:
            self._last_warning = (message, now)
            _log.warning("%s", message)
        else:
            _log.debug("%s", message)

    def _next_keepalive_delay(self, last_ok: float) -> float:
        overdue = time.monotonic() - last_ok >= self.keepalive_interval
        # After a failure, retry faster so an outage is noticed within one period.
        delay = self.keepalive_interval / (4 if overdue else 1)
        paused = self._keepalive_paused_until - time.monotonic()
        return max(delay, paused, 0.01)

    def _retry_pending_deletes(self) -> None:
        with self._lock:
            for key in list(self._pending_deletes):
                self.backend.delete(self.lease, key)  # raises on failure: retried next period
                self._pending_deletes.discard(key)

    def _handle_lease_loss(self, lost: Lease, reason: str) -> None:
        """Recover from the loss of ``lost`` once, whichever thread noticed it first."""
        if self.on_lease_lost == "shutdown":
            self._shut_down_after_loss(lost, reason)
            return
        recreated: set[_Slot] = set()
        refreshed = time.monotonic()
        while not self._stop.is_set():
            try:
                with self._lock:
                    if self._closed or (self.lease is not lost and not recreated):
                        return  # closed, or another thread already recovered
                    if self.lease is lost:
                        self.lease = self.backend.grant_lease(self.ttl, preferred_id=lost.id)
                        refreshed = time.monotonic()
                        self._pending_deletes.clear()  # those keys died with the lost lease
                    for slot, registration in list(self._registrations.items()):
                        if slot not in recreated:
                            # This is the keepalive thread: on a slow store (a whole fleet recovering at
                            # once) re-creating can outlast the ttl, so keep the new lease alive meanwhile.
                            if time.monotonic() - refreshed >= self.keepalive_interval:
                                self.backend.keep_alive(self.lease)
                                refreshed = time.monotonic()
                            self._recreate(registration)
                            recreated.add(slot)
                    count = len(self._registrations)
                break
            except LeaseLost:
                with self._lock:  # the replacement lease died too: start over with a new one
                    lost, recreated = self.lease, set()
                # Spread a fleet's retries (they all lost their leases at once) instead of a storm.
                self._stop.wait(self.keepalive_interval * int.from_bytes(os.urandom(2)) / 65536)
            except WaypostError as exc:
                # Keep the lease we were granted; only the remaining endpoints are retried.
                _log.warning("re-registration after lease loss failed (%s); retrying", exc)
                self._stop.wait(self.keepalive_interval / 4)
        else:
            return
        _log.warning("lease %x lost (%s); re-registered %d registration(s) under lease %x",
                     lost.id, reason, count, self.lease.id)
        notify("waypost_on_lease_lost", runtime=self, old_instance_id=lost.id,
               new_instance_id=self.lease.id, reason=reason)

    def _shut_down_after_loss(self, lost: Lease, reason: str) -> None:
        with self._lock:
            if self._closed or self._stop.is_set():
                return
            self._stop.set()
            registrations = list(self._registrations.values())
            self._registrations.clear()
        _log.error("lease %x lost (%s); shutting the Runtime down (on_lease_lost=shutdown)", lost.id, reason)
        self._notify_unregistered(registrations)
        notify("waypost_on_lease_lost", runtime=self, old_instance_id=lost.id, new_instance_id=None,
               reason=reason)
        threading.Thread(target=self.close, name="waypost-shutdown", daemon=True).start()

    def _recreate(self, registration: Registration) -> None:
        record = self._record_for(registration)
        try:
            self.backend.create(self.lease, record.key, record.to_json())
        except AlreadyRegistered:
            # The key is named by the lease we were just granted: a stale copy of ours.
            self.backend.replace(self.lease, record.key, record.to_json())

    # lifecycle --------------------------------------------------------------------
    def close(self) -> None:
        """Remove every registration and revoke the lease now; close watches and clients."""
        with self._lock, self._handles_lock:
            if self._closed:
                return
            self._closed = True
            # Taken under the lock, so a racing unregister() finds nothing and hooks fire once.
            registrations = list(self._registrations.values())
            self._registrations.clear()
            watches = list(self._watches)
        self._stop.set()
        if self._keepalive is not threading.current_thread():
            self._keepalive.join()
        for watch in watches:
            watch.close()
        try:
            self.backend.revoke_lease(self.lease.id)
        except WaypostError as exc:
            _log.warning("could not revoke lease %x on close (%s); it expires within %s s",
                         self.lease.id, exc, self.ttl)
        finally:
            self.backend.close()
        self._notify_unregistered(registrations)

    def _abandon(self) -> None:
        """Behave like a crashed process (no unregister, no revoke): see :mod:`waypost.core.faults`."""
        with self._lock, self._handles_lock:
            self._closed = True
            watches = list(self._watches)
        self._stop.set()
        self._keepalive.join()
        for watch in watches:
            watch.close()
        self.backend.close()

    def _pause_keepalive(self, seconds: float) -> None:
        """Skip keepalives for ``seconds`` (a process paused past its ttl): see :mod:`waypost.core.faults`."""
        self._keepalive_paused_until = time.monotonic() + seconds

    def __enter__(self) -> Runtime:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


def random_instance_id() -> int:
    """A random non-zero u64, for backends whose store does not assign lease ids."""
    while True:
        value = int.from_bytes(os.urandom(8))
        if value:
            return value


def _endpoint_id(endpoint_id: EndpointId | str) -> EndpointId:
    return endpoint_id if isinstance(endpoint_id, EndpointId) else EndpointId.parse(endpoint_id)
