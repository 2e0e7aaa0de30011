"""Resilience benchmark: the policies against faulty model servers, side by side in one run.

The fault-injecting server (``infergraph.testing.faults``, as a process) plays the model server
on core 1, with vegeta (a constant-rate load generator) beside it; each router runs alone on
core 0. Every figure comes from one vegeta attack at a fixed offered rate.

1. **Retries against 20% 503s**: success rate and added load (backend calls per request - 1)
   with no policy, with ``retry`` (maxRetries 4) under two retry budgets, and for KServe's
   router (which has none). Target: at least 99.9% success, the added load no more than the
   failures make necessary, with the budget declared for that load.
   These attacks last ``--retry-duration`` (30 s: 15,000 requests). With 0.2**5 = 0.03%
   expected to fail once retries run out, 5,000 requests (1.6 failures expected, 5 allowed)
   could not tell 99.9% from 99.95%.
   - Envoy's default budget (20% of active requests, at least 3 retries in flight) is
     shown, but carries no target. At 500 req/s a retry holds its place through its backoff
     (as in Envoy) for about 3.8 ms, so about 0.5 retries are in flight on average. Chance
     bunching takes that past 3 for about 0.06% of requests. An event simulation of this
     attack (constant rate, independent 20% failures, full-jitter backoff, limit 3) refuses
     6 to 13 retries per 15,000 requests, which puts the success rate on either side of
     99.9% by luck.
   - The target row declares ``retryBudget: {minRetryConcurrency: 10}``. That is the budget a
     user riding through 20% failures at this rate would size, and the simulation refuses no
     retry under it.
2. **Hedging against 1% slow replies** (200 ms): p50/p99/p99.9/max with and without
   ``hedge: {afterMs: 20}``, and KServe's router. With 1% of replies slow at random, the
   99th percentile falls on the border between fast and slow replies: from run to run it
   lands on a fast one (3.45 ms unhedged, 211053Z) or a slow one (128.67 ms, 195343Z) by
   chance. So the target (hedging lowers the tail) is judged at the 99.9th percentile, well
   inside the slow 1%; the p99 ratio is shown beside it.
3. **The price of policies when nothing fails**: router CPU per request on a 1-step Sequence
   with every policy configured (retry, timeout, two replicas, hedge, fallback, bulkhead, graph
   timeout and shedding, outlier detection) against the same graph with none, and with all but
   the hedge. The three routers run at once, each on core 0 with its own vegeta at the same
   rate, so the machine's noise falls on all three alike; repeated, medians of the ratios.
   Target: at most 5% more.

Writes bench/results/resilience-<date>.json and .md. Usage: ``make bench-resilience``.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import contextlib
import json
import statistics
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson

from infergraph.predictors import processes
from infergraph.testing import faults
from infergraph.testing.loadgen import cpu_seconds, pinned, results_base, vegeta_attack
from infergraph.testing.paths import CACHE

ROOT = Path(__file__).resolve().parents[1]
KSERVE_ROUTER = CACHE / "bin" / "kserve-router-v0.20.0"
VEGETA = CACHE / "bin" / "vegeta-v12.13.0"
KSERVE_PORT = 8080
BODY = '{"instances": [[1.0, 2.0, 3.0, 4.0]]}'
SIZED_BUDGET = "retry, budget for the load"
DEFAULT_BUDGET = "retry, default budget"


def one_step(step: dict[str, Any], **spec: Any) -> str:
    nodes = {"root": {"routerType": "Sequence", "steps": [{"name": "s", **step}]}}
    return orjson.dumps({"nodes": nodes, **spec}).decode()


class Bench:
    def __init__(self, args: argparse.Namespace, workdir: Path, backend: str) -> None:
        self.args = args
        self.workdir = workdir
        self.backend = backend
        self.started = time.monotonic()
        self.rows: list[dict[str, Any]] = []
        self.notes: list[str] = []
        self.seconds: int | None = None  # the attacks' length, when not ``--duration``

    def progress(self, label: str) -> None:
        print(f"[{time.monotonic() - self.started:5.0f} s] {label}", flush=True)

    def counts(self, reset: bool = False) -> int:
        return sum(faults.counts(self.backend, reset=reset).values())

    def attack(self, url: str, rate: int, group: int) -> dict[str, Any]:
        self.counts(reset=True)
        row = self._attack_one(url, rate, group, self.workdir, self.seconds)
        row["backend_calls_per_request"] = self.counts() / row["requests"]
        return row

    def _router(self, scenario: str, variant: str, spec: str) -> tuple[Any, int]:
        """A router for ``spec`` on core 0 (not started) and its port."""
        port = processes.free_port()
        router = processes.router(
            port,
            "--graph-json",
            spec,
            extra=("--drain-seconds", "0", "--log-level", "ERROR"),
            log_path=self.workdir / f"infergraph-{scenario}-{variant}.log",
        )
        router.argv = pinned(router.argv, 0)
        return router, port

    def infergraph(self, scenario: str, variant: str, spec: str, rate: int) -> dict[str, Any]:
        router, port = self._router(scenario, variant, spec)
        with router:
            self._warm(f"http://127.0.0.1:{port}/")
            row = self.attack(f"http://127.0.0.1:{port}/", rate, router.pid)
            row["policy_counts"] = policy_counts(port)
        row.update(system="infergraph", scenario=scenario, variant=variant)
        self.rows.append(row)
        return row

    def kserve(self, scenario: str, spec: str, rate: int) -> None:
        if not KSERVE_ROUTER.exists():
            self.notes.append(f"KServe's router is not built ({KSERVE_ROUTER}): no kserve rows")
            return
        router = processes.ServerProcess(
            pinned([str(KSERVE_ROUTER), "--graph-json", spec], 0),
            f"http://127.0.0.1:{KSERVE_PORT}/readyz",
            log_path=self.workdir / f"kserve-{scenario}.log",
        )
        with router.start():
            self._warm(f"http://127.0.0.1:{KSERVE_PORT}/")
            row = self.attack(f"http://127.0.0.1:{KSERVE_PORT}/", rate, router.pid)
        row.update(system="kserve", scenario=scenario, variant="no policy (KServe has none)")
        self.rows.append(row)

    def _warm(self, url: str) -> None:
        headers = {"Content-Type": "application/json"}
        for _ in range(50):
            request = urllib.request.Request(url, BODY.encode(), headers, method="POST")
            with contextlib.suppress(OSError):  # a 503 from the faulty backend is fine here
                urllib.request.urlopen(request, timeout=5).read()

    def retries(self) -> None:
        self.progress("retries against 20% 503s")
        url = f"{self.backend}/fail?status=503&rate=0.2"
        retry = {"maxRetries": 4, "initialDelayMs": 5, "maxDelayMs": 50}
        rate = self.args.rate
        self.seconds = self.args.retry_duration
        try:
            self.infergraph("503 on 20%", "no policy", one_step({"serviceUrl": url}), rate)
            retried = one_step({"serviceUrl": url, "retry": retry})
            self.infergraph("503 on 20%", DEFAULT_BUDGET, retried, rate)
            budget = {"percent": 20, "minRetryConcurrency": 10}
            sized = one_step({"serviceUrl": url, "retry": retry}, retryBudget=budget)
            self.infergraph("503 on 20%", SIZED_BUDGET, sized, rate)
            self.kserve("503 on 20%", one_step({"serviceUrl": url}), rate)
        finally:
            self.seconds = None

    def hedging(self) -> None:
        self.progress("hedging against 1% slow replies")
        url = f"{self.backend}/slow?ms=200&rate=0.01"
        rate = self.args.rate
        self.infergraph("1% slow", "no policy", one_step({"serviceUrl": url}), rate)
        hedged = one_step({"serviceUrl": url, "hedge": {"afterMs": 20}})
        self.infergraph("1% slow", "hedge 20 ms", hedged, rate)
        self.kserve("1% slow", one_step({"serviceUrl": url}), rate)

    def price(self) -> None:
        self.progress("CPU per request, every policy configured, nothing failing")
        plain = one_step({"serviceUrl": f"{self.backend}/ok/a"})
        everything = one_step(
            {
                "endpoints": [f"{self.backend}/ok/a", f"{self.backend}/ok/b"],
                "retry": {"maxRetries": 3},
                "timeout": 5,
                "hedge": {"afterMs": 2000},
                "fallback": {"serviceUrl": f"{self.backend}/ok/spare"},
                "maxInFlight": 1000,
            },
            timeout=10,
            maxInFlight=1000,
            outlierDetection={"consecutive5xx": 5},
            retryBudget={"percent": 20},
        )
        no_hedge = json.loads(everything)
        del no_hedge["nodes"]["root"]["steps"][0]["hedge"]
        variants = [
            ("no policy", plain),
            ("every policy", everything),
            ("every policy but hedge", json.dumps(no_hedge)),
        ]
        for _ in range(self.args.repeats):
            self.together("nothing fails", variants, self.args.price_rate)

    def together(self, scenario: str, variants: list[tuple[str, str]], rate: int) -> None:
        """Routers side by side: started together, attacked at once, each on core 0."""
        with contextlib.ExitStack() as stack:
            ports = []
            pids = []
            for variant, spec in variants:
                router, port = self._router(scenario, variant, spec)
                stack.enter_context(router)
                self._warm(f"http://127.0.0.1:{port}/")
                ports.append(port)
                pids.append(router.pid)
            self.counts(reset=True)
            with concurrent.futures.ThreadPoolExecutor(len(variants)) as pool:
                rows = list(
                    pool.map(
                        lambda i: self._attack_one(
                            f"http://127.0.0.1:{ports[i]}/", rate, pids[i], self.workdir / str(i)
                        ),
                        range(len(variants)),
                    )
                )
            calls = self.counts() / sum(row["requests"] for row in rows)
            for row, (variant, _), port in zip(rows, variants, ports, strict=True):
                row["backend_calls_per_request"] = calls  # the backend's count, over all three
                row["policy_counts"] = policy_counts(port)
                row.update(system="infergraph", scenario=scenario, variant=variant, together=True)
                self.rows.append(row)

    def _attack_one(
        self, url: str, rate: int, group: int, workdir: Path, seconds: int | None = None
    ) -> dict[str, Any]:
        """One vegeta attack on ``url`` (its files in ``workdir``) and the CPU of ``group``,
        for ``seconds`` (``--duration`` unless given)."""
        workdir.mkdir(exist_ok=True)
        before = cpu_seconds(group)
        duration = seconds or self.args.duration
        report = vegeta_attack(VEGETA, url, rate, duration, workdir, BODY, tail=True)
        cpu = cpu_seconds(group) - before
        latencies = report["latencies"]
        return {
            "rate": rate,
            "requests": report["requests"],
            "success": report["success"],
            "status_codes": report.get("status_codes", {}),
            "cpu_us": cpu / report["requests"] * 1e6,
            "p50_ms": latencies["50th"] / 1e6,
            "p99_ms": latencies["99th"] / 1e6,
            "p999_ms": latencies["99.9th"] / 1e6,
            "max_ms": latencies["max"] / 1e6,
        }


POLICY_METRICS = (
    "infergraph_retries_total",
    "infergraph_hedges_total",
    "infergraph_retry_budget_exhausted_total",
    "infergraph_shed_total",
)


def policy_counts(port: int) -> dict[str, float]:
    """What the policies did in a run, from the router's /metrics (warm-up calls included)."""
    page = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    counts = dict.fromkeys(POLICY_METRICS, 0.0)
    for line in page.splitlines():
        name = line.split("{", 1)[0]
        if name in counts and not line.startswith("#"):
            counts[name] += float(line.rsplit(" ", 1)[1])
    return {
        name.removeprefix("infergraph_").removesuffix("_total"): v for name, v in counts.items()
    }


