"""The statistics of a knee verdict: binomial tests on exceedances, order-statistic intervals.

Pure functions of counts; `llmtop.knee.search` asks them whether a step confidently met or
broke each SLO limit (docs/knee.md says why these tests).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal


# -- statistics (pure) --------------------------------------------------------------------
def binom_cdf(k: int, n: int, p: float) -> float:
    """P(X <= k) for X ~ Binomial(n, p), exact (log space), no scipy."""
    if k < 0:
        return 0.0
    if k >= n:
        return 1.0
    if p <= 0.0:
        return 1.0
    if p >= 1.0:
        return 0.0
    lp, lq = math.log(p), math.log1p(-p)
    lgn = math.lgamma(n + 1)
    total = 0.0
    for i in range(k + 1):
        total += math.exp(lgn - math.lgamma(i + 1) - math.lgamma(n - i + 1) + i * lp + (n - i) * lq)
    return min(total, 1.0)


def binom_sf(k: int, n: int, p: float) -> float:
    """P(X >= k) for X ~ Binomial(n, p)."""
    return 1.0 - binom_cdf(k - 1, n, p) if k > 0 else 1.0


def quantile_ci_ranks(n: int, q: float, alpha: float = 0.05) -> tuple[int | None, int | None]:
    """Distribution-free (order-statistic) confidence interval for the q-quantile.

    Returns 1-based ranks (lo, hi) of the sorted sample such that
    P(x_(lo) <= true quantile <= x_(hi)) >= 1 - alpha; None where the sample is too small
    to bound that side (e.g. the upper bound of a p99 from fewer than ~300 samples).
    """
    if n <= 0:
        return None, None
    half = alpha / 2
    lo: int | None = None
    # largest lo with P(Bin(n, q) >= lo) >= 1 - alpha/2
    for r in range(int(n * q), 0, -1):
        if binom_sf(r, n, q) >= 1 - half:
            lo = r
            break
    hi: int | None = None
    for r in range(max(math.ceil(n * q), 1), n + 1):
        if binom_cdf(r - 1, n, q) >= 1 - half:
            hi = r
            break
    return lo, hi


def min_samples_for_pass(q: float, alpha: float = 0.05) -> int:
    """The fewest samples that can confirm `pQ <= L` (with no sample above L)."""
    p0 = 1.0 - q
    if p0 <= 0:
        return 1
    return math.ceil(math.log(alpha) / math.log1p(-p0))


# -- observations -------------------------------------------------------------------------
@dataclass(frozen=True)
class LimitObs:
    """One SLO limit on the judged step."""

    text: str  # "ttft_p99<=1s"
    kind: Literal["quantile", "mean", "max", "rate", "other"]
    threshold: float  # ms for latencies, a fraction for rates
    value: float  # point estimate (ms or fraction); NaN when nothing measured
    n: int  # samples (completed requests for latencies, done requests for rates)
    exceed: int = 0  # samples beyond the threshold (failures for error_rate)
    q: float | None = None  # quantile as a fraction (0.99); the allowed fraction for rates
    stddev: float = math.nan  # for mean limits (ms)
    upper: bool = True  # an upper bound (<=, <); lower bounds are judged on the point value

    @property
    def point_ok(self) -> bool:
        if math.isnan(self.value):
            return True
        if self.upper:
            return self.value <= self.threshold
        return self.value >= self.threshold

    @property
    def ratio(self) -> float:
        if not self.threshold or math.isnan(self.value):
            return 0.0 if not self.value or math.isnan(self.value) else math.inf
        return self.value / self.threshold


# -- verdicts -----------------------------------------------------------------------------
@dataclass(frozen=True)
class Verdict:
    state: Literal["breach", "pass", "undecided"]
    confident: bool
    p_value: float | None


def judge_limit(lo: LimitObs, alpha: float, min_requests: int) -> Verdict:
    """Confident breach / confident pass / undecided, for one limit on the data so far."""
    if lo.n <= 0 or math.isnan(lo.value):
        return Verdict("undecided", False, None)
    if not lo.upper:  # lower bounds: point value only
        return Verdict("pass" if lo.point_ok else "breach", False, None)
    if lo.kind in ("quantile", "rate") and lo.q is not None:
        p0 = (1.0 - lo.q) if lo.kind == "quantile" else lo.q
        p0 = min(max(p0, 0.0), 1.0)
        if p0 <= 0.0:  # error_rate<=0 / p100: any exceedance breaks it, none confirms nothing
            if lo.exceed > 0:
                return Verdict("breach", True, 0.0)
            return Verdict("pass", lo.n >= min_requests, None)
        p_breach = binom_sf(lo.exceed, lo.n, p0)
        if p_breach <= alpha:
            return Verdict("breach", True, p_breach)
        p_pass = binom_cdf(lo.exceed, lo.n, p0)
        if p_pass <= alpha:
            return Verdict("pass", True, p_pass)
        return Verdict("undecided", False, min(p_breach, p_pass))
    if lo.kind == "max":
        if lo.exceed > 0 or not lo.point_ok:
            return Verdict("breach", True, 0.0)
        return Verdict("pass", lo.n >= min_requests, None)
    if lo.kind == "mean" and not math.isnan(lo.stddev) and lo.n >= 2:
        z = _z(1 - alpha)
        se = lo.stddev / math.sqrt(lo.n)
        if lo.value - z * se > lo.threshold:
            return Verdict("breach", True, None)
        if lo.value + z * se <= lo.threshold:
            return Verdict("pass", True, None)
        return Verdict("undecided", False, None)
    return Verdict("undecided", False, None)


def _z(p: float) -> float:
    """Normal quantile (Acklam-free bisection on erf; p in (0.5, 1))."""
    lo, hi = 0.0, 10.0
    for _ in range(80):
        mid = (lo + hi) / 2
        if 0.5 * (1 + math.erf(mid / math.sqrt(2))) < p:
            lo = mid
        else:
            hi = mid
    return (lo + hi) / 2
