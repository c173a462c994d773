"""A simulated K-slot FIFO server on a fake clock, observed the way the knee runner sees one.

Why: the knee search's claims (a sustained knee within a few % of queueing theory, a bounded
search time) depend on queueing dynamics (filling transients, clustered slow requests) that a
scripted step table cannot show, and a real server takes minutes per search. This world runs
a real M/D/K (or M/G/K) queue event by event in fake time, so a whole search takes a second
and hundreds of seeds can be tried. `tests/test_knee_world.py` uses it; the real server
(`tests/support/scripted_server.py`) is what `benchmarks/knee_sustained.py` measures.

What the runner would see, reproduced: requests belong to the step (collector segment) in
which they were scheduled; a request's TTFT is known when its first token arrives; one still
waiting past a limit counts as a sample beyond it (censored); in flight and sent are counted
over all steps.
"""

from __future__ import annotations

import heapq
import math
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np

from llmtop.knee.search import (
    Done,
    Drain,
    KneePlan,
    KneeResult,
    KneeSearch,
    LimitObs,
    SetLoad,
    StepObs,
)


@dataclass(frozen=True)
class WorldLimit:
    metric: str  # "ttft" or "e2el"
    q: float  # 0.99
    threshold_ms: float

    @property
    def text(self) -> str:
        return f"{self.metric}_p{self.q * 100:g}<={self.threshold_ms:g}ms"


@dataclass
class _Seg:
    start: float
    arrival: list[float] = field(default_factory=list)
    first: list[float] = field(default_factory=list)
    done: list[float] = field(default_factory=list)


class QueueWorld:
    """K slots, FIFO queue, Poisson arrivals (open loop) or C in flight (closed loop)."""

    def __init__(
        self,
        slots: int,
        ttft_s: float,
        service_s: float | Callable[[random.Random], float],
        limits: Sequence[WorldLimit],
        seed: int = 0,
        closed_loop: bool = False,
    ) -> None:
        self.k = slots
        self.ttft_s = ttft_s
        self.service = service_s
        self.limits = tuple(limits)
        self.rng = random.Random(seed)
        self.closed = closed_loop
        self.t = 0.0
        self.rate = 0.0
        self.conc = 0
        self.paused = False
        self.free = [0.0] * slots
        self.next_arrival = math.inf
        self.segs: list[_Seg] = [_Seg(0.0)]
        self.judged: int | None = None
        self.sent = 0
        self.done_times: list[float] = []  # heap of completion times of requests in flight
        self.finished = 0

    # -- control --------------------------------------------------------------------------
    def _service(self) -> float:
        return self.service(self.rng) if callable(self.service) else self.service

    def new_segment(self, measure: bool) -> None:
        self.segs.append(_Seg(self.t))
        if measure:
            self.judged = len(self.segs) - 1

    def set_load(self, value: float) -> None:
        if self.closed:
            more = int(value) - self.conc
            self.conc = int(value)
            if not self.paused:
                for _ in range(max(more, 0)):
                    self._arrive(self.t)
        else:
            self.rate = value
            self.next_arrival = self.t + self.rng.expovariate(value) if value > 0 else math.inf

    def pause(self) -> None:
        self.paused = True
        self.next_arrival = math.inf

    def resume(self) -> None:
        if not self.paused:
            return
        self.paused = False
        if self.closed:
            for _ in range(max(self.conc - len(self.done_times), 0)):
                self._arrive(self.t)
        else:
            self.next_arrival = self.t + self.rng.expovariate(self.rate)

    # -- time -----------------------------------------------------------------------------
    def _arrive(self, a: float) -> None:
        f = heapq.heappop(self.free)
        start = max(a, f)
        end = start + self._service()
        heapq.heappush(self.free, end)
        seg = self.segs[-1]
        seg.arrival.append(a)
        seg.first.append(start + self.ttft_s)
        seg.done.append(end)
        heapq.heappush(self.done_times, end)
        self.sent += 1

    def advance(self, t_new: float) -> None:
        if self.closed:
            while self.done_times and self.done_times[0] <= t_new:
                d = heapq.heappop(self.done_times)
                self.finished += 1
                if not self.paused and len(self.done_times) < self.conc:
                    self.t = d
                    self._arrive(d)
        else:
            while self.next_arrival <= t_new:
                self.t = self.next_arrival
                self._arrive(self.next_arrival)
                self.next_arrival += self.rng.expovariate(self.rate)
            while self.done_times and self.done_times[0] <= t_new:
                heapq.heappop(self.done_times)
                self.finished += 1
        self.t = t_new

    # -- what the runner sees -------------------------------------------------------------
    def observe(self) -> StepObs:
        in_flight = len(self.done_times)
        if self.judged is None:
            return StepObs(in_flight=in_flight, sent=self.sent)
        seg = self.segs[self.judged]
        t = self.t
        a = np.asarray(seg.arrival)
        first = np.asarray(seg.first)
        done = np.asarray(seg.done)
        fin = done <= t
        completed = int(fin.sum())
        e2e = (done[fin] - a[fin]) * 1000 if completed else np.empty(0)
        lims = []
        for lim in self.limits:
            ev = first if lim.metric == "ttft" else done
            known = ev <= t
            vals = (ev[known] - a[known]) * 1000
            waiting = (t - a[~known]) * 1000
            cens = int((waiting > lim.threshold_ms).sum())
            n = len(vals) + cens
            exceed = int((vals > lim.threshold_ms).sum()) + cens
            if n:
                rank = math.ceil(lim.q * n)
                srt = np.sort(vals)
                value = float(srt[rank - 1]) if rank <= len(srt) else float(waiting.max())
            else:
                value = math.nan
            lims.append(
                LimitObs(
                    lim.text,
                    "quantile",
                    lim.threshold_ms,
                    value,
                    n,
                    exceed,
                    lim.q,
                    stddev=float(vals.std()) if len(vals) > 1 else math.nan,
                    mean=float(vals.mean()) if len(vals) else math.nan,
                    censored=cens,
                )
            )
        span = max(t - seg.start, 1e-9)
        return StepObs(
            completed=completed,
            failed=0,
            limits=tuple(lims),
            e2e_p99_s=_q(e2e, 0.99) / 1000,
            e2e_max_s=float(e2e.max()) / 1000 if completed else math.nan,
            e2e_p50_s=_q(e2e, 0.5) / 1000,
            send_slip_p99_ms=0.1,
            slot_wait_p99_ms=0.0,
            in_flight=in_flight,
            sent=self.sent,
            request_throughput=completed / span,
            output_throughput=math.nan,
            goodput=math.nan,
        )


