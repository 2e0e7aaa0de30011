"""A request or response body as raw bytes, parsed at most once and only when a node needs it."""

from __future__ import annotations

from typing import Any

import orjson
import pygjson

_UNPARSED = object()


class NotJSON(ValueError):
    """The body is not a valid JSON document."""


class Payload:
    """Bytes that travel between steps untouched, with a lazily cached JSON view."""

    __slots__ = ("_parsed", "_valid", "raw")

    def __init__(self, raw: bytes) -> None:
        self.raw = raw
        self._parsed: Any = _UNPARSED
        self._valid: bool | None = None

    def is_json(self) -> bool:
        """Whether the body is one valid JSON document (without building Python objects)."""
        if self._valid is None:
            self._valid = self._parsed is not _UNPARSED or pygjson.validate(self.raw)
        return self._valid

    def json(self) -> Any:
        """The decoded body; raises ``NotJSON`` when it is not JSON."""
        if self._parsed is _UNPARSED:
            try:
                self._parsed = orjson.loads(self.raw)
            except orjson.JSONDecodeError as exc:
                self._valid = False
                raise NotJSON(str(exc)) from exc
            self._valid = True
        return self._parsed

    def object_with(self, key: str) -> dict[str, Any] | None:
        """The decoded body if it is a JSON object that has ``key``; skips parsing when the raw
        bytes do not even mention it."""
        if f'"{key}"'.encode() not in self.raw:
            return None
        try:
            document = self.json()
        except NotJSON:
            return None
        return document if isinstance(document, dict) and key in document else None

    @classmethod
    def of_json(cls, value: Any) -> Payload:
        """A payload encoding ``value``, with the decoded value already cached."""
        payload = cls(orjson.dumps(value))
        payload._parsed = value
        payload._valid = True
        return payload
