"""Graphs that call a real Triton server over v2 REST and v2 gRPC, checked value by value."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import orjson
import pytest

from infergraph.predictors import processes
from infergraph.testing import hostile
from infergraph.testing.harness import graph, request

REPO = Path(__file__).resolve().parents[2]
ROWS = [[5.1, 3.5, 1.4, 0.2], [6.7, 3.0, 5.2, 2.3], [0.1, 0.2, 0.3, 0.4]]
FEATURES = {"inputs": [{"name": "x", "shape": [3, 4], "datatype": "FP32", "data": ROWS}]}


def infer(base: str, model: str, body: dict[str, Any]) -> dict[str, Any]:
    port = int(base.rsplit(":", 1)[1])
    response = request(port, body, path=f"/v2/models/{model}/infer")
    assert response.status == 200, response.body
    result: dict[str, Any] = response.json()
    return result


def outputs(document: dict[str, Any]) -> dict[str, tuple[str, list[int], Any]]:
    """name -> (datatype, shape, values as numpy of the datatype) for exact comparison."""
    types = {"FP32": np.float32, "INT64": np.int64, "BOOL": np.bool_, "BYTES": object}
    return {
        o["name"]: (
            o["datatype"],
            o["shape"],
            np.array(o["data"], dtype=types[o["datatype"]]).tolist(),
        )
        for o in document["outputs"]
    }


@pytest.fixture(scope="module")
def router_for(tmp_path_factory: pytest.TempPathFactory) -> Any:
    started: list[processes.ServerProcess] = []
    logs = tmp_path_factory.mktemp("routers")

    def start(*source: str) -> int:
        port = processes.free_port()
        server = processes.router(
            port, *source, extra=("--drain-seconds", "0"), log_path=logs / f"{port}.log"
        )
        started.append(server.start())
        return port

    yield start
    for server in started:
        server.stop()


def expected_chain(triton: str) -> dict[str, Any]:
    """scale then classify, called directly over REST: what the graphs must answer."""
    scaled = infer(triton, "scale", FEATURES)["outputs"][0]
    return infer(
        triton,
        "classify",
        {
            "inputs": [
                {
                    "name": "features",
                    "shape": scaled["shape"],
                    "datatype": "FP32",
                    "data": scaled["data"],
                }
            ]
        },
    )


@pytest.mark.parametrize("example", ["triton-v2.yaml", "triton-grpc.yaml"])
def test_sequence_with_v2_chaining_matches_direct_calls(
    example: str, triton: str, router_for: Any
) -> None:
    port = router_for("--graph", str(REPO / "graphs" / example))
    response = request(port, {**FEATURES, "id": "req-7"})
    assert response.status == 200, response.body
    answer = response.json()
    assert answer["model_name"] == "classify"
    assert answer["id"] == "req-7"  # kept through outputsToInputs
    assert outputs(answer) == outputs(expected_chain(triton))
    assert outputs(answer)["label"][1] == [3, 1]


def test_ensemble_of_rest_and_grpc_agree(triton: str, router_for: Any) -> None:
    port = router_for("--graph", str(REPO / "graphs" / "triton-ensemble.yaml"))
    body = {"inputs": [{"name": "features", "shape": [3, 4], "datatype": "FP32", "data": ROWS}]}
    response = request(port, body)
    assert response.status == 200, response.body
    answer = response.json()
    assert set(answer) == {"rest", "grpc"}
    assert (
        outputs(answer["grpc"])
        == outputs(answer["rest"])
        == outputs(infer(triton, "classify", body))
    )


TYPES_REQUEST = {  # the models batch, so every input has the same first dimension
    "inputs": [
        {
            "name": "f",
            "shape": [2, 3],
            "datatype": "FP32",
            "data": [[0.1, 1.5, -3.0], [1e-7, 3.4e38, -0.0]],
        },
        {
            "name": "i",
            "shape": [2, 2],
            "datatype": "INT64",
            "data": [1, -2, 9007199254740993, -9223372036854775808],
        },
        {"name": "b", "shape": [2, 2], "datatype": "BOOL", "data": [True, False, False, True]},
        {"name": "s", "shape": [2, 1], "datatype": "BYTES", "data": ["abc", "héllo wörld"]},
    ]
}


def one_grpc_step(model: str) -> str:
    """A graph of one v2-grpc step to ``model`` on Triton."""
    step = {"serviceUrl": "grpc://127.0.0.1:18201", "protocol": "v2-grpc", "model": model}
    return graph({"root": {"routerType": "Sequence", "steps": [step]}})


def test_datatypes_and_shapes_round_trip_exactly_over_grpc(triton: str, router_for: Any) -> None:
    port = router_for("--graph-json", one_grpc_step("types"))
    response = request(port, TYPES_REQUEST)
    assert response.status == 200, response.body
    via_grpc = outputs(response.json())
    assert via_grpc == outputs(infer(triton, "types", TYPES_REQUEST))
    assert via_grpc["i_out"] == (
        "INT64",
        [2, 2],
        [2, -1, 9007199254740994, -9223372036854775807],
    )
    assert via_grpc["b_out"] == ("BOOL", [2, 2], [False, True, True, False])
    assert via_grpc["s_out"] == ("BYTES", [2, 1], ["ABC", "HéLLO WöRLD"])
    assert via_grpc["f_out"][1] == [2, 3]


@pytest.mark.parametrize(
    ("model", "body", "status", "message"),
    [
        ("nope", {"inputs": []}, 404, "unknown model"),
        (
            "classify",
            {"inputs": [{"name": "features", "shape": [2, 4], "datatype": "FP32", "data": [1, 2]}]},
            400,
            "reshape",
        ),
        ("classify", {"instances": [1]}, 400, '"inputs" list'),
    ],
)
def test_grpc_errors_come_back_as_v2_rest_errors(
    model: str, body: dict[str, Any], status: int, message: str, triton: str, router_for: Any
) -> None:
    port = router_for("--graph-json", one_grpc_step(model))
    response = request(port, body)
    assert response.status == status
    assert message in response.json()["error"]


@pytest.mark.parametrize("client", ["fast", "grpcio"])
def test_client_headers_grpc_cannot_carry_do_not_fail_the_call(
    client: str, triton: str, tmp_path: Path
) -> None:
    """With every header forwarded (``PROPAGATE_HEADERS`` empty), a client's headers that gRPC
    metadata cannot carry (text beyond ASCII, gRPC's own names, a -bin value that is not
    base64) are left out, on either client, and Triton answers: they made grpc.aio raise,
    which the client saw as a 500."""
    port = processes.free_port()
    router = processes.router(
        port,
        "--graph-json",
        one_grpc_step("types"),
        extra=("--grpc-client", client, "--drain-seconds", "0"),
        env={"PROPAGATE_HEADERS": ""},
        log_path=tmp_path / "router.log",
    )
    headers = {
        "Content-Type": b"application/json",
        "X-Accent": "café".encode("latin-1"),
        "Grpc-Status": b"3",
        "X-Trace-Bin": b"!!",
        "X-Request-Id": b"r-1",
    }
    with router:
        answer = hostile.exchange(port, hostile.post("/", orjson.dumps(TYPES_REQUEST), headers))
    assert answer is not None
    assert answer.status == 200, answer.body
    assert [o["name"] for o in orjson.loads(answer.body)["outputs"]] == [
        "f_out",
        "i_out",
        "b_out",
        "s_out",
    ]
