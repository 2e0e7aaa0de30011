"""A Sequence that chains a KServe v1 model into a KServe v2 model on a real ModelServer."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from infergraph.predictors import processes
from infergraph.testing.harness import request

REPO = Path(__file__).resolve().parents[2]
ROWS = [[5.1, 3.5, 1.4, 0.2], [6.7, 3.0, 5.2, 2.3], [5.9, 3.0, 4.2, 1.5]]


def direct(path: str, body: dict[str, Any]) -> dict[str, Any]:
    response = request(18300, body, path=path, headers={"Content-Type": "application/json"})
    assert response.status == 200, response.body
    result: dict[str, Any] = response.json()
    return result


def test_v1_into_v2_sequence_matches_direct_calls(kserve: str, tmp_path: Path) -> None:
    scaled = direct("/v1/models/iris-scaler:predict", {"instances": ROWS})["predictions"]
    expected = direct(
        "/v2/models/iris-classifier/infer",
        {
            "id": "q1",
            "inputs": [{"name": "input-0", "datatype": "FP32", "shape": [3, 4], "data": scaled}],
        },
    )
    port = processes.free_port()
    router = processes.router(
        port,
        "--graph",
        str(REPO / "graphs" / "kserve-v1-v2.yaml"),
        extra=("--drain-seconds", "0"),
        log_path=tmp_path / "router.log",
    )
    with router:
        response = request(port, {"id": "q1", "instances": ROWS})
    assert response.status == 200, response.body
    answer = response.json()
    assert answer["id"] == "q1"
    by_name = {o["name"]: o for o in answer["outputs"]}
    expected_by_name = {o["name"]: o for o in expected["outputs"]}
    assert by_name["label"]["data"] == expected_by_name["label"]["data"] == [0, 2, 1]
    assert by_name["label"]["shape"] == [3]
    assert np.array_equal(
        np.array(by_name["probabilities"]["data"], dtype=np.float32),
        np.array(expected_by_name["probabilities"]["data"], dtype=np.float32),
    )
