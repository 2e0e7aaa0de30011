"""Router benchmark: the router against a direct call, and its two downstream clients side by side.

One run starts the light local predictor (``/echo``) and, for each graph in ``graphs/bench-*``,
the router with the router's own client (``fast``) and with aiohttp's ``ClientSession``
(``aiohttp``), then drives each with wrk (POST, loopback only, bounded in time) at concurrency
1 and 32. For every run it reads the CPU time the router and the predictor processes used from
/proc, so costs are per request and comparable within the run even on a noisy machine:

- ``router_us``: router CPU microseconds per graph request;
- ``predictor_us``: predictor CPU microseconds per predictor call;
- ``ratio``: router_us / predictor_us, the router's cost in units of one predictor call.

Each figure is the median of ``--repeats`` runs. Results go to bench/results/<date>.json and .md.
Usage: ``make bench`` (or ``.venv/bin/python bench/router_bench.py --duration 5 --repeats 3``).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from infergraph.predictors import processes

ROOT = Path(__file__).resolve().parent.parent
PREDICTOR_PORT = 18090  # the port the graphs/bench-*.yaml files call
GRAPHS = ["sequence-1", "sequence-3", "switch", "ensemble-3", "splitter"]
CALLS_PER_REQUEST = {"sequence-1": 1, "sequence-3": 3, "switch": 1, "ensemble-3": 3, "splitter": 1}
BODY = '{"instances": [[5.1, 3.5, 1.4, 0.2], [6.7, 3.0, 5.2, 2.3]]}'
TICKS = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICKS  # utime + stime


def _ms(value: str, unit: str) -> float:
    return float(value) * {"us": 0.001, "ms": 1.0, "s": 1000.0}[unit]


def run_wrk(url: str, connections: int, duration: float, script: Path) -> dict[str, float]:
    threads = 1 if connections == 1 else 2
    out = subprocess.run(
        ["wrk", f"-t{threads}", f"-c{connections}", f"-d{max(1, round(duration))}s", "--latency", "-s", str(script), url],
        capture_output=True,
        text=True,
        check=True,
        timeout=duration + 30,
    ).stdout
    requests = int(re.search(r"(\d+) requests in", out).group(1))  # type: ignore[union-attr]
    bad = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    errors = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    if bad or (errors and any(int(x) for x in errors.groups())):
        raise RuntimeError(f"wrk saw failed requests against {url}:\n{out}")
    percentiles = re.findall(r"^\s+(50|99)%\s+([\d.]+)(us|ms|s)$", out, re.M)
    latency = {p: _ms(value, unit) for p, value, unit in percentiles}
    return {
        "requests": requests,
        "rps": float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1)),  # type: ignore[union-attr]
        "p50_ms": latency["50"],
        "p99_ms": latency["99"],
    }


def measure(url: str, pids: dict[str, int], connections: int, duration: float, script: Path) -> dict[str, float]:
    before = {name: cpu_seconds(pid) for name, pid in pids.items()}
    result = run_wrk(url, connections, duration, script)
    for name, pid in pids.items():
        result[f"{name}_cpu_s"] = cpu_seconds(pid) - before[name]
    return result


def median_of(runs: list[dict[str, float]]) -> dict[str, float]:
    return {key: statistics.median(run[key] for run in runs) for key in runs[0]}


def pinned(argv: list[str], core: int) -> list[str]:
    return ["taskset", "-c", str(core), *argv] if shutil.which("taskset") and os.cpu_count() and os.cpu_count() > 1 else argv  # type: ignore[operator]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--duration", type=float, default=5.0, help="seconds per wrk run")
    parser.add_argument("--repeats", type=int, default=3, help="runs per figure (median reported)")
    parser.add_argument("--graphs", nargs="*", default=GRAPHS, choices=GRAPHS)
    parser.add_argument("--clients", nargs="*", default=["fast", "aiohttp"], choices=["fast", "aiohttp"])
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results")
    args = parser.parse_args()
    if not shutil.which("wrk"):
        print("wrk is missing: install it with `apt-get install wrk` (make bench does)", file=sys.stderr)
        return 2
    if not processes.port_is_free(PREDICTOR_PORT):
        print(f"port {PREDICTOR_PORT} (the bench graphs' predictor) is in use", file=sys.stderr)
        return 2

    workdir = Path(tempfile.mkdtemp(prefix="infergraph-bench-"))
    script = workdir / "post.lua"
    script.write_text(
        f"wrk.method = 'POST'\nwrk.body = '{BODY}'\nwrk.headers['Content-Type'] = 'application/json'\n"
    )
    rows: list[dict[str, Any]] = []
    predictor = processes.predictor(PREDICTOR_PORT, log_path=workdir / "predictor.log")
    predictor.argv = pinned(predictor.argv, 1)
    total = len(args.graphs) * len(args.clients) + 1
    done = 0
    started = time.monotonic()

    def progress(label: str) -> None:
        print(f"[{done + 1}/{total}] {label} (elapsed {time.monotonic() - started:.0f} s)", flush=True)

    with predictor:
        ppid = predictor.pid
        progress("direct call to the predictor")
        for connections in (1, 32):
            runs = [measure(f"http://127.0.0.1:{PREDICTOR_PORT}/echo", {"predictor": ppid}, connections, args.duration, script) for _ in range(args.repeats)]
            row = median_of(runs)
            row.update(system="direct", graph="echo", connections=connections)
            row["predictor_us"] = row["predictor_cpu_s"] / row["requests"] * 1e6
            rows.append(row)
        done += 1
        for graph in args.graphs:
            for client in args.clients:
                progress(f"{graph} through the router, {client} client")
                port = processes.free_port()
                router = processes.router(
                    port, "--graph", str(ROOT / "graphs" / f"bench-{graph}.yaml"),
                    extra=("--client", client, "--drain-seconds", "0", "--log-level", "WARNING"),
                    log_path=workdir / f"router-{graph}-{client}.log",
                )
                router.argv = pinned(router.argv, 0)
                with router:
                    pids = {"router": router.pid, "predictor": ppid}
                    for connections in (1, 32):
                        runs = [measure(f"http://127.0.0.1:{port}/", pids, connections, args.duration, script) for _ in range(args.repeats)]
                        row = median_of(runs)
                        calls = row["requests"] * CALLS_PER_REQUEST[graph]
                        row.update(system=f"infergraph/{client}", graph=graph, connections=connections)
                        row["router_us"] = row["router_cpu_s"] / row["requests"] * 1e6
                        row["predictor_us"] = row["predictor_cpu_s"] / calls * 1e6
                        row["ratio"] = row["router_us"] / row["predictor_us"]
                        rows.append(row)
                done += 1

    stamp = dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H%M%SZ")
    args.out.mkdir(parents=True, exist_ok=True)
    meta = {"date": stamp, "duration_s": args.duration, "repeats": args.repeats, "cpus": os.cpu_count(), "body": BODY}
    (args.out / f"{stamp}.json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=2))
    table = render(rows)
    (args.out / f"{stamp}.md").write_text(f"# Router benchmark {stamp}\n\n{table}\n")
    print(table)
    print(f"\nwritten: {args.out / stamp}.json and .md")
    return 0


def render(rows: list[dict[str, Any]]) -> str:
    head = "| system | graph | conc | req/s | p50 ms | p99 ms | router µs/req | predictor µs/call | ratio |"
    lines = [head, "|" + "---|" * 9]
    for r in rows:
        lines.append(
            f"| {r['system']} | {r['graph']} | {r['connections']} | {r['rps']:.0f} | {r['p50_ms']:.2f} | "
            f"{r['p99_ms']:.2f} | {r.get('router_us', 0):.0f} | {r['predictor_us']:.0f} | "
            f"{r.get('ratio', 0):.2f} |"
        )
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
