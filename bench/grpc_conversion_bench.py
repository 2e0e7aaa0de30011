"""The v2-grpc step's conversions, old (tritonclient + numpy) against new (protobuf from JSON).

In process, no server: for a [1,4] FP32 request (flat data, as the router bench's Triton body)
and a [64,128] one (nested data) it times, with
``time.process_time`` over many iterations, the router CPU of

- ``request``: JSON v2 body -> ``ModelInferRequest`` (old: ``request_from_json``'s InferInput
  objects, then tritonclient's own request building, as ``infer()`` does before the RPC);
- ``response``: ``ModelInferResponse`` -> JSON v2 body (old: through ``InferResult`` and numpy).

The old code is ``git show <rev>:router/http/v2_grpc.py`` (default HEAD) imported from a
temporary file; the new code is the working tree's. Once the new code is committed, pass
``--revision b9b1dd7`` (the last commit of the tritonclient path). Each figure is the best
of ``--rounds`` rounds, in microseconds per call.
Usage: ``.venv/bin/python bench/grpc_conversion_bench.py``.
"""

from __future__ import annotations

import argparse
import importlib.util
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from types import ModuleType
from typing import Any

import orjson
from tritonclient.grpc import InferResult, service_pb2
from tritonclient.grpc._utils import _get_inference_request

from infergraph.router.http import tensors as new

ROOT = Path(__file__).resolve().parent.parent
SHAPES = ([1, 4], [64, 128])


def old_module(revision: str) -> ModuleType:
    """``router/http/v2_grpc.py`` as it was at ``revision``, imported from a temporary file."""
    source = subprocess.run(
        ["git", "show", f"{revision}:router/http/v2_grpc.py"],
        cwd=ROOT,
        check=True,
        capture_output=True,
    ).stdout
    directory = Path(tempfile.mkdtemp(prefix="grpc-bench-"))
    path = directory / "old_v2_grpc.py"
    path.write_bytes(source)
    spec = importlib.util.spec_from_file_location("old_v2_grpc", path)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def request_body(shape: list[int]) -> bytes:
    """A request of ``shape``: [1,4] as the router bench's Triton body (flat), others nested."""
    rows, columns = shape
    data: list[Any] = [
        [(r * columns + c) * 0.37 - 1.5 for c in range(columns)] for r in range(rows)
    ]
    if rows == 1:
        data = data[0]
    return orjson.dumps(
        {"id": "bench", "inputs": [{"name": "x", "datatype": "FP32", "shape": shape, "data": data}]}
    )


def model_response(request: Any) -> Any:
    """What an identity model answers: the request's tensor back, as raw contents."""
    response = service_pb2.ModelInferResponse(model_name="m", model_version="1", id=request.id)
    for tensor in request.inputs:
        response.outputs.add(name="y", datatype=tensor.datatype, shape=tensor.shape)
    response.raw_output_contents.extend(request.raw_input_contents)
    return response


def old_request(old: ModuleType, body: bytes) -> Any:
    arguments = old.request_from_json(body)
    fields: dict[str, Any] = {
        "outputs": None,
        "request_id": "",
        "sequence_id": 0,
        "sequence_start": False,
        "sequence_end": False,
        "priority": 0,
        "timeout": None,
        "parameters": None,
    }
    fields.update(arguments)
    return _get_inference_request(model_name="m", model_version="", **fields)


def old_response(old: ModuleType, response: Any) -> bytes:
    result = InferResult(response)
    return orjson.dumps(old.response_to_json(result.get_response()))


def new_response(response: Any) -> bytes:
    return orjson.dumps(new.response_to_json(response))


def per_call_us(function: Callable[[], object], iterations: int, rounds: int) -> float:
    best = float("inf")
    for _ in range(rounds):
        start = time.process_time()
        for _ in range(iterations):
            function()
        best = min(best, time.process_time() - start)
    return best / iterations * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--revision", default="HEAD", help="the old code's git revision")
    parser.add_argument("--seconds", type=float, default=0.4, help="about this long per round")
    parser.add_argument("--rounds", type=int, default=3)
    options = parser.parse_args()
    old = old_module(options.revision)

    print(f"{'case':<18}{'old us/call':>14}{'new us/call':>14}{'speed-up':>10}")
    for shape in SHAPES:
        body = request_body(shape)
        old_message, new_message = old_request(old, body), new.request_from_json(body, "m", "")
        wire = old_message.SerializeToString(deterministic=True)
        assert new_message.SerializeToString(deterministic=True) == wire, "requests differ"
        response = model_response(new_message)
        assert old_response(old, response) == new_response(response), "replies differ"

        cases: list[tuple[str, Callable[[], object], Callable[[], object]]] = [
            (
                "request",
                lambda body=body: old_request(old, body),  # type: ignore[misc]
                lambda body=body: new.request_from_json(body, "m", ""),  # type: ignore[misc]
            ),
            (
                "response",
                lambda response=response: old_response(old, response),  # type: ignore[misc]
                lambda response=response: new_response(response),  # type: ignore[misc]
            ),
        ]
        for name, old_call, new_call in cases:
            probe = per_call_us(old_call, 10, 1)
            iterations = max(20, int(options.seconds * 1e6 / max(probe, 1.0)))
            old_us = per_call_us(old_call, iterations, options.rounds)
            new_us = per_call_us(new_call, iterations, options.rounds)
            label = f"{name} {shape[0]}x{shape[1]}"
            print(f"{label:<18}{old_us:>14.1f}{new_us:>14.1f}{old_us / new_us:>9.1f}x")
    sys.stdout.flush()


if __name__ == "__main__":
    main()
