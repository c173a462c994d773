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

import itertools
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

    @property
    def exhausted(self) -> bool:
        """An open-ended schedule never runs out (a trace does: `TraceSchedule`)."""
        return False

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


MAX_SPEED = 1e9  # an infinite rate: the rest of the trace is due at once


class TraceSchedule:
    """Intended send times read from a trace (offsets from its first request), replayed once.

    `speed` compresses (>1) or stretches (<1) the trace's time. The live rate control stays
    a rate: `rate` is the trace's mean rate times the current speed, and `set_rate` turns the
    asked rate into a new speed from *now* on (the requests already due keep their times; the
    rest follow at the new pace). A resume picks up where the trace was, the gap before the
    next request kept at the current speed.
    """

    def __init__(self, offsets_ns: list[int], speed: float = 1.0) -> None:
        if not speed > 0 or math.isinf(speed):
            raise ValueError("trace speed must be > 0 and finite")
        if any(b < a for a, b in itertools.pairwise(offsets_ns)):
            raise ValueError("trace offsets must not go back in time")
        self._offsets = offsets_ns
        self._i = 0
        self._speed = speed
        span_ns = offsets_ns[-1] - offsets_ns[0] if offsets_ns else 0
        # the trace's own mean rate (speed 1); a one-request trace counts as one per second
        self._base_rate = (len(offsets_ns) - 1) * NS_PER_S / span_ns if span_ns else 1.0
        self._wall0 = 0  # wall time at which the trace stood at `_trace0`
        self._trace0 = 0
        self._paused = False
        self._held = False  # rate 0: nothing due until a rate > 0
        self._started = False

    @property
    def rate(self) -> float:
        return 0.0 if self._held else self._base_rate * self._speed

    @property
    def speed(self) -> float:
        return self._speed

    @property
    def paused(self) -> bool:
        return self._paused

    @property
    def exhausted(self) -> bool:
        """Every request of the trace has been handed out."""
        return self._i >= len(self._offsets)

    def _wall(self, trace_ns: int) -> int:
        return self._wall0 + round((trace_ns - self._trace0) / self._speed)

    def _trace_at(self, wall_ns: int) -> int:
        return self._trace0 + round((wall_ns - self._wall0) * self._speed)

    def start(self, now_ns: int) -> None:
        """The trace's first request is due at once."""
        self._started = True
        self._wall0 = now_ns
        self._trace0 = self._offsets[0] if self._offsets else 0

    def set_rate(self, now_ns: int, rate: float) -> None:
        """A new pace from now: `rate` / the trace's mean rate is the new speed.

        Rate 0 holds the trace where it is (as a pause does); an infinite rate sends the rest
        of the trace at once (as `--request-rate inf` does).
        """
        if rate < 0 or math.isnan(rate):
            raise ValueError("rate must be >= 0")
        running = self._started and not self._paused and not self._held
        if running:
            self._trace0 = self._trace_at(now_ns)
            self._wall0 = now_ns
        if rate == 0:
            self._held = True
            return
        self._speed = min(rate / self._base_rate, MAX_SPEED)
        if self._held:
            self._held = False
            if self._started and not self._paused:
                self._pick_up(now_ns)

    def pause(self) -> None:
        self._paused = True

    def resume(self, now_ns: int) -> None:
        if not self._paused:
            return
        self._paused = False
        if self._started and not self._held:
            self._pick_up(now_ns)

    def _pick_up(self, now_ns: int) -> None:
        """Go on from the last request handed out, the gap to the next kept (at the speed)."""
        i = self._i
        self._trace0 = self._offsets[i - 1] if 0 < i <= len(self._offsets) else self._trace0
        self._wall0 = now_ns

    def next_due_ns(self) -> int | None:
        """When the next request is due; None while paused or once the trace is done."""
        if self._paused or self._held or not self._started or self.exhausted:
            return None
        return self._wall(self._offsets[self._i])

    def take_due(self, now_ns: int, limit: int = 1_000_000) -> list[int]:
        """Intended send times of every trace request due by `now_ns` (in trace order)."""
        if self._paused or self._held or not self._started:
            return []
        due: list[int] = []
        offsets, i, n = self._offsets, self._i, len(self._offsets)
        while i < n and len(due) < limit:
            t = self._wall(offsets[i])
            if t > now_ns:
                break
            due.append(t)
            i += 1
        self._i = i
        return due