def summary(rows: list[dict[str, Any]]) -> dict[str, Any]:
    def pick(scenario: str, variant: str, system: str = "infergraph") -> list[dict[str, Any]]:
        return [
            r
            for r in rows
            if r["scenario"] == scenario and r["variant"] == variant and r["system"] == system
        ]

    out: dict[str, Any] = {}
    retry = pick("503 on 20%", SIZED_BUDGET)
    if retry:
        out["retry_success"] = retry[0]["success"]
        out["retry_added_load"] = retry[0]["backend_calls_per_request"] - 1
    default = pick("503 on 20%", DEFAULT_BUDGET)
    if default:
        out["retry_default_budget_success"] = default[0]["success"]
    plain = [r["cpu_us"] for r in pick("nothing fails", "no policy")]
    every = [r["cpu_us"] for r in pick("nothing fails", "every policy")]
    no_hedge = [r["cpu_us"] for r in pick("nothing fails", "every policy but hedge")]
    # Each round ran the three side by side: the median of the rounds' ratios.
    if plain and every:
        out["policy_cpu_ratio"] = statistics.median(
            e / p for e, p in zip(every, plain, strict=True)
        )
    if plain and no_hedge:
        out["policy_no_hedge_cpu_ratio"] = statistics.median(
            n / p for n, p in zip(no_hedge, plain, strict=True)
        )
    hedged, unhedged = pick("1% slow", "hedge 20 ms"), pick("1% slow", "no policy")
    if hedged and unhedged:
        out["hedge_p99_ratio"] = hedged[0]["p99_ms"] / unhedged[0]["p99_ms"]
        out["hedge_p999_ratio"] = hedged[0]["p999_ms"] / unhedged[0]["p999_ms"]
    return out


