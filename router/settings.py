"""The router's settings: one typed object, built at the edge (the CLI) and passed in."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True, slots=True)
class GraphSource:
    """Where graphs come from: exactly one of inline JSON, one file, or a directory of files."""

    graph_json: str | None = None
    graph_file: Path | None = None
    graph_dir: Path | None = None


@dataclass(frozen=True, slots=True)
class RouterSettings:
    source: GraphSource
    host: str = "0.0.0.0"
    port: int = 8080
    # KServe's PROPAGATE_HEADERS: None when unset, "" forwards everything.
    propagate_headers: str | None = None
    drain_seconds: float = 30.0
    max_body_bytes: int = 32 * 1024 * 1024
    reload_interval: float = 1.0
    max_connections: int = 1024
    client: str = "fast"
    # Processes serving the port together (SO_REUSEPORT); 1 serves in this process.
    workers: int = 1
    # Set by the supervisor of several workers: where they share their metrics.
    metrics_dir: Path | None = None
    # Telemetry. Tracing exports over OTLP as the standard OTEL_* variables say.
    tracing: bool = False
    otlp_protocol: str = "http/protobuf"
    # "process": spans are encoded and sent by a child process (off the event loop's GIL);
    # "thread": the SDK's BatchSpanProcessor in this process.
    span_export: str = "process"
    service_name: str | None = None
    metrics: bool = True
    access_log: bool = False
