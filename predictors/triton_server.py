# pyright: reportMissingImports=false
"""A real Triton Inference Server (bundled by nvidia-pytriton, CPU only) with small test models.

Run it with the pytriton environment's Python:
``python triton_server.py --http-port P --grpc-port G [--metrics-port M]``. It binds 127.0.0.1.

Models (the first dimension is the batch):

- ``scale``: ``x`` FP32 [4] -> ``scaled`` FP32 [4] = 2x - 1;
- ``classify``: ``features`` FP32 [4] -> ``label`` INT64 [1] (argmax) and ``probabilities``
  FP32 [3] (softmax of a fixed linear map);
- ``types``: ``f`` FP32, ``i`` INT64, ``b`` BOOL, ``s`` BYTES, each [-1] -> ``f_out`` = f/2,
  ``i_out`` = i+1, ``b_out`` = not b, ``s_out`` = upper-cased s.
"""

from __future__ import annotations

import argparse
from typing import Any

import numpy as np
from pytriton.decorators import batch
from pytriton.model_config import ModelConfig, Tensor
from pytriton.triton import Triton, TritonConfig

WEIGHTS = np.array(
    [[0.5, -0.2, 0.1], [0.3, 0.8, -0.5], [-0.7, 0.2, 0.9], [-0.4, 0.1, 1.2]], dtype=np.float32
)


@batch
def scale(x: np.ndarray) -> dict[str, np.ndarray]:
    return {"scaled": (x * 2 - 1).astype(np.float32)}


@batch
def classify(features: np.ndarray) -> dict[str, np.ndarray]:
    logits = features.astype(np.float32) @ WEIGHTS
    exp = np.exp(logits - logits.max(axis=1, keepdims=True))
    probabilities = (exp / exp.sum(axis=1, keepdims=True)).astype(np.float32)
    label = probabilities.argmax(axis=1).astype(np.int64).reshape(-1, 1)
    return {"label": label, "probabilities": probabilities}


@batch
def types(f: np.ndarray, i: np.ndarray, b: np.ndarray, s: np.ndarray) -> dict[str, np.ndarray]:
    upper = np.vectorize(lambda v: bytes(v).upper(), otypes=[np.object_])(s)
    return {
        "f_out": (f / 2).astype(np.float32),
        "i_out": (i + 1).astype(np.int64),
        "b_out": np.logical_not(b),
        "s_out": upper,
    }


def bind(triton: Any) -> None:
    config = ModelConfig(max_batch_size=64)
    triton.bind(
        model_name="scale",
        infer_func=scale,
        inputs=[Tensor(name="x", dtype=np.float32, shape=(4,))],
        outputs=[Tensor(name="scaled", dtype=np.float32, shape=(4,))],
        config=config,
    )
    triton.bind(
        model_name="classify",
        infer_func=classify,
        inputs=[Tensor(name="features", dtype=np.float32, shape=(4,))],
        outputs=[
            Tensor(name="label", dtype=np.int64, shape=(1,)),
            Tensor(name="probabilities", dtype=np.float32, shape=(3,)),
        ],
        config=config,
    )
    triton.bind(
        model_name="types",
        infer_func=types,
        inputs=[
            Tensor(name="f", dtype=np.float32, shape=(-1,)),
            Tensor(name="i", dtype=np.int64, shape=(-1,)),
            Tensor(name="b", dtype=np.bool_, shape=(-1,)),
            Tensor(name="s", dtype=np.bytes_, shape=(-1,)),
        ],
        outputs=[
            Tensor(name="f_out", dtype=np.float32, shape=(-1,)),
            Tensor(name="i_out", dtype=np.int64, shape=(-1,)),
            Tensor(name="b_out", dtype=np.bool_, shape=(-1,)),
            Tensor(name="s_out", dtype=np.bytes_, shape=(-1,)),
        ],
        config=config,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--http-port", type=int, required=True)
    parser.add_argument("--grpc-port", type=int, required=True)
    parser.add_argument("--metrics-port", type=int, default=0)
    parser.add_argument("--trace-config", action="append", default=[], help="Triton --trace-config")
    args = parser.parse_args()
    config = TritonConfig(
        http_address="127.0.0.1",
        http_port=args.http_port,
        grpc_address="127.0.0.1",
        grpc_port=args.grpc_port,
        allow_metrics=bool(args.metrics_port),
        metrics_port=args.metrics_port or None,
        metrics_address="127.0.0.1" if args.metrics_port else None,
        trace_config=args.trace_config or None,
        exit_on_error=True,
    )
    with Triton(config=config) as triton:
        bind(triton)
        triton.serve()


if __name__ == "__main__":
    main()
