"""Open-loop arrival schedule: a pure function of the clock it is given.

Gaps are gamma-distributed with shape = burstiness and mean 1/rate (burstiness 1 is Poisson),
like `vllm bench serve`. The schedule never looks at a clock itself: callers pass `now_ns`, so
tests drive it with a fake clock and no sleeps.

A rate change, a pause or a resume redraws the next gap from *now*: the schedule goes on at
the new rate with no burst of catch-up requests. Requests that fell due while the caller was
late are still returned (that is the open-loop promise) with their intended times, so the
lateness shows up as send slip instead of being hidden.
"""

from __future__ import annotations

import math
import random

NS_PER_S = 1_000_000_000


class ArrivalSchedule:
    """Intended send times for an open-loop load at a rate that may change at any moment."""

    def __init__(self, rate: float, burstiness: float = 1.0, seed: int = 0) -> None:
        if burstiness <= 0:
            raise ValueError("burstiness must be > 0")
        self._rng = random.Random(seed)
        self._burstiness = burstiness
        self._rate = 0.0
        self._next_ns: int | None = None
        self._paused = False
        self._started = False
        self._set(rate)

    @property
    def rate(self) -> float:
        return self._rate

    @property
    def paused(self) -> bool:
        return self._paused

    def _set(self, rate: float) -> None:
        if rate < 0 or math.isnan(rate):
            raise ValueError("rate must be >= 0")
        self._rate = rate

    def gap_ns(self) -> int:
        """One inter-arrival gap at the current rate (0 for an infinite rate)."""
        if math.isinf(self._rate):
            return 0
        mean_s = 1.0 / self._rate
        if self._burstiness == 1.0:
            gap_s = self._rng.expovariate(1.0 / mean_s)
        else:
            gap_s = self._rng.gammavariate(self._burstiness, mean_s / self._burstiness)
        return round(gap_s * NS_PER_S)

    def start(self, now_ns: int) -> None:
        """The first request is due at once, as in `vllm bench serve`."""
        self._started = True
        self._next_ns = now_ns if self._rate > 0 and not self._paused else None

    def set_rate(self, now_ns: int, rate: float) -> None:
        self._set(rate)
        if self._started and not self._paused:
            self._next_ns = now_ns + self.gap_ns() if rate > 0 else None

    def pause(self) -> None:
        self._paused = True
        self._next_ns = None

    def resume(self, now_ns: int) -> None:
        if not self._paused:
            return
        self._paused = False
        if self._started and self._rate > 0:
            self._next_ns = now_ns + self.gap_ns()

    def next_due_ns(self) -> int | None:
        """When the next request is due, or None while paused or at rate 0."""
        return self._next_ns

    def take_due(self, now_ns: int, limit: int = 1_000_000) -> list[int]:
        """Intended send times of every request due by `now_ns` (oldest first)."""
        due: list[int] = []
        nxt = self._next_ns
        while nxt is not None and nxt <= now_ns and len(due) < limit:
            due.append(nxt)
            nxt = nxt + self.gap_ns()
        self._next_ns = nxt
        return due
