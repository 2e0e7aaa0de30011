"""Span export outside the router's interpreter.

The SDK's ``BatchSpanProcessor`` encodes spans to OTLP protobuf in a thread of the router's own
process, holding the GIL the event loop needs: measured, that was about a third of the router's
CPU with every request sampled, and the cause of p99 spikes. Here an ended ``LightSpan`` (a plain
tuple) is encoded to its OTLP ``Span`` message at once (``otlp.SpanEncoder``: a few
microseconds, less than pickling it for another process to encode, which cost the two processes
together twice as much) and queued per scope; a writer thread sends what is queued in batches
down a pipe to a child process (``python -m`` this module) that wraps them into export requests
and sends them with the standard OTLP exporter's client, configured as usual by the
``OTEL_EXPORTER_OTLP_*`` variables it inherits. Network I/O costs the child's CPU, not the
router's. ``--span-export process-sdk`` pickles the spans' values instead, and the child
rebuilds SDK spans and exports them the SDK's way.

If the queue is full (the child cannot keep up) spans are dropped and counted, never blocking a
request; if the child dies the router logs it once and goes on without exporting.
"""

from __future__ import annotations

import collections
import contextlib
import logging
import os
import pickle
import signal
import struct
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from typing import IO, Any

from opentelemetry import trace
from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import (
    OTLPSpanExporter as GRPCSpanExporter,
)
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import Event, ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter, SpanExportResult
from opentelemetry.sdk.util.instrumentation import InstrumentationScope
from opentelemetry.trace import SpanContext, SpanKind, Status, StatusCode, TraceFlags, TraceState

from infergraph.router.observability.otlp import SpanEncoder, TraceEncoder
from infergraph.router.observability.spans import LightTracer, SpanValues
from infergraph.router.observability.tracing import make_exporter, make_provider
from infergraph.router.settings import OtlpProtocol, SpanExport

log = logging.getLogger("infergraph.router.tracing")

FRAME = struct.Struct("!I")
EXPORT_BATCH = 512  # spans per export on the SDK's path (its BatchSpanProcessor's default)
# Bytes of encoded spans per export request on the lean path: a quarter of the 4 MiB a gRPC
# server accepts by default (OTLP collectors and Jaeger keep that limit), and large enough that
# the HTTP client's cost per request is small beside the spans'.
EXPORT_BYTES = 1 << 20


def rebuild(values: SpanValues, resource: Resource) -> ReadableSpan:
    """An SDK span from a ``LightSpan``'s values, in the exporting process."""
    name, trace_id, span_id, flags, state, parent_id, parent_remote = values[:7]
    kind, start, end, attributes, code, description, events, scope = values[7:]
    trace_state = TraceState.from_header([state]) if state else None
    context = SpanContext(trace_id, span_id, False, TraceFlags(flags), trace_state)
    parent = (
        SpanContext(trace_id, parent_id, parent_remote, TraceFlags(flags), trace_state)
        if parent_id
        else None
    )
    return ReadableSpan(
        name=name,
        context=context,
        parent=parent,
        resource=resource,
        attributes=attributes,
        events=[Event(n, a, timestamp=t) for n, t, a in events],
        kind=SpanKind(kind),
        status=Status(StatusCode(code), description or None),
        start_time=start,
        end_time=end,
        instrumentation_scope=InstrumentationScope(scope),
    )


