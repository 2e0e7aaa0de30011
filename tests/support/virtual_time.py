"""An event loop on virtual time, for exact tests of timers: backoff, hedges, timeouts, ejection.

The loop's clock (``loop.time()``, which every ``asyncio.sleep``, ``asyncio.timeout`` and
``call_later`` runs on) starts at 0 and moves only when the loop has nothing ready to run: it
then jumps straight to the next timer. A test of a 30-second ejection takes microseconds, and
"the hedge went out at 50 ms" is an equality, not a range.

Only for code that waits on timers and on itself: with real sockets in play the loop would
jump past their I/O. A loop with nothing ready and no timer is stuck for good, and says so.
"""

from __future__ import annotations

import asyncio
import selectors
from collections.abc import Coroutine
from typing import Any, TypeVar

T = TypeVar("T")


class Deadlock(RuntimeError):
    """Nothing can ever run again: no callback is ready and no timer is set."""


class _JumpingSelector(selectors.DefaultSelector):
    def __init__(self) -> None:
        super().__init__()
        self.now = 0.0

    def select(self, timeout: float | None = None) -> list[tuple[selectors.SelectorKey, int]]:
        events = super().select(0)
        if events or timeout == 0:
            return events
        if timeout is None:
            raise Deadlock("the test is waiting for something no timer or task will bring")
        self.now += timeout  # jump to the next timer
        return []


class VirtualTimeLoop(asyncio.SelectorEventLoop):
    """A selector event loop whose clock is virtual (see the module docstring)."""

    def __init__(self) -> None:
        self._jumping = _JumpingSelector()
        super().__init__(self._jumping)
        self._clock_resolution = 1e-9

    def time(self) -> float:
        return self._jumping.now


def run(main: Coroutine[Any, Any, T]) -> T:
    """Run ``main`` to its end on a fresh virtual-time loop."""
    with asyncio.Runner(loop_factory=VirtualTimeLoop) as runner:
        return runner.run(main)
