"""Real etcd (3.5 or 3.4): :class:`EtcdServer` (one member) and :class:`EtcdCluster` (several, on loopback)."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

from . import _process
from ._process import (
    _POLL,
    DEFAULT_START_TIMEOUT,
    HOST,
    ServerError,
    _env_without,
    _http_request,
    _port_in_use_msg,
    _Server,
    _wait_until,
)
from .tls import TLSFiles

_ETCD_BINARIES = {"3.5": "etcd", "3.4": "etcd-3.4"}


class EtcdServer(_Server):
    """A real etcd (3.5 or 3.4) with fast elections (heartbeat 10 ms, election 50 ms).

    ``url`` is ``etcd://127.0.0.1:PORT`` (``etcds://`` with TLS). With ``tls``
    the client port serves TLS (``client_cert_auth`` makes client certs
    mandatory); peers always talk plain HTTP on loopback.

    For clusters use :class:`EtcdCluster`; the ``name``/``peer_port``/
    ``initial_cluster`` arguments are for its use.
    """

    kind = "etcd"
    scheme = "etcd"
    tls_scheme = "etcds"

    def __init__(
        self,
        version: str = "3.5",
        tls: TLSFiles | None = None,
        client_cert_auth: bool = False,
        *,
        name: str = "default",
        port: int | None = None,
        peer_port: int | None = None,
        initial_cluster: str | None = None,
        cluster_token: str = "waypost-test",
        extra_args: Sequence[str] = (),
        workdir: str | None = None,
        start_timeout: float = DEFAULT_START_TIMEOUT,
    ):
        if version not in _ETCD_BINARIES:
            raise ValueError(f"etcd version must be one of {sorted(_ETCD_BINARIES)}, not {version!r}")
        if client_cert_auth and tls is None:
            raise ValueError("client_cert_auth needs tls")
        # Arguments checked first: nothing (temp dir, process) exists yet to leak.
        super().__init__(
            _ETCD_BINARIES[version], tls=tls, workdir=workdir, start_timeout=start_timeout, process_name=f"etcd-{name}"
        )
        self.version = version
        self.client_cert_auth = client_cert_auth
        self.name = name
        self.port = port
        self.peer_port = peer_port
        self.initial_cluster = initial_cluster
        self.cluster_token = cluster_token
        self.extra_args = list(extra_args)
        self._fixed_ports = port is not None
        self._member_id: str | None = None

    @property
    def client_url(self) -> str:
        return f"{'https' if self.tls else 'http'}://{HOST}:{self.port}"

    @property
    def peer_url(self) -> str:
        return f"http://{HOST}:{self.peer_port}"

    def _pick_ports(self) -> None:
        if self._fixed_ports:
            return
        self.port = _process.free_port()
        self.peer_port = _process.free_port()

    def _argv(self) -> list[str]:
        argv = [
            self.binary,
            "--name",
            self.name,
            "--data-dir",
            str(self.data_dir),
            "--listen-client-urls",
            self.client_url,
            "--advertise-client-urls",
            self.client_url,
            "--listen-peer-urls",
            self.peer_url,
            "--initial-advertise-peer-urls",
            self.peer_url,
            "--initial-cluster",
            self.initial_cluster or f"{self.name}={self.peer_url}",
            "--initial-cluster-state",
            "new",
            "--initial-cluster-token",
            self.cluster_token,
            "--heartbeat-interval",
            "10",
            "--election-timeout",
            "50",
            "--logger",
            "zap",
            "--log-level",
            "warn",
        ]
        if self.version == "3.5":
            argv += ["--unsafe-no-fsync"]
        if self.tls:
            argv += [
                "--cert-file",
                self.tls.server_cert,
                "--key-file",
                self.tls.server_key,
            ]
            if self.client_cert_auth:
                # etcd verifies client certificates whenever it is given a trusted CA.
                argv += ["--client-cert-auth", "--trusted-ca-file", self.tls.ca]
        return argv + self.extra_args

    def _env(self) -> dict:
        # Don't let ETCD_* variables from the environment change the config.
        return _env_without("ETCD_", keep=("ETCD_UNSUPPORTED_ARCH",))

    def _ready(self) -> bool:
        status, body = _http_request(self.port, "GET", "/health", tls=self.tls)
        return status == 200 and json.loads(body).get("health") in ("true", True)

    def status(self, timeout: float = 2.0) -> dict:
        """``/v3/maintenance/status`` (JSON gateway): ``header.member_id``,
        ``leader``, ``raftTerm``, ``version``... (ids are decimal strings)."""
        status, body = _http_request(self.port, "POST", "/v3/maintenance/status", b"{}", self.tls, timeout=timeout)
        if status != 200:
            raise ServerError(f"etcd status on {self.endpoint}: HTTP {status}: {body[:200]!r}")
        st = json.loads(body)
        self._member_id = st["header"]["member_id"]
        return st

    @property
    def member_id(self) -> str:
        """This member's raft id (decimal string, as the JSON gateway shows it)."""
        if self._member_id is None:
            self.status()
        return self._member_id


