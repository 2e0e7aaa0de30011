"""Issue 11's performance targets, judged from one ``make bench`` run's result files.

``evaluate`` takes the peers document (``bench/peers.py``) and the router document
(``bench/router_bench.py``) of the same run and gives one ``Verdict`` per target: what was
measured, on which core budget, and whether the target is met (``None``: not measured in these
files). ``table`` renders them as Markdown. Every figure is a ratio or a difference between two
measurements taken side by side in the same run.
"""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass
from typing import Any

SINGLE = "system on core 0, predictor on core 1, wrk unpinned"
PINNED_LOAD = "system on core 0; predictor and vegeta on core 1"
ROUTER_RUN = "router on core 0, predictor on core 1, wrk unpinned (router benchmark)"


@dataclass(frozen=True)
class Verdict:
    target: str
    wanted: str
    measured: str
    budget: str
    met: bool | None

    @property
    def mark(self) -> str:
        return {True: "met", False: "not met", None: "not measured"}[self.met]


def _rows(doc: dict[str, Any] | None) -> list[dict[str, Any]]:
    return list(doc.get("rows", [])) if doc else []


def find(rows: list[dict[str, Any]], **match: Any) -> dict[str, Any] | None:
    for row in rows:
        if all(row.get(k) == v for k, v in match.items()):
            return row
    return None


def rate_ratio(ours: dict[str, Any], theirs: dict[str, Any]) -> float:
    """Our CPU per request over theirs at one fixed rate: the median of the rounds' ratios when
    both ran in the same rounds (each pair taken back to back, so a slower spell of the machine
    weighs on both sides of a ratio), else the ratio of the two figures."""
    mine, other = ours.get("cpu_us_rounds"), theirs.get("cpu_us_rounds")
    if mine and other and len(mine) == len(other):
        # A round in which their side served nothing (no CPU spent) has no ratio.
        pairs = [a / b for a, b in zip(mine, other, strict=True) if b > 0]
        if pairs:
            return float(statistics.median(pairs))
    return float(ours["cpu_us"] / theirs["cpu_us"]) if theirs["cpu_us"] > 0 else math.inf


def _missing(target: str, wanted: str, budget: str) -> Verdict:
    return Verdict(target, wanted, "-", budget, None)


def tracing(router: dict[str, Any] | None) -> list[Verdict]:
    rows = _rows(router)
    off = find(rows, system="infergraph/fast", graph="sequence-1", connections=32)
    verdicts = []
    for label, system, limit in (
        ("tracing, every request sampled", "infergraph/fast tracing on", 0.25),
        ("tracing, one request in ten sampled", "infergraph/fast tracing 10%", 0.05),
    ):
        wanted = f"router + exporter CPU at most +{limit:.0%} over tracing off (1-step, c=32)"
        on = find(rows, system=system, graph="sequence-1", connections=32)
        if off is None or on is None:
            verdicts.append(_missing(label, wanted, ROUTER_RUN))
            continue
        total = on["router_us"] + on.get("exporter_us", 0.0)
        extra = total / off["router_us"] - 1
        measured = (
            f"+{extra:.0%} ({off['router_us']:.0f} -> {on['router_us']:.0f} router "
            f"+ {on.get('exporter_us', 0.0):.0f} exporter µs/req)"
        )
        verdicts.append(Verdict(label, wanted, measured, ROUTER_RUN, extra <= limit))
    return verdicts


def router_vs_predictor(router: dict[str, Any] | None) -> Verdict:
    label = "router CPU per request vs the predictor's"
    wanted = "at most 1.0x on a 1-step Sequence, metrics on"
    rows = [
        find(_rows(router), system="infergraph/fast", graph="sequence-1", connections=c)
        for c in (1, 32)
    ]
    if any(r is None for r in rows):
        return _missing(label, wanted, ROUTER_RUN)
    ratios = [r["ratio"] for r in rows if r is not None]
    measured = f"{ratios[0]:.2f}x at c=1, {ratios[1]:.2f}x at c=32"
    return Verdict(label, wanted, measured, ROUTER_RUN, max(ratios) <= 1.0)


def against_kserve(peers: dict[str, Any] | None) -> list[Verdict]:
    rows = _rows(peers)
    graphs = sorted({r["graph"] for r in rows if r["system"] == "kserve"})
    verdicts = []
    for connections, floor in ((32, 1.5), (1, 1.0)):
        label = f"throughput vs KServe's router, c={connections}"
        wanted = f"at least {floor}x on every graph" + (", p99 lower" if connections == 32 else "")
        parts, met = [], True
        for graph in graphs:
            ours = find(rows, system="infergraph", budget="single core", graph=graph,
                         connections=connections)  # fmt: skip
            theirs = find(rows, system="kserve", budget="single core", graph=graph,
                           connections=connections)  # fmt: skip
            if ours is None or theirs is None:
                continue
            ratio = ours["rps"] / theirs["rps"]
            p99 = ours["p99_ms"] < theirs["p99_ms"]
            met = met and ratio >= floor and (p99 or connections != 32)
            parts.append(f"{graph} {ratio:.2f}x" + ("" if p99 else " (p99 higher)"))
        if not parts:
            verdicts.append(_missing(label, wanted, SINGLE))
            continue
        verdicts.append(Verdict(label, wanted, ", ".join(parts), SINGLE, met))
    label = "CPU per request at fixed rates vs KServe's router"
    wanted = "at most KServe's at 1,000, 2,000 and 4,000 req/s on every graph"
    rates = list(peers.get("rates", [])) if peers else []
    cells, met = [], True
    for ours in (r for r in rates if r["system"] == "infergraph"):
        theirs = find(rates, system="kserve", graph=ours["graph"], rate=ours["rate"])
        if theirs is None:
            continue
        ok, their_ok = ours.get("success", 1.0), theirs.get("success", 1.0)
        cell = f"{ours['graph']}@{ours['rate']} "
        if ok < 1.0 or their_ok < 1.0:
            # A rate a system cannot serve: the one that served all of it is ahead.
            met = met and ok >= their_ok
            cells.append(cell + f"answered {ok:.0%} vs {their_ok:.0%}")
            continue
        ratio = rate_ratio(ours, theirs)
        met = met and ratio <= 1.0
        cells.append(cell + f"{ratio:.2f}x")
    if cells:
        verdicts.append(Verdict(label, wanted, ", ".join(cells), PINNED_LOAD, met))
    else:
        verdicts.append(_missing(label, wanted, PINNED_LOAD))
    return verdicts


