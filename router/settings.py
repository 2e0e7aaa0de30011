"""The router's settings: one typed object, built at the edge (the CLI) and passed in.

Choices are ``Literal`` types, and ``RouterSettings`` checks them (and the combinations that
cannot work) when it is built, so a wrong value fails at start-up with a message, not later.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal, get_args

Client = Literal["fast", "aiohttp"]
GrpcClient = Literal["fast", "grpcio"]
# The HTTP/1.1 server the router listens with: its own on httptools, or aiohttp's.
Server = Literal["fast", "aiohttp"]
# "process": spans are encoded and sent by a child process (off the event loop's GIL);
# "thread": the SDK's BatchSpanProcessor in this process.
SpanExport = Literal["process", "process-sdk", "thread"]
# The OTLP transports OpenTelemetry's Python exporters implement.
OtlpProtocol = Literal["http/protobuf", "grpc"]
Auth = Literal["none", "kubernetes"]


class SettingsError(ValueError):
    """Settings that cannot work together, or a value outside its choices."""


MMAP_THRESHOLD = 1 << 20  # bytes: see RouterSettings.mmap_threshold


@dataclass(frozen=True, slots=True)
class GraphSource:
    """Where graphs come from: exactly one of inline JSON, one file, or a directory of files."""

    graph_json: str | None = None
    graph_file: Path | None = None
    graph_dir: Path | None = None


def _check_choice(name: str, value: object, choices: object) -> None:
    allowed = get_args(choices)
    if value not in allowed:
        raise SettingsError(f"{name} must be one of {', '.join(allowed)}, not {value!r}")


@dataclass(frozen=True, slots=True)
class RouterSettings:
    source: GraphSource
    host: str = "0.0.0.0"
    port: int = 8080
    # KServe's PROPAGATE_HEADERS: None when unset, "" forwards everything.
    propagate_headers: str | None = None
    drain_seconds: float = 30.0
    max_body_bytes: int = 32 * 1024 * 1024
    # Allocations from this many bytes up (large bodies) get memory mappings of their own
    # (service/memory.py); None leaves the C library's own policy, as when the user tunes it.
    mmap_threshold: int | None = MMAP_THRESHOLD
    reload_interval: float = 1.0
    # Downstream connections per backend (scheme, host, port), as Envoy's per-cluster
    # max_connections; a call waits at most pool_timeout seconds for one, then fails with 503.
    max_connections: int = 1024
    pool_timeout: float = 5.0
    # Pooled idle keep-alive connections are closed after this many seconds, before common
    # servers' own keep-alive timeouts (uvicorn's is 5 s) can race a reused connection.
    idle_connection_seconds: float = 4.0
    client: Client = "fast"
    # v2-grpc steps: the router's own HTTP/2 client, or grpc.aio.
    grpc_client: GrpcClient = "fast"
    server: Server = "fast"
    # Request line plus headers, as Go's MaxHeaderBytes (1 MiB).
    max_header_bytes: int = 1024 * 1024
    # A 404 for an unknown graph names the graphs served only when this is on.
    list_graphs: bool = False
    # Processes serving the port together (SO_REUSEPORT); 1 serves in this process.
    workers: int = 1
    # Set by the supervisor of several workers: where they share their metrics.
    metrics_dir: Path | None = None
    # Telemetry. Tracing exports over OTLP as the standard OTEL_* variables say.
    tracing: bool = False
    otlp_protocol: OtlpProtocol = "http/protobuf"
    span_export: SpanExport = "process"
    service_name: str | None = None
    metrics: bool = True
    access_log: bool = False
    # gRPC ingress (the Open Inference Protocol) on this port when set; its message limit is
    # KServe's (8 MiB) unless told.
    grpc_port: int | None = None
    grpc_max_message_bytes: int = 8 * 1024 * 1024
    # TLS at the edge (HTTP and gRPC ingress), mutual when a client CA is given; reloaded
    # when the files change.
    tls_cert: Path | None = None
    tls_key: Path | None = None
    tls_client_ca: Path | None = None
    # Downstream https:// and grpcs:// steps: verified against the system store, or this CA;
    # with a client certificate for mutual TLS to model servers.
    upstream_ca: Path | None = None
    upstream_client_cert: Path | None = None
    upstream_client_key: Path | None = None
    # Client authentication: "kubernetes" checks bearer tokens with TokenReview and access
    # with SubjectAccessReview (router/service/auth.py); the API server's address, and the
    # router's own token and CA for it (in a pod: the service account's files).
    auth: Auth = "none"
    auth_api_url: str | None = None
    auth_token_file: Path | None = None
    auth_ca_file: Path | None = None
    auth_namespace: str = "default"
    auth_resource: str = "serving.kserve.io/inferencegraphs"
    auth_verb: str = "get"
    auth_cache_seconds: float = 10.0
    auth_probes: bool = False  # True: probes and /metrics need a token too

    def __post_init__(self) -> None:
        _check_choice("the downstream client", self.client, Client)
        _check_choice("the gRPC client", self.grpc_client, GrpcClient)
        _check_choice("the server", self.server, Server)
        _check_choice("the span export", self.span_export, SpanExport)
        _check_choice("--auth", self.auth, Auth)
        if self.auth == "kubernetes" and not self.auth_api_url:
            raise SettingsError(
                "--auth kubernetes needs the API server: --auth-api-url, or run in a pod "
                "(KUBERNETES_SERVICE_HOST)"
            )
        _check_choice(
            "the OTLP protocol (OTEL_EXPORTER_OTLP_PROTOCOL)", self.otlp_protocol, OtlpProtocol
        )
        if self.workers < 1 or (self.workers > 1 and self.port == 0):
            raise SettingsError("--workers needs a number from 1, and a fixed --port when above 1")
        if self.max_body_bytes < 0 or self.max_connections < 1 or self.max_header_bytes < 1024:
            raise SettingsError(
                "--max-body-bytes must be >= 0, --max-connections >= 1, --max-header-bytes >= 1024"
            )
        if self.pool_timeout <= 0 or self.idle_connection_seconds <= 0:
            raise SettingsError("--pool-timeout and --idle-connection-seconds must be above 0")
        if (self.tls_cert is None) != (self.tls_key is None):
            raise SettingsError("--tls-cert and --tls-key go together")
        if self.tls_client_ca is not None and self.tls_cert is None:
            raise SettingsError("--tls-client-ca needs --tls-cert and --tls-key")
        if (self.upstream_client_cert is None) != (self.upstream_client_key is None):
            raise SettingsError("--upstream-client-cert and --upstream-client-key go together")
        if self.grpc_port is not None and self.grpc_port == self.port and self.port != 0:
            raise SettingsError("--grpc-port must differ from --port")
        if self.grpc_max_message_bytes < 1024:
            raise SettingsError("--grpc-max-message-bytes must be >= 1024")
        if self.drain_seconds < 0 or self.reload_interval <= 0:
            raise SettingsError("--drain-seconds must be >= 0 and --reload-interval above 0")