class EtcdCluster:
    """A 3-member (by default) etcd cluster on loopback.

    ``members`` are :class:`EtcdServer` objects, each killable/restartable/
    pausable on its own; ``endpoints`` is ``["127.0.0.1:PORT", ...]`` and
    ``url`` is ``etcd://127.0.0.1:P1,127.0.0.1:P2,127.0.0.1:P3``.
    """

    kind = "etcd-cluster"

    def __init__(
        self,
        size: int = 3,
        version: str = "3.5",
        tls: TLSFiles | None = None,
        client_cert_auth: bool = False,
        start_timeout: float = DEFAULT_START_TIMEOUT,
    ):
        if size < 1:
            raise ValueError("size must be >= 1")
        self.size = size
        self.version = version
        self.tls = tls
        self.client_cert_auth = client_cert_auth
        self.start_timeout = start_timeout
        self.workdir = Path(tempfile.mkdtemp(prefix=f"waypost-{self.kind}-"))
        self.members: list[EtcdServer] = []
        self._closed = False
        self._token_n = 0
        _process._track(self)

    def _build(self) -> None:
        for m in self.members:
            m.close()
        self._token_n += 1
        ports = [(_process.free_port(), _process.free_port()) for _ in range(self.size)]
        initial = ",".join(f"m{i}=http://{HOST}:{pp}" for i, (_, pp) in enumerate(ports))
        self.members = []
        for i, (cp, pp) in enumerate(ports):
            wd = self.workdir / f"m{i}"
            shutil.rmtree(wd, ignore_errors=True)
            self.members.append(
                EtcdServer(
                    self.version,
                    self.tls,
                    self.client_cert_auth,
                    name=f"m{i}",
                    port=cp,
                    peer_port=pp,
                    initial_cluster=initial,
                    cluster_token=f"waypost-cluster-{os.getpid()}-{self._token_n}",
                    workdir=str(wd),
                    start_timeout=self.start_timeout,
                )
            )

    def start(self, timeout: float | None = None) -> EtcdCluster:
        if self._closed:
            raise ServerError("etcd cluster was closed")
        timeout = self.start_timeout if timeout is None else timeout
        if not self.members:
            for attempt in range(5):
                self._build()
                try:
                    self._start_all(timeout)
                    return self
                except ServerError as e:
                    logs = "".join(m._process.log_text() for m in self.members)
                    for m in self.members:
                        m.kill()
                    if _port_in_use_msg(logs + str(e)) and attempt < 4:
                        continue
                    raise
        self._start_all(timeout)
        return self

    def _start_all(self, timeout: float) -> None:
        # Spawn every member first (they need each other for an election),
        # then wait for each to report healthy.
        pending = [m for m in self.members if not m.running]
        for m in pending:
            m._process.spawn(m._argv(), m._env())
        for m in pending:
            _wait_until(m._ready, m._process, timeout, m._what())
            m._started_once = True

    def leader(self, timeout: float = 10.0) -> EtcdServer:
        """Wait until every running, unpaused member agrees on a leader that
        is one of them, and return it (use after killing/pausing members)."""
        ids = {}
        deadline = time.monotonic() + timeout
        last: object = None
        while True:
            live = [m for m in self.members if m.running and not m.paused]
            try:
                leaders = set()
                for m in live:
                    st = m.status(timeout=0.5)
                    ids[st["header"]["member_id"]] = m
                    leaders.add(st.get("leader"))
                if len(leaders) == 1:
                    lid = leaders.pop()
                    if lid in ids and ids[lid] in live:
                        return ids[lid]
                last = leaders
            except Exception as e:
                last = e
            if time.monotonic() >= deadline:
                raise ServerError(f"etcd cluster has no agreed leader after {timeout}s (last: {last!r})")
            time.sleep(_POLL)

    def stop(self) -> None:
        for m in self.members:
            m.stop()

    def kill(self) -> None:
        for m in self.members:
            m.kill()

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        for m in self.members:
            m.close()
        shutil.rmtree(self.workdir, ignore_errors=True)
        _process._untrack(self)

    @property
    def endpoints(self) -> list[str]:
        return [m.endpoint for m in self.members]

    @property
    def url(self) -> str:
        scheme = EtcdServer.tls_scheme if self.tls else EtcdServer.scheme
        return f"{scheme}://{','.join(self.endpoints)}"

    def __enter__(self) -> EtcdCluster:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<EtcdCluster {self.url}>"
