"""Splitter: a seeded draw picks exactly the step the weights say; weight 0 never runs."""

from __future__ import annotations

import random
from collections import Counter

import pytest

from infergraph.router.engine import splitter
from infergraph.testing.fakes import FakeTransport, plan, reply, run, url

NODE = {
    "routerType": "Splitter",
    "steps": [
        {"serviceUrl": url("a"), "weight": 20},
        {"serviceUrl": url("b"), "weight": 0},
        {"serviceUrl": url("c"), "weight": 80},
    ],
}


class FixedDraw(random.Random):
    def __init__(self, value: float) -> None:
        super().__init__(0)
        self.value = value

    def random(self) -> float:
        return self.value


@pytest.mark.parametrize(
    ("draw", "chosen"),
    [(0.0, "a"), (0.1999, "a"), (0.2, "c"), (0.5, "c"), (0.999999, "c")],
)
def test_draw_maps_to_cumulative_weights(draw: float, chosen: str) -> None:
    node = plan({"root": NODE}).root
    assert splitter.choose(node, FixedDraw(draw)).service.url == url(chosen)  # type: ignore[union-attr]


def test_seeded_draws_follow_the_weights_exactly() -> None:
    node = plan({"root": NODE}).root
    rng = random.Random(42)
    picks = Counter(splitter.choose(node, rng).service.url for _ in range(1000))  # type: ignore[union-attr]
    expected_rng = random.Random(42)
    expected = Counter(url("a") if expected_rng.random() < 0.2 else url("c") for _ in range(1000))
    assert picks == expected
    assert url("b") not in picks


async def test_chosen_status_and_body_returned_unchanged(fake: FakeTransport) -> None:
    fake.script[url("c")] = reply(404, {"missing": True})
    result = await run(plan({"root": NODE}), fake, {"x": 1}, seed=1)  # Random(1).random() = 0.134
    assert fake.called() == ["a"]
    fake.calls.clear()
    result = await run(plan({"root": NODE}), fake, {"x": 1}, seed=2)  # Random(2).random() = 0.956
    assert fake.called() == ["c"]
    assert result.status == 404