class SpanShipper:
    """Queues ended spans' values and ships them in batches to an exporter child process."""

    def __init__(
        self,
        protocol: str,
        service_name: str,
        *,
        encoding: str = "lean",
        interval: float = 0.5,
        max_queue: int = 32768,
        max_queue_bytes: int = 64 * 1024 * 1024,
    ) -> None:
        self.interval = interval
        self.max_queue = max_queue  # spans of a scope
        self.max_queue_bytes = max_queue_bytes  # of all scopes
        self.dropped = 0
        # Bytes queued (added on the loop) and taken (added by the writer): each written by
        # one thread only, so neither needs a lock.
        self._queued_bytes = 0
        self._taken_bytes = 0
        # Encoded (or pickled) one by one as they end: bytes are not tracked by the garbage
        # collector, so a backlog does not lengthen the router's full collections (measured:
        # 65k queued tuples made each one take 40-80 ms), and no batch holds the GIL for long.
        self._encode: Callable[[SpanValues], bytes] = (
            SpanEncoder().span if encoding == "lean" else _pickled
        )
        self._queues: dict[str, collections.deque[bytes]] = {}
        self._stop = threading.Event()
        self._broken = False
        self._child = subprocess.Popen(
            [sys.executable, "-P", "-m", __name__, protocol, service_name, encoding],
            stdin=subprocess.PIPE,
            start_new_session=True,  # signals to the router's group must not cut the last spans
        )
        self._writer = threading.Thread(target=self._run, name="span-export", daemon=True)
        self._writer.start()

    def submit(self, values: SpanValues) -> None:
        """Called on the event loop when a span ends: never blocks, drops when full."""
        queue = self._queues.get(values[14])
        if queue is None:
            queue = self._queues[values[14]] = collections.deque()
        if len(queue) >= self.max_queue:
            self.dropped += 1
            return
        encoded = self._encode(values)
        size = len(encoded)
        if self._queued_bytes - self._taken_bytes + size > self.max_queue_bytes:
            self.dropped += 1
            return
        self._queued_bytes += size
        queue.append(encoded)

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self._send()
        self._send()

    def _send(self) -> None:
        """Ship what is queued: one frame, a pickled list of (scope, its spans)."""
        batch = []
        for scope, queue in list(self._queues.items()):  # the loop may add a scope meanwhile
            spans = [queue.popleft() for _ in range(len(queue))]
            self._taken_bytes += sum(map(len, spans))
            if spans and not self._broken:
                batch.append((scope, spans))
        if not batch:
            return
        data = pickle.dumps(batch, protocol=pickle.HIGHEST_PROTOCOL)
        stdin = self._child.stdin
        assert stdin is not None
        try:
            stdin.write(FRAME.pack(len(data)) + data)
            stdin.flush()
        except (BrokenPipeError, OSError) as error:
            self._broken = True
            log.error("the span exporter process is gone (%s); spans are no longer exported", error)

    def shutdown(self, seconds: float = 10.0) -> None:
        """Send what is queued, then let the child export it and exit. A child that stopped
        reading (hung, or stuck behind a collector) is killed after ``seconds``: the writer is
        then blocked in a write, holding the pipe, and closing it would wait as long."""
        if self._stop.is_set():
            return
        self._stop.set()
        self._writer.join(seconds)
        if self._writer.is_alive():
            log.error("the span exporter process stopped reading; spans still queued are lost")
            self._child.kill()
            self._writer.join()
        if self._child.stdin is not None:
            with contextlib.suppress(OSError):
                self._child.stdin.close()
        try:
            self._child.wait(15)
        except subprocess.TimeoutExpired:
            self._child.kill()
            self._child.wait()
        if self.dropped:
            log.warning("%d spans dropped: the exporter could not keep up", self.dropped)


def make_tracer(
    how: SpanExport, protocol: OtlpProtocol, service_name: str
) -> tuple[trace.Tracer, Callable[[], None]]:
    """The router's tracer and the function that flushes it at exit.

    ``process``: light spans, encoded here and exported by a child process (``process-sdk``:
    pickled here, rebuilt as SDK spans and encoded by the SDK in the child); ``thread``: the
    SDK's spans and its ``BatchSpanProcessor`` in this process. Both sample as
    ``OTEL_TRACES_SAMPLER`` says.
    """
    if how in ("process", "process-sdk"):
        encoding = "sdk" if how == "process-sdk" else "lean"
        shipper = SpanShipper(protocol, service_name, encoding=encoding)
        sampler = TracerProvider().sampler  # the SDK's reading of OTEL_TRACES_SAMPLER(_ARG)
        return LightTracer(sampler, shipper.submit), shipper.shutdown
    provider = make_provider(service_name, BatchSpanProcessor(make_exporter(protocol)))
    return provider.get_tracer("infergraph.router"), provider.shutdown


