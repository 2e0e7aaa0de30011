"""Small real scikit-learn models for the local predictors, trained at start-up on iris.

``scaler`` (v1) standardises the four iris features; ``logistic`` and ``forest`` (v1) classify
standardised rows; ``tree`` (Open Inference Protocol v2) classifies raw rows and also returns
class probabilities. scikit-learn is imported only when models are trained.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

FEATURES = 4
# What infer_v2 takes and answers, as v2 metadata describes tensors (-1: any size).
V2_TENSORS: dict[str, list[dict[str, Any]]] = {
    "inputs": [{"name": "x", "datatype": "FP32", "shape": [-1, 4]}],
    "outputs": [
        {"name": "label", "datatype": "INT64", "shape": [-1]},
        {"name": "probabilities", "datatype": "FP32", "shape": [-1, 3]},
    ],
}
SPECIES = ("setosa", "versicolor", "virginica")


class ModelInputError(ValueError):
    """A request the model cannot take; ``status`` is the HTTP status to answer with."""

    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.status = status


def _rows(instances: Any) -> list[list[float]]:
    if not isinstance(instances, list) or not instances:
        raise ModelInputError("instances must be a non-empty list of rows")
    rows: list[list[float]] = []
    for index, row in enumerate(instances):
        if (
            not isinstance(row, list)
            or len(row) != FEATURES
            or not all(isinstance(x, int | float) and not isinstance(x, bool) for x in row)
        ):
            raise ModelInputError(f"instance {index} must be a list of {FEATURES} numbers")
        rows.append([float(x) for x in row])
    return rows


@dataclass
class ModelZoo:
    models: dict[str, Any]

    @classmethod
    def train(cls) -> ModelZoo:
        from sklearn.datasets import load_iris
        from sklearn.ensemble import RandomForestClassifier
        from sklearn.linear_model import LogisticRegression
        from sklearn.preprocessing import StandardScaler
        from sklearn.tree import DecisionTreeClassifier

        features, labels = load_iris(return_X_y=True)
        scaler = StandardScaler().fit(features)
        scaled = scaler.transform(features)
        return cls(
            {
                "scaler": scaler,
                "logistic": LogisticRegression(max_iter=500).fit(scaled, labels),
                "forest": RandomForestClassifier(n_estimators=16, random_state=0).fit(
                    scaled, labels
                ),
                "tree": DecisionTreeClassifier(max_depth=3, random_state=0).fit(features, labels),
            }
        )

    def _model(self, name: str) -> Any:
        model = self.models.get(name)
        if model is None:
            raise ModelInputError(f"model {name!r} not found", 404)
        return model

    def predict_v1(self, name: str, document: Any) -> list[Any]:
        """KServe v1: ``{"instances": rows}`` -> predictions."""
        model = self._model(name)
        if not isinstance(document, dict) or "instances" not in document:
            raise ModelInputError('a v1 request is an object with "instances"')
        rows = _rows(document["instances"])
        if name == "scaler":
            return [[round(float(x), 6) for x in row] for row in model.transform(rows)]
        return [int(label) for label in model.predict(rows)]

    def infer_v2(self, name: str, document: Any) -> dict[str, Any]:  # see V2_TENSORS
        """Open Inference Protocol v2: one FP32 input of shape [n, 4] -> label and probabilities."""
        model = self._model(name)
        inputs = document.get("inputs") if isinstance(document, dict) else None
        if not isinstance(inputs, list) or len(inputs) != 1 or not isinstance(inputs[0], dict):
            raise ModelInputError('a v2 request has "inputs" with exactly one tensor')
        tensor = inputs[0]
        shape, data = tensor.get("shape"), tensor.get("data")
        if (
            not isinstance(shape, list)
            or len(shape) != 2
            or shape[1] != FEATURES
            or not isinstance(data, list)
        ):
            raise ModelInputError(f"input tensor must have shape [n, {FEATURES}] and data")
        flat = data if not data or not isinstance(data[0], list) else [x for r in data for x in r]
        if len(flat) != shape[0] * FEATURES:
            raise ModelInputError(f"input has {len(flat)} values, shape {shape} needs more")
        rows = _rows([flat[i : i + FEATURES] for i in range(0, len(flat), FEATURES)])
        labels = [int(x) for x in model.predict(rows)]
        probabilities = [round(float(p), 6) for row in model.predict_proba(rows) for p in row]
        response: dict[str, Any] = {
            "model_name": name,
            "outputs": [
                {"name": "label", "shape": [len(rows)], "datatype": "INT64", "data": labels},
                {
                    "name": "probabilities",
                    "shape": [len(rows), len(SPECIES)],
                    "datatype": "FP32",
                    "data": probabilities,
                },
            ],
        }
        if "id" in document:
            response["id"] = document["id"]
        return response
