"""What the transports' streamed reply bodies share: an async generator of body chunks written
as a class (``__anext__`` and ``aclose`` are each transport's own), so that closing it early,
even before the first read, closes the upstream call."""

from __future__ import annotations

import collections.abc
from typing import Any


class ChunkStream(collections.abc.AsyncGenerator[bytes, None]):
    """Subclasses implement ``__anext__`` and ``aclose``; sending and throwing derive from them."""

    async def asend(self, value: None) -> bytes:
        return await self.__anext__()

    async def athrow(self, typ: Any, val: Any = None, tb: Any = None) -> bytes:
        await self.aclose()
        raise typ if isinstance(typ, BaseException) else typ() if val is None else val
