"""Several router processes on one port, so one pod can use the cores it is given.

``run_workers`` forks ``count`` workers after the graphs have been loaded and checked (an invalid
graph fails once, in the parent). Each worker runs the whole service with its own event loop and
binds the port with ``SO_REUSEPORT``, so the kernel spreads incoming connections over them; each
watches its graph sources (hot reload) and drains on SIGTERM by itself. The parent only
supervises: it passes SIGTERM/SIGINT on to every worker, replaces a worker that dies while the
router is not stopping, and exits with the worst exit code once all have exited.

Restarts follow a process supervisor's rules (systemd's ``Restart=`` with ``RestartSec=``,
``RestartMaxDelaySec=`` and a start limit; supervisord's backoff): a worker that dies while the
router is not stopping, whatever its exit code, is a crash. Its slot is refilled after
``RESTART_DELAY`` seconds, a delay that doubles with each further crash of that slot up to
``RESTART_DELAY_MAX``, and that goes back to ``RESTART_DELAY`` once a worker in the slot has stayed
up ``STABLE_UPTIME`` seconds. More than ``CRASH_LIMIT`` crashes of one slot within
``CRASH_WINDOW`` seconds is a crash loop (a port it cannot bind, say): the parent logs why, stops
the other workers and exits 1. A stop (SIGTERM/SIGINT) while a restart is pending cancels it;
workers that exit during a stop are not crashes, and a stop with no crash loop exits 0 unless a
worker exited with an error while draining.

The parent waits on a self-pipe (``signal.set_wakeup_fd``) that SIGCHLD, SIGTERM and SIGINT write
to, with the time to the next pending restart as its timeout; its signal handlers only record the
signal, and the loop does the rest, so no signal is lost between a fork and its bookkeeping. The
stop signals stay blocked across a fork until the new worker has dropped the parent's handlers.
"""

from __future__ import annotations

import collections
import contextlib
import logging
import os
import select
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from types import FrameType

log = logging.getLogger("infergraph.router")

RESTART_DELAY = 0.1  # seconds before the first restart of a slot
RESTART_DELAY_MAX = 10.0  # the delay doubles with each crash up to this
STABLE_UPTIME = 10.0  # a worker up this long resets its slot's delay
CRASH_LIMIT = 5  # more crashes than this of one slot ...
CRASH_WINDOW = 30.0  # ... within this many seconds stop the router
STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)


@dataclass
class Slot:
    """One worker's place: the worker in it now, its next restart delay, its recent crashes."""

    index: int
    pid: int = 0  # 0: no worker in it
    started: float = 0.0
    delay: float = RESTART_DELAY
    restart_at: float | None = None  # when a restart is pending
    crashes: collections.deque[float] = field(default_factory=collections.deque)


