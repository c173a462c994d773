"""Is a step stationary? Batch statistics over the observations of one judged step.

A queue answers a change of load slowly: after a step up it fills for a time that grows like
1/(1 − ρ)², and a p99 read while it fills is too low. A step is judged good only when its
observations say the system reached a steady state (docs/knee.md, "Steady state"):

- **keeping up**: departures (sent − in flight) fall short of the offered arrivals by no more
  than Poisson noise and the in-flight count's own spread (open loop only);
- **no backlog trend**: the in-flight count's batch means do not rise from the first half of
  the step to the second (one-sided Welch test, and a material rise);
- **no upward trend of an SLO metric**: the same test on the batch means of each limited
  latency. The mean, not the tail, is tested: a filling queue shifts the whole distribution,
  and the mean sees that with far fewer samples than a p99 would.

Batches span at least a request lifetime (E2E p50) and a second, so batch means are close to
independent where single requests are not (the batch-means method of steady-state simulation
output analysis). The same batches give each limit's exceedance dispersion φ
(`stats.overdispersion`), which the binomial verdicts divide their evidence by.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

from llmtop.knee.stats import overdispersion, upward_trend_p


@dataclass(frozen=True)
class Sample:
    """One observation of the judged step, cumulative since it began."""

    t_s: float
    sent: int  # requests sent so far, all steps (-1: unknown)
    in_flight: int  # in flight or queued for a client slot now, all steps
    limits: tuple[tuple[int, int, float, int], ...]  # per limit: (n, exceed, sum ms, measured)


@dataclass(frozen=True)
class Steady:
    """What the batches say about one judged step so far."""

    ok: bool
    batches: int
    width_s: float
    reasons: tuple[str, ...] = ()
    keeping_up: bool = True
    departure_rate: float = math.nan  # requests that left per second over the step
    late_departure_rate: float = math.nan  # ...over its second half (past any filling)
    shortfall: float = 0.0  # offered arrivals − departures over the step
    in_flight_mean: float = math.nan
    backlog_rise: float = 0.0  # in flight: second half's batch mean − the first half's
    backlog_p: float = 1.0
    trends: tuple[tuple[float, float], ...] = ()  # per limit: (rise of the mean in ms, p)
    phi: tuple[float, ...] = field(default=())  # per limit: exceedance dispersion
    design: tuple[float, ...] = field(default=())  # per limit: batch-means design effect
    short: bool = False  # fewer batches than the test needs

    @property
    def untested(self) -> bool:
        """Not shown stationary only for want of batches: no evidence either way."""
        return self.short and len(self.reasons) == 1

    def dispersion(self, i: int) -> float:
        """How many correlated samples make one independent one, for limit `i` (>= 1)."""
        phi = self.phi[i] if i < len(self.phi) else 1.0
        d = self.design[i] if i < len(self.design) else 1.0
        return max(phi, d, 1.0)

    def as_dict(self) -> dict[str, object]:
        return {
            "stationary": self.ok,
            "batches": self.batches,
            "batch_s": round(self.width_s, 3),
            "reasons": list(self.reasons),
            "keeping_up": self.keeping_up,
            "departure_rate": _finite(self.departure_rate),
            "shortfall": round(self.shortfall, 2),
            "in_flight_mean": _finite(self.in_flight_mean),
            "backlog_rise": round(self.backlog_rise, 2),
            "backlog_p": round(self.backlog_p, 4),
            "trends": [{"rise_ms": round(r, 3), "p": round(p, 4)} for r, p in self.trends],
            "dispersion": [round(self.dispersion(i), 3) for i in range(len(self.phi))],
        }


def _finite(v: float) -> float | None:
    return None if math.isnan(v) or math.isinf(v) else round(v, 4)


@dataclass(frozen=True)
class Batch:
    t0: float
    t1: float
    departed: int  # -1 when sent is unknown
    in_flight_mean: float
    limits: tuple[tuple[int, int, float, int], ...]  # per limit: (Δn, Δexceed, Δsum, Δmeasured)


def batches(samples: Sequence[Sample], t0: float, width_s: float) -> list[Batch]:
    """Cut the observations since `t0` into consecutive batches `width_s` long."""
    if not samples or width_s <= 0:
        return []
    out: list[Batch] = []
    prev: Sample | None = None
    start = t0
    bucket: list[Sample] = []
    end = t0 + width_s
    for s in samples:
        if s.t_s < t0:
            continue
        bucket.append(s)
        if s.t_s >= end - 1e-9:
            out.append(_batch(prev, bucket, start, s.t_s))
            prev = s
            start = s.t_s
            bucket = []
            end = start + width_s
    return out


def _batch(prev: Sample | None, bucket: list[Sample], t0: float, t1: float) -> Batch:
    last = bucket[-1]
    if prev is None:
        first = bucket[0]
        zero = tuple((0, 0, 0.0, 0) for _ in last.limits)
        base_lim = zero
        departed = (last.sent - last.in_flight) - (first.sent - first.in_flight)
        if first.sent < 0:
            departed = -1
    else:
        base_lim = prev.limits
        departed = (last.sent - last.in_flight) - (prev.sent - prev.in_flight)
        if prev.sent < 0:
            departed = -1
    lims = tuple(
        (a[0] - b[0], a[1] - b[1], a[2] - b[2], a[3] - b[3])
        for a, b in zip(last.limits, base_lim, strict=False)
    )
    n_mean = sum(s.in_flight for s in bucket) / len(bucket)
    return Batch(t0, t1, departed, n_mean, lims)


def analyse(
    samples: Sequence[Sample],
    t0: float,
    offered: float | None,
    thresholds: Sequence[float | None],
    width_s: float,
    alpha: float = 0.05,
    material: float = 0.05,
    min_batches: int = 4,
    stddevs: Sequence[float] = (),
) -> Steady:
    """Stationarity of one judged step (see the module docstring).

    `offered` is the open-loop rate (None in closed loop: nothing to keep up with, no
    backlog); `thresholds` holds, per limit, the latency limit in ms whose metric is
    trend-tested (None for limits that are not latencies); `stddevs` the standard deviation
    (ms) of each limit's samples, for the design effect: batch means that vary more than
    independent samples would (n̄_b · var(batch means) / σ²) say how correlated they are.
    """
    bs = batches(samples, t0, width_s)
    if not samples:
        return Steady(False, 0, width_s, ("no observations yet",))
    span = samples[-1].t_s - t0
    phi = tuple(
        overdispersion([(b.limits[i][0], b.limits[i][1]) for b in bs])
        for i in range(len(samples[-1].limits))
    )
    reasons: list[str] = []
    if len(bs) < min_batches:
        reasons.append(f"{len(bs)} of {min_batches} batches")
    # keeping up: departures against the offered arrivals
    ns = [s.in_flight for s in samples if s.t_s >= t0]
    n_mean = sum(ns) / len(ns) if ns else math.nan
    first = next((s for s in samples if s.t_s >= t0), samples[0])
    last = samples[-1]
    keeping_up = True
    dep_rate = math.nan
    shortfall = 0.0
    if first.sent >= 0 and span > 0:
        departed = (last.sent - last.in_flight) - (first.sent - first.in_flight)
        dep_span = last.t_s - first.t_s
        dep_rate = departed / dep_span if dep_span > 0 else math.nan
        if offered is not None and dep_span > 0:
            expected = offered * dep_span
            shortfall = expected - departed
            keeping_up = shortfall <= 3 * math.sqrt(expected) + 2 * math.sqrt(n_mean + 1) + 1
            if not keeping_up:
                reasons.append(
                    f"{departed} left of ~{expected:.0f} offered: the server is not keeping up"
                )
    # trends: first half of the batches against the second
    half = len(bs) // 2
    b1, b2 = bs[:half], bs[len(bs) - half :]
    backlog_rise, backlog_p = 0.0, 1.0
    if offered is not None and half >= 2:
        m1 = [b.in_flight_mean for b in b1]
        m2 = [b.in_flight_mean for b in b2]
        backlog_rise = sum(m2) / len(m2) - sum(m1) / len(m1)
        backlog_p = upward_trend_p(m1, m2)
        if backlog_p < alpha and backlog_rise > max(2.0, 0.25 * sum(m1) / len(m1)):
            reasons.append(f"in flight rising by {backlog_rise:.1f} (backlog trend)")
    trends: list[tuple[float, float]] = []
    for i, thr in enumerate(thresholds):
        if thr is None or half < 2:
            trends.append((0.0, 1.0))
            continue
        means1 = [_mean(b, i) for b in b1]
        means2 = [_mean(b, i) for b in b2]
        f1 = [m for m in means1 if not math.isnan(m)]
        f2 = [m for m in means2 if not math.isnan(m)]
        if len(f1) < 2 or len(f2) < 2:
            trends.append((0.0, 1.0))
            continue
        rise = sum(f2) / len(f2) - sum(f1) / len(f1)
        p = upward_trend_p(f1, f2)
        trends.append((rise, p))
        if p < alpha and rise > material * thr:
            reasons.append(f"limit {i + 1}: mean rising by {rise:,.1f} ms (latency trend)")
    late_rate = math.nan
    if first.sent >= 0 and len(bs) >= 4 and bs[-1].departed >= 0:
        tail = bs[len(bs) // 2 :]
        span2 = tail[-1].t1 - tail[0].t0
        if span2 > 0:
            late_rate = sum(b.departed for b in tail) / span2
    design = tuple(
        _design(bs, i, stddevs[i] if i < len(stddevs) else math.nan) for i in range(len(phi))
    )
    return Steady(
        ok=not reasons,
        short=len(bs) < min_batches,
        batches=len(bs),
        width_s=width_s,
        reasons=tuple(reasons),
        keeping_up=keeping_up,
        departure_rate=dep_rate,
        late_departure_rate=late_rate,
        shortfall=shortfall,
        in_flight_mean=n_mean,
        backlog_rise=backlog_rise,
        backlog_p=backlog_p,
        trends=tuple(trends),
        phi=phi,
        design=design,
    )


def _design(bs: Sequence[Batch], i: int, sd: float) -> float:
    """Batch-means design effect of limit `i`'s metric (1 when it cannot be told)."""
    if math.isnan(sd) or sd <= 0:
        return 1.0
    pairs = [(b.limits[i][3], _mean(b, i)) for b in bs if b.limits[i][3] > 0]
    if len(pairs) < 3:
        return 1.0
    means = [m for _, m in pairs]
    mm = sum(means) / len(means)
    var_b = sum((m - mm) ** 2 for m in means) / (len(means) - 1)
    n_b = sum(n for n, _ in pairs) / len(pairs)
    return max(n_b * var_b / (sd * sd), 1.0)


def _mean(b: Batch, i: int) -> float:
    _n, _k, total, measured = b.limits[i]
    return total / measured if measured > 0 else math.nan
