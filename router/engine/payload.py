"""A request or response body as raw bytes, parsed at most once and only when a node needs it.

Reading goes through ``jsontext``, so no body (invalid UTF-8, nesting thousands of levels deep,
lone surrogate escapes, numbers beyond a double) makes the engine raise anything but
``NotJSON`` with a reason.

A payload may instead hold an Open Inference Protocol message in protobuf's wire format
(``media`` is one of ``protocols.OIP_MEDIA``): the engine passes it on as bytes and maps it only
through the execution context's ``TensorCodec`` (``engine.tensors``).
"""

from __future__ import annotations

from typing import Any

from infergraph.router.engine import jsontext
from infergraph.router.engine.jsontext import NotJSON, TooDeep

__all__ = ["NotJSON", "Payload", "TooDeep"]

_UNPARSED = object()


class Payload:
    """Bytes that travel between steps untouched, with a lazily cached JSON view."""

    __slots__ = ("_error", "_parsed", "_shallow", "_text", "_valid", "media", "owner", "raw")

    def __init__(self, raw: bytes, media: str | None = None) -> None:
        self.raw = raw
        # None for JSON (or bytes a plain step passes on); an OIP media type for protobuf.
        self.media = media
        # The node run that alone holds this payload and may ``release`` it (the graph's
        # input, held by its root node); None: shared, never released.
        self.owner: object | None = None
        self._parsed: Any = _UNPARSED
        self._valid: bool | None = None
        self._shallow: bool | None = None
        self._error: NotJSON | None = None  # why ``json()`` failed, or ``TooDeep``
        self._text: str | None = None

    def release(self) -> None:
        """Drop the body and what was decoded from it, once its owner reads it no more: a large
        request is then not held while later steps run. Reading it afterwards finds no body."""
        self.raw = b""
        self._parsed = _UNPARSED
        self._valid = None
        self._shallow = None
        self._error = None
        self._text = None

    def shallow(self) -> bool:
        """Whether the body nests at most ``jsontext.NATIVE_DEPTH`` levels: found once, by
        ``is_json`` or here, for every condition that reads the body."""
        if self._shallow is None:
            self._shallow = jsontext.shallow(self.raw)
        return self._shallow

    def is_json(self) -> bool:
        """Whether the body is one valid JSON document as Go's gjson sees it (bytes inside
        strings are not checked as UTF-8), without building Python objects."""
        if self._valid is None:
            if self._parsed is not _UNPARSED:
                self._valid = True
            else:
                try:
                    self._valid = jsontext.validate(self.raw, known_shallow=self.shallow())
                except TooDeep as exc:
                    self._error = exc
                    self._valid = False
        return self._valid

    @property
    def too_deep(self) -> TooDeep | None:
        """Set when the body nests deeper than the engine reads (found by ``is_json``/``json``)."""
        return self._error if isinstance(self._error, TooDeep) else None

    def json(self) -> Any:
        """The decoded body; raises ``NotJSON`` (with the reason) when it cannot be decoded."""
        if self._parsed is _UNPARSED:
            if self._error is not None:
                raise self._error
            try:
                self._parsed = jsontext.loads(self.raw)
            except NotJSON as exc:
                self._error = exc
                raise
            self._valid = True
        return self._parsed

    def gjson_text(self) -> str:
        """The body as the text Go's gjson sees, for bodies that are not UTF-8: each byte that is
        not part of a UTF-8 sequence reads as U+FFFD (see ``jsontext.go_text``)."""
        if self._text is None:
            self._text = jsontext.go_text(self.raw)
        return self._text

    def object_with(self, key: str, *, lossy_utf8: bool = False) -> dict[str, Any] | None:
        """The decoded body if it is a JSON object that has ``key``; skips parsing when the raw
        bytes do not even mention it. With ``lossy_utf8`` a body whose only fault is bytes that
        are not UTF-8 is decoded as Go's encoding/json does (one U+FFFD per such byte)."""
        if f'"{key}"'.encode() not in self.raw:
            return None
        try:
            document = self.json()
        except NotJSON as exc:
            if not (lossy_utf8 and exc.utf8):
                return None
            try:
                document = jsontext.loads(self.raw, lossy_utf8=True)
            except NotJSON:
                return None
        return document if isinstance(document, dict) and key in document else None

    @classmethod
    def of_json(cls, value: Any) -> Payload:
        """A payload encoding ``value``, with the decoded value already cached; raises
        ``jsontext.EncodeError`` for a value JSON cannot hold."""
        payload = cls(jsontext.dumps(value))
        payload._parsed = value
        payload._valid = True
        return payload
