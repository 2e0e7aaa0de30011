"""OTLP protobuf for light spans, written straight from their values.

The SDK's way from a span to the wire makes a ``ReadableSpan``, then a protobuf object per span,
attribute, value and event, then serializes them: measured in the exporter process, that was
most of its CPU. ``SpanEncoder`` writes each span's ``Span`` message from its ``SpanValues``
tuple with the protobuf wire format, caching the encodings that repeat from span to span (names
with kinds, scopes, attribute key-value pairs such as ``infergraph.graph``); ``TraceEncoder``
puts encoded spans into an ``ExportTraceServiceRequest`` for a resource. The router encodes its
spans as they end (a few microseconds each, less than pickling them for another process to
encode), so what it ships is already the wire format.

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
# A span's ids: tag and length, trace id (two big-endian halves), tag and length, span id.
_IDS = struct.Struct(">HQQHQ")
_TRACE_ID_TAG, _SPAN_ID_TAG = 0x0A10, 0x1208
_PARENT = struct.Struct(">HQ")
_PARENT_TAG = 0x2208
_LOW64 = (1 << 64) - 1
# start_time_unix_nano (field 7) and end_time_unix_nano (field 8), both fixed64.
_TIMES = struct.Struct("<BQBQ")

# Span.flags (field 16, fixed32): the SDK always says whether the parent's is_remote is known,
# and it is. With the status (field 15) before them: the two endings of an unset status.
_HAS_IS_REMOTE = 0x100
_IS_REMOTE = 0x200
_FLAGS_LOCAL = b"\x85\x01" + struct.pack("<I", _HAS_IS_REMOTE)
_FLAGS_REMOTE = b"\x85\x01" + struct.pack("<I", _HAS_IS_REMOTE | _IS_REMOTE)
_UNSET_LOCAL = b"\x7a\x00" + _FLAGS_LOCAL
_UNSET_REMOTE = b"\x7a\x00" + _FLAGS_REMOTE
_CACHE_SIZE = 4096
_CACHED_STRING = 256  # the longest attribute string an encoded pair is kept for
_ERROR = 2  # StatusCode.ERROR

log = logging.getLogger("infergraph.router.tracing")


def _varint(value: int) -> bytes:
    if value < 0:
        if value < -(1 << 63):
            raise ValueError(f"{value} is out of range for int64")
        value += 1 << 64  # int64 as protobuf encodes it: ten bytes, two's complement
    elif value >= 1 << 63:
        raise ValueError(f"{value} is out of range for int64")
    return _length(value)


_SMALL = [bytes((n,)) for n in range(0x80)]
# Length-delimited fields' tags (number << 3 | 2), one byte for the numbers used here (1-15).
_TAGS = [_SMALL[n << 3 | 2] for n in range(16)]


def _length(size: int) -> bytes:
    """A non-negative integer below 2^64 as a varint, with no range checks: a length, or an
    int64 ``_varint`` checked."""
    if size < 0x80:
        return _SMALL[size]
    out = bytearray()
    while size >= 0x80:
        out.append((size & 0x7F) | 0x80)
        size >>= 7
    out.append(size)
    return bytes(out)


def _field(number: int, payload: bytes) -> bytes:
    """A length-delimited field (string, bytes or message)."""
    return _TAGS[number] + _length(len(payload)) + payload


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


class SpanEncoder:
    """Each span's ``Span`` message, as a ``ScopeSpans.spans`` field (``span``)."""

    def __init__(self) -> None:
        # By field number too: a span's attributes are field 9, an event's field 3.
        self._pairs: dict[tuple[int, str, type, Any], bytes] = {}
        self._names: dict[tuple[str, int], bytes] = {}
        self._states: dict[str, str] = {}

    def span(self, values: SpanValues) -> bytes:
        """The span, encoded as field 2 of its ``ScopeSpans``."""
        name, trace_id, span_id, _flags, state, parent_id, parent_remote = values[:7]
        kind, start, end, attributes, code, description, events = values[7:14]
        parts = [_IDS.pack(_TRACE_ID_TAG, trace_id >> 64, trace_id & _LOW64, _SPAN_ID_TAG, span_id)]
        if state:
            parts.append(_text(3, self._trace_state(state)))
        if parent_id:
            parts.append(_PARENT.pack(_PARENT_TAG, parent_id))
        named = self._names.get((name, kind))
        if named is None:
            # The API's kinds start at 0, OTLP's at 1.
            named = _text(5, name) + b"\x30" + _varint(kind + 1)
            if len(self._names) >= _CACHE_SIZE:
                self._names.clear()
            self._names[name, kind] = named
        parts.append(named)
        parts.append(_TIMES.pack(0x39, start, 0x41, end))
        if attributes:
            parts.append(self.attributes(9, attributes))
        for event_name, timestamp, event_attributes in events:
            event = b"\x09" + _FIXED64.pack(timestamp) + _text(2, event_name)
            parts.append(_field(11, event + self.attributes(3, event_attributes)))
        remote = bool(parent_id and parent_remote)
        if code:
            # The SDK keeps a description only with an error status.
            message = _text(2, description) if code == _ERROR else b""
            parts.append(_field(15, message + b"\x18" + _varint(code)))
            parts.append(_FLAGS_REMOTE if remote else _FLAGS_LOCAL)
        else:
            parts.append(_UNSET_REMOTE if remote else _UNSET_LOCAL)
        return _field(2, b"".join(parts))

    def attributes(self, number: int, attributes: Mapping[str, Any] | None) -> bytes:
        """Key-value pairs as repeated field ``number``."""
        if not attributes:
            return b""
        pairs = self._pairs
        out = []
        for key, value in attributes.items():
            # Long strings (a client's path, an error's message) are encoded each time: they
            # seldom repeat, and 4,096 of them could hold gigabytes.
            cacheable = isinstance(value, (int, float, bool)) or (
                type(value) is str and len(value) <= _CACHED_STRING
            )
            cache_key = (number, key, type(value), value)
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


class TraceEncoder:
    """``ExportTraceServiceRequest`` bytes for one resource, from spans encoded by a
    ``SpanEncoder`` (``request``) or from their values (``encode``)."""

    def __init__(self, resource: Resource, spans: SpanEncoder | None = None) -> None:
        self.spans = spans or SpanEncoder()
        self._scopes: dict[str, bytes] = {}
        self._resource = _field(1, self.spans.attributes(1, resource.attributes))

    def request(self, scopes: Iterable[tuple[str, Sequence[bytes]]]) -> bytes:
        """One request: the resource, then each scope with its encoded spans in order."""
        scope_spans = b"".join(
            _field(2, self._scope(scope) + b"".join(encoded)) for scope, encoded in scopes
        )
        return _field(1, self._resource + scope_spans)

    def encode(self, spans: Iterable[SpanValues]) -> bytes:
        """One request: the resource, then each scope (in order of first appearance) with its
        spans in their order."""
        by_scope: dict[str, list[bytes]] = {}
        encode = self.spans.span
        for values in spans:
            by_scope.setdefault(values[14], []).append(encode(values))
        return self.request(by_scope.items())

    def _scope(self, name: str) -> bytes:
        scope = self._scopes.get(name)
        if scope is None:
            scope = self._scopes[name] = _field(1, _text(1, name))
        return scope
