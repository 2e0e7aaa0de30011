"""Small local predictors: real HTTP servers for the demo, the tests and the benchmarks.

One process serves:

- KServe v1 REST (``POST /v1/models/<name>:predict``) and Open Inference Protocol v2 REST
  (``POST /v2/models/<name>/infer``) for scikit-learn models trained at start-up on the iris data
  set that scikit-learn ships (``--models``), with their readiness endpoints;
- ``POST /echo``: the request body back, as fast as aiohttp can (the benchmark predictor);
- ``POST /step/<name>``: a scriptable step for black-box tests. Query parameters set the status
  (``status``), a delay in seconds (``delay``), a raw body to return (``body``) and its content
  type (``ctype``); without ``body`` it answers ``{"step": name, "input": <request JSON>}``.
  With ``events=N`` it streams instead: N server-sent events ``{"step": name, "event": k}``,
  ``interval`` seconds apart, then ``data: [DONE]`` (an LLM's token stream with known timing).
  Every call is recorded; ``GET /_calls`` lists them and ``DELETE /_calls`` clears the list; a
  call abandoned by its client (during ``delay`` or mid-stream) counts as cancelled.
"""

from __future__ import annotations

import argparse
import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import orjson
import uvloop
from aiohttp import web

from infergraph.predictors import models as model_zoo
from infergraph.predictors import servers
from infergraph.router.protocols import Protocol, inference_path

JSON = "application/json"


@dataclass
class CallLog:
    calls: list[dict[str, Any]] = field(default_factory=list)
    cancelled: int = 0


IDENTITY = "identity"


def _json(value: Any, status: int = 200) -> web.Response:
    return web.Response(status=status, body=orjson.dumps(value), content_type=JSON)


async def _events(
    request: web.Request, name: str, count: int, interval: float
) -> web.StreamResponse:
    response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
    await response.prepare(request)
    try:
        for k in range(count):
            if k and interval:
                await asyncio.sleep(interval)
            await response.write(b"data: %s\n\n" % orjson.dumps({"step": name, "event": k}))
        await response.write(b"data: [DONE]\n\n")
    except (asyncio.CancelledError, ConnectionResetError):
        request.app["calls"].cancelled += 1
        raise
    await response.write_eof()
    return response


async def echo(request: web.Request) -> web.Response:
    body = await request.read()
    return web.Response(body=body, content_type=JSON)


async def step(request: web.Request) -> web.StreamResponse:
    log: CallLog = request.app["calls"]
    name = request.match_info["name"]
    raw = await request.read()
    query = request.query
    log.calls.append(
        {
            "step": name,
            "path": request.path_qs,
            "method": request.method,
            "headers": {k.decode(): v.decode("utf-8", "replace") for k, v in request.raw_headers},
            # The bytes as they arrived, as Latin-1 strings (nothing lost or altered).
            "raw_headers": [
                [k.decode("latin-1"), v.decode("latin-1")] for k, v in request.raw_headers
            ],
            "body": raw.decode("utf-8", "replace"),
            "time": time.time(),
        }
    )
    delay = float(query.get("delay", "0"))
    if delay:
        try:
            await asyncio.sleep(delay)
        except asyncio.CancelledError:
            log.cancelled += 1
            raise
    if "events" in query:
        return await _events(request, name, int(query["events"]), float(query.get("interval", "0")))
    status = int(query.get("status", "200"))
    if "body" in query:
        return web.Response(
            status=status, body=query["body"].encode(), content_type=query.get("ctype", JSON)
        )
    try:
        received: Any = orjson.loads(raw)
    except orjson.JSONDecodeError:
        received = raw.decode("utf-8", "replace")
    return _json({"step": name, "input": received}, status)


async def list_calls(request: web.Request) -> web.Response:
    log: CallLog = request.app["calls"]
    return _json({"calls": log.calls, "cancelled": log.cancelled})


async def clear_calls(request: web.Request) -> web.Response:
    log: CallLog = request.app["calls"]
    log.calls.clear()
    log.cancelled = 0
    return _json({"cleared": True})


