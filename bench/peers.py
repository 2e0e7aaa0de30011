"""Peers benchmark: infergraph against KServe's Go router and Ray Serve, side by side in one run,
on the same light local predictor, plus scale figures.

Systems, each given the same core budget (``taskset``): ``single core`` pins every router to
core 0 (the predictor always has core 1); with ``--all-cores``, also ``all cores``, routers
unpinned, infergraph then running ``--workers 2``, KServe's router with its default
``GOMAXPROCS``, Ray Serve with two replicas per graph. ``make bench`` leaves those out: on a
2-core machine shared with the predictor and wrk they cannot add throughput, so they mean
nothing here, and they took five of its minutes.

- ``direct``: the predictor called straight (one call; the floor for a 1-call graph);
- ``infergraph``: tracing off (metrics on, the default);
- ``kserve``: KServe's router v0.20.0 built from the Go module proxy (bench/install_peers.sh);
- ``ray serve``: the graphs as Ray Serve applications (bench/ray_graphs.py), in their own venv.

For every graph in graphs/bench-*.yaml, wrk drives each system at concurrency 1, 32 and 64; CPU
per request is the system's whole process group (for Ray: every Ray process) from /proc. Each
row also has its ratio to infergraph's figure for the same graph, budget and concurrency.

Fixed offered rates: infergraph and KServe's router up at once on core 0 for each graph, vegeta
taking turns between them at 1,000, 2,000 and 4,000 req/s (``offered``); CPU per request from
the scheduler's nanosecond count, in five rounds of 1 s per system and rate.

Scale: 10,000 graphs in one router (start-up, memory, latency against a one-graph router), a
10 MiB request through a 3-step Sequence (MB/s, peak memory per in-flight request), and a
64-way Ensemble (latency against its slowest branch).

Writes bench/results/peers-<date>.json, .md and .png. Usage: ``make bench``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import statistics
import sys
import tempfile
import time
import urllib.request
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import aiohttp
import matplotlib  # pyright: ignore[reportMissingImports] - the bench extra
import orjson
import yaml

from infergraph.predictors import processes
from infergraph.testing.loadgen import (
    BODY,
    CALLS_PER_REQUEST,
    GRAPHS,
    PREDICTOR_PORT,
    ROOT,
    bench_router,
    cpu_seconds,
    cpu_seconds_fine,
    pinned,
    post_script,
    preflight,
    results_base,
    run_wrk,
    vegeta_attack,
    wait_for_ports,
)

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # pyright: ignore[reportMissingImports]

from infergraph.testing.paths import CACHE

KSERVE_ROUTER = CACHE / "bin" / "kserve-router-v0.20.0"
RAY_PYTHON = CACHE / "venvs" / "ray-2.60.0" / "bin" / "python"
VEGETA = CACHE / "bin" / "vegeta-v12.13.0"
KSERVE_PORT = 8080  # KServe's router has no port flag
RATES = (1000, 2000, 4000)  # fixed offered rates (requests/s), well below saturation here
OFFERED_ROUNDS = 5  # of OFFERED_SECONDS per attack
OFFERED_SECONDS = 1.0
CONNECTIONS = (1, 32, 64)
BUDGETS = ("single core", "all cores")


def spec_json(graph: str) -> str:
    document = yaml.safe_load((ROOT / "graphs" / f"bench-{graph}.yaml").read_text())
    return json.dumps(document["spec"])


def kserve_router(graph: str, core: int | None, log_path: Path) -> processes.ServerProcess:
    """KServe's router on its port serving graphs/bench-``graph``.yaml, pinned to ``core`` if
    given (not started)."""
    argv = [str(KSERVE_ROUTER), "--graph-json", spec_json(graph)]
    return processes.ServerProcess(
        pinned(argv, core) if core is not None else argv,
        f"http://127.0.0.1:{KSERVE_PORT}/readyz",
        log_path=log_path,
    )


def rss_kib(pid: int, field: str = "VmRSS") -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    return 0


class Peers:
    def __init__(self, args: argparse.Namespace, workdir: Path) -> None:
        self.args = args
        self.workdir = workdir
        self.script = post_script(workdir / "post.lua", BODY)
        self.rows: list[dict[str, Any]] = []
        self.rates: list[dict[str, Any]] = []
        self.scale: dict[str, Any] = {}
        self.notes: list[str] = []
        self.started = time.monotonic()

    def progress(self, label: str) -> None:
        print(f"[{time.monotonic() - self.started:5.0f} s] {label}", flush=True)

    def ports_free(self) -> None:
        waited = wait_for_ports()
        if waited:
            self.progress(f"waited {waited} s for local ports to leave TIME_WAIT")

    def drive(self, system: str, budget: str, graph: str, url: str, group: int) -> None:
        self.ports_free()
        for connections in CONNECTIONS:
            before = cpu_seconds(group)
            row: dict[str, Any] = dict(run_wrk(url, connections, self.args.duration, self.script))
            cpu = cpu_seconds(group) - before
            row.update(system=system, budget=budget, graph=graph, connections=connections)
            row["cpu_us"] = cpu / row["requests"] * 1e6
            self.rows.append(row)

    def offered(self, graph: str, systems: dict[str, tuple[str, int]]) -> None:
        """CPU per request at fixed offered rates (vegeta on the predictor's core 1, every system
        pinned to core 0 and up at once): what a user pays below saturation, where wake-ups
        dominate. The systems take turns, attack by attack, for ``OFFERED_ROUNDS`` rounds, their
        order flipped each round. On this shared machine one system's CPU per request swings by
        a third between rounds a minute apart, and both swing together: the verdicts compare
        round by round (``targets.rate_ratio``), the figures are each system's median round."""
        cells: dict[tuple[str, int], list[dict[str, Any]]] = {}
        order = list(systems)
        for number in range(OFFERED_ROUNDS):
            for rate in RATES:
                for system in order if number % 2 == 0 else order[::-1]:
                    url, group = systems[system]
                    before = cpu_seconds_fine(group)
                    report = vegeta_attack(VEGETA, url, rate, OFFERED_SECONDS, self.workdir, BODY)
                    cpu = cpu_seconds_fine(group) - before
                    cells.setdefault((system, rate), []).append(
                        {"cpu_us": cpu / report["requests"] * 1e6, "report": report}
                    )
        for (system, rate), rounds in cells.items():
            middle = sorted(rounds, key=lambda r: r["cpu_us"])[len(rounds) // 2]
            report = middle["report"]
            # A rate the system cannot serve is a result too: its failures are recorded (and
            # the verdicts count them), not raised. Success is the worst round's.
            self.rates.append(
                {
                    "system": system,
                    "graph": graph,
                    "rate": rate,
                    "cpu_us": middle["cpu_us"],
                    "cpu_us_rounds": [round(r["cpu_us"], 1) for r in rounds],
                    "p50_ms": report["latencies"]["50th"] / 1e6,
                    "p99_ms": report["latencies"]["99th"] / 1e6,
                    "success": min(r["report"]["success"] for r in rounds),
                    "status_codes": report.get("status_codes", {}),
                }
            )

    def fixed_rates(self) -> None:
        """``offered`` for every graph, infergraph and KServe's router side by side."""
        if not VEGETA.exists():
            self.notes.append(f"vegeta is not built ({VEGETA}): no fixed-rate rows")
            return
        kserve = KSERVE_ROUTER.exists() and processes.port_is_free(KSERVE_PORT)
        for graph in self.args.graphs:
            self.progress(f"fixed rates, side by side: {graph}")
            port = processes.free_port()
            router = bench_router(
                port, graph, core=0, log_path=self.workdir / f"infergraph-rates-{graph}.log"
            )
            with contextlib.ExitStack() as stack:
                stack.enter_context(router)
                systems = {"infergraph": (f"http://127.0.0.1:{port}/", router.pid)}
                if kserve:
                    theirs = kserve_router(graph, 0, self.workdir / f"kserve-rates-{graph}.log")
                    stack.enter_context(theirs.start())
                    systems["kserve"] = (f"http://127.0.0.1:{KSERVE_PORT}/", theirs.pid)
                time.sleep(0.5)
                self.offered(graph, systems)

    # -- systems -----------------------------------------------------------------------------

    def direct(self) -> None:
        self.progress("direct calls to the predictor")
        url = f"http://127.0.0.1:{PREDICTOR_PORT}/echo"
        self.drive("direct", "single core", "echo", url, self.predictor_pid)

    def infergraph(self, budget: str) -> None:
        system = "infergraph"
        for graph in self.args.graphs:
            self.progress(f"{system}, {budget}: {graph}")
            port = processes.free_port()
            extra = ("--workers", "2") if budget == "all cores" else ()
            router = bench_router(
                port,
                graph,
                *extra,
                core=0 if budget == "single core" else None,
                log_path=self.workdir / f"infergraph-{graph}.log",
            )
            with router:
                time.sleep(0.5)  # every worker bound
                self.drive(system, budget, graph, f"http://127.0.0.1:{port}/", router.pid)

    def kserve(self, budget: str) -> None:
        if not KSERVE_ROUTER.exists():
            self.notes.append(f"KServe's router is not built ({KSERVE_ROUTER}): no kserve rows")
            return
        if not processes.port_is_free(KSERVE_PORT):
            self.notes.append(f"port {KSERVE_PORT} (KServe's router's only port) is busy")
            return
        for graph in self.args.graphs:
            self.progress(f"kserve, {budget}: {graph}")
            core = 0 if budget == "single core" else None
            router = kserve_router(graph, core, self.workdir / f"kserve-{graph}.log")
            with router.start():
                url = f"http://127.0.0.1:{KSERVE_PORT}/"
                self.drive("kserve", budget, graph, url, router.pid)

    def ray(self, budget: str) -> None:
        if not RAY_PYTHON.exists():
            self.notes.append(f"Ray Serve is not installed ({RAY_PYTHON}): no ray rows")
            return
        self.progress(f"ray serve, {budget}: starting")
        port = processes.free_port()
        replicas = "1" if budget == "single core" else "2"
        argv = [
            str(RAY_PYTHON),
            str(ROOT / "bench" / "ray_graphs.py"),
            str(port),
            f"http://127.0.0.1:{PREDICTOR_PORT}/echo",
            replicas,
        ]
        server = processes.ServerProcess(
            pinned(argv, 0) if budget == "single core" else argv,
            f"http://127.0.0.1:{port}/splitter",
            env={"RAY_USAGE_STATS_ENABLED": "0", "RAY_TMPDIR": str(self.workdir / "ray")},
            log_path=self.workdir / f"ray-{replicas}.log",
        )
        try:
            server.start(timeout=240)
        except (RuntimeError, TimeoutError) as error:
            self.notes.append(f"Ray Serve did not start ({budget}): {error}")
            server.stop()
            return
        with server:
            time.sleep(2)
            for graph in self.args.graphs:
                self.progress(f"ray serve, {budget}: {graph}")
                url = f"http://127.0.0.1:{port}/{graph}"
                try:
                    _post_once(url, BODY.encode(), timeout=60)  # a replica's first call
                    self.drive("ray serve", budget, graph, url, server.pid)
                except (OSError, RuntimeError) as error:
                    # A peer that fails is a note in the results, not the end of the run.
                    first = str(error).splitlines()[0]
                    self.notes.append(f"Ray Serve, {budget}, {graph}: no rows ({first})")

    # -- scale -------------------------------------------------------------------------------

    def many_graphs(self, count: int = 10_000) -> None:
        self.progress(f"scale: {count} graphs in one router")
        folder = self.workdir / "graphs"
        folder.mkdir()
        spec = yaml.safe_load((ROOT / "graphs" / "bench-sequence-1.yaml").read_text())
        for i in range(count):
            spec["metadata"]["name"] = f"g{i}"
            (folder / f"g{i}.yaml").write_text(yaml.safe_dump(spec))
        figures: dict[str, Any] = {}
        for label, source in (
            ("one graph", ("--graph", str(ROOT / "graphs" / "bench-sequence-1.yaml"))),
            (f"{count} graphs", ("--graph-dir", str(folder))),
        ):
            port = processes.free_port()
            router = processes.router(
                port, *source, extra=("--drain-seconds", "0", "--log-level", "WARNING")
            )
            router.argv = pinned(router.argv, 0)
            started = time.monotonic()
            with router:
                ready = time.monotonic() - started
                path = "/" if label == "one graph" else f"/graphs/g{count // 2}"
                result = run_wrk(
                    f"http://127.0.0.1:{port}{path}", 1, self.args.duration, self.script
                )
                figures[label] = {
                    "startup_s": round(ready, 2),
                    "rss_mib": round(rss_kib(router.pid) / 1024, 1),
                    "p50_ms": result["p50_ms"],
                    "p99_ms": result["p99_ms"],
                }
        self.scale["many graphs"] = figures

    def large_body(
        self, graph: str = "sequence-3", size: int = 10 * 1024 * 1024, in_flight: int = 4
    ) -> None:
        self.progress(f"scale: 10 MiB requests through {graph}")
        port = processes.free_port()
        router = bench_router(port, graph)
        body = orjson.dumps({"instances": ["x" * (size - 20)]})
        with router:
            base = rss_kib(router.pid)
            rounds = 5
            started = time.monotonic()
            asyncio.run(_post_many(f"http://127.0.0.1:{port}/", body, in_flight, rounds))
            elapsed = time.monotonic() - started
            peak = rss_kib(router.pid, "VmHWM")
        moved = len(body) * in_flight * rounds
        self.scale[f"10 MiB through {graph}"] = {
            "request_mib": round(len(body) / 2**20, 1),
            "in_flight": in_flight,
            "mb_per_s": round(moved / elapsed / 1e6, 1),
            "rss_before_mib": round(base / 1024, 1),
            "peak_rss_mib": round(peak / 1024, 1),
            "peak_mib_per_in_flight_request": round((peak - base) / 1024 / in_flight, 1),
            "copies_of_the_body_per_in_flight_request": round(
                (peak - base) * 1024 / in_flight / len(body), 1
            ),
        }

    def wide_ensemble(self, width: int = 64) -> None:
        self.progress(f"scale: a {width}-way Ensemble")
        base = f"http://127.0.0.1:{PREDICTOR_PORT}/step"
        steps = [
            {"name": f"b{i}", "serviceUrl": f"{base}/b{i}?delay=0.05"} for i in range(width - 1)
        ]
        steps.append({"name": "slowest", "serviceUrl": f"{base}/slowest?delay=0.2"})
        graph = json.dumps({"nodes": {"root": {"routerType": "Ensemble", "steps": steps}}})
        port = processes.free_port()
        router = processes.router(
            port, "--graph-json", graph, extra=("--drain-seconds", "0", "--log-level", "WARNING")
        )
        router.argv = pinned(router.argv, 0)
        times = []
        with router:
            for _ in range(20):
                started = time.monotonic()
                request = urllib.request.Request(
                    f"http://127.0.0.1:{port}/", data=BODY.encode(), method="POST"
                )
                with urllib.request.urlopen(request, timeout=30) as reply:
                    assert reply.status == 200
                    assert len(orjson.loads(reply.read())) == width
                times.append(time.monotonic() - started)
        self.scale[f"{width}-way ensemble"] = {
            "slowest_branch_ms": 200,
            "p50_ms": round(statistics.median(times) * 1000, 1),
            "max_ms": round(max(times) * 1000, 1),
            "p50_over_slowest_ms": round(statistics.median(times) * 1000 - 200, 1),
        }

    # -- the run -----------------------------------------------------------------------------

    def run(self) -> None:
        predictor = processes.predictor(PREDICTOR_PORT, log_path=self.workdir / "predictor.log")
        predictor.argv = pinned(predictor.argv, 1)
        with predictor:
            self.predictor_pid = predictor.pid
            if self.args.scale_only:
                self.scale_runs()
                return
            self.direct()
            for budget in BUDGETS if self.args.all_cores else BUDGETS[:1]:
                self.infergraph(budget)
                self.kserve(budget)
                if self.args.ray:
                    self.ray(budget)
            self.fixed_rates()
            if self.args.scale:
                self.scale_runs()
        self.add_ratios()

    def scale_runs(self) -> None:
        self.many_graphs()
        self.large_body("sequence-1")  # against the 3-step run: copies must not grow per step
        self.large_body("sequence-3")
        self.wide_ensemble()

    def add_ratios(self) -> None:
        ours = {
            (r["graph"], r["budget"], r["connections"]): r
            for r in self.rows
            if r["system"] == "infergraph"
        }
        for row in self.rows:
            base = ours.get((row["graph"], row["budget"], row["connections"]))
            if base is None:
                continue
            row["rps_vs_infergraph"] = row["rps"] / base["rps"]
            row["cpu_vs_infergraph"] = row["cpu_us"] / base["cpu_us"]
            row["p99_vs_infergraph"] = row["p99_ms"] / base["p99_ms"]

    def write(self) -> Path:
        base, meta = results_base(self.args.out, "peers-", self.args.duration)
        meta.update(calls_per_request=CALLS_PER_REQUEST, notes=self.notes)
        document = {"meta": meta, "rows": self.rows, "rates": self.rates, "scale": self.scale}
        base.with_suffix(".json").write_text(json.dumps(document, indent=2))
        base.with_suffix(".md").write_text(
            report(meta["date"], self.rows, self.scale, self.notes, self.rates)
        )
        if self.rows:
            chart(self.rows, base.with_suffix(".png"))
        return base


def _post_once(url: str, body: bytes, timeout: float) -> None:
    request = urllib.request.Request(
        url, data=body, headers={"Content-Type": "application/json"}, method="POST"
    )
    with urllib.request.urlopen(request, timeout=timeout) as reply:
        reply.read()


async def _post_many(url: str, body: bytes, in_flight: int, rounds: int) -> None:
    async with aiohttp.ClientSession() as session:

        async def one() -> None:
            for _ in range(rounds):
                async with session.post(url, data=body) as reply:
                    assert reply.status == 200, reply.status
                    assert len(await reply.read()) == len(body)

        await asyncio.gather(*(one() for _ in range(in_flight)))


COLUMNS = (
    ("system", "system", "{}"),
    ("cores", "budget", "{}"),
    ("graph", "graph", "{}"),
    ("conc", "connections", "{}"),
    ("req/s", "rps", "{:.0f}"),
    ("p50 ms", "p50_ms", "{:.2f}"),
    ("p99 ms", "p99_ms", "{:.2f}"),
    ("CPU µs/req", "cpu_us", "{:.0f}"),
    ("req/s ÷ infergraph", "rps_vs_infergraph", "{:.2f}"),
    ("CPU ÷ infergraph", "cpu_vs_infergraph", "{:.2f}"),
    ("p99 ÷ infergraph", "p99_vs_infergraph", "{:.2f}"),
)


def report(
    stamp: str,
    rows: list[dict[str, Any]],
    scale: dict[str, Any],
    notes: list[str],
    rates: Sequence[dict[str, Any]] = (),
) -> str:
    lines = [f"# Peers benchmark {stamp}", ""]
    lines += [
        "Saturation runs: wrk unpinned (it may run on either core, the same for every system);",
        "`single core`: the system pinned to core 0, the predictor to core 1.",
        "",
    ]
    lines += ["| " + " | ".join(c[0] for c in COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    for row in rows:
        cells = [fmt.format(row[key]) if key in row else "" for _, key, fmt in COLUMNS]
        lines.append("| " + " | ".join(cells) + " |")
    if rates:
        lines += [
            "",
            "## Fixed offered rates",
            "",
            "vegeta on core 1 with the predictor, the system pinned to core 0; CPU per request is",
            "the system's whole process group.",
            "",
            "| system | graph | rate/s | CPU µs/req | p50 ms | p99 ms | answered 2xx |",
            "|---|---|---|---|---|---|---|",
        ]
        for r in rates:
            lines.append(
                f"| {r['system']} | {r['graph']} | {r['rate']} | {r['cpu_us']:.0f} | "
                f"{r['p50_ms']:.2f} | {r['p99_ms']:.2f} | {r.get('success', 1.0):.1%} |"
            )
    lines += ["", "## Scale", "", "```json", json.dumps(scale, indent=2), "```"]
    if notes:
        lines += ["", "## Notes", "", *(f"- {n}" for n in notes)]
    return "\n".join(lines) + "\n"


def chart(rows: list[dict[str, Any]], path: Path) -> None:
    graphs = [g for g in GRAPHS if any(r["graph"] == g for r in rows)]
    series = sorted(
        {(r["system"], r["budget"]) for r in rows if r["system"] != "direct"},
        key=lambda s: (s[1], s[0]),
    )
    figure, axes = plt.subplots(1, 2, figsize=(14, 5))
    width = 0.8 / max(1, len(series))
    for k, (system, budget) in enumerate(series):
        found = {
            r["graph"]: r
            for r in rows
            if r["system"] == system and r["budget"] == budget and r["connections"] == 32
        }
        xs = [i + k * width for i in range(len(graphs))]
        label = f"{system} ({budget})"
        axes[0].bar(xs, [found[g]["rps"] if g in found else 0 for g in graphs], width, label=label)
        axes[1].bar(xs, [found[g]["p99_ms"] if g in found else 0 for g in graphs], width)
    for ax, title in zip(
        axes, ("requests/s at concurrency 32", "p99 ms at concurrency 32"), strict=True
    ):
        ax.set_xticks([i + 0.4 - width / 2 for i in range(len(graphs))], graphs)
        ax.set_title(title)
    axes[1].set_yscale("log")
    figure.legend(loc="lower center", ncol=4, fontsize="small")
    figure.tight_layout(rect=(0, 0.12, 1, 1))
    figure.savefig(path, dpi=110)


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--duration", type=float, default=3.0, help="seconds per wrk run")
    parser.add_argument("--graphs", nargs="*", default=GRAPHS, choices=GRAPHS)
    parser.add_argument("--no-ray", dest="ray", action="store_false", help="skip Ray Serve")
    parser.add_argument(
        "--all-cores",
        action="store_true",
        help="also run every system unpinned (meaningless where the predictor and wrk share "
        "the cores, as on a 2-core machine)",
    )
    parser.add_argument("--no-scale", dest="scale", action="store_false", help="skip scale runs")
    parser.add_argument("--scale-only", action="store_true", help="only the scale runs")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results")
    args = parser.parse_args()
    problem = preflight()
    if problem:
        print(problem, file=sys.stderr)
        return 2
    peers = Peers(args, Path(tempfile.mkdtemp(prefix="infergraph-peers-")))
    peers.run()
    print(report("", peers.rows, peers.scale, peers.notes, peers.rates))
    print(f"written: {peers.write()}.json, .md (and .png with system rows)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
