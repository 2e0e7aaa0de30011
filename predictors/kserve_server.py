# pyright: reportMissingImports=false
"""A real KServe ModelServer (PyPI ``kserve``) with two scikit-learn models trained on iris.

Run it with the kserve environment's Python: ``python kserve_server.py --port P``. It serves
KServe v1 and Open Inference Protocol v2 REST on 127.0.0.1 only (KServe hard-codes 0.0.0.0;
this script narrows uvicorn's bind address before the server starts).

- ``iris-scaler`` (v1): ``{"instances": rows}`` -> ``{"predictions": standardised rows}``;
- ``iris-classifier`` (v2): input FP32 [n, 4] -> ``label`` INT64 [n], ``probabilities`` FP32 [n, 3].
"""

from __future__ import annotations

import argparse
import json
from typing import Any

import numpy as np
import uvicorn
from kserve import InferOutput, InferRequest, InferResponse, Model, ModelServer
from sklearn.datasets import load_iris
from sklearn.linear_model import LogisticRegression
from sklearn.preprocessing import StandardScaler


class LoopbackConfig(uvicorn.Config):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs["host"] = "127.0.0.1"
        super().__init__(*args, **kwargs)


class Scaler(Model):
    def __init__(self, name: str, scaler: StandardScaler) -> None:
        super().__init__(name)
        self.scaler = scaler
        self.ready = True

    async def predict(self, payload: Any, headers: Any = None, response_headers: Any = None) -> Any:
        if isinstance(payload, bytes | str):  # a v1 request sent without a JSON content type
            payload = json.loads(payload)
        rows = np.asarray(payload["instances"], dtype=np.float64)
        return {"predictions": np.round(self.scaler.transform(rows), 6).tolist()}


class Classifier(Model):
    def __init__(self, name: str, model: LogisticRegression) -> None:
        super().__init__(name)
        self.model = model
        self.ready = True

    async def predict(self, payload: Any, headers: Any = None, response_headers: Any = None) -> Any:
        assert isinstance(payload, InferRequest), "this model speaks v2"
        rows = payload.inputs[0].as_numpy().astype(np.float64).reshape(-1, 4)
        labels = self.model.predict(rows).astype(np.int64)
        probabilities = self.model.predict_proba(rows).astype(np.float32)
        outputs = []
        for name, array, datatype in (
            ("label", labels, "INT64"),
            ("probabilities", probabilities, "FP32"),
        ):
            output = InferOutput(name=name, shape=list(array.shape), datatype=datatype)
            output.set_data_from_numpy(array, binary_data=False)
            outputs.append(output)
        return InferResponse(
            model_name=self.name, infer_outputs=outputs, response_id=payload.id or "k"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--port", type=int, required=True)
    args, _ = parser.parse_known_args()
    uvicorn.Config = LoopbackConfig
    features, labels = load_iris(return_X_y=True)
    scaler = StandardScaler().fit(features)
    classifier = LogisticRegression(max_iter=500).fit(scaler.transform(features), labels)
    ModelServer(http_port=args.port, enable_grpc=False, workers=1).start(
        [Scaler("iris-scaler", scaler), Classifier("iris-classifier", classifier)]
    )


if __name__ == "__main__":
    main()
