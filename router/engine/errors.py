"""The exceptions a graph request can end in, each carrying the HTTP status it renders as.

::

    GraphRequestError (500)               rendered {"error": "...", "cause": ...}
    ├── NoRouteMatched (404)              the root Switch matched no route
    ├── NestedNoRouteMatched (500)        a nested Switch matched none (fails its parent)
    ├── InvalidResponse (500)             a condition met a body that is not JSON
    ├── EnsembleMergeError (500)          an ensemble branch returned something other than an object
    ├── MappingError (500)                a step's response could not be mapped into the next input
    ├── DeadlineExceeded (504)            the request ran past serverWrite: the connection is closed
    ├── GraphTimeout (504)                the graph's ``timeout`` ran out (names the running steps)
    ├── GraphOverloaded (503)             the graph's ``maxInFlight`` is reached: shed, Retry-After
    ├── UpstreamError (500)               a step call failed below HTTP
    │   ├── UpstreamConnectionError       the connection broke (a reset)
    │   │   └── UpstreamConnectFailed     no connection could be made
    │   ├── UpstreamTimeout               ``routerTimeouts.serviceClient`` ran out
    │   │   └── StepTimeout (504)         the step's own per-attempt ``timeout`` ran out
    │   ├── UpstreamOverloaded (503)      no connection to the backend became free in time
    │   │   └── StepOverloaded (503)      the step's ``maxInFlight`` is reached (its bulkhead)
    │   ├── NoHealthyReplica (503)        every replica is failing (only with a fallback)
    │   └── InvalidStepUrl
    └── BadRequest (4xx)                  the client's request itself is wrong
        ├── BodyTooLarge (413)
        ├── GraphNotFound (404)
        ├── RequestMappingError (400)     a data mapping found nothing it needs in the request
        ├── Unauthenticated (401)         no bearer token, or one the API server does not know
        ├── Forbidden (403)               the caller may not use this graph (or it cannot be told)
        └── ClientReadTimeout (408)       the body took longer than serverRead: connection closed

An error whose ``close_connection`` is true is not rendered: as Go's ``ReadTimeout`` and
``WriteTimeout`` do, the router closes the client's connection instead, and the status is what
metrics and logs record.

``GraphSpecError`` is separate: it is raised when a graph is loaded, never on the request path,
and lists every problem found, each naming its node and step.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass


class GraphRequestError(Exception):
    """A request could not be served; ``status`` is the HTTP status of the error response."""

    status = 500
    close_connection = False
    headers: tuple[tuple[str, str], ...] = ()  # sent with the error response

    def __init__(self, cause: str) -> None:
        super().__init__(cause)
        self.cause = cause


class NoRouteMatched(GraphRequestError):
    status = 404

    def __init__(self) -> None:
        super().__init__("None of the routes matched with the switch condition")


class NestedNoRouteMatched(GraphRequestError):
    def __init__(self) -> None:
        super().__init__("None of the routes matched with the switch condition")


class InvalidResponse(GraphRequestError):
    def __init__(self) -> None:
        super().__init__("invalid response")


class EnsembleMergeError(GraphRequestError):
    pass


class MappingError(GraphRequestError):
    """A step's response lacks what a data mapping selects from it (a model-server problem)."""


class DeadlineExceeded(GraphRequestError):
    status = 504
    close_connection = True


class GraphTimeout(GraphRequestError):
    """The graph's overall ``timeout`` ran out; the cause names the steps that were running."""

    status = 504


class GraphOverloaded(GraphRequestError):
    """Shed at once: the graph already serves ``maxInFlight`` requests (the client may retry)."""

    status = 503
    headers = (("Retry-After", "1"),)


class UpstreamError(GraphRequestError):
    """Base of the failures of a step call below HTTP (raised by transports and the attempt
    loop)."""


class UpstreamConnectionError(UpstreamError):
    pass


class UpstreamConnectFailed(UpstreamConnectionError):
    """No connection to the step's server could be made (nothing was sent)."""


class UpstreamTimeout(UpstreamError):
    pass


class StepTimeout(UpstreamTimeout):
    status = 504


class UpstreamOverloaded(UpstreamError):
    """Every connection to the step's backend stayed busy for the whole pool timeout (Envoy
    answers its connection-pool overflow with 503 too)."""

    status = 503


class StepOverloaded(UpstreamOverloaded):
    """The step's bulkhead: it already has ``maxInFlight`` calls outstanding."""


class NoHealthyReplica(UpstreamError):
    """Every replica of the step is failing, so its fallback is called straight away."""

    status = 503


class InvalidStepUrl(UpstreamError):
    pass


class BadRequest(GraphRequestError):
    status = 400


class BodyTooLarge(BadRequest):
    status = 413


class GraphNotFound(BadRequest):
    status = 404


class RequestMappingError(BadRequest):
    """The client's request lacks what a data mapping selects from it."""


class Unauthenticated(BadRequest):
    status = 401
    headers = (("WWW-Authenticate", 'Bearer realm="infergraph"'),)


class Forbidden(BadRequest):
    status = 403


class ClientReadTimeout(BadRequest):
    status = 408
    close_connection = True


@dataclass(frozen=True, slots=True)
class SpecProblem:
    """One reason a graph is invalid, located at a node and (optionally) a step."""

    message: str
    node: str | None = None
    step: str | None = None

    def __str__(self) -> str:
        where = []
        if self.node is not None:
            where.append(f"node {self.node!r}")
        if self.step is not None:
            where.append(f"step {self.step}")
        return f"{', '.join(where)}: {self.message}" if where else self.message


class GraphSpecError(ValueError):
    """A graph failed to load; ``problems`` lists every reason, not only the first."""

    def __init__(self, problems: Sequence[SpecProblem], source: str | None = None) -> None:
        self.problems = tuple(problems)
        self.source = source
        head = f"invalid graph{f' {source}' if source else ''}"
        super().__init__(head + ":\n" + "\n".join(f"  - {p}" for p in self.problems))