def _counts(row: dict[str, Any]) -> str:
    counts = row.get("policy_counts")
    if not counts:
        return "-"
    return (
        f"{counts['retries']:.0f} / {counts['hedges']:.0f} / {counts['retry_budget_exhausted']:.0f}"
    )


def _percent(value: float) -> str:
    return f"{100 * value:.2f}%"


# The results table's verdicts: key, target, how the figure reads, whether it is met (None:
# shown beside the targets, with none of its own).
VERDICTS: list[tuple[str, str, Callable[[float], str], Callable[[float], bool] | None]] = [
    (
        "retry_success",
        "retries, budget for the load: >= 99.9% success",
        _percent,
        lambda v: v >= 0.999,
    ),
    # With 20% failing, retrying until success needs 0.2/0.8 = 25% more calls.
    (
        "retry_added_load",
        "retries: added load <= what 20% failures need (25%)",
        lambda v: f"{100 * v:.1f}%",
        lambda v: v <= 0.25 * 1.1,
    ),
    ("retry_default_budget_success", "(retries, Envoy's default budget: success)", _percent, None),
    (
        "hedge_p999_ratio",
        "hedging lowers p99.9",
        lambda v: f"{v:.2f}x of unhedged",
        lambda v: v < 1,
    ),
    (
        "hedge_p99_ratio",
        "(hedging: p99, on the border of the slow 1%)",
        lambda v: f"{v:.2f}x of unhedged",
        None,
    ),
    (
        "policy_cpu_ratio",
        "every policy, nothing failing: <= 1.05x CPU",
        lambda v: f"{v:.3f}x",
        lambda v: v <= 1.05,
    ),
    ("policy_no_hedge_cpu_ratio", "(every policy but the hedge: CPU)", lambda v: f"{v:.3f}x", None),
]


