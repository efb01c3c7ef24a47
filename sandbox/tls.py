"""The sandbox's certificate authority and server certificate.

The CA is made once per data directory and kept, so clients that trust `ca-bundle.pem` keep trusting the
sandbox across restarts. The bundle is certifi's roots plus this CA, so one `SSL_CERT_FILE` serves both
the sandbox and anything else a client may reach.
"""

from __future__ import annotations

import ssl
from dataclasses import dataclass
from pathlib import Path

import certifi
import trustme

SERVER_NAMES = ("127.0.0.1", "localhost", "::1")


@dataclass(frozen=True)
class TlsFiles:
    ca_pem: Path
    ca_bundle: Path
    server_cert: Path
    server_key: Path

    def server_context(self) -> ssl.SSLContext:
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.load_cert_chain(self.server_cert, self.server_key)
        return context


def ensure_tls(data_dir: Path) -> TlsFiles:
    """Load the data directory's CA (making it on first use) and issue a fresh server certificate."""
    ca_pem = data_dir / "ca.pem"
    ca_key = data_dir / "ca-key.pem"
    if ca_pem.exists() and ca_key.exists():
        ca = trustme.CA.from_pem(ca_pem.read_bytes(), ca_key.read_bytes())
    else:
        ca = trustme.CA(organization_name="Notifier sandbox")
        ca.cert_pem.write_to_path(str(ca_pem))
        ca.private_key_pem.write_to_path(str(ca_key))
        ca_key.chmod(0o600)
    bundle = data_dir / "ca-bundle.pem"
    bundle.write_bytes(Path(certifi.where()).read_bytes() + b"\n" + ca_pem.read_bytes())
    leaf = ca.issue_cert(*SERVER_NAMES)
    server_cert = data_dir / "server.pem"
    server_key = data_dir / "server-key.pem"
    server_cert.write_bytes(b"".join(blob.bytes() for blob in leaf.cert_chain_pems))
    leaf.private_key_pem.write_to_path(str(server_key))
    server_key.chmod(0o600)
    return TlsFiles(ca_pem, bundle, server_cert, server_key)
