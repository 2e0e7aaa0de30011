"""Several router processes on one port, so one pod can use the cores it is given.

``run_workers`` forks ``count`` workers after the graphs have been loaded and checked (an invalid
graph fails once, in the parent). Each worker runs the whole service with its own event loop and
binds the port with ``SO_REUSEPORT``, so the kernel spreads incoming connections over them; each
watches its graph sources (hot reload) and drains on SIGTERM by itself. The parent only
supervises: it passes SIGTERM/SIGINT on to every worker, replaces a worker that dies while the
router is not stopping, and exits with the worst exit code once all have exited. A worker that
dies within ``MIN_UPTIME`` seconds of its start (a port it cannot bind, say) is not replaced: the
whole router stops instead of looping.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import time
from collections.abc import Callable
from types import FrameType

log = logging.getLogger("infergraph.router")

MIN_UPTIME = 2.0
STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)


class Supervisor:
    def __init__(self, count: int, serve: Callable[[], int]) -> None:
        self.count = count
        self.serve = serve
        self.children: dict[int, tuple[int, float]] = {}  # pid -> (worker index, started)
        self.stopping = False
        self.exit_code = 0

    def spawn(self, index: int) -> None:
        pid = os.fork()
        if pid == 0:  # the worker
            code = 1
            try:
                for sig in STOP_SIGNALS:
                    signal.signal(sig, signal.SIG_DFL)
                code = self.serve()
            except BaseException:
                log.exception("worker %d failed", index)
            finally:
                os._exit(code)
        self.children[pid] = (index, time.monotonic())

    def stop(self, sig: int, frame: FrameType | None = None) -> None:
        self.stopping = True
        for pid in self.children:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, sig)

    def run(self) -> int:
        for sig in STOP_SIGNALS:
            signal.signal(sig, self.stop)
        for index in range(self.count):
            self.spawn(index)
        log.info("%d workers started", self.count)
        while self.children:
            try:
                pid, status = os.wait()
            except ChildProcessError:
                break
            if pid not in self.children:
                continue
            index, started = self.children.pop(pid)
            code = os.waitstatus_to_exitcode(status)
            if self.stopping:
                self.exit_code = max(self.exit_code, code if code > 0 else 0)
                continue
            if time.monotonic() - started < MIN_UPTIME:
                log.error("worker %d exited with %d at start-up: stopping the router", index, code)
                self.exit_code = 1
                self.stop(signal.SIGTERM)
                continue
            log.error("worker %d exited with %d: starting a new one", index, code)
            self.spawn(index)
        return self.exit_code


def run_workers(count: int, serve: Callable[[], int]) -> int:
    """Run ``serve`` in ``count`` forked workers until they have all exited."""
    return Supervisor(count, serve).run()
