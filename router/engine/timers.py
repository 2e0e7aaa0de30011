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
from typing import Protocol


class Due(Protocol):
    """What a timer calls: its ``fire``."""

    def fire(self) -> None: ...


class Timers:
    def __init__(self) -> None:
        # Each entry's own object is its key (no key or pair made per entry).
        self._entries: dict[Due, float] = {}
        self._handle: asyncio.TimerHandle | None = None
        self._next = math.inf  # when the handle fires
        self._loop: asyncio.AbstractEventLoop | None = None

    def at(self, loop: asyncio.AbstractEventLoop, when: float, due: Due) -> None:
        """Call ``due.fire()`` at ``when`` (on ``loop``'s clock), once; until ``cancel(due)``.
        An object waits for one time at most: a second ``at`` moves it."""
        self._entries[due] = when
        if when < self._next or loop is not self._loop:
            self._arm(loop, when)

    def cancel(self, due: Due) -> None:
        """Do not call it (nothing if it was called already)."""
        self._entries.pop(due, None)

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
        entries = self._entries
        for due in [due for due, when in entries.items() if when <= now]:
            del entries[due]
            due.fire()
        if entries:
            self._arm(loop, min(entries.values()))
