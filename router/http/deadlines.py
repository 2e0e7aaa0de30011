"""Task deadlines kept by one repeating timer instead of a timer each: the router's
``serverWrite`` (the handler) and the fast client's per-call timeouts.

A per-request ``asyncio.timeout`` costs a timer handle and its bookkeeping on every request
(about 35 us per request on uvloop for a step ``timeout``, measured side by side by
bench/resilience.py's way); here a task only enters and leaves a dict. One timer is set for the
earliest deadline watched (``resolution`` later, so deadlines close together are swept at once):
it is moved only when a task comes with an earlier deadline, and when it fires it cancels the
tasks past their deadline and is set for the next one. Tasks that finish in time cost no
wake-up: with every call's deadline seconds away, the loop is woken about once per timeout
instead of on every tick of a repeating timer. A deadline is honoured to within
``resolution``: 50 ms for ``serverWrite`` (whole seconds in ``routerTimeouts``), 10 ms for
per-call timeouts.

The loop is kept once found: ``asyncio.get_running_loop`` (and ``current_task`` without a
loop) makes a getpid system call each time, which on every request added up to about 5% of the
router's CPU in a profile.
"""

from __future__ import annotations

import asyncio

from infergraph.router.engine.context import running_task


class Deadlines:
    def __init__(self, resolution: float = 0.05) -> None:
        self.resolution = resolution
        self._due: dict[asyncio.Task[object], float] = {}
        self._expired: set[asyncio.Task[object]] = set()
        self._ticker: asyncio.TimerHandle | None = None
        self._next = 0.0  # when the ticker fires
        self._loop: asyncio.AbstractEventLoop | None = None

    def start(self) -> None:
        self._running_loop()

    def _running_loop(self) -> asyncio.AbstractEventLoop:
        loop = self._loop
        if loop is None or loop.is_closed():  # a transport reused on a new loop (tests)
            loop = self._loop = asyncio.get_running_loop()
        return loop

    def loop(self) -> asyncio.AbstractEventLoop:
        """The running loop (looked up once)."""
        return self._running_loop()

    async def close(self) -> None:
        if self._ticker is not None:
            self._ticker.cancel()
            self._ticker = None

    def watch(self, seconds: float) -> asyncio.Task[object]:
        """Cancel the running task if it runs ``seconds`` more; the task, for ``remove``
        (the loop looked up once: this runs on every request and every timed step call)."""
        loop = self._loop
        if loop is None or loop.is_closed():
            loop = self._running_loop()
        task = running_task(loop)
        assert task is not None
        due = loop.time() + seconds
        self._due[task] = due
        if self._ticker is None or due + self.resolution < self._next:
            self._arm(loop, due)
        return task

    def remove(self, task: asyncio.Task[object]) -> bool:
        """Stop watching ``task``; True if it was cancelled for running past its deadline."""
        self._due.pop(task, None)
        expired = self._expired
        if expired and task in expired:
            expired.discard(task)
            return True
        return False

    def expired(self, task: asyncio.Task[object]) -> bool:
        """For a watched ``task`` that caught ``CancelledError``: stop watching it; True if
        the cancellation was its deadline's alone (that cancel then taken back), False if it
        was not, or someone else cancelled the task too (the error must go on)."""
        return self.remove(task) and task.uncancel() == 0

    def _arm(self, loop: asyncio.AbstractEventLoop, due: float) -> None:
        if self._ticker is not None:
            self._ticker.cancel()
        self._next = due + self.resolution
        self._ticker = loop.call_at(self._next, self._tick)

    def _tick(self) -> None:
        self._ticker = None
        if not self._due:
            return
        loop = self._running_loop()
        now = loop.time()
        for task in [task for task, due in self._due.items() if due <= now]:
            del self._due[task]
            self._expired.add(task)
            task.cancel()
        if self._due:
            self._arm(loop, min(self._due.values()))
