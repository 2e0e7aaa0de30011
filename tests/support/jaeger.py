"""Jaeger for the trace tests: its config and a small query client."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Jaeger:
    otlp_http: str  # e.g. http://127.0.0.1:4318
    query: str  # e.g. http://127.0.0.1:16686
    otlp_grpc: str = ""  # e.g. http://127.0.0.1:4317

    def trace(self, trace_id: str) -> list[dict[str, Any]]:
        """The spans Jaeger holds for a trace, each with its service name."""
        try:
            with urllib.request.urlopen(f"{self.query}/api/traces/{trace_id}", timeout=5) as r:
                document = json.load(r)
        except urllib.error.HTTPError as error:
            if error.code == 404:
                return []
            raise
        spans = []
        for found in document.get("data") or []:
            processes = found["processes"]
            for span in found["spans"]:
                span["service"] = processes[span["processID"]]["serviceName"]
                spans.append(span)
        return spans


JAEGER_CONFIG = """
service:
  extensions: [jaeger_storage, jaeger_query]
  pipelines:
    traces: {receivers: [otlp], processors: [batch], exporters: [jaeger_storage_exporter]}
  telemetry: {metrics: {level: none}, logs: {level: warn}}
extensions:
  jaeger_query:
    storage: {traces: memstore}
    http: {endpoint: "127.0.0.1:%(query)d"}
    grpc: {endpoint: "127.0.0.1:%(query_grpc)d"}
  jaeger_storage:
    backends: {memstore: {memory: {max_traces: 100000}}}
receivers:
  otlp:
    protocols:
      grpc: {endpoint: "127.0.0.1:%(otlp_grpc)d"}
      http: {endpoint: "127.0.0.1:%(otlp_http)d"}
processors:
  batch: {timeout: 50ms}
exporters:
  jaeger_storage_exporter: {trace_storage: memstore}
"""
