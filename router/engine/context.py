"""What one graph request executes with: the transport, headers, randomness and the hooks that
watch it. Everything nondeterministic is injected here, so tests drive the engine exactly."""

from __future__ import annotations

import asyncio
import random
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from infergraph.router.engine.observe import CallWatcher, Observer
from infergraph.router.engine.transport import Headers, Transport

if TYPE_CHECKING:
    from infergraph.router.engine.runtime import GraphRuntime
    from infergraph.router.engine.tensors import TensorCodec


# The task running on a loop, looked up on every timed call and every hedge. Before Python
# 3.12 ``asyncio.current_task`` is written in Python around one lookup in asyncio's table of
# running tasks (``asyncio.tasks._current_tasks``, which the C tasks keep too): the table's own
# ``get`` does the same without the Python frame (in profiles of a router serving 1,000 req/s,
# ``current_task`` took about 0.4% of its busy time per call site). Elsewhere, the public
# function (written in C from 3.12).
_RUNNING_TASKS = getattr(asyncio.tasks, "_current_tasks", None)
if sys.version_info < (3, 12) and isinstance(_RUNNING_TASKS, dict):
    running_task: Callable[[asyncio.AbstractEventLoop], asyncio.Task[Any] | None] = (
        _RUNNING_TASKS.get
    )
else:  # pragma: no cover (the Python here is 3.11)
    running_task = asyncio.current_task


def loop_time() -> float:
    """The running event loop's clock: the one its timers (sleeps, timeouts) run on."""
    return asyncio.get_running_loop().time()


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
    # The clock the resilience policies read (ejection times, the graph's deadline): it must
    # be the loop's, whose timers the attempts' sleeps and timeouts use.
    clock: Callable[[], float] = loop_time
    # Maps binary OIP messages when the request is one (gRPC ingress): ``engine.tensors``.
    tensors: TensorCodec | None = None
    # The running loop, as the handler already holds it (``asyncio.get_running_loop`` makes
    # a getpid system call each time); looked up once by ``loop()`` when not given.
    event_loop: asyncio.AbstractEventLoop | None = None
    # Set by run_graph for graphs with policies: the plan's running state, the deadline (on
    # ``clock``) and the graph's timeout; the fallbacks that answered ("node/step=target"),
    # for the response header (made by the first).
    # (None on a graph without policies: nothing is made per request for them.)
    runtime: GraphRuntime | None = None
    deadline: float | None = None
    timeout: float | None = None
    fallbacks: list[str] | None = None

    def loop(self) -> asyncio.AbstractEventLoop:
        """The running event loop."""
        if self.event_loop is None:
            self.event_loop = asyncio.get_running_loop()
        return self.event_loop
