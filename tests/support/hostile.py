"""Hostile clients for black-box tests: raw bytes on a socket, trickled requests, a client that
waits for ``100 Continue``, one that leaves mid-request, and a plain reader of one response."""

from __future__ import annotations

import re
import socket
import time
from dataclasses import dataclass

HEAD_END = b"\r\n\r\n"


@dataclass
class RawResponse:
    status: int
    head: bytes
    body: bytes

    def header(self, name: str) -> str | None:
        match = re.search(
            rb"^" + re.escape(name.encode()) + rb":\s*([^\r\n]*)", self.head, re.I | re.M
        )
        return match.group(1).decode("latin-1") if match else None


def connect(port: int, timeout: float = 10.0) -> socket.socket:
    return socket.create_connection(("127.0.0.1", port), timeout=timeout)


class ResponseReader:
    """Responses read off one socket in turn: bytes that belong to the next response (a server
    answering pipelined requests may send several in one segment) are kept for it."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.buffer = b""

    def _more(self) -> bool:
        try:
            chunk = self.sock.recv(65536)
        except ConnectionResetError:
            return False
        self.buffer += chunk
        return bool(chunk)

    def read(self) -> RawResponse | None:
        """The next response (Content-Length or chunked body); None if the server closed the
        connection before a whole response head arrived."""
        while HEAD_END not in self.buffer:
            if not self._more():
                return None
        head, _, self.buffer = self.buffer.partition(HEAD_END)
        response = RawResponse(int(head.split(b" ", 2)[1]), head, b"")
        length = response.header("Content-Length")
        if length is not None:
            while len(self.buffer) < int(length) and self._more():
                pass
            response.body, self.buffer = self.buffer[: int(length)], self.buffer[int(length) :]
        elif (response.header("Transfer-Encoding") or "").lower() == "chunked":
            while b"0\r\n\r\n" not in self.buffer and self._more():
                pass
            end = self.buffer.index(b"0\r\n\r\n") + 5 if b"0\r\n\r\n" in self.buffer else None
            raw, self.buffer = self.buffer[:end], self.buffer[end:] if end else b""
            response.body = _dechunk(raw)
        return response


def read_response(sock: socket.socket) -> RawResponse | None:
    """One response read off ``sock`` (for several in turn, use one ``ResponseReader``)."""
    return ResponseReader(sock).read()


def _dechunk(data: bytes) -> bytes:
    body = b""
    while data:
        size_line, _, data = data.partition(b"\r\n")
        size = int(size_line.split(b";")[0], 16)
        if size == 0:
            break
        body += data[:size]
        data = data[size + 2 :]
    return body


def exchange(port: int, raw: bytes, timeout: float = 10.0) -> RawResponse | None:
    """Send ``raw`` on a new connection and read one response (None: closed without one)."""
    with connect(port, timeout) as sock:
        try:
            sock.sendall(raw)
        except (BrokenPipeError, ConnectionResetError):
            return None
        return read_response(sock)


def post(path: str = "/", body: bytes = b"{}", headers: dict[str, bytes] | None = None) -> bytes:
    """A POST as raw bytes; header values are bytes, sent exactly as given."""
    lines = [f"POST {path} HTTP/1.1".encode(), b"Host: x", b"Content-Length: %d" % len(body)]
    lines.extend(name.encode() + b": " + value for name, value in (headers or {}).items())
    return b"\r\n".join(lines) + HEAD_END + body


def closed_within(sock: socket.socket, seconds: float) -> float | None:
    """Seconds until the server closed ``sock`` (reading and discarding what it sends), or
    None if it was still open after ``seconds``."""
    started = time.monotonic()
    sock.settimeout(0.05)
    while time.monotonic() - started < seconds:
        try:
            if sock.recv(65536) == b"":
                return time.monotonic() - started
        except TimeoutError:
            continue
        except (ConnectionResetError, BrokenPipeError):
            return time.monotonic() - started
    return None


def trickle(sock: socket.socket, raw: bytes, interval: float, limit: float) -> float | None:
    """Send ``raw`` one byte every ``interval`` seconds (slowloris) until the server closes the
    connection; the seconds that took, or None if it was still open after ``limit``."""
    started = time.monotonic()
    for byte in raw:
        if time.monotonic() - started > limit:
            return None
        try:
            sock.sendall(bytes([byte]))
        except (BrokenPipeError, ConnectionResetError):
            return time.monotonic() - started
        left = closed_within(sock, interval)
        if left is not None:
            return time.monotonic() - started
    return closed_within(sock, max(0.0, limit - (time.monotonic() - started)))
