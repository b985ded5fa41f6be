"""Real Redis 7 without persistence: :class:`RedisServer`, and the raw RESP helpers its readiness check speaks."""

from __future__ import annotations

import socket
from urllib.parse import quote

from . import _process
from ._process import DEFAULT_START_TIMEOUT, HOST, ServerError, _Server, _write_config
from .tls import TLSFiles


def _resp_command(*args: str) -> bytes:
    """``args`` as one RESP command (an array of bulk strings)."""
    out = [b"*%d\r\n" % len(args)]
    for a in args:
        b = a.encode()
        out.append(b"$%d\r\n%s\r\n" % (len(b), b))
    return b"".join(out)


def _read_line(sock) -> bytes:
    """One reply line (without ``\\r\\n``), read a byte at a time so nothing past it is consumed."""
    buf = b""
    while not buf.endswith(b"\r\n"):
        chunk = sock.recv(1)
        if not chunk:
            raise ConnectionError("connection closed")
        buf += chunk
    return buf[:-2]


class RedisServer(_Server):
    """A real Redis 7 with no persistence (``save ""``, ``appendonly no``):
    a restart (or kill + start) loses all data, by design.

    - ``password``: ``requirepass`` (the ``default`` user's password).
    - ``acl_user=(user, password, pattern)``: an ACL user allowed keys
      ``~pattern`` and channels ``&pattern`` with ``acl_commands``
      (default ``+@all``). If ``acl_user`` is given without ``password`` the
      ``default`` user is turned off, so every client must AUTH.
    - ``tls``: serve TLS only (``tls-port``, plain port disabled);
      ``client_cert_auth`` makes client certs mandatory.

    ``url`` is ``redis://127.0.0.1:PORT/0`` (``rediss://`` with TLS), without
    credentials; ``auth_url`` adds them (ACL user if any, else password).
    """

    kind = "redis"
    scheme = "redis"
    tls_scheme = "rediss"

    def __init__(
        self,
        password: str | None = None,
        acl_user: tuple[str, str, str] | None = None,
        tls: TLSFiles | None = None,
        *,
        client_cert_auth: bool = False,
        acl_commands: str = "+@all",
        extra_config: str = "",
        start_timeout: float = DEFAULT_START_TIMEOUT,
    ):
        if acl_user and len(acl_user) != 3:
            raise ValueError("acl_user must be (user, password, key-pattern)")
        # Arguments checked first: nothing (temp dir, process) exists yet to leak.
        super().__init__("redis-server", tls=tls, start_timeout=start_timeout)
        self.password = password
        self.acl_user = tuple(acl_user) if acl_user else None
        self.client_cert_auth = client_cert_auth
        self.acl_commands = acl_commands
        self.extra_config = extra_config
        self.data_dir.mkdir(exist_ok=True)
        self.config_path = self.workdir / "redis.conf"

    @property
    def url(self) -> str:
        return f"{super().url}/0"

    @property
    def auth_url(self) -> str:
        """``url`` with credentials (``user:pw@`` for the ACL user, ``:pw@`` for the password)."""
        if self.acl_user:
            cred = f"{quote(self.acl_user[0], safe='')}:{quote(self.acl_user[1], safe='')}@"
        elif self.password:
            cred = f":{quote(self.password, safe='')}@"
        else:
            cred = ""
        return f"{self._url_scheme}://{cred}{self.endpoint}/0"

    def _pick_ports(self) -> None:
        self.port = _process.free_port()

    @staticmethod
    def _q(s: str) -> str:
        # Redis config string quoting.
        return '"' + s.replace("\\", "\\\\").replace('"', '\\"') + '"'

    def _before_spawn(self) -> None:
        # No persistence: make sure nothing survives a restart.
        for f in self.data_dir.glob("*"):
            if f.is_file():
                f.unlink()
        q = self._q
        lines = [
            f"bind {HOST}",
            "protected-mode no",
            "daemonize no",
            f"dir {q(str(self.data_dir))}",
            'save ""',
            "appendonly no",
            'logfile ""',
            "loglevel notice",
            "databases 16",
        ]
        if self.tls:
            lines += [
                "port 0",
                f"tls-port {self.port}",
                f"tls-cert-file {q(self.tls.server_cert)}",
                f"tls-key-file {q(self.tls.server_key)}",
                f"tls-ca-cert-file {q(self.tls.ca)}",
                f"tls-auth-clients {'yes' if self.client_cert_auth else 'no'}",
            ]
        else:
            lines.append(f"port {self.port}")
        if self.password:
            lines.append(f"requirepass {q(self.password)}")
        elif self.acl_user:
            lines.append("user default off")
        if self.acl_user:
            user, pw, pattern = self.acl_user
            lines.append(f"user {user} on >{pw} resetkeys ~{pattern} resetchannels &{pattern} {self.acl_commands}")
        if self.extra_config:
            lines.append(self.extra_config)
        _write_config(self.config_path, lines)

    def _argv(self) -> list[str]:
        return [self.binary, str(self.config_path)]

    def _connect(self, timeout: float = 2.0):
        sock = socket.create_connection((HOST, self.port), timeout=timeout)
        if self.tls:
            sock = self.tls.client_context().wrap_socket(sock, server_hostname=HOST)
        return sock

    def _auth_args(self) -> tuple[str, ...] | None:
        """The ``AUTH`` arguments a client needs (ACL user first, else the password), if any."""
        if self.acl_user:
            return ("AUTH", self.acl_user[0], self.acl_user[1])
        if self.password:
            return ("AUTH", self.password)
        return None

    def command(self, *args: str, timeout: float = 2.0) -> bytes:
        """Run one command over a raw connection (after AUTH), return the
        first reply line (e.g. ``b"+PONG"``). For tests and readiness only."""
        sock = self._connect(timeout)
        try:
            auth = self._auth_args()
            if auth is not None:
                sock.sendall(_resp_command(*auth))
                line = _read_line(sock)
                if not line.startswith(b"+OK"):
                    raise ServerError(f"redis AUTH failed: {line!r}")
            sock.sendall(_resp_command(*args))
            return _read_line(sock)
        finally:
            sock.close()

    def _ready(self) -> bool:
        return self.command("PING", timeout=1.0) == b"+PONG"

    def flushall(self) -> None:
        """``FLUSHALL`` (as the ACL user / with the password if configured)."""
        reply = self.command("FLUSHALL")
        if reply != b"+OK":
            raise ServerError(f"FLUSHALL failed: {reply!r}")
