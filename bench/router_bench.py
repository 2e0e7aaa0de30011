"""Router benchmark: the router against a direct call, and its two downstream clients side by side.

One run starts the light local predictor (``/echo``) and, for each graph in ``graphs/bench-*``,
the router with the router's own client (``fast``) and with aiohttp's ``ClientSession``
(``aiohttp``), then drives each with wrk (POST, loopback only, bounded in time) at concurrency
1 and 32. For every run it reads the CPU time the router and the predictor processes used from
/proc, so costs are per request and comparable within the run even on a noisy machine:

- ``router_us``: router CPU microseconds per graph request;
- ``predictor_us``: predictor CPU microseconds per predictor call;
- ``ratio``: router_us / predictor_us, the router's cost in units of one predictor call;
- ``exporter_us``: with tracing on, CPU microseconds per request of the span exporter process.

Each figure is the median of ``--repeats`` runs. Results go to bench/results/<date>.json and .md.
Usage: ``make bench`` (or ``.venv/bin/python bench/router_bench.py --duration 5 --repeats 3``).
"""

from __future__ import annotations

import argparse
import itertools
import json
import socket
import statistics
import sys
import sysconfig
import tempfile
import time
import urllib.parse
from pathlib import Path
from typing import Any

from infergraph.predictors import processes
from infergraph.testing.jaeger import JAEGER_CONFIG  # one Jaeger config for the tests and the bench
from infergraph.testing.loadgen import (
    BODY,
    CALLS_PER_REQUEST,
    GRAPHS,
    PREDICTOR_PORT,
    ROOT,
    TRITON_BODY,
    TRITON_HTTP,
    bench_router,
    measure,
    median_of,
    pinned,
    post_script,
    preflight,
    results_base,
    span_exporter,
    warm_up,
)
from infergraph.testing.paths import CACHE


