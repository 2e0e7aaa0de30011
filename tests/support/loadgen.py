"""What the benchmarks share: the bench graphs and their predictor, wrk runs, CPU time per
process group from /proc, core pinning and result files."""

from __future__ import annotations

import datetime as dt
import json
import math
import os
import re
import shutil
import statistics
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from infergraph.predictors import processes
from infergraph.testing.paths import REPO

ROOT = REPO
PREDICTOR_PORT = 18090  # the port the graphs/bench-*.yaml files call
GRAPHS = ["sequence-1", "sequence-3", "switch", "ensemble-3", "splitter"]
CALLS_PER_REQUEST = {
    "sequence-1": 1,
    "sequence-3": 3,
    "switch": 1,
    "ensemble-3": 3,
    "splitter": 1,
    "triton-v2": 1,
    "triton-grpc": 1,
}
TRITON_HTTP = 18200  # the port graphs/bench-triton-*.yaml call (gRPC on 18201)
TRITON_BODY = (
    '{"inputs": [{"name": "features", "shape": [1, 4], "datatype": "FP32",'
    ' "data": [5.1, 3.5, 1.4, 0.2]}]}'
)
BODY = '{"instances": [[5.1, 3.5, 1.4, 0.2], [6.7, 3.0, 5.2, 2.3]]}'
TICKS = os.sysconf("SC_CLK_TCK")


def _group_stats(group: int) -> Iterator[tuple[Path, list[str]]]:
    """Each live process in a process group: its /proc/<pid>/stat path and the fields after
    the command name (the third of them is the group)."""
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[2]) == group:  # pgrp
            yield stat, fields


def cpu_seconds_fine(group: int) -> float:
    """As ``cpu_seconds``, from the scheduler's own count in nanoseconds (``schedstat``) per
    thread, where ``stat`` counts in clock ticks (10 ms): for attacks of a second. A thread that
    ends between two readings takes its time with it, so use it for servers whose threads
    live as long as they do (Go's runtime, uvloop with its executor)."""
    total = 0
    for stat, _ in _group_stats(group):
        for task in stat.parent.glob("task/*/schedstat"):
            try:
                total += int(task.read_text().split()[0])
            except (OSError, IndexError, ValueError):
                continue
    return total / 1e9


def cpu_seconds(group: int) -> float:
    """CPU time (user + system) of every live process in a process group (a server and the
    processes it started: tritonserver and its Python backends, say)."""
    total = sum(int(fields[11]) + int(fields[12]) for _, fields in _group_stats(group))
    return total / TICKS


def _ms(value: str, unit: str) -> float:
    return float(value) * {"us": 0.001, "ms": 1.0, "s": 1000.0}[unit]


QUIET = ("--drain-seconds", "0", "--log-level", "WARNING")
VEGETA_ADDRESS = "127.0.0.2"  # loopback: all of 127.0.0.0/8 reaches servers on 127.0.0.1


def bench_router(
    port: int,
    graph: str,
    *extra: str,
    core: int | None = None,
    env: dict[str, str] | None = None,
    log_path: Path | None = None,
) -> processes.ServerProcess:
    """A router serving graphs/bench-``graph``.yaml on ``port``, quiet, with no drain time;
    pinned to ``core`` if given."""
    router = processes.router(
        port,
        "--graph",
        str(ROOT / "graphs" / f"bench-{graph}.yaml"),
        extra=(*QUIET, *extra),
        env=env,
        log_path=log_path,
    )
    if core is not None:
        router.argv = pinned(router.argv, core)
    return router


def _time_wait_sockets() -> int:
    count = 0
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        count += sum(1 for line in lines if line.split(None, 4)[3] == "06")  # TIME_WAIT
    return count


def wait_for_ports(needed: int = 16_000, timeout: float = 75.0) -> int:
    """Wait until ``needed`` local ports are out of TIME_WAIT (at most ``timeout`` s, a little
    over Linux's 60 s); the seconds waited. Every connection a client closes first holds its
    port for a minute: KServe's router keeps 2 idle connections per backend (Go's default), so
    at c=32 it opens and closes the rest, leaving about 12,000 such ports per graph run, and
    graphs run back to back would use up the 28,000 of the ephemeral range."""
    low, high = (int(v) for v in Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split())
    started = time.monotonic()
    while high - low + 1 - _time_wait_sockets() < needed:
        if time.monotonic() - started > timeout:
            break
        time.sleep(1)
    return round(time.monotonic() - started)


def run_wrk(url: str, connections: int, duration: float, script: Path) -> dict[str, float]:
    threads = 1 if connections == 1 else 2
    out = subprocess.run(
        [
            *("wrk", f"-t{threads}", f"-c{connections}", f"-d{max(1, round(duration))}s"),
            *("--latency", "-s", str(script), url),
        ],
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
    if "50" not in latency or "99" not in latency:
        raise RuntimeError(f"wrk measured no latency against {url}:\n{out}")
    return {
        "requests": requests,
        "rps": float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1)),  # type: ignore[union-attr]
        "p50_ms": latency["50"],
        "p99_ms": latency["99"],
    }


