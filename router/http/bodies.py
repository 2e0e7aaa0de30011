"""Message bodies collected as they arrive, holding one copy of the body in memory.

A body that arrives in one piece is kept as it came. Later pieces go into a ``BytesIO``, whose
buffer grows in place (large blocks are remapped, not copied) and which hands its buffer over
as the final ``bytes`` without copying it: no list of chunks joined at the end, which would
hold the body twice.
"""

from __future__ import annotations

import io


class BodyBuffer:
    __slots__ = ("_buffer", "_first", "size")

    def __init__(self) -> None:
        self._first: bytes | None = None
        self._buffer: io.BytesIO | None = None
        self.size = 0

    def append(self, chunk: bytes) -> None:
        self.size += len(chunk)
        if self._buffer is not None:
            self._buffer.write(chunk)
        elif self._first is None:
            self._first = chunk
        else:
            self._buffer = io.BytesIO()
            self._buffer.write(self._first)
            self._buffer.write(chunk)
            self._first = None

    def value(self) -> bytes:
        """The whole body; the buffer is empty afterwards."""
        buffer, first = self._buffer, self._first
        self._buffer = self._first = None
        self.size = 0
        if buffer is not None:
            value = buffer.getvalue()
            buffer.close()
            return value
        return first if first is not None else b""
