"""The benchmark's verdicts: each target is judged met or not from the figures, and is said to
be unmeasured when its figures are missing."""

from __future__ import annotations

from typing import Any

import pytest

from infergraph.testing.targets import evaluate, rate_ratio, table


def router_doc(off: float, traced: float, exporter: float, ratio: float) -> dict[str, Any]:
    base = {"graph": "sequence-1", "connections": 32, "rps": 1.0, "p99_ms": 1.0}
    rows = [
        {**base, "system": "infergraph/fast", "router_us": off, "ratio": ratio},
        {**base, "connections": 1, "system": "infergraph/fast", "router_us": off, "ratio": ratio},
        {**base, "system": "infergraph/fast tracing on", "router_us": traced,
         "exporter_us": exporter, "ratio": 2.0},
    ]  # fmt: skip
    return {"rows": rows}


def peers_doc(ours_rps: float, their_rps: float) -> dict[str, Any]:
    rows = []
    for system, rps, p99 in (("infergraph", ours_rps, 2.0), ("kserve", their_rps, 3.0)):
        for connections in (1, 32):
            rows.append(
                {"system": system, "budget": "single core", "graph": "switch",
                 "connections": connections, "rps": rps, "p99_ms": p99, "cpu_us": 50.0}
            )  # fmt: skip
    return {"rows": rows, "rates": [], "scale": {}}


def verdicts(peers: Any, router: Any) -> dict[str, bool | None]:
    return {v.target: v.met for v in evaluate(peers, router)}


def test_targets_are_met_or_not_from_the_figures() -> None:
    good = verdicts(peers_doc(3000, 1000), router_doc(off=100, traced=110, exporter=10, ratio=0.9))
    assert good["tracing, every request sampled"] is True  # +20%
    assert good["router CPU per request vs the predictor's"] is True
    assert good["throughput vs KServe's router, c=32"] is True
    bad = verdicts(peers_doc(1400, 1000), router_doc(off=100, traced=120, exporter=10, ratio=1.1))
    assert bad["tracing, every request sampled"] is False  # +30%
    assert bad["router CPU per request vs the predictor's"] is False
    assert bad["throughput vs KServe's router, c=32"] is False  # 1.4x
    assert bad["throughput vs KServe's router, c=1"] is True


def test_missing_figures_are_not_measured_never_met() -> None:
    empty = verdicts(None, None)
    assert set(empty.values()) == {None}
    assert "not measured" in table(evaluate(None, None))


def test_fixed_rates_compare_round_by_round() -> None:
    # The machine slows in round 2 for both systems: each round's pair says "cheaper", and so
    # does the verdict, though our median round (180) is above theirs (150).
    peers = peers_doc(3000, 1000)
    label = "CPU per request at fixed rates vs KServe's router"
    for ours, theirs, met in (
        ([100.0, 180.0, 190.0], [110.0, 200.0, 150.0], True),  # ratios 0.91, 0.90, 1.27
        ([100.0, 180.0, 190.0], [90.0, 200.0, 150.0], False),  # ratios 1.11, 0.90, 1.27
    ):
        peers["rates"] = [
            {"system": system, "graph": "switch", "rate": 2000, "cpu_us": sorted(rounds)[1],
             "cpu_us_rounds": rounds, "success": 1.0}
            for system, rounds in (("infergraph", ours), ("kserve", theirs))
        ]  # fmt: skip
        assert verdicts(peers, None)[label] is met


def test_a_round_their_side_could_not_serve_has_no_ratio() -> None:
    ours = {"cpu_us": 150.0, "cpu_us_rounds": [150.0, 140.0, 25.0]}
    theirs = {"cpu_us": 160.0, "cpu_us_rounds": [160.0, 175.0, 0.0]}
    assert rate_ratio(ours, theirs) == pytest.approx((150 / 160 + 140 / 175) / 2)