class Supervisor:
    def __init__(self, count: int, serve: Callable[[], int]) -> None:
        self.count = count
        self.serve = serve
        self.slots = [Slot(index) for index in range(count)]
        self.children: dict[int, Slot] = {}  # pid -> its slot
        self.signals: list[int] = []  # received, not yet passed on
        self.stopping = False
        self.exit_code = 0
        self.wakeup = (-1, -1)  # the self-pipe: read end, write end

    def spawn(self, slot: Slot) -> None:
        # A stop signal that reaches the new worker before it has dropped the parent's handlers
        # would be lost (noted in its copy of ``signals``): it waits, blocked, until they are.
        signal.pthread_sigmask(signal.SIG_BLOCK, STOP_SIGNALS)
        try:
            pid = os.fork()
        except BaseException:
            signal.pthread_sigmask(signal.SIG_UNBLOCK, STOP_SIGNALS)
            raise
        if pid == 0:  # the worker
            code = 1
            try:
                signal.set_wakeup_fd(-1)
                for fd in self.wakeup:
                    os.close(fd)
                for sig in (*STOP_SIGNALS, signal.SIGCHLD):
                    signal.signal(sig, signal.SIG_DFL)
                signal.pthread_sigmask(signal.SIG_UNBLOCK, STOP_SIGNALS)
                code = self.serve()
            except BaseException:
                log.exception("worker %d failed", slot.index)
            finally:
                os._exit(code)
        signal.pthread_sigmask(signal.SIG_UNBLOCK, STOP_SIGNALS)
        slot.pid, slot.started, slot.restart_at = pid, time.monotonic(), None
        self.children[pid] = slot

    def received(self, sig: int, frame: FrameType | None = None) -> None:
        """The signal handler: only note the signal; the loop acts on it."""
        if sig in STOP_SIGNALS:
            self.signals.append(sig)

    def stop(self, sig: int) -> None:
        """Pass ``sig`` on to every worker and cancel the pending restarts."""
        self.stopping = True
        for slot in self.slots:
            if slot.restart_at is not None:
                slot.restart_at = None
                log.info("worker %d will not be restarted: the router is stopping", slot.index)
        for pid in self.children:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, sig)

    def pass_on_signals(self) -> None:
        while self.signals:
            self.stop(self.signals.pop(0))

    def crashed(self, slot: Slot, code: int, now: float) -> None:
        uptime = now - slot.started
        if uptime >= STABLE_UPTIME:
            slot.delay = RESTART_DELAY
        slot.crashes.append(now)
        while slot.crashes and slot.crashes[0] < now - CRASH_WINDOW:
            slot.crashes.popleft()
        if len(slot.crashes) > CRASH_LIMIT:
            log.error(
                "worker %d exited with %d after %.1f s: %d crashes within %.0f s (more than %d) "
                "is a crash loop: stopping the router",
                slot.index,
                code,
                uptime,
                len(slot.crashes),
                CRASH_WINDOW,
                CRASH_LIMIT,
            )
            self.exit_code = 1
            self.stop(signal.SIGTERM)
            return
        log.error(
            "worker %d exited with %d: starting a new one in %.1f s (it was up %.1f s)",
            slot.index,
            code,
            slot.delay,
            uptime,
        )
        slot.restart_at = now + slot.delay
        slot.delay = min(slot.delay * 2, RESTART_DELAY_MAX)

    def reap(self) -> None:
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            slot = self.children.pop(pid, None)
            if slot is None:
                continue
            slot.pid = 0
            code = os.waitstatus_to_exitcode(status)
            self.pass_on_signals()  # a stop that came with this exit comes first
            if self.stopping:
                self.exit_code = max(self.exit_code, code if code > 0 else 0)
            else:
                self.crashed(slot, code, time.monotonic())

    def restart_due(self) -> None:
        now = time.monotonic()
        for slot in self.slots:
            if slot.restart_at is not None and slot.restart_at <= now and not self.stopping:
                self.spawn(slot)

    def wait(self) -> None:
        """Until a signal arrives or the next pending restart is due."""
        pending = [s.restart_at for s in self.slots if s.restart_at is not None]
        timeout = max(0.0, min(pending) - time.monotonic()) if pending else None
        select.select([self.wakeup[0]], [], [], timeout)
        with contextlib.suppress(BlockingIOError):
            while os.read(self.wakeup[0], 512):
                pass

    def run(self) -> int:
        self.wakeup = os.pipe()
        for fd in self.wakeup:
            os.set_blocking(fd, False)
        previous_fd = signal.set_wakeup_fd(self.wakeup[1], warn_on_full_buffer=False)
        previous = {
            sig: signal.signal(sig, self.received) for sig in (*STOP_SIGNALS, signal.SIGCHLD)
        }
        try:
            for slot in self.slots:
                self.spawn(slot)
            log.info("%d workers started", self.count)
            while self.children or any(s.restart_at is not None for s in self.slots):
                self.wait()
                self.pass_on_signals()
                self.reap()
                self.restart_due()
            return self.exit_code
        finally:
            signal.set_wakeup_fd(previous_fd)
            for sig, handler in previous.items():
                if handler is not None:
                    signal.signal(sig, handler)
            for fd in self.wakeup:
                os.close(fd)


def run_workers(count: int, serve: Callable[[], int]) -> int:
    """Run ``serve`` in ``count`` forked workers until they have all exited."""
    return Supervisor(count, serve).run()