async def _serve_model(request: web.Request, infer: Callable[[str, Any], Any]) -> web.Response:
    """Decode the body, run ``infer(model name, document)``, answer its result or its error."""
    try:
        document = orjson.loads(await request.read())
        return _json(infer(request.match_info["name"], document))
    except model_zoo.ModelInputError as exc:
        return _json({"error": str(exc)}, exc.status)
    except orjson.JSONDecodeError as exc:
        return _json({"error": f"request body is not JSON: {exc}"}, 400)


async def v1_predict(request: web.Request) -> web.Response:
    zoo: model_zoo.ModelZoo = request.app["zoo"]
    return await _serve_model(
        request, lambda name, document: {"predictions": zoo.predict_v1(name, document)}
    )


def identity(name: str, document: Any) -> dict[str, Any]:
    """The v2 model ``identity``: every input back as an output, parameters and id kept."""
    inputs = document.get("inputs") if isinstance(document, dict) else None
    if not isinstance(inputs, list):
        raise model_zoo.ModelInputError('a v2 request has an "inputs" list')
    answer: dict[str, Any] = {"model_name": name, "outputs": inputs}
    for key in ("id", "parameters"):
        if key in document:
            answer[key] = document[key]
    return answer


async def v2_infer(request: web.Request) -> web.Response:
    if request.match_info["name"] == IDENTITY:
        return await _serve_model(request, identity)
    zoo: model_zoo.ModelZoo = request.app["zoo"]
    return await _serve_model(request, zoo.infer_v2)


async def v2_metadata(request: web.Request) -> web.Response:
    """``GET /v2/models/<name>``: the model's tensors (the identity model's are open)."""
    name = request.match_info["name"]
    zoo: model_zoo.ModelZoo = request.app["zoo"]
    if name == IDENTITY:
        return _json(
            {"name": name, "versions": [], "platform": "identity", "inputs": [], "outputs": []}
        )
    if name not in zoo.models:
        return _json({"error": f"model {name} not found"}, 404)
    return _json({"name": name, "versions": ["1"], "platform": "sklearn", **model_zoo.V2_TENSORS})


async def ready(request: web.Request) -> web.Response:
    return _json({"ready": True})


async def model_ready(request: web.Request) -> web.Response:
    zoo: model_zoo.ModelZoo = request.app["zoo"]
    name = request.match_info["name"]
    if name not in zoo.models:
        return _json({"error": f"model {name} not found"}, 404)
    return _json({"name": name, "ready": True})


def make_app(zoo: model_zoo.ModelZoo) -> web.Application:
    app = web.Application(client_max_size=64 * 1024 * 1024)
    app["calls"] = CallLog()
    app["zoo"] = zoo
    app.router.add_post("/echo", echo)
    app.router.add_route("*", "/step/{name}", step)
    app.router.add_get("/_calls", list_calls)
    app.router.add_delete("/_calls", clear_calls)
    v1, v2 = Protocol.V1, Protocol.V2
    app.router.add_post(inference_path(v1, "{name}"), v1_predict)
    app.router.add_get(servers.model_ready_path(v1, "{name}"), model_ready)
    app.router.add_post(inference_path(v2, "{name}"), v2_infer)
    app.router.add_get("/v2/models/{name}", v2_metadata)
    app.router.add_get(servers.model_ready_path(v2, "{name}"), model_ready)
    app.router.add_get(servers.V2_HEALTH_READY, ready)
    app.router.add_get(servers.V2_HEALTH_LIVE, ready)
    return app


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=9000)
    parser.add_argument(
        "--models", action="store_true", help="train and serve the iris models (needs scikit-learn)"
    )
    args = parser.parse_args(argv)
    zoo = model_zoo.ModelZoo.train() if args.models else model_zoo.ModelZoo({})
    web.run_app(
        make_app(zoo),
        host=args.host,
        port=args.port,
        access_log=None,
        print=None,
        handler_cancellation=True,
        # Large headers (long bearer tokens) pass through the router to model servers.
        max_line_size=1 << 20,
        max_field_size=1 << 20,
        max_headers=4096,
        loop=uvloop.new_event_loop(),
    )


if __name__ == "__main__":
    main()