class Bench:
    def __init__(self, args: argparse.Namespace, workdir: Path) -> None:
        self.args = args
        self.workdir = workdir
        self.script = post_script(workdir / "post.lua", BODY)
        self.rows: list[dict[str, Any]] = []
        self.sse: dict[str, Any] = {}
        self.started = time.monotonic()
        self.step = 0
        self.steps = (
            len(args.graphs) * len(args.clients)
            + 2
            + (4 if args.triton else 0)
            + (4 if args.telemetry else 0)
        )

    def progress(self, label: str) -> None:
        self.step += 1
        elapsed = time.monotonic() - self.started
        print(f"[{self.step}/{self.steps}] {label} (elapsed {elapsed:.0f} s)", flush=True)

    def series(self, url: str, pids: dict[str, int], connections: int) -> dict[str, Any]:
        runs = [
            measure(url, pids, connections, self.args.duration, self.script)
            for _ in range(self.args.repeats)
        ]
        return dict(median_of(runs), connections=connections)

    def direct(self, predictor_pid: int, url: str, graph: str) -> None:
        self.progress(f"direct call: {graph}")
        for connections in (1, 32):
            row = self.series(url, {"predictor": predictor_pid}, connections)
            row.update(system="direct", graph=graph)
            row["predictor_us"] = row["predictor_cpu_s"] / row["requests"] * 1e6
            self.rows.append(row)

    def through_router(
        self,
        graph: str,
        client: str,
        predictor_pid: int,
        *,
        variant: str = "",
        extra: tuple[str, ...] = (),
        env: dict[str, str] | None = None,
    ) -> None:
        label = f"{client}{variant}"
        self.progress(f"{graph} through the router, {label}")
        port = processes.free_port()
        router = bench_router(
            port,
            graph,
            "--client",
            client,
            *extra,
            core=0,
            env=env,
            log_path=self.workdir / f"router-{graph}-{label}.log",
        )
        with router:
            pids = {"router": router.pid, "predictor": predictor_pid}
            exporter = span_exporter(router.pid)
            if exporter is not None:
                pids["exporter"] = exporter
            warm_up(f"http://127.0.0.1:{port}/", self.script, pids)
            for connections in (1, 32):
                row = self.series(f"http://127.0.0.1:{port}/", pids, connections)
                calls = row["requests"] * CALLS_PER_REQUEST[graph]
                row.update(system=f"infergraph/{label}", graph=graph)
                row["router_us"] = row["router_cpu_s"] / row["requests"] * 1e6
                row["predictor_us"] = row["predictor_cpu_s"] / calls * 1e6
                row["ratio"] = row["router_us"] / row["predictor_us"]
                if exporter is not None:
                    row["exporter_us"] = row["exporter_cpu_s"] / row["requests"] * 1e6
                self.rows.append(row)

    def run(self) -> None:
        predictor = processes.predictor(PREDICTOR_PORT, log_path=self.workdir / "predictor.log")
        predictor.argv = pinned(predictor.argv, 1)
        with predictor:
            self.direct(predictor.pid, f"http://127.0.0.1:{PREDICTOR_PORT}/echo", "echo")
            for graph in self.args.graphs:
                for client in self.args.clients:
                    self.through_router(graph, client, predictor.pid)
            self.streams()
            if self.args.telemetry:
                self.telemetry_costs(predictor.pid)
        if self.args.triton:
            self.triton()

    def streams(self, events: int = 20, interval: float = 0.01, rounds: int = 30) -> None:
        """Server-sent events from the local streaming predictor, direct and through a Switch
        to an ``openai`` step: time to the first event and the gaps between events."""
        self.progress("server-sent events: direct and through a Switch")
        url = f"http://127.0.0.1:{PREDICTOR_PORT}/step/llm?events={events}&interval={interval}"
        spec = json.dumps(
            {
                "nodes": {
                    "root": {
                        "routerType": "Switch",
                        "steps": [{"serviceUrl": url, "protocol": "openai", "condition": "prompt"}],
                    }
                }
            }
        )
        port = processes.free_port()
        router = processes.router(
            port,
            "--graph-json",
            spec,
            extra=("--drain-seconds", "0", "--log-level", "WARNING"),
            log_path=self.workdir / "router-sse.log",
        )
        router.argv = pinned(router.argv, 0)
        targets = {"direct": url, "router": f"http://127.0.0.1:{port}/"}
        first: dict[str, list[float]] = {label: [] for label in targets}
        gaps: dict[str, list[float]] = {label: [] for label in targets}
        with router:
            # Direct and routed streams alternate, so both see the same machine: here a process
            # idle for tens of milliseconds takes milliseconds to wake (see wake_floor).
            for _ in range(rounds):
                for label, target in targets.items():
                    arrivals = sse_arrivals(target)
                    first[label].append(arrivals[0])
                    gaps[label] += [b - a for a, b in itertools.pairwise(arrivals)]
        for label in targets:
            self.sse[label] = {
                "first_event_ms_p50": round(statistics.median(first[label]) * 1000, 3),
                "gap_ms_p50": round(statistics.median(gaps[label]) * 1000, 3),
                "gap_ms_max": round(max(gaps[label]) * 1000, 3),
            }
        paired = [r - d for d, r in zip(first["direct"], first["router"], strict=True)]
        self.sse["first_event_router_minus_direct_ms"] = round(statistics.median(paired) * 1000, 3)
        self.sse["wake_floor_ms"] = wake_floor(url)

    def telemetry_costs(self, predictor_pid: int) -> None:
        """The 1-step graph with metrics off, and with tracing on into a local Jaeger (every
        request sampled and exported, by the exporter process and by the SDK's in-process
        BatchSpanProcessor, then one in ten), beside the default run (metrics on, tracing off)."""
        self.through_router(
            "sequence-1", "fast", predictor_pid, variant=" metrics off", extra=("--no-metrics",)
        )
        jaeger_bin = CACHE / "bin" / "jaeger-v1.76.0"
        ports = {
            k: processes.free_port() for k in ("query", "query_grpc", "otlp_grpc", "otlp_http")
        }
        config = self.workdir / "jaeger.yaml"
        config.write_text(JAEGER_CONFIG % ports)
        jaeger = processes.ServerProcess(
            [str(jaeger_bin), "--config", str(config)],
            f"http://127.0.0.1:{ports['query']}/api/services",
            log_path=self.workdir / "jaeger.log",
        )
        with jaeger.start(timeout=60):
            env = {"OTEL_EXPORTER_OTLP_ENDPOINT": f"http://127.0.0.1:{ports['otlp_http']}"}
            self.through_router("sequence-1", "fast", predictor_pid, variant=" tracing on", env=env)
            self.through_router(
                "sequence-1",
                "fast",
                predictor_pid,
                variant=" tracing on, thread export",
                extra=("--span-export", "thread"),
                env=env,
            )
            sampled = {
                **env,
                "OTEL_TRACES_SAMPLER": "parentbased_traceidratio",
                "OTEL_TRACES_SAMPLER_ARG": "0.1",
            }
            self.through_router(
                "sequence-1", "fast", predictor_pid, variant=" tracing 10%", env=sampled
            )

    def triton(self) -> None:
        """A v2 REST step and a v2 gRPC step (the router's own HTTP/2 client, then grpc.aio) to
        the same real Triton model, and the direct call."""
        venv = CACHE / "venvs" / "pytriton-0.7.0"
        argv = [
            str(venv / "bin" / "python"),
            str(ROOT / "predictors" / "triton_server.py"),
            *("--http-port", str(TRITON_HTTP), "--grpc-port", str(TRITON_HTTP + 1)),
        ]
        server = processes.ServerProcess(
            pinned(argv, 1),
            f"http://127.0.0.1:{TRITON_HTTP}/v2/models/types/ready",
            env={"LD_LIBRARY_PATH": str(sysconfig.get_config_var("LIBDIR") or "")},
            log_path=self.workdir / "triton.log",
        )
        self.script = post_script(self.workdir / "triton.lua", TRITON_BODY)
        with server.start(timeout=180):
            url = f"http://127.0.0.1:{TRITON_HTTP}/v2/models/classify/infer"
            self.direct(server.pid, url, "triton (v2 REST)")
            for graph in ("triton-v2", "triton-grpc"):
                self.through_router(graph, "fast", server.pid)
            # The v2-grpc step on grpc.aio, the client before the router's own.
            self.through_router(
                "triton-grpc",
                "fast",
                server.pid,
                variant=" grpc.aio",
                extra=("--grpc-client", "grpcio"),
            )

    def write(self) -> Path:
        base, meta = results_base(self.args.out, "", self.args.duration)
        meta["repeats"] = self.args.repeats
        base.with_suffix(".json").write_text(
            json.dumps({"meta": meta, "rows": self.rows, "sse": self.sse}, indent=2)
        )
        streams = f"\n## Server-sent events\n\n```json\n{json.dumps(self.sse, indent=2)}\n```\n"
        base.with_suffix(".md").write_text(
            f"# Router benchmark {meta['date']}\n\n{render(self.rows)}\n{streams}"
        )
        return base


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--duration", type=float, default=5.0, help="seconds per wrk run")
    parser.add_argument("--repeats", type=int, default=3, help="runs per figure (median)")
    parser.add_argument("--graphs", nargs="*", default=GRAPHS, choices=GRAPHS)
    clients = ["fast", "aiohttp"]
    parser.add_argument("--clients", nargs="*", default=clients, choices=clients)
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results")
    parser.add_argument(
        "--no-triton", dest="triton", action="store_false", help="skip the Triton v2 REST/gRPC part"
    )
    parser.add_argument(
        "--no-telemetry",
        dest="telemetry",
        action="store_false",
        help="skip the metrics-off and tracing-on runs",
    )
    args = parser.parse_args()
    problem = preflight()
    if problem:
        print(problem, file=sys.stderr)
        return 2
    bench = Bench(args, Path(tempfile.mkdtemp(prefix="infergraph-bench-")))
    bench.run()
    print(render(bench.rows))
    print(f"\nwritten: {bench.write()}.json and .md")
    return 0


