# pyright: reportMissingImports=false
"""KServe's own gRPC client (``kserve.InferenceGRPCClient``), run with the kserve environment's
Python: ``python kserve_grpc_client.py ADDRESS MODEL REQUEST_ID``. It sends the rows of the
Triton tests to ``x`` and prints the answer as one JSON line: id, model and every output's
name, datatype, shape and values."""

from __future__ import annotations

import asyncio
import json
import sys
from typing import Any

import numpy as np
from kserve import InferenceGRPCClient, InferInput, InferRequest

ROWS = np.array([[5.1, 3.5, 1.4, 0.2], [6.7, 3.0, 5.2, 2.3], [0.1, 0.2, 0.3, 0.4]], np.float32)


async def main(address: str, model: str, request_id: str) -> dict[str, Any]:
    client = InferenceGRPCClient(address, timeout=30, retries=0)
    try:
        x = InferInput("x", list(ROWS.shape), "FP32")
        x.set_data_from_numpy(ROWS)
        request = InferRequest(model_name=model, infer_inputs=[x], request_id=request_id)
        response = await client.infer(request)
    finally:
        await client.close()
    return {
        "id": response.id,
        "model_name": response.model_name,
        "outputs": [
            {
                "name": output.name,
                "datatype": output.datatype,
                "shape": list(output.shape),
                "data": output.as_numpy().tolist(),
            }
            for output in response.outputs
        ],
    }


if __name__ == "__main__":
    print(json.dumps(asyncio.run(main(*sys.argv[1:4]))))