def render(rows: list[dict[str, Any]], verdicts: dict[str, Any], notes: list[str]) -> str:
    lines = [
        "| scenario | system | policy | rate/s | success | backend calls/request | p50 ms "
        "| p99 ms | p99.9 ms | max ms | router CPU us/request "
        "| retries / hedges / budget exhausted |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for r in rows:
        lines.append(
            f"| {r['scenario']} | {r['system']} | {r['variant']} | {r['rate']} "
            f"| {100 * r['success']:.2f}% | {r['backend_calls_per_request']:.3f} "
            f"| {r['p50_ms']:.2f} | {r['p99_ms']:.2f} | {r['p999_ms']:.2f} | {r['max_ms']:.1f} "
            f"| {r['cpu_us']:.0f} "
            f"| {_counts(r)} |"
        )
    lines += ["", "| target | measured | met |", "| --- | --- | --- |"]
    for key, label, shown, met in VERDICTS:
        if key in verdicts:
            value = verdicts[key]
            lines.append(f"| {label} | {shown(value)} | {met(value) if met else '(no target)'} |")
    lines += [f"- {note}" for note in notes]
    return "\n".join(lines) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--duration", type=int, default=10, help="seconds per attack")
    parser.add_argument(
        "--retry-duration", type=int, default=30, help="seconds per attack, retry scenario"
    )
    parser.add_argument("--rate", type=int, default=500, help="offered rate for the fault runs")
    parser.add_argument(
        "--price-rate", type=int, default=1000, help="offered rate per router, no faults"
    )
    parser.add_argument("--repeats", type=int, default=5, help="rounds for the price")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results")
    parser.add_argument(
        "--scenarios",
        default="retries,hedging,price",
        help="which to run, comma-separated (default: all three)",
    )
    args = parser.parse_args()
    if not VEGETA.exists():
        print(f"vegeta is missing ({VEGETA}): run make bench-resilience", file=sys.stderr)
        return 2
    base, meta = results_base(args.out, "resilience-", args.duration)
    port = processes.free_port()
    with tempfile.TemporaryDirectory(prefix="infergraph-resilience-") as scratch:
        workdir = Path(scratch)
        server = faults.fault_process(port, log_path=workdir / "faults.log")
        server.argv = pinned(server.argv, 1)
        with server:
            bench = Bench(args, workdir, f"http://127.0.0.1:{port}")
            for scenario in args.scenarios.split(","):
                getattr(bench, scenario.strip())()
    verdicts = summary(bench.rows)
    text = render(bench.rows, verdicts, bench.notes)
    base.with_suffix(".json").write_text(
        json.dumps(
            {**meta, "rows": bench.rows, "verdicts": verdicts, "notes": bench.notes}, indent=1
        )
    )
    base.with_suffix(".md").write_text(text)
    print(text)
    print(f"wrote {base}.json and .md")
    return 0


if __name__ == "__main__":
    sys.exit(main())
