"""OTLP protobuf for light spans, written straight from their values.

The SDK's way from a span to the wire makes a ``ReadableSpan``, then a protobuf object per span,
attribute, value and event, then serializes them: measured in the exporter process, that was
most of its CPU. ``TraceEncoder`` writes the same ``ExportTraceServiceRequest`` bytes from
``SpanValues`` tuples with the protobuf wire format, caching the encodings that repeat from span
to span (the resource, scopes, attribute key-value pairs such as ``infergraph.graph``).

The message is the one ``encode_spans`` makes from the rebuilt SDK spans, field for field
(proto3 defaults omitted, a span's status always present, flags as the SDK sets them): the
tests parse both and compare.
"""

from __future__ import annotations

import logging
import struct
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from opentelemetry.sdk.resources import Resource
from opentelemetry.trace import TraceState

from infergraph.router.observability.spans import SpanValues

_FIXED64 = struct.Struct("<Q")
_DOUBLE = struct.Struct("<d")
_FIXED32 = struct.Struct("<I")

# Span.flags: the SDK always says whether the parent's is_remote is known, and it is.
_HAS_IS_REMOTE = 0x100
_IS_REMOTE = 0x200
_CACHE_SIZE = 4096
_ERROR = 2  # StatusCode.ERROR

log = logging.getLogger("infergraph.router.tracing")


def _varint(value: int) -> bytes:
    if value < 0:
        if value < -(1 << 63):
            raise ValueError(f"{value} is out of range for int64")
        value += 1 << 64  # int64 as protobuf encodes it: ten bytes, two's complement
    elif value >= 1 << 63:
        raise ValueError(f"{value} is out of range for int64")
    if value < 0x80:
        return bytes((value,))
    out = bytearray()
    while value >= 0x80:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def _field(number: int, payload: bytes) -> bytes:
    """A length-delimited field (string, bytes or message)."""
    return _varint(number << 3 | 2) + _varint(len(payload)) + payload


def _text(number: int, value: str | None) -> bytes:
    """A string field, omitted when empty (proto3)."""
    return _field(number, value.encode()) if value else b""


def any_value(value: Any) -> bytes:
    """An ``AnyValue``'s fields, typed as the SDK's encoder types them (bool before int)."""
    if value is None:
        return b""
    if isinstance(value, bool):
        return b"\x10" + (b"\x01" if value else b"\x00")
    if isinstance(value, str):
        return _field(1, value.encode())
    if isinstance(value, int):
        return b"\x18" + _varint(value)
    if isinstance(value, float):
        return b"\x21" + _DOUBLE.pack(value)
    if isinstance(value, bytes):
        return _field(7, value)
    if isinstance(value, Sequence):
        return _field(5, b"".join(_field(1, any_value(v)) for v in value))
    if isinstance(value, Mapping):
        return _field(6, b"".join(_field(1, key_value(str(k), v)) for k, v in value.items()))
    raise TypeError(f"invalid attribute value type {type(value).__name__}: {value!r}")


def key_value(key: str, value: Any) -> bytes:
    """A ``KeyValue``'s fields."""
    return _text(1, key) + _field(2, any_value(value))


class TraceEncoder:
    """``ExportTraceServiceRequest`` bytes for batches of ``SpanValues``, for one resource."""

    def __init__(self, resource: Resource) -> None:
        self._pairs: dict[tuple[str, type, Any], bytes] = {}
        self._scopes: dict[str, bytes] = {}
        self._states: dict[str, str] = {}
        self._resource = _field(1, self._attributes(1, resource.attributes))

    def encode(self, spans: Iterable[SpanValues]) -> bytes:
        """One request: the resource, then each scope (in order of first appearance) with its
        spans in their order."""
        by_scope: dict[str, list[bytes]] = {}
        for values in spans:
            scope = values[14]
            encoded = _field(2, self._span(values))
            batch = by_scope.get(scope)
            if batch is None:
                by_scope[scope] = [encoded]
            else:
                batch.append(encoded)
        scope_spans = b"".join(
            _field(2, self._scope(scope) + b"".join(encoded)) for scope, encoded in by_scope.items()
        )
        return _field(1, self._resource + scope_spans)

    def _scope(self, name: str) -> bytes:
        scope = self._scopes.get(name)
        if scope is None:
            scope = self._scopes[name] = _field(1, _text(1, name))
        return scope

    def _attributes(self, number: int, attributes: Mapping[str, Any] | None) -> bytes:
        if not attributes:
            return b""
        pairs = self._pairs
        out = []
        for key, value in attributes.items():
            cacheable = isinstance(value, (str, int, float, bool))
            cache_key = (key, type(value), value)
            pair = pairs.get(cache_key) if cacheable else None
            if pair is None:
                try:
                    pair = _field(number, key_value(key, value))
                except (TypeError, ValueError):
                    log.exception("attribute %s not exported", key)  # as the SDK's encoder
                    continue
                if cacheable:
                    if len(pairs) >= _CACHE_SIZE:
                        pairs.clear()
                    pairs[cache_key] = pair
            out.append(pair)
        return b"".join(out)

    def _trace_state(self, header: str) -> str:
        """The trace state as the SDK writes it after parsing the header (invalid entries
        dropped)."""
        state = self._states.get(header)
        if state is None:
            parsed = TraceState.from_header([header])
            state = ",".join(f"{k}={v}" for k, v in parsed.items())
            if len(self._states) >= _CACHE_SIZE:
                self._states.clear()
            self._states[header] = state
        return state

    def _span(self, values: SpanValues) -> bytes:
        name, trace_id, span_id, _flags, state, parent_id, parent_remote = values[:7]
        kind, start, end, attributes, code, description, events = values[7:14]
        parts = [
            b"\x0a\x10" + trace_id.to_bytes(16, "big"),
            b"\x12\x08" + span_id.to_bytes(8, "big"),
        ]
        if state:
            parts.append(_text(3, self._trace_state(state)))
        if parent_id:
            parts.append(b"\x22\x08" + parent_id.to_bytes(8, "big"))
        parts.append(_text(5, name))
        parts.append(b"\x30" + _varint(kind + 1))  # the API's kinds start at 0, OTLP's at 1
        parts.append(b"\x39" + _FIXED64.pack(start))
        parts.append(b"\x41" + _FIXED64.pack(end))
        parts.append(self._attributes(9, attributes))
        for event_name, timestamp, event_attributes in events:
            event = b"\x09" + _FIXED64.pack(timestamp) + _text(2, event_name)
            parts.append(_field(11, event + self._attributes(3, event_attributes)))
        # The SDK keeps a description only with an error status.
        message = _text(2, description) if code == _ERROR else b""
        status = message + (b"\x18" + _varint(code) if code else b"")
        parts.append(_field(15, status))
        flags = _HAS_IS_REMOTE | (_IS_REMOTE if parent_id and parent_remote else 0)
        parts.append(b"\x85\x01" + _FIXED32.pack(flags))
        return b"".join(parts)
