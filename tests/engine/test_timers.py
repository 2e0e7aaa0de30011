"""``engine.timers``: callbacks at their loop times, exactly, on virtual time, kept by one loop
timer for the earliest (a timer per callback would cost uvloop a handle to close each)."""

from __future__ import annotations

import asyncio

from infergraph.router.engine.timers import Timers
from infergraph.testing import virtual_time


class Note:
    def __init__(self, name: str, fired: list[tuple[str, float]]) -> None:
        self.name, self.fired = name, fired

    def fire(self) -> None:
        self.fired.append((self.name, asyncio.get_running_loop().time()))


def test_callbacks_run_at_their_times_and_cancelled_ones_never() -> None:
    async def main() -> tuple[list[tuple[str, float]], list[int]]:
        loop = asyncio.get_running_loop()
        timers = Timers()
        fired: list[tuple[str, float]] = []
        scheduled: list[int] = []

        def note(name: str) -> Note:
            return Note(name, fired)

        def live() -> int:
            handles = loop._scheduled  # type: ignore[attr-defined]  # asyncio's timer heap
            return sum(not handle.cancelled() for handle in handles)

        timers.at(loop, 2.0, note("late"))
        scheduled.append(live())
        early = note("cancelled")
        timers.at(loop, 0.5, early)
        timers.at(loop, 1.0, note("early"))
        timers.at(loop, 1.0, note("same time"))
        timers.cancel(early)
        for when in (2.5, 3.0):
            timers.at(loop, when, note("later"))
        moved = note("moved")
        timers.at(loop, 3.5, moved)
        timers.at(loop, 3.8, moved)  # one time per object: this one
        scheduled.append(live())
        await asyncio.sleep(4)
        timers.at(loop, 5.0, note("after a quiet spell"))
        await asyncio.sleep(2)
        return fired, scheduled

    fired, scheduled = virtual_time.run(main())
    assert fired == [
        ("early", 1.0),
        ("same time", 1.0),
        ("late", 2.0),
        ("later", 2.5),
        ("later", 3.0),
        ("moved", 3.8),
        ("after a quiet spell", 5.0),
    ]
    # One loop timer at a time, not one per callback (it moved to 0.5 s, the cancelled
    # callback's time, and fired there for nothing).
    assert scheduled == [1, 1]
