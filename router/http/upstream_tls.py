"""TLS to model servers (``https://`` and ``grpcs://`` steps): verified against the system's
trust store, or ``--upstream-ca``; with ``--upstream-client-cert``/``-key`` the router presents
a client certificate (mutual TLS)."""

from __future__ import annotations

import ssl
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc  # type: ignore[import-untyped]


@dataclass(frozen=True, slots=True)
class UpstreamTls:
    ca: Path | None = None
    client_cert: Path | None = None
    client_key: Path | None = None

    def context(self) -> ssl.SSLContext:
        """The client context for HTTPS steps (hostname checked, TLS 1.2 at least)."""
        context = ssl.create_default_context(cafile=str(self.ca) if self.ca else None)
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        if self.client_cert is not None and self.client_key is not None:
            context.load_cert_chain(str(self.client_cert), str(self.client_key))
        return context

    def grpc_credentials(self) -> Any:
        """Channel credentials for ``grpcs://`` steps."""
        key = chain = None
        if self.client_cert is not None and self.client_key is not None:
            key, chain = self.client_key.read_bytes(), self.client_cert.read_bytes()
        return grpc.ssl_channel_credentials(
            root_certificates=self.ca.read_bytes() if self.ca else None,
            private_key=key,
            certificate_chain=chain,
        )