def _q(values: np.ndarray, q: float) -> float:
    if not len(values):
        return math.nan
    srt = np.sort(values)
    return float(srt[math.ceil(q * len(srt)) - 1])


def run_search(
    world: QueueWorld, plan: KneePlan, limit_s: float = 7200.0, tick_s: float = 0.25
) -> tuple[KneeResult, float]:
    """Drive the knee machine against the world; (result, simulated seconds)."""
    search = KneeSearch(plan)
    d = search.start(0.0)
    world.set_load(d.value)
    world.new_segment(d.measure)
    t = 0.0
    while t < limit_s:
        t += tick_s
        world.advance(t)
        d = search.observe(t, world.observe())
        if isinstance(d, Done):
            return d.result, t
        if isinstance(d, SetLoad):
            world.set_load(d.value)
            world.new_segment(d.measure)
            world.resume()
        elif isinstance(d, Drain):
            world.pause()
            world.new_segment(False)
    raise AssertionError(f"no answer in {limit_s} simulated seconds")


def mdk_ttft_quantile(lam: float, k: int, service_s: float, ttft_s: float, q: float) -> float:
    """TTFT q-quantile (s) of an M/D/K FIFO queue: the first token comes `ttft_s` after a
    request reaches a slot. Simulated with 400 000 arrivals (the sampling error of a p99 is
    then well under 1 %)."""
    rng = random.Random(12345)
    free = [0.0] * k
    t = 0.0
    n = 400_000
    waits = np.empty(n)
    for i in range(n):
        t += rng.expovariate(lam)
        f = heapq.heappop(free)
        s = t if t > f else f
        waits[i] = s - t
        heapq.heappush(free, s + service_s)
    w = np.sort(waits[n // 20 :])
    return float(w[math.ceil(q * len(w)) - 1]) + ttft_s


def mdk_knee(
    k: int, service_s: float, ttft_s: float, limit_s: float, q: float = 0.99, iters: int = 16
) -> float:
    """The open-loop rate at which the TTFT q-quantile reaches `limit_s` (bisection)."""
    cap = k / service_s
    lo, hi = 0.2 * cap, 0.999 * cap
    for _ in range(iters):
        mid = (lo + hi) / 2
        if mdk_ttft_quantile(mid, k, service_s, ttft_s, q) <= limit_s:
            lo = mid
        else:
            hi = mid
    return (lo + hi) / 2
