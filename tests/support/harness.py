"""Helpers for black-box tests: a real predictor process, real router processes, plain HTTP."""

from __future__ import annotations

import http.client
import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlencode

import orjson

# What the start_router fixture returns: start a router with a graph, get its port.
RouterFactory = Callable[..., int]


@dataclass
class Response:
    status: int
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        return orjson.loads(self.body)


def request(
    port: int,
    body: bytes | Any = b"{}",
    *,
    path: str = "/",
    method: str = "POST",
    headers: dict[str, str] | None = None,
    timeout: float = 20,
) -> Response:
    raw = body if isinstance(body, bytes) else orjson.dumps(body)
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        connection.request(method, path, body=raw, headers=headers or {})
        response = connection.getresponse()
        return Response(response.status, dict(response.getheaders()), response.read())
    finally:
        connection.close()


class Predictor:
    """The local predictor's scriptable ``/step/<name>`` endpoint and its call log."""

    def __init__(self, port: int) -> None:
        self.port = port

    def url(self, name: str, **query: Any) -> str:
        q = f"?{urlencode(query)}" if query else ""
        return f"http://127.0.0.1:{self.port}/step/{name}{q}"

    def calls(self) -> list[dict[str, Any]]:
        calls: list[dict[str, Any]] = request(self.port, path="/_calls", method="GET").json()[
            "calls"
        ]
        return calls

    def cancelled(self) -> int:
        count: int = request(self.port, path="/_calls", method="GET").json()["cancelled"]
        return count

    def called(self) -> list[str]:
        return [c["step"] for c in self.calls()]

    def bodies(self, name: str) -> list[Any]:
        return [json.loads(c["body"]) for c in self.calls() if c["step"] == name]

    def clear(self) -> None:
        request(self.port, path="/_calls", method="DELETE")


def graph(nodes: dict[str, Any], **spec: Any) -> str:
    return json.dumps({"nodes": nodes, **spec})


def root_graph(router_type: str, steps: list[dict[str, Any]], **spec: Any) -> str:
    """A graph whose only node is ``root``."""
    return graph({"root": {"routerType": router_type, "steps": steps}}, **spec)
