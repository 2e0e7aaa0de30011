"""gRPC ingress benchmark: a two-model chain (scale, then classify) on a real Triton, side by
side in one run:

- ``direct``: the client calls Triton's two models itself over gRPC;
- ``grpc -> grpc``: the client calls the router's gRPC ingress, the graph's steps are v2-grpc;
- ``grpc -> rest``: gRPC ingress, v2 REST steps;
- ``rest -> rest``: JSON v2 to the router over HTTP, v2 REST steps.

Triton and the load generator (tritonclient's aio gRPC client, or aiohttp for REST, closed loop
at ``--concurrency``) share core 1; the router runs alone on core 0. Reports throughput,
p50/p99 and router CPU per request. Needs the pytriton environment of tests/components
(``make components``). Usage: ``make bench-grpc``; writes bench/results/grpc-ingress-<date>.*

``--compare CLI LABEL`` adds ``grpc -> grpc`` run by another build's ``infergraph`` (an older
checkout's environment, say), in the same run: before and after side by side.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import sys
import sysconfig
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
import numpy as np
import orjson
import tritonclient.grpc.aio as triton_aio

from infergraph.predictors import processes, servers
from infergraph.router.protocols import Protocol
from infergraph.testing.loadgen import cpu_seconds, pinned, results_base
from infergraph.testing.paths import CACHE

ROOT = Path(__file__).resolve().parents[1]
PYTRITON = CACHE / "venvs" / "pytriton-0.7.0" / "bin" / "python"
ROWS = np.array([[5.1, 3.5, 1.4, 0.2]], dtype=np.float32)


def chain(base: str, protocol: str) -> str:
    first = {"name": "scale", "serviceUrl": base, "protocol": protocol, "model": "scale"}
    second = {
        "name": "classify",
        "serviceUrl": base,
        "protocol": protocol,
        "model": "classify",
        "data": "$response",
        "outputsToInputs": {"scaled": "features"},
    }
    return orjson.dumps(
        {"nodes": {"root": {"routerType": "Sequence", "steps": [first, second]}}}
    ).decode()


async def closed_loop(
    call: Callable[[], Awaitable[None]], concurrency: int, seconds: float
) -> list[float]:
    latencies: list[float] = []
    stop = time.monotonic() + seconds

    async def worker() -> None:
        while time.monotonic() < stop:
            started = time.perf_counter()
            await call()
            latencies.append(time.perf_counter() - started)

    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return latencies


def _input() -> Any:
    x = triton_aio.InferInput("x", list(ROWS.shape), "FP32")
    x.set_data_from_numpy(ROWS)
    return x


Run = tuple[list[float], float]  # latencies, router CPU seconds during them


async def measured(
    call: Callable[[], Awaitable[None]], concurrency: int, seconds: float, pid: int | None
) -> Run:
    await closed_loop(call, concurrency, 1.0)  # warm-up: connections, channels
    before = cpu_seconds(pid) if pid is not None else 0.0
    latencies = await closed_loop(call, concurrency, seconds)
    return latencies, (cpu_seconds(pid) - before) if pid is not None else 0.0


async def run_grpc(
    target: str, direct: bool, concurrency: int, seconds: float, pid: int | None
) -> Run:
    async with triton_aio.InferenceServerClient(target) as client:

        async def call() -> None:
            if direct:
                scaled = (await client.infer("scale", [_input()])).as_numpy("scaled")
                features = triton_aio.InferInput("features", list(scaled.shape), "FP32")
                features.set_data_from_numpy(scaled)
                await client.infer("classify", [features])
            else:
                await client.infer("g", [_input()])

        return await measured(call, concurrency, seconds, pid)


async def run_rest(url: str, concurrency: int, seconds: float, pid: int) -> Run:
    body = orjson.dumps(
        {"inputs": [{"name": "x", "shape": [1, 4], "datatype": "FP32", "data": ROWS.tolist()}]}
    )
    async with aiohttp.ClientSession() as session:

        async def call() -> None:
            async with session.post(
                url, data=body, headers={"Content-Type": "application/json"}
            ) as r:
                assert r.status == 200, await r.text()
                await r.read()

        return await measured(call, concurrency, seconds, pid)


def row(system: str, latencies: list[float], seconds: float, cpu: float | None) -> dict[str, Any]:
    ordered = sorted(latencies)
    count = len(ordered)
    return {
        "system": system,
        "requests": count,
        "rps": count / seconds,
        "p50_ms": 1000 * statistics.median(ordered),
        "p99_ms": 1000 * ordered[min(count - 1, int(count * 0.99))],
        "router_cpu_us": None if cpu is None else cpu / count * 1e6,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--seconds", type=float, default=8.0)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results")
    parser.add_argument(
        "--compare",
        nargs=2,
        metavar=("CLI", "LABEL"),
        help="also run grpc -> grpc with this infergraph executable, labelled LABEL",
    )
    args = parser.parse_args()
    if not PYTRITON.exists():
        print(
            f"the pytriton environment is missing ({PYTRITON}): run make components",
            file=sys.stderr,
        )
        return 2
    if (os.cpu_count() or 1) > 1:
        os.sched_setaffinity(0, {1})  # the load generator beside Triton, off the router's core
    http, grpc_port = processes.free_port(), processes.free_port()
    triton = processes.ServerProcess(
        pinned([str(PYTRITON), str(ROOT / "predictors" / "triton_server.py"),
                "--http-port", str(http), "--grpc-port", str(grpc_port)], 1),
        f"http://127.0.0.1:{http}{servers.model_ready_path(Protocol.V2, 'types')}",
        env={"LD_LIBRARY_PATH": str(sysconfig.get_config_var("LIBDIR") or "")},
    )  # fmt: skip
    rows: list[dict[str, Any]] = []
    with triton.start(timeout=180):
        lat, _ = asyncio.run(
            run_grpc(f"127.0.0.1:{grpc_port}", True, args.concurrency, args.seconds, None)
        )
        rows.append(row("direct (client calls both models over gRPC)", lat, args.seconds, None))
        over_grpc = chain(f"grpc://127.0.0.1:{grpc_port}", "v2-grpc")
        over_rest = chain(f"http://127.0.0.1:{http}", "v2")
        variants: list[tuple[str, str, str, str | None]] = [
            ("grpc -> grpc (ingress gRPC, v2-grpc steps)", over_grpc, "grpc", None),
            ("grpc -> rest (ingress gRPC, v2 REST steps)", over_rest, "grpc", None),
            ("rest -> rest (JSON v2 over HTTP, v2 REST steps)", over_rest, "rest", None),
        ]
        if args.compare:
            cli, label = args.compare
            variants.insert(1, (f"grpc -> grpc, {label}", over_grpc, "grpc", cli))
        for system, spec, ingress, cli in variants:
            port, router_grpc = processes.free_port(), processes.free_port()
            extra = ("--drain-seconds", "0", "--log-level", "WARNING")
            router = processes.router(
                port, "--graph-json", spec, extra=(*extra, "--grpc-port", str(router_grpc))
            )
            if cli is not None:
                router.argv = [cli, *router.argv[1:]]
            router.argv = pinned(router.argv, 0)
            with router:
                if ingress == "grpc":
                    target = f"127.0.0.1:{router_grpc}"
                    run = run_grpc(target, False, args.concurrency, args.seconds, router.pid)
                else:
                    url = f"http://127.0.0.1:{port}/"
                    run = run_rest(url, args.concurrency, args.seconds, router.pid)
                lat, cpu = asyncio.run(run)
            rows.append(row(system, lat, args.seconds, cpu))
    base, meta = results_base(args.out, "grpc-ingress-", args.seconds)
    lines = [
        f"concurrency {args.concurrency}, {args.seconds:.0f} s per system; "
        "router on core 0, Triton and the client on core 1",
        "",
        "| system | req/s | p50 ms | p99 ms | router CPU us/request |",
        "| --- | --- | --- | --- | --- |",
    ]
    for r in rows:
        cpu_text = "-" if r["router_cpu_us"] is None else f"{r['router_cpu_us']:.0f}"
        latency = f"{r['p50_ms']:.2f} | {r['p99_ms']:.2f}"
        lines.append(f"| {r['system']} | {r['rps']:.0f} | {latency} | {cpu_text} |")
    text = "\n".join(lines) + "\n"
    base.with_suffix(".json").write_text(json.dumps({**meta, "rows": rows}, indent=1))
    base.with_suffix(".md").write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
