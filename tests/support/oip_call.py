"""One ``ModelInfer`` with tritonclient's gRPC client, as a command, for callers that must run
it elsewhere (inside the cluster tier's network namespace):
``python -m infergraph.testing.oip_call HOST:PORT MODEL [--token T]``.

It sends ``TENSORS`` and prints one JSON line: ``{"code": "OK", "id": ..., "outputs": {name:
{"datatype", "shape", "data"}}}``, or the gRPC status code's name and details of a refusal.
"""

from __future__ import annotations

import argparse
import json
from typing import Any

import numpy as np
import tritonclient.grpc as triton
from tritonclient.utils import InferenceServerException

TENSORS: dict[str, tuple[str, Any]] = {
    "f": ("FP32", [[1.5, -2.25], [0.0, 3.0]]),
    "i": ("INT64", [[-(2**40)], [7]]),
    "b": ("BOOL", [True, False, True]),
    "s": ("BYTES", ["grüße", ""]),
}
NUMPY = {"FP32": np.float32, "INT64": np.int64, "BOOL": np.bool_, "BYTES": np.object_}


def call(address: str, model: str, token: str | None) -> dict[str, Any]:
    inputs = []
    for name, (datatype, data) in TENSORS.items():
        values: Any = np.array(
            [v.encode() for v in data] if datatype == "BYTES" else data, NUMPY[datatype]
        )
        tensor = triton.InferInput(name, list(values.shape), datatype)
        tensor.set_data_from_numpy(values)
        inputs.append(tensor)
    headers = {"authorization": f"Bearer {token}"} if token else None
    with triton.InferenceServerClient(address) as client:
        try:
            result = client.infer(model, inputs, request_id="in-cluster", headers=headers)
        except InferenceServerException as refused:
            return {"code": refused.status(), "details": refused.message()}
    outputs = {}
    for output in result.get_response().outputs:
        values = result.as_numpy(output.name)
        assert values is not None
        data = [v.decode() for v in values.flatten()] if output.datatype == "BYTES" else values
        outputs[output.name] = {
            "datatype": output.datatype,
            "shape": list(output.shape),
            "data": np.asarray(data).flatten().tolist(),
        }
    return {"code": "OK", "id": result.get_response().id, "outputs": outputs}


def expected_outputs() -> dict[str, Any]:
    """What an identity model answers to ``TENSORS``, as ``call`` prints it."""
    return {
        name: {
            "datatype": datatype,
            "shape": list(np.array(data).shape),
            "data": np.array(data).flatten().tolist(),
        }
        for name, (datatype, data) in TENSORS.items()
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("address")
    parser.add_argument("model")
    parser.add_argument("--token")
    args = parser.parse_args()
    print(json.dumps(call(args.address, args.model, args.token)))


if __name__ == "__main__":
    main()
