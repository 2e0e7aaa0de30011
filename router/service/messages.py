"""The request and response the handler works on, whichever HTTP server carried them.

Header names and values are ``str`` holding the bytes as sent, decoded as Latin-1 (the WSGI
convention): nothing is lost, so a value with non-ASCII bytes is forwarded exactly as it came.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator
from dataclasses import dataclass

import orjson

Headers = tuple[tuple[str, str], ...]


def error_body(cause: str) -> bytes:
    """KServe's error body, for every error the router renders (handler and servers alike)."""
    return orjson.dumps({"error": "Failed to process request", "cause": cause})


# Not frozen, as the engine's StepCall and Reply: made per request, never changed after.
@dataclass(slots=True)
class Request:
    """One whole request: the server has read the body before the handler runs."""

    method: str
    path: str  # percent-decoded, without the query
    headers: Headers
    body: bytes
    # Set by gRPC ingress only (never from a header): the body is this OIP message in
    # protobuf's wire format (``protocols.OIP_INFER_REQUEST``).
    media: str | None = None

    def take_body(self) -> bytes:
        """The body, which the request holds no more: whoever takes it may let it go early."""
        body, self.body = self.body, b""
        return body

    def header(self, name: str) -> str | None:
        """The first value of a header (``name`` in lower case), or None."""
        for key, value in self.headers:
            if key.lower() == name:
                return value
        return None


@dataclass(slots=True)
class Response:
    """What the handler answers.

    ``stream``: the body arrives in chunks (server-sent events), relayed as they come; an
    exception from it aborts the connection. ``abort``: close the client's connection without
    answering (as Go's ``ReadTimeout``/``WriteTimeout`` do); ``status`` is only recorded.
    """

    status: int
    body: bytes = b""
    content_type: str | None = None
    headers: Headers = ()
    stream: AsyncGenerator[bytes, None] | None = None
    abort: bool = False
