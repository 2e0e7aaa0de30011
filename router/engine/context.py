"""What one graph request executes with: the transport, headers, randomness and the hooks that
watch it. Everything nondeterministic is injected here, so tests drive the engine exactly."""

from __future__ import annotations

import random
from dataclasses import dataclass, field

from infergraph.router.engine.observe import CallWatcher, Observer
from infergraph.router.engine.transport import Headers, Transport


@dataclass(slots=True)
class ExecutionContext:
    transport: Transport
    headers: Headers = (("Content-Type", "application/json"),)
    service_timeout: float | None = None
    rng: random.Random = field(default_factory=random.Random)
    # Set by run_graph: the request asks an OpenAI step for server-sent events.
    stream_requested: bool = False
    graph: str = ""
    # The graph's observer (node and routing events) and this request's call watcher (told
    # when each step call starts and ends); None when nothing watches.
    observer: Observer | None = None
    calls: CallWatcher | None = None
    # The trace context every step call carries when the request's telemetry fixed it for
    # the whole request (an unsampled trace: no spans per call).
    trace_headers: Headers = ()
