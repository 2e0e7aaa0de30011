"""TLS at the edge: one server context for HTTP ingress, credentials for gRPC ingress, both
reloaded from their files when those change.

- TLS 1.2 at least; for TLS 1.2 only forward-secret AEAD suites (ECDHE with AES-GCM or
  ChaCha20-Poly1305), TLS 1.3's own suites as OpenSSL has them; no compression or
  renegotiation.
- ``--tls-client-ca``: mutual TLS, a client certificate signed by that CA is required.
- Rotation (cert-manager rewrites the Secret's files in place): ``reload_if_changed`` loads the
  new pair into the same context, so new handshakes use it and established connections go on.
  A half-written pair (key and certificate not matching yet) is skipped until it is whole. The
  gRPC server asks ``grpc_credentials``' fetcher at each handshake, which answers the new pair
  once it has changed.
"""

from __future__ import annotations

import logging
import os
import ssl
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc  # type: ignore[import-untyped]

log = logging.getLogger("infergraph.router")
TLS12_CIPHERS = "ECDHE+AESGCM:ECDHE+CHACHA20:!aNULL"


@dataclass(frozen=True, slots=True)
class TlsFiles:
    """Where the server's certificate chain and key are, and the CA clients must chain to."""

    cert: Path
    key: Path
    client_ca: Path | None = None


def _stamp(paths: list[Path]) -> tuple[tuple[int, int, int], ...]:
    """What changes when a file is rewritten or its symlink swapped (cert-manager's way)."""
    stamps = []
    for path in paths:
        info = os.stat(path)
        stamps.append((info.st_ino, info.st_mtime_ns, info.st_size))
    return tuple(stamps)


class ServerTls:
    """The edge's TLS: an ``ssl.SSLContext`` for HTTP and credentials for gRPC."""

    def __init__(self, files: TlsFiles) -> None:
        self.files = files
        self.context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        self.context.minimum_version = ssl.TLSVersion.TLSv1_2
        self.context.set_ciphers(TLS12_CIPHERS)
        self.context.options |= ssl.OP_NO_COMPRESSION | ssl.OP_NO_RENEGOTIATION
        self.context.options |= ssl.OP_CIPHER_SERVER_PREFERENCE
        if files.client_ca is not None:
            self.context.verify_mode = ssl.CERT_REQUIRED
            self.context.load_verify_locations(cafile=str(files.client_ca))
        self.context.load_cert_chain(str(files.cert), str(files.key))
        self._stamp = _stamp(self._paths())
        self._pair = self._read_pair()
        self._grpc_served: tuple[bytes, bytes] | None = None

    def _paths(self) -> list[Path]:
        return [self.files.cert, self.files.key]

    def _read_pair(self) -> tuple[bytes, bytes]:
        return self.files.key.read_bytes(), self.files.cert.read_bytes()

    def reload_if_changed(self) -> bool:
        """Load the files again if they changed; True when a new pair is in use."""
        try:
            stamp = _stamp(self._paths())
            if stamp == self._stamp:
                return False
            self.context.load_cert_chain(str(self.files.cert), str(self.files.key))
            pair = self._read_pair()
        except (OSError, ssl.SSLError) as error:
            log.warning("TLS files changed but do not load yet (%s): keeping the old pair", error)
            return False
        self._stamp, self._pair = stamp, pair
        log.info("TLS certificate reloaded from %s", self.files.cert)
        return True

    def grpc_credentials(self) -> Any:
        """Server credentials for gRPC that pick up a reloaded pair at the next handshake."""
        root = self.files.client_ca.read_bytes() if self.files.client_ca is not None else None
        self._grpc_served = self._pair

        def configuration() -> Any:
            return grpc.ssl_server_certificate_configuration([self._pair], root_certificates=root)

        def fetch() -> Any:
            self.reload_if_changed()
            if self._pair == self._grpc_served:
                return None  # unchanged: gRPC keeps what it has
            self._grpc_served = self._pair
            return configuration()

        return grpc.dynamic_ssl_server_credentials(
            configuration(), fetch, require_client_authentication=root is not None
        )