def chunks(spans: list[bytes], limit: int) -> Iterator[list[bytes]]:
    """``spans`` in order, in runs of at most ``limit`` bytes (a larger span alone)."""
    run: list[bytes] = []
    size = 0
    for span in spans:
        if run and size + len(span) > limit:
            yield run
            run, size = [], 0
        run.append(span)
        size += len(span)
    if run:
        yield run


def _pickled(values: SpanValues) -> bytes:
    return pickle.dumps(values, pickle.HIGHEST_PROTOCOL)


def _read_frames(stream: IO[bytes]) -> Any:
    while True:
        head = stream.read(FRAME.size)
        if len(head) < FRAME.size:
            return
        (size,) = FRAME.unpack(head)
        yield pickle.loads(stream.read(size))


class _EncodedGRPCExporter(GRPCSpanExporter):
    """The SDK's gRPC exporter (endpoint, headers, TLS, compression, retries as ``OTEL_*``
    say) sending requests already encoded: ``(payload, span count)``."""

    def _translate_data(self, data: Any) -> ExportTraceServiceRequest:
        request: ExportTraceServiceRequest = ExportTraceServiceRequest.FromString(data[0])
        return request

    def _count_data(self, data: Any) -> int:
        return int(data[1])


class EncodedSender:
    """Sends ``TraceEncoder`` requests with the SDK exporter's own client for the protocol."""

    def __init__(self, protocol: str) -> None:
        self.exporter: SpanExporter = (
            _EncodedGRPCExporter() if protocol == "grpc" else make_exporter(protocol)
        )
        self._grpc = protocol == "grpc"

    @property
    def supported(self) -> bool:
        """Whether the installed exporter has the seam used here (else: the SDK path)."""
        if self._grpc:
            return hasattr(self.exporter, "_export")
        client = getattr(self.exporter, "_client", None)
        return callable(getattr(client, "export", None))

    def send(self, payload: bytes, count: int) -> bool:
        if self._grpc:
            result = self.exporter._export((payload, count))  # type: ignore[attr-defined]
            return bool(result == SpanExportResult.SUCCESS)
        client = self.exporter._client  # type: ignore[attr-defined]
        return bool(client.export(payload).success)

    def shutdown(self) -> None:
        self.exporter.shutdown()


def main(argv: list[str]) -> int:
    """The exporter child: spans from stdin to OTLP until stdin closes."""
    protocol, service_name, encoding = argv
    # This process finishes when the router closes the pipe, after its last spans.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    # Background work: where it shares a core with the router, the router goes first.
    os.nice(10)
    resource = Resource.create({"service.name": service_name})
    if encoding == "lean":
        sender = EncodedSender(protocol)
        if not sender.supported:
            log.error(
                "the installed OTLP exporter lacks the seam for encoded spans; spans are not "
                "exported (--span-export process-sdk exports them the SDK's way)"
            )
            sender.shutdown()
            return 1
        encoder = TraceEncoder(resource)
        for batch in _read_frames(sys.stdin.buffer):
            for scope, spans in batch:
                for chunk in chunks(spans, EXPORT_BYTES):
                    if not sender.send(encoder.request([(scope, chunk)]), len(chunk)):
                        log.warning("an export of %d spans failed", len(chunk))
        sender.shutdown()
        return 0
    exporter = make_exporter(protocol)  # the SDK's spans and encoder
    for batch in _read_frames(sys.stdin.buffer):
        spans = [rebuild(pickle.loads(raw), resource) for _, pickled in batch for raw in pickled]
        for start in range(0, len(spans), EXPORT_BATCH):
            exporter.export(spans[start : start + EXPORT_BATCH])
    exporter.shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