def many_graphs(peers: dict[str, Any] | None) -> Verdict:
    label = "10,000 graphs in one process"
    wanted = "start-up under 10 s, p99 within 1 ms of a one-graph router (c=1)"
    figures = (peers or {}).get("scale", {}).get("many graphs", {})
    one = figures.get("one graph")
    many = figures.get("10000 graphs")
    if one is None or many is None:
        return _missing(label, wanted, "router on core 0, wrk unpinned")
    gap = many["p99_ms"] - one["p99_ms"]
    measured = (
        f"start-up {many['startup_s']} s, RSS {many['rss_mib']} MiB (one graph: "
        f"{one['rss_mib']} MiB), p99 {many['p99_ms']:.2f} vs {one['p99_ms']:.2f} ms"
    )
    met = many["startup_s"] < 10 and gap <= 1.0
    return Verdict(label, wanted, measured, "router on core 0, wrk unpinned", met)


def large_bodies(peers: dict[str, Any] | None) -> Verdict:
    label = "copies of a 10 MiB body in flight"
    wanted = "at most 2, through a 1-step and a 3-step Sequence"
    scale = (peers or {}).get("scale", {})
    found = {
        graph: scale[f"10 MiB through {graph}"]["copies_of_the_body_per_in_flight_request"]
        for graph in ("sequence-1", "sequence-3")
        if f"10 MiB through {graph}" in scale
    }
    if len(found) < 2:
        return _missing(label, wanted, "router unpinned, 4 in flight")
    measured = ", ".join(f"{g}: {c}" for g, c in found.items()) + " (peak RSS growth)"
    return Verdict(
        label, wanted, measured, "router unpinned, 4 in flight", max(found.values()) <= 2
    )


def grpc_step(router: dict[str, Any] | None) -> Verdict:
    label = "v2-gRPC step vs v2 REST step, JSON request"
    wanted = "router CPU per request no higher over gRPC"
    rows = _rows(router)
    parts, met = [], True
    for connections in (1, 32):
        rest = find(rows, system="infergraph/fast", graph="triton-v2", connections=connections)
        grpc = find(rows, system="infergraph/fast", graph="triton-grpc", connections=connections)
        if rest is None or grpc is None:
            return _missing(label, wanted, ROUTER_RUN + ", real Triton on core 1")
        met = met and grpc["router_us"] <= rest["router_us"]
        parts.append(f"c={connections}: {grpc['router_us']:.0f} vs {rest['router_us']:.0f} µs")
    return Verdict(label, wanted, ", ".join(parts), ROUTER_RUN + ", real Triton on core 1", met)


def server_sent_events(router: dict[str, Any] | None) -> Verdict:
    label = "server-sent events through a Switch to an openai step"
    wanted = "first event within 1 ms of the direct call, gaps unchanged"
    sse = (router or {}).get("sse") or {}
    if "first_event_router_minus_direct_ms" not in sse:
        return _missing(label, wanted, "router on core 0, predictor on core 1")
    extra = sse["first_event_router_minus_direct_ms"]
    gaps = (sse["router"]["gap_ms_p50"], sse["direct"]["gap_ms_p50"])
    floor = sse.get("wake_floor_ms", {})
    measured = f"first event +{extra:.2f} ms, gap p50 {gaps[0]:.2f} vs {gaps[1]:.2f} ms"
    if floor:
        measured += (
            "; a direct call's first byte after 0/50/200 ms idle: "
            + "/".join(f"{v:.1f}" for v in floor.values())
            + " ms"
        )
    met = extra <= 1.0 and abs(gaps[0] - gaps[1]) <= 0.05 * gaps[1]
    return Verdict(label, wanted, measured, "router on core 0, predictor on core 1", met)


def evaluate(peers: dict[str, Any] | None, router: dict[str, Any] | None) -> list[Verdict]:
    return [
        *tracing(router),
        router_vs_predictor(router),
        *against_kserve(peers),
        many_graphs(peers),
        large_bodies(peers),
        grpc_step(router),
        server_sent_events(router),
    ]


def table(verdicts: list[Verdict]) -> str:
    lines = [
        "| target | wanted | measured | core budget | |",
        "|---|---|---|---|---|",
    ]
    for v in verdicts:
        lines.append(f"| {v.target} | {v.wanted} | {v.measured} | {v.budget} | {v.mark} |")
    return "\n".join(lines)