COLUMNS = (
    ("system", "system", "{}"),
    ("graph", "graph", "{}"),
    ("conc", "connections", "{}"),
    ("req/s", "rps", "{:.0f}"),
    ("p50 ms", "p50_ms", "{:.2f}"),
    ("p99 ms", "p99_ms", "{:.2f}"),
    ("router µs/req", "router_us", "{:.0f}"),
    ("predictor µs/call", "predictor_us", "{:.0f}"),
    ("ratio", "ratio", "{:.2f}"),
    ("span exporter µs/req", "exporter_us", "{:.0f}"),
)


def sse_arrivals(url: str) -> list[float]:
    """Seconds from sending a streaming request until each event's chunk arrived."""
    parts = urllib.parse.urlsplit(url)
    body = b'{"prompt": "hello", "stream": true}'
    path = parts.path + (f"?{parts.query}" if parts.query else "")
    with socket.create_connection((parts.hostname, parts.port), timeout=10) as sock:
        started = time.perf_counter()
        sock.sendall(
            f"POST {path} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n".encode()
            + body
        )
        arrivals = []
        while True:
            chunk = sock.recv(65536)
            if not chunk:
                break
            arrivals += [time.perf_counter() - started] * chunk.count(b"data: ")
    return arrivals


def wake_floor(url: str, pauses: tuple[float, ...] = (0.0, 0.05, 0.2)) -> dict[str, float]:
    """Median time to the first byte of a direct streaming call after the machine sat idle
    for each pause: what waking idle processes costs here, apart from any router."""
    floor = {}
    for pause in pauses:
        heads = []
        for _ in range(10):
            time.sleep(pause)
            heads.append(sse_arrivals(url)[0])
        floor[f"after_{int(pause * 1000)}ms_idle"] = round(statistics.median(heads) * 1000, 3)
    return floor


def render(rows: list[dict[str, Any]]) -> str:
    lines = ["| " + " | ".join(c[0] for c in COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    for row in rows:
        cells = [fmt.format(row[key]) if key in row else "" for _, key, fmt in COLUMNS]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
