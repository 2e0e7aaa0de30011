"""The engine's one I/O seam: send a step's request to a service, get its reply.

Production uses the HTTP transport in ``infergraph.router.http``; engine tests use a fake object
that records calls. Transports raise only ``UpstreamError`` subclasses for failures below HTTP;
an HTTP error status is a normal ``Reply``.
"""

from __future__ import annotations

import re
from collections.abc import AsyncGenerator
from dataclasses import dataclass
from typing import Protocol
from urllib.parse import urlsplit

from infergraph.router.engine.errors import InvalidStepUrl

Headers = tuple[tuple[str, str], ...]
# URL schemes a step may call, with their default ports (grpc: Open Inference Protocol gRPC).
SCHEMES = {"http": 80, "https": 443, "grpc": 8001, "grpcs": 443}

_HOST = re.compile(
    r"^(?:[A-Za-z0-9_~%!$&'()*+,;=-]+(?:\.[A-Za-z0-9_~%!$&'()*+,;=-]+)*\.?|\[[0-9A-Fa-f:.]+\])$"
)


@dataclass(frozen=True, slots=True)
class ServiceTarget:
    """A step URL, parsed once at load time. ``error`` is set when the URL cannot be called."""

    url: str
    scheme: str = "http"
    host: str = ""
    port: int = 80
    path: str = "/"
    error: str | None = None

    @property
    def authority(self) -> str:
        """The ``Host`` header value for this target."""
        return self.host if self.port == SCHEMES.get(self.scheme) else f"{self.host}:{self.port}"

    def with_path(self, path: str) -> ServiceTarget:
        """The same server, another path (a model's endpoint under a base URL)."""
        url = f"{self.scheme}://{self.authority}{path}"
        return ServiceTarget(url, self.scheme, self.host, self.port, path, self.error)

    def check(self) -> None:
        """Raise ``InvalidStepUrl`` if this target cannot be called."""
        if self.error is not None:
            raise InvalidStepUrl(self.error)


def parse_target(url: str) -> ServiceTarget:
    """Parse a step URL; a malformed one yields a target whose calls fail with the reason."""

    def bad(reason: str) -> ServiceTarget:
        return ServiceTarget(url=url, error=f'parse "{url}": {reason}')

    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as exc:
        return bad(str(exc))
    if parts.scheme not in SCHEMES:
        return bad(f"unsupported protocol scheme {parts.scheme!r}")
    host = parts.hostname or ""
    netloc_host = parts.netloc.rpartition("@")[2]
    if netloc_host.startswith("["):
        netloc_host = netloc_host[: netloc_host.find("]") + 1]
    else:
        netloc_host = netloc_host.split(":")[0]
    if not host or not _HOST.match(netloc_host):
        return bad(f"invalid host {netloc_host!r}")
    path = parts.path or "/"
    if parts.query:
        path = f"{path}?{parts.query}"
    default_port = SCHEMES[parts.scheme]
    return ServiceTarget(
        url=url, scheme=parts.scheme, host=host, port=port or default_port, path=path
    )


# StepCall and Reply (like the service's Request and Response) are made on every call, so they
# are not frozen: a frozen dataclass's __init__ sets each field through object.__setattr__,
# about 1 µs for StepCall alone. Nothing changes one after it is made; copies go through
# ``with_headers`` or ``dataclasses.replace``.
@dataclass(slots=True)
class StepCall:
    """One downstream call: where, what, with which headers, and how long it may take.

    ``protocol`` is None for a plain POST (KServe's behaviour); ``v2-grpc`` calls ``model`` over
    gRPC with the JSON v2 ``body``, or with the ``ModelInferRequest`` it is when ``media`` says
    so (``protocols.OIP_INFER_REQUEST``); ``stream`` asks for the reply body as it arrives.
    """

    target: ServiceTarget
    body: bytes
    headers: Headers
    timeout: float | None
    protocol: str | None = None
    model: str | None = None
    model_version: str | None = None
    stream: bool = False
    # Where the call comes from, for telemetry labels.
    graph: str = ""
    node: str = ""
    step: str = ""
    # Headers that differ on every call (the trace context), sent after ``headers``: kept
    # apart so transports can reuse what they built for ``headers``.
    trace_headers: Headers = ()
    # Which attempt of the step call this is (1: the first), and whether it is a hedge.
    attempt: int = 1
    hedge: bool = False
    # None: ``body`` is JSON (or bytes passed on); else the OIP message type it holds.
    media: str | None = None

    def with_headers(self, headers: Headers, trace_headers: Headers = ()) -> StepCall:
        """The same call with other headers (built directly: ``dataclasses.replace`` inspects
        the fields on every call, and this is on every traced call's path)."""
        return StepCall(
            self.target,
            self.body,
            headers,
            self.timeout,
            self.protocol,
            self.model,
            self.model_version,
            self.stream,
            self.graph,
            self.node,
            self.step,
            trace_headers,
            self.attempt,
            self.hedge,
            self.media,
        )

    def all_headers(self) -> Headers:
        """``headers`` then ``trace_headers``: what goes on the wire."""
        return self.headers + self.trace_headers if self.trace_headers else self.headers


@dataclass(slots=True)
class Reply:
    """A step's (or node's) outcome: status and raw body, passed on as bytes."""

    status: int
    body: bytes
    content_type: str | None = None
    # Set instead of ``body`` when the call asked for a stream: the body's chunks as they arrive.
    stream: AsyncGenerator[bytes, None] | None = None
    # 2 when the transport sent the request again (a reused connection the server had closed).
    attempts: int = 1

    @property
    def ok(self) -> bool:
        return 200 <= self.status <= 299


class Transport(Protocol):
    async def send(self, call: StepCall) -> Reply: ...
