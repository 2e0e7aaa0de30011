"""The embedded demo: local iris predictors, the router on ``graphs/demo.yaml``, sample requests.

``graphs/demo.yaml`` is the documented example and names fixed predictor ports; the demo runs a
copy of it in a temporary directory in which each of those ports is replaced by a free one, with
a local predictor on each, so it runs whatever else holds the documented ports. Everything it
starts it stops (and removes the copy), also on failure or Ctrl-C.
"""

from __future__ import annotations

import asyncio
import tempfile
import time
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import aiohttp
import orjson
import yaml

from infergraph.predictors import processes

DEMO_GRAPH = Path(__file__).resolve().parent.parent / "graphs" / "demo.yaml"

SAMPLES: list[tuple[str, dict[str, Any]]] = [
    (
        "v1 request -> Sequence: scale, then logistic regression",
        {"instances": [[5.1, 3.5, 1.4, 0.2], [6.7, 3.0, 5.2, 2.3]]},
    ),
    (
        "v1 request with parameters.compare -> Sequence: scale, then an Ensemble of two models",
        {"instances": [[5.9, 3.0, 4.2, 1.5]], "parameters": {"compare": True}},
    ),
    (
        "v2 request -> the v2 decision tree",
        {
            "inputs": [
                {"name": "x", "shape": [1, 4], "datatype": "FP32", "data": [6.3, 2.9, 5.6, 1.8]}
            ]
        },
    ),
    ("a request no route matches -> 404 from the Switch", {"text": "hello"}),
]


async def _send_samples(url: str) -> int:
    failures = 0
    async with aiohttp.ClientSession() as session:
        for title, body in SAMPLES:
            started = time.perf_counter()
            async with session.post(url, data=orjson.dumps(body)) as response:
                text = await response.text()
            elapsed = (time.perf_counter() - started) * 1000
            print(f"\n# {title}\nPOST {orjson.dumps(body).decode()}")
            print(f"-> {response.status} in {elapsed:.1f} ms: {text}")
            expected_404 = "no route" in title
            failures += (response.status == 404) != expected_404
    return failures


def _own_urls(node: dict[str, Any]) -> list[str]:
    own = [node["serviceUrl"]] if isinstance(node.get("serviceUrl"), str) else []
    endpoints = node.get("endpoints")
    if isinstance(endpoints, list):
        own += [url for url in endpoints if isinstance(url, str)]
    return own


def _moved(url: str, ports: dict[int, int]) -> str:
    parts = urlsplit(url)
    netloc = f"{parts.hostname}:{ports[parts.port or 80]}"
    return urlunsplit(parts._replace(netloc=netloc))


def _service_urls(node: object) -> list[str]:
    """Every ``serviceUrl`` and ``endpoints`` URL in a parsed graph document."""
    if isinstance(node, dict):
        own = _own_urls(node)
        return own + [url for value in node.values() for url in _service_urls(value)]
    if isinstance(node, list):
        return [url for value in node for url in _service_urls(value)]
    return []


def _with_ports(node: object, ports: dict[int, int]) -> object:
    """``node`` with the port of each ``serviceUrl`` and endpoint mapped through ``ports``."""
    if isinstance(node, dict):
        copy = {key: _with_ports(value, ports) for key, value in node.items()}
        if isinstance(node.get("serviceUrl"), str):
            copy["serviceUrl"] = _moved(node["serviceUrl"], ports)
        if isinstance(node.get("endpoints"), list):
            copy["endpoints"] = [
                _moved(u, ports) if isinstance(u, str) else u for u in node["endpoints"]
            ]
        return copy
    if isinstance(node, list):
        return [_with_ports(value, ports) for value in node]
    return node


def free_ports(count: int) -> list[int]:
    """``count`` different free ports."""
    ports: list[int] = []
    while len(ports) < count:
        port = processes.free_port()
        if port not in ports:
            ports.append(port)
    return ports


def write_demo_graph(source: Path, target: Path) -> list[int]:
    """Write ``source`` to ``target`` with each predictor port it names replaced by a free one;
    returns the free ports, one predictor each."""
    document = yaml.safe_load(source.read_text())
    named = sorted({urlsplit(url).port or 80 for url in _service_urls(document)})
    ports = dict(zip(named, free_ports(len(named)), strict=True))
    target.write_text(yaml.safe_dump(_with_ports(document, ports), sort_keys=False))
    return list(ports.values())


async def run_demo(router_port: int = 0, graph: Path = DEMO_GRAPH) -> int:
    port = router_port or processes.free_port()
    started: list[processes.ServerProcess] = []
    with tempfile.TemporaryDirectory(prefix="infergraph-demo-") as scratch:
        demo_graph = Path(scratch) / graph.name
        predictor_ports = write_demo_graph(graph, demo_graph)
        try:
            shown = ", ".join(f"127.0.0.1:{p}" for p in predictor_ports)
            print(f"starting local predictors (scikit-learn models trained on iris) on {shown} ...")
            for predictor_port in predictor_ports:
                server = processes.predictor(predictor_port, models=True)
                started.append(server)
                await asyncio.to_thread(server.start, 60.0)
            print(f"starting the router on 127.0.0.1:{port} with {graph} (on those ports) ...")
            router = processes.router(
                port, "--graph", str(demo_graph), extra=["--drain-seconds", "0"]
            )
            started.append(router)
            await asyncio.to_thread(router.start)
            failures = await _send_samples(f"http://127.0.0.1:{port}/")
        finally:
            await processes.stop_all(started[::-1])
    print("\nstopped the router and the predictors.")
    if failures:
        print(f"{failures} sample(s) did not get the expected status")
    return 1 if failures else 0
