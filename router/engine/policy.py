"""Resilience policies, compiled from a graph's fields: which failures a step retries, how long
it backs off, when it hedges, where it falls back, and what outlier detection ejects.

Everything here is plain data and pure functions of it: an attempt's outcome is classified into
a ``Failure`` once (``failure_of``), and the policies decide on that. The running state (replica
health, retries in flight) is ``engine.runtime``'s; the attempt loop is ``engine.attempts``.

``retryOn`` takes Envoy's words, with Envoy's meaning:

==========================  ======================================================
``5xx``                     a 5xx status, or no answer at all: connect failure,
                            reset, per-try timeout
``gateway-error``           502, 503 or 504, or no answer at all
``reset``                   the connection broke, or the per-try timeout fired
``connect-failure``         no connection could be made
``retriable-status-codes``  a status in ``retriableStatusCodes``
``timeout``                 the per-try timeout fired
==========================  ======================================================
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import get_args

from infergraph.router.engine.errors import (
    GraphRequestError,
    InvalidStepUrl,
    UpstreamConnectFailed,
    UpstreamError,
    UpstreamOverloaded,
    UpstreamTimeout,
)
from infergraph.router.engine.spec import RetryOn

RETRY_ON: tuple[str, ...] = get_args(RetryOn)  # the spec's schema refuses any other word
GATEWAY_STATUSES = frozenset({502, 503, 504})


class Failure(enum.Enum):
    """How an attempt failed, in the terms retry conditions and outlier detection use."""

    STATUS = "status"  # the server answered with an error status
    CONNECT = "connect-failure"
    RESET = "reset"
    TIMEOUT = "timeout"  # the per-try timeout fired
    OVERLOADED = "overloaded"  # no connection to the server became free (local, 503)


def failure_of(error: GraphRequestError) -> Failure | None:
    """The kind of an attempt's exception; None for errors no retry can mend."""
    if isinstance(error, UpstreamTimeout):
        return Failure.TIMEOUT
    if isinstance(error, UpstreamConnectFailed):
        return Failure.CONNECT
    if isinstance(error, UpstreamOverloaded):
        return Failure.OVERLOADED
    if isinstance(error, UpstreamError) and not isinstance(error, InvalidStepUrl):
        return Failure.RESET
    return None


# Which words retry which kinds of failure without a status (a status is checked by number).
_NO_ANSWER: dict[Failure, frozenset[str]] = {
    Failure.CONNECT: frozenset({"5xx", "gateway-error", "connect-failure"}),
    Failure.RESET: frozenset({"5xx", "gateway-error", "reset"}),
    Failure.TIMEOUT: frozenset({"5xx", "gateway-error", "reset", "timeout"}),
    Failure.OVERLOADED: frozenset({"5xx", "gateway-error"}),
}


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """How many times a step is tried again, on what, after how long (milliseconds)."""

    max_retries: int = 3
    initial_delay_ms: int = 100
    max_delay_ms: int = 300_000
    retry_on: frozenset[str] = frozenset({"5xx"})
    retriable_status_codes: frozenset[int] = frozenset()

    def retries_status(self, status: int) -> bool:
        words = self.retry_on
        return (
            ("5xx" in words and 500 <= status <= 599)
            or ("gateway-error" in words and status in GATEWAY_STATUSES)
            or ("retriable-status-codes" in words and status in self.retriable_status_codes)
        )

    def retries(self, failure: Failure) -> bool:
        return not self.retry_on.isdisjoint(_NO_ANSWER[failure])

    def backoff(self, retry: int, draw: float) -> float:
        """Seconds before retry number ``retry`` (1 for the first), full jitter: a uniform
        draw (``draw`` in [0, 1)) below ``initialDelayMs * 2**(retry-1)``, capped at
        ``maxDelayMs``."""
        ceiling: int = min(self.max_delay_ms, self.initial_delay_ms * 2 ** (retry - 1))
        return draw * ceiling / 1000.0


NO_RETRY = RetryPolicy(max_retries=0)


@dataclass(frozen=True, slots=True)
class OutlierPolicy:
    """When a replica is ejected (0 turns a counter off) and for how long (milliseconds)."""

    consecutive_5xx: int = 5
    consecutive_gateway_failure: int = 0
    base_ejection_time_ms: int = 30_000
    max_ejection_time_ms: int = 300_000
    max_ejection_percent: int = 10

    def ejection_seconds(self, ejections: int) -> float:
        """How long the ``ejections``-th ejection in a row lasts."""
        return min(self.base_ejection_time_ms * ejections, self.max_ejection_time_ms) / 1000.0

    def max_ejected(self, replicas: int) -> int:
        """Replicas that may be out at once: the percentage, at least one, never all."""
        if self.max_ejection_percent == 0:
            return 0
        return min(replicas - 1, max(1, replicas * self.max_ejection_percent // 100))


@dataclass(frozen=True, slots=True)
class BudgetPolicy:
    """Retries and hedges in flight at most ``percent`` of the graph's requests in flight,
    and never fewer than ``min_retry_concurrency`` allowed."""

    percent: float = 20.0
    min_retry_concurrency: int = 3

    def allows(self, retries_in_flight: int, active: int) -> bool:
        limit = max(self.min_retry_concurrency, int(self.percent * active / 100))
        return retries_in_flight < limit


def counts_for_outlier(status: int | None, failure: Failure | None) -> tuple[bool, bool]:
    """Whether an outcome is a 5xx and a gateway failure for outlier detection (a local
    connection-pool overflow is neither: it says nothing about the replica)."""
    if failure is Failure.OVERLOADED:
        return False, False
    if failure is not None and failure is not Failure.STATUS:
        return True, True
    assert status is not None
    return status >= 500, status in GATEWAY_STATUSES