def measure(
    url: str, pids: dict[str, int], connections: int, duration: float, script: Path
) -> dict[str, float]:
    before = {name: cpu_seconds(pid) for name, pid in pids.items()}
    result = run_wrk(url, connections, duration, script)
    for name, pid in pids.items():
        result[f"{name}_cpu_s"] = cpu_seconds(pid) - before[name]
    return result


def span_exporter(router_pid: int) -> int | None:
    """The router's span exporter child (its own process group), if tracing started one."""
    found = processes.children_of(router_pid, b"span_export")
    return found[0] if found else None


def warm_up(url: str, script: Path, pids: dict[str, int], seconds: float = 1.0) -> None:
    """Load for ``seconds`` (results dropped), then wait until every process in ``pids`` has
    stopped spending CPU (the span exporter child imports its libraries after the router is
    ready): the first measured run then sees neither start-up."""
    run_wrk(url, 8, seconds, script)
    deadline = time.monotonic() + 15
    last = {name: cpu_seconds(pid) for name, pid in pids.items()}
    while time.monotonic() < deadline:
        time.sleep(0.3)
        now = {name: cpu_seconds(pid) for name, pid in pids.items()}
        if all(now[name] - last[name] < 0.01 for name in pids):
            return
        last = now


def results_base(out: Path, prefix: str, duration: float) -> tuple[Path, dict[str, Any]]:
    """Where a run's result files go (``out/<prefix><UTC date>`` plus a suffix), and the
    metadata every result file carries."""
    stamp = dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H%M%SZ")
    out.mkdir(parents=True, exist_ok=True)
    meta = {"date": stamp, "duration_s": duration, "cpus": os.cpu_count(), "body": BODY}
    return out / f"{prefix}{stamp}", meta


def preflight() -> str | None:
    """Why a benchmark cannot run here, if it cannot."""
    if not shutil.which("wrk"):
        return "wrk is missing: `apt-get install wrk` (make bench installs it)"
    if not processes.port_is_free(PREDICTOR_PORT):
        return f"port {PREDICTOR_PORT} (the bench graphs' predictor) is in use"
    return None


def median_of(runs: list[dict[str, float]]) -> dict[str, float]:
    return {key: statistics.median(run[key] for run in runs) for key in runs[0]}


def pinned(argv: list[str], core: int) -> list[str]:
    """Pin a process to one core (router on 0, predictor on 1) so they do not trade places."""
    cores = os.cpu_count() or 1
    return ["taskset", "-c", str(core), *argv] if shutil.which("taskset") and cores > 1 else argv


def post_script(path: Path, body: str) -> Path:
    path.write_text(
        f"wrk.method = 'POST'\nwrk.body = '{body}'\n"
        "wrk.headers['Content-Type'] = 'application/json'\n"
    )
    return path


def vegeta_attack(
    vegeta: Path,
    url: str,
    rate: int,
    duration: float,
    workdir: Path,
    body: str,
    *,
    tail: bool = False,
) -> dict[str, Any]:
    """A constant-rate attack by vegeta of ``duration`` seconds (whole milliseconds), pinned to
    core 1 (the predictor's): its JSON report, with the 99.9th percentile if ``tail``.
    Failed requests are in the report (``success``, ``status_codes``), not raised."""
    body_file = workdir / "body.json"
    body_file.write_text(body)
    targets = workdir / "targets.txt"
    targets.write_text(f"POST {url}\nContent-Type: application/json\n@{body_file}\n")
    seconds = duration
    attack = subprocess.run(
        pinned(
            [
                str(vegeta),
                "attack",
                f"-rate={rate}/s",
                f"-duration={round(seconds * 1000)}ms",
                f"-targets={targets}",
                "-keepalive=true",
                # Its own loopback address: vegeta binds before it connects, and a port in
                # TIME_WAIT on 127.0.0.1 (KServe's router leaves thousands towards the
                # predictor) is still taken for 127.0.0.1, not for 127.0.0.2.
                f"-laddr={VEGETA_ADDRESS}",
                "-timeout=30s",
            ],
            1,
        ),
        capture_output=True,
        check=True,
        timeout=seconds + 60,
    )
    report: dict[str, Any] = json.loads(
        subprocess.run(
            [str(vegeta), "report", "-type=json"],
            input=attack.stdout,
            capture_output=True,
            check=True,
            timeout=60,
        ).stdout
    )
    if not tail:
        return report
    # vegeta's report stops at the 99th percentile; the 99.9th (nearest rank) from the
    # results themselves, for tails thinner than 1%.
    rows = subprocess.run(
        [str(vegeta), "encode", "-to", "csv"],
        input=attack.stdout,
        capture_output=True,
        check=True,
        timeout=60,
    ).stdout.splitlines()
    latencies = sorted(int(row.split(b",", 3)[2]) for row in rows if row)
    if latencies:
        rank = math.ceil(0.999 * len(latencies)) - 1
        report["latencies"]["99.9th"] = latencies[rank]
    return report
