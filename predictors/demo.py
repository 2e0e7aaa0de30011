"""The embedded demo: local iris predictors, the router on ``graphs/demo.yaml``, sample requests.

Everything it starts it stops, also on failure or Ctrl-C.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import aiohttp
import orjson

from infergraph.predictors import processes

DEMO_GRAPH = Path(__file__).resolve().parent.parent / "graphs" / "demo.yaml"
V1_PORT, V2_PORT = 18081, 18082

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


async def run_demo(router_port: int = 0, graph: Path = DEMO_GRAPH) -> int:
    port = router_port or processes.free_port()
    busy = [p for p in (V1_PORT, V2_PORT) if not processes.port_is_free(p)]
    if busy:
        print(f"the demo graph's predictor ports {busy} are in use: stop what holds them and retry")
        return 1
    started: list[processes.ServerProcess] = []
    try:
        print("starting local predictors (scikit-learn models trained on iris) ...")
        for predictor_port in (V1_PORT, V2_PORT):
            server = processes.predictor(predictor_port, models=True)
            started.append(server)
            await asyncio.to_thread(server.start, 60.0)
        print(f"starting the router on 127.0.0.1:{port} with {graph} ...")
        router = processes.router(port, "--graph", str(graph), extra=["--drain-seconds", "0"])
        started.append(router)
        await asyncio.to_thread(router.start)
        failures = await _send_samples(f"http://127.0.0.1:{port}/")
    finally:
        await processes.stop_all(started[::-1])
    print("\nstopped the router and the predictors.")
    if failures:
        print(f"{failures} sample(s) did not get the expected status")
    return 1 if failures else 0
