"""A loaded graph's running state: requests and retries in flight, each step's bulkhead count,
and the health of each step's replicas (outlier detection).

The plan is immutable; this is the one mutable thing a plan carries, made fresh with each load
(a hot reload starts from healthy replicas). Every decision takes the time as an argument
(``now``, from the context's clock) and draws from the context's RNG, so tests are exact.

Replicas are chosen by the power of two choices: two distinct replicas drawn at random among
those not ejected (and, for a retry, not yet tried), the one with fewer outstanding requests
wins. A replica whose consecutive failures reach a threshold is ejected for
``baseEjectionTime`` times its number of ejections in a row (capped by ``maxEjectionTime``),
unless ``maxEjectionPercent`` already has its share out: then it stays in rotation, marked
unhealthy for as long. It returns when its time is up; each ejection period it then stays
healthy forgives one past ejection.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from infergraph.router.engine.policy import BudgetPolicy, Failure, OutlierPolicy, counts_for_outlier
from infergraph.router.engine.timers import Timers


@dataclass(slots=True)
class Replica:
    """One endpoint of a step and what outlier detection knows of it."""

    index: int
    outstanding: int = 0
    consecutive_5xx: int = 0
    consecutive_gateway: int = 0
    ejections: int = 0  # in a row, forgiven one per healthy ejection period
    out_until: float | None = None  # ejected or unhealthy until then
    ejected: bool = False  # out of rotation (else only marked unhealthy: the cap was reached)
    back_since: float = 0.0


@dataclass(frozen=True, slots=True)
class Change:
    """What a recorded outcome did to a replica: ``ejected`` or ``unhealthy`` (over the cap)."""

    kind: str
    replica: int
    seconds: float


class ReplicaSet:
    """The replicas of one step (``endpoints``) under one outlier policy."""

    def __init__(self, count: int, policy: OutlierPolicy) -> None:
        self.replicas = tuple(Replica(i) for i in range(count))
        self.policy = policy
        self.out = 0  # replicas ejected or marked unhealthy now

    def _settle(self, now: float) -> list[int]:
        """Return the replicas whose time is up; the indices returned."""
        if not self.out:
            return []
        back = []
        for replica in self.replicas:
            if replica.out_until is not None and now >= replica.out_until:
                replica.out_until = None
                replica.ejected = False
                replica.back_since = now
                replica.consecutive_5xx = replica.consecutive_gateway = 0
                back.append(replica.index)
                self.out -= 1
        return back

    def ejected_count(self) -> int:
        return sum(1 for r in self.replicas if r.ejected)

    def healthy(self, now: float) -> bool:
        """Whether some replica is neither ejected nor marked unhealthy."""
        if not self.out:
            return True
        self._settle(now)
        return self.out < len(self.replicas)

    def pick(
        self, rng: random.Random, now: float, tried: Sequence[int] = ()
    ) -> tuple[int, list[int]]:
        """The replica for the next attempt, and the replicas that just came back."""
        back = self._settle(now)
        if not self.out and not tried:  # the common case: every replica in, a first attempt
            return self._two_choices(rng, self.replicas).index, back
        pool = [r for r in self.replicas if not r.ejected]
        fresh = [r for r in pool if r.index not in tried] or pool
        healthy = [r for r in fresh if r.out_until is None] or fresh
        return self._two_choices(rng, healthy).index, back

    def any(self, rng: random.Random) -> int:
        """``pick`` for a first attempt while every replica is in (``out`` is 0): no time
        to settle, no tried replicas to leave out. The replica is counted as outstanding."""
        replica = self._two_choices(rng, self.replicas)
        replica.outstanding += 1
        return replica.index

    @staticmethod
    def _two_choices(rng: random.Random, among: Sequence[Replica]) -> Replica:
        """Of two distinct replicas drawn uniformly (as ``rng.sample(among, 2)``, with fewer
        draws: of two, one draw orders them), the one with fewer outstanding requests (the
        first drawn on a tie)."""
        count = len(among)
        if count == 1:
            return among[0]
        if count == 2:
            i = 0 if rng.random() < 0.5 else 1
            j = 1 - i
        else:
            i = int(rng.random() * count)
            j = int(rng.random() * (count - 1))
            j += j >= i
        first, second = among[i], among[j]
        return second if second.outstanding < first.outstanding else first

    def answered(self, index: int, clock: Callable[[], float]) -> None:
        """An attempt that ``index`` answered with a status below 500 (``record``'s common
        case, quicker): no longer outstanding, its failures in a row forgotten, and healthy
        again if it was only marked unhealthy (at ``clock()``)."""
        replica = self.replicas[index]
        replica.outstanding -= 1
        replica.consecutive_5xx = replica.consecutive_gateway = 0
        if replica.out_until is not None and not replica.ejected:
            replica.out_until = None
            replica.back_since = clock()
            self.out -= 1

    def record(
        self, index: int, now: float, status: int | None, failure: Failure | None
    ) -> Change | None:
        """Count an attempt's outcome; the ejection (or unhealthy mark) it caused, if any."""
        replica = self.replicas[index]
        is_5xx, is_gateway = counts_for_outlier(status, failure)
        if failure is Failure.OVERLOADED:
            return None
        if not is_5xx:
            replica.consecutive_5xx = replica.consecutive_gateway = 0
            if replica.out_until is not None and not replica.ejected:
                replica.out_until = None  # an unhealthy replica answered: healthy again
                replica.back_since = now
                self.out -= 1
            return None
        replica.consecutive_5xx += 1
        replica.consecutive_gateway = replica.consecutive_gateway + 1 if is_gateway else 0
        if replica.out_until is not None:
            return None
        policy = self.policy
        tripped = (
            policy.consecutive_5xx and replica.consecutive_5xx >= policy.consecutive_5xx
        ) or (
            policy.consecutive_gateway_failure
            and replica.consecutive_gateway >= policy.consecutive_gateway_failure
        )
        if not tripped:
            return None
        period = policy.base_ejection_time_ms / 1000.0
        if replica.ejections and period > 0:
            forgiven = int((now - replica.back_since) // period)
            replica.ejections = max(0, replica.ejections - forgiven)
        replica.ejections += 1
        seconds = policy.ejection_seconds(replica.ejections)
        replica.out_until = now + seconds
        self.out += 1
        replica.ejected = self.ejected_count() < policy.max_ejected(len(self.replicas))
        return Change("ejected" if replica.ejected else "unhealthy", index, seconds)


@dataclass(slots=True)
class GraphRuntime:
    """The mutable state of one loaded graph."""

    budget: BudgetPolicy = field(default_factory=BudgetPolicy)
    active: int = 0  # graph requests in flight
    retries_in_flight: int = 0
    in_flight: dict[str, int] = field(default_factory=dict)  # per step label, for bulkheads
    replicas: dict[str, ReplicaSet] = field(default_factory=dict)  # per step label
    timers: Timers = field(default_factory=Timers)  # the hedges' (one loop timer for all)

    def retry_allowed(self) -> bool:
        return self.budget.allows(self.retries_in_flight, self.active)
