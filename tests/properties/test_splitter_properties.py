"""Property: the Splitter picks each step with probability weight/100.

Three checks, all exact for a given seed (the draws come from an injected ``random.Random``):

- the mapping from a draw to a step: a draw ``u`` in [0, 1) picks the step whose cumulative
  weight interval holds ``100 * u``, so a uniform draw picks step i with probability w_i/100,
  and a step of weight 0 is never picked;
- the frequencies over 4,000 seeded draws: a chi-square goodness-of-fit test over the steps of
  positive weight, at significance 1e-6 (Wilson-Hilferty critical value), and each step's count
  within 5 standard deviations of its binomial mean (a two-sided chance of 6e-7 per step);
- the same through ``run_graph`` and the fake transport: which models were called.

With ``derandomize=True`` the weights and seeds are the same on every run, so these pass or
fail deterministically (a tolerance of 1e-6 makes a failure mean a bug, not bad luck).
"""

from __future__ import annotations

import asyncio
import math
import random
from collections import Counter
from itertools import pairwise
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from infergraph.router.engine import splitter
from infergraph.router.engine.context import ExecutionContext
from infergraph.router.engine.plan import NodePlan
from infergraph.router.engine.steps import run_graph
from infergraph.testing.fakes import FakeTransport, plan, url

PROPERTIES = settings(derandomize=True, database=None, deadline=None)
DRAWS = 4000
Z_STEP = 5.0  # per-step binomial bound, in standard deviations
Z_CHI = 4.753  # the standard normal quantile for 1e-6, for the chi-square critical value


@st.composite
def weights(draw: st.DrawFn) -> list[int]:
    """Integers summing to 100, zeros allowed, one to six steps."""
    steps = draw(st.integers(1, 6))
    cuts = sorted(draw(st.lists(st.integers(0, 100), min_size=steps - 1, max_size=steps - 1)))
    bounds = [0, *cuts, 100]
    return [high - low for low, high in pairwise(bounds)]


def splitter_graph(split: list[int]) -> dict[str, Any]:
    steps = [{"serviceUrl": url(f"m{i}"), "weight": w} for i, w in enumerate(split)]
    return {"root": {"routerType": "Splitter", "steps": steps}}


def node(split: list[int]) -> NodePlan:
    return plan(splitter_graph(split)).root


class Fixed(random.Random):
    """A Random whose every draw is ``value``."""

    def __init__(self, value: float) -> None:
        super().__init__(0)
        self.value = value

    def random(self) -> float:
        return self.value


def chi_square_critical(df: int) -> float:
    """Wilson-Hilferty: the chi-square value exceeded with probability 1e-6 (slightly above
    the exact value for df = 1, so conservative)."""
    term = 2 / (9 * df)
    return df * (1 - term + Z_CHI * math.sqrt(term)) ** 3


def assert_follows(split: list[int], counts: Counter[int]) -> None:
    assert sum(counts.values()) == DRAWS
    for index, weight in enumerate(split):
        if weight == 0:
            assert counts[index] == 0, f"step {index} has weight 0 but was picked"
    positive = [(i, w) for i, w in enumerate(split) if w > 0]
    for index, weight in positive:
        p = weight / 100
        mean, spread = DRAWS * p, math.sqrt(DRAWS * p * (1 - p))
        assert abs(counts[index] - mean) <= Z_STEP * spread + 1e-9, (split, counts)
    if len(positive) > 1:
        chi2 = sum((counts[i] - DRAWS * w / 100) ** 2 / (DRAWS * w / 100) for i, w in positive)
        assert chi2 <= chi_square_critical(len(positive) - 1), (split, counts, chi2)


@settings(PROPERTIES, max_examples=300)
@given(weights(), st.floats(0, 1, exclude_max=True))
def test_a_draw_picks_the_step_whose_interval_holds_it(split: list[int], u: float) -> None:
    chosen = splitter.choose(node(split), Fixed(u))
    cumulative = [sum(split[: i + 1]) for i in range(len(split))]
    low = cumulative[chosen.index] - split[chosen.index]
    assert split[chosen.index] > 0
    assert low <= 100 * u < cumulative[chosen.index]


@settings(PROPERTIES, max_examples=40)
@given(weights(), st.integers(0, 2**32 - 1))
def test_choice_frequencies_match_the_weights(split: list[int], seed: int) -> None:
    graph = node(split)
    rng = random.Random(seed)
    counts = Counter(splitter.choose(graph, rng).index for _ in range(DRAWS))
    assert_follows(split, counts)
    again = random.Random(seed)  # the same seed, the same choices
    assert Counter(splitter.choose(graph, again).index for _ in range(DRAWS)) == counts


@settings(PROPERTIES, max_examples=5)
@given(weights(), st.integers(0, 2**32 - 1))
def test_requests_reach_the_models_as_the_weights_say(split: list[int], seed: int) -> None:
    graph = plan(splitter_graph(split))
    fake = FakeTransport()

    async def requests() -> None:
        ctx = ExecutionContext(transport=fake, rng=random.Random(seed))
        for _ in range(DRAWS):
            await run_graph(graph, b"{}", ctx)

    asyncio.run(requests())
    called = Counter(int(name[1:]) for name in fake.called())
    assert_follows(split, called)
