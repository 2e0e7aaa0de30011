"""What one graph request executes with: the transport, headers, randomness and clock.

Everything nondeterministic is injected here, so tests drive the engine exactly.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from infergraph.router.engine.observe import Observer
from infergraph.router.engine.transport import Headers, Transport


@dataclass(slots=True)
class ExecutionContext:
    transport: Transport
    headers: Headers = (("Content-Type", "application/json"),)
    service_timeout: float | None = None
    rng: random.Random = field(default_factory=random.Random)
    clock: Callable[[], float] = time.perf_counter
    # Set by run_graph: the request asks an OpenAI step for server-sent events.
    stream_requested: bool = False
    graph: str = ""
    observer: Observer | None = None
    # Filled in while the request runs: step calls made, and the wall-clock seconds during which
    # at least one call was outstanding (concurrent ensemble calls are not counted twice).
    calls: int = 0
    upstream_seconds: float = 0.0
    _outstanding: int = 0
    _waiting_since: float = 0.0

    def call_started(self) -> None:
        self.calls += 1
        if self._outstanding == 0:
            self._waiting_since = self.clock()
        self._outstanding += 1

    def call_finished(self) -> None:
        self._outstanding -= 1
        if self._outstanding == 0:
            self.upstream_seconds += self.clock() - self._waiting_since
