"""Per-call timeouts for the fast client, kept by one repeating timer instead of one each.

A timer per call (``asyncio.timeout``) costs the router about 35 us per request on uvloop, measured
side by side (bench/resilience.py's way) on a one-step graph with a step ``timeout``: a timer
handle made and closed each time, and two loop look-ups that are getpid system calls on
Python 3.11. Here a call enters and leaves a dict; while any call is timed, one timer wakes
every ``resolution`` seconds (10 ms) and cancels the tasks past their deadline. A timeout
therefore fires between its time and one resolution later: Envoy's per-try timeouts are
millisecond settings, and so are ours.
"""

from __future__ import annotations

import asyncio


class CallTimeouts:
    def __init__(self, resolution: float = 0.01) -> None:
        self.resolution = resolution
        self._due: dict[asyncio.Task[object], float] = {}
        self._expired: set[asyncio.Task[object]] = set()
        self._ticker: asyncio.TimerHandle | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    def enter(self, seconds: float) -> asyncio.Task[object]:
        """Time the running task: it is cancelled once ``seconds`` have passed."""
        loop = self._loop
        if loop is None or loop.is_closed():
            loop = self._loop = asyncio.get_running_loop()
        task = asyncio.current_task(loop)
        assert task is not None
        self._due[task] = loop.time() + seconds
        if self._ticker is None:
            self._ticker = loop.call_later(self.resolution, self._tick)
        return task

    def leave(self, task: asyncio.Task[object]) -> bool:
        """Stop timing ``task``; True when it was cancelled for its timeout (and that
        cancellation is taken back: ``uncancel``)."""
        self._due.pop(task, None)
        if task in self._expired:
            self._expired.discard(task)
            task.uncancel()
            return True
        return False

    def close(self) -> None:
        if self._ticker is not None:
            self._ticker.cancel()
            self._ticker = None

    def _tick(self) -> None:
        self._ticker = None
        if not self._due:
            return
        loop = self._loop
        assert loop is not None
        now = loop.time()
        for task in [task for task, due in self._due.items() if due <= now]:
            del self._due[task]
            self._expired.add(task)
            task.cancel()
        if self._due:
            self._ticker = loop.call_later(self.resolution, self._tick)
