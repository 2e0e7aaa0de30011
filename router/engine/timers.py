"""Callbacks at loop times, kept by one loop timer for the earliest of them.

A timer per request (``loop.call_later`` then ``cancel``, as a hedge's is when the first
attempt answers in time) is cheap in Python but not on uvloop: each cancelled timer is a libuv
handle to close, and a handle closing makes libuv's next poll return at once, so nearly every
request cost one more turn of the loop (strace: about 0.45 more ``epoll_pwait`` per request with
a hedge). Here a callback only enters and leaves a dict; the one loop timer is moved only for an
earlier time, and when it fires it runs what is due and is set for the next one.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import Callable


class Timers:
    def __init__(self) -> None:
        self._entries: dict[int, tuple[float, Callable[[], None]]] = {}
        self._count = 0
        self._handle: asyncio.TimerHandle | None = None
        self._next = math.inf  # when the handle fires
        self._loop: asyncio.AbstractEventLoop | None = None

    def at(self, loop: asyncio.AbstractEventLoop, when: float, callback: Callable[[], None]) -> int:
        """Call ``callback`` at ``when`` (on ``loop``'s clock); a key for ``cancel``."""
        self._count = key = self._count + 1
        self._entries[key] = (when, callback)
        if when < self._next or loop is not self._loop:
            self._arm(loop, when)
        return key

    def cancel(self, key: int) -> None:
        """Do not call it (nothing if it was called already)."""
        self._entries.pop(key, None)

    def _arm(self, loop: asyncio.AbstractEventLoop, when: float) -> None:
        if self._handle is not None:
            self._handle.cancel()
        self._loop, self._next = loop, when
        self._handle = loop.call_at(when, self._fire)

    def _fire(self) -> None:
        loop = self._loop
        assert loop is not None
        self._handle, self._next = None, math.inf
        now = loop.time()
        due = [key for key, (when, _) in self._entries.items() if when <= now]
        for key in due:
            _, callback = self._entries.pop(key)
            callback()
        if self._entries:
            self._arm(loop, min(when for when, _ in self._entries.values()))
