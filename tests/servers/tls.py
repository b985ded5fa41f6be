"""TLS material for the servers, made on the fly with ``trustme``: :class:`TLSFiles`, :func:`make_tls`."""

from __future__ import annotations

import dataclasses
import os
import ssl
from pathlib import Path


@dataclasses.dataclass(frozen=True)
class TLSFiles:
    """PEM files of a test CA, a server cert (127.0.0.1, localhost) and a client cert."""

    ca: str
    server_cert: str
    server_key: str
    client_cert: str
    client_key: str

    def client_context(self, client_cert: bool = True) -> ssl.SSLContext:
        """An ``ssl.SSLContext`` trusting the test CA (with the client cert if asked)."""
        ctx = ssl.create_default_context(cafile=self.ca)
        if client_cert:
            ctx.load_cert_chain(self.client_cert, self.client_key)
        return ctx


def make_tls(tmpdir) -> TLSFiles:
    """Create a trustme CA, server and client certs as 0600 files in ``tmpdir``."""
    import trustme  # only needed for TLS tests

    d = Path(tmpdir)
    d.mkdir(parents=True, exist_ok=True)
    ca = trustme.CA(organization_name="waypost test CA")
    server = ca.issue_cert("127.0.0.1", "localhost", common_name="localhost")
    client = ca.issue_cert("waypost-client", common_name="waypost-client")

    def write(name: str, data: bytes) -> str:
        p = d / name
        fd = os.open(p, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.chmod(p, 0o600)
        return str(p)

    return TLSFiles(
        ca=write("ca.pem", ca.cert_pem.bytes()),
        server_cert=write("server.pem", b"".join(b.bytes() for b in server.cert_chain_pems)),
        server_key=write("server-key.pem", server.private_key_pem.bytes()),
        client_cert=write("client.pem", b"".join(b.bytes() for b in client.cert_chain_pems)),
        client_key=write("client-key.pem", client.private_key_pem.bytes()),
    )
