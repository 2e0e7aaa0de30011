"""Structured JSON logs: one object per line, with the trace and span ids of the current span
(when tracing is on) so that a log line leads to its trace in Jaeger."""

from __future__ import annotations

import logging
import time
from typing import Any

import orjson

from infergraph.router.observability.tracing import UNSAMPLED_IDS, current_span

FIELDS = ("graph", "node", "step", "status", "duration_ms", "cause", "path")


class JSONFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
            "pid": record.process,
        }
        for field in FIELDS:
            value = getattr(record, field, None)
            if value is not None:
                entry[field] = value
        context = current_span().get_span_context()
        ids = (context.trace_id, context.span_id) if context.is_valid else UNSAMPLED_IDS.get()
        if ids is not None:
            entry["trace_id"] = f"{ids[0]:032x}"
            entry["span_id"] = f"{ids[1]:016x}"
        if record.exc_info:
            entry["error"] = self.formatException(record.exc_info)
        return orjson.dumps(entry).decode()


def configure(level: str, json: bool) -> None:
    handler = logging.StreamHandler()
    if json:
        handler.setFormatter(JSONFormatter())
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    # OpenTelemetry's propagators log a client's malformed trace headers whole, one line per bad
    # member: 10 MiB of log for ten requests with 1 MiB of baggage. The headers are dropped as
    # the W3C specifications say, and a client's mistake is no operator's warning.
    for name in CLIENT_HEADER_LOGGERS:
        logging.getLogger(name).setLevel(logging.ERROR)


CLIENT_HEADER_LOGGERS = ("opentelemetry.baggage.propagation", "opentelemetry.trace.span")
