"""A whole reply's head without extra headers comes from a cached status line and content type
(``server._prefix``): the same bytes as the general path (``server._head``) writes, for known
and unknown statuses, with and without a content type (one outside latin-1 too), closing the
connection or not."""

from __future__ import annotations

import itertools

import pytest

from infergraph.router.service import server
from infergraph.router.service.messages import Request, Response


class Recorder:
    def __init__(self) -> None:
        self.written: list[bytes] = []

    def write(self, data: bytes) -> None:
        self.written.append(data)

    def writelines(self, parts: tuple[bytes, ...]) -> None:
        self.written.append(b"".join(parts))


class FixedDate:
    """The Date header's source, stopped: both paths must see the same second."""

    def value(self) -> bytes:
        return b"Mon, 07 Dec 2026 06:54:23 GMT"


def written(response: Response, closing: bool) -> bytes:
    connection = server._Connection.__new__(server._Connection)
    recorder = Recorder()
    connection.transport = recorder  # type: ignore[assignment]
    connection.closing = closing
    connection._write_whole(Request("POST", "/", (), b""), response)
    return b"".join(recorder.written)


def test_the_cached_head_is_the_general_one(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(server, "_DATE", FixedDate())
    statuses = (200, 404, 503, 599)
    types = (None, "application/json", "text/plain; charset=ü€")
    for status, content_type, closing in itertools.product(statuses, types, (False, True)):
        for body in (b"", b'{"a": 1}', b"x" * 20000):
            fast = written(Response(status, body, content_type), closing)
            # One header makes the general path write it; taking it out again gives what the
            # general path writes without it.
            marked = written(Response(status, body, content_type, (("X-Mark", "1"),)), closing)
            assert fast == marked.replace(b"X-Mark: 1\r\n", b"", 1), (status, content_type)
            assert fast.endswith(b"\r\n\r\n" + body)
