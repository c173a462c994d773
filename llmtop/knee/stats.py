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


def betainc(a: float, b: float, x: float) -> float:
    """Regularized incomplete beta I_x(a, b) (continued fraction, Lentz's method; no scipy)."""
    if x <= 0.0:
        return 0.0
    if x >= 1.0:
        return 1.0
    front = math.exp(
        math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b) + a * math.log(x) + b * math.log1p(-x)
    )
    if x > (a + 1) / (a + b + 2):  # the fraction converges fast on this side only
        return 1.0 - betainc(b, a, 1.0 - x)
    tiny = 1e-300
    c, d = 1.0, 1.0 - (a + b) * x / (a + 1)
    d = 1.0 / (d if abs(d) > tiny else tiny)
    f = d
    for m in range(1, 300):
        for num in (
            m * (b - m) * x / ((a + 2 * m - 1) * (a + 2 * m)),
            -(a + m) * (a + b + m) * x / ((a + 2 * m) * (a + 2 * m + 1)),
        ):
            d = 1.0 + num * d
            d = 1.0 / (d if abs(d) > tiny else tiny)
            c = 1.0 + num / c
            c = c if abs(c) > tiny else tiny
            f *= c * d
        if abs(c * d - 1.0) < 1e-12:
            break
    return front * f / a


def t_sf(t: float, df: float) -> float:
    """P(T > t) for Student's t with `df` degrees of freedom."""
    if math.isnan(t):
        return math.nan
    if math.isinf(t):
        return 0.0 if t > 0 else 1.0
    tail = 0.5 * betainc(df / 2, 0.5, df / (df + t * t))
    return tail if t >= 0 else 1.0 - tail


def t_quantile(p: float, df: float) -> float:
    """The p-quantile of Student's t (bisection on `t_sf`; p in (0, 1))."""
    lo, hi = -1e3, 1e3
    for _ in range(200):
        mid = (lo + hi) / 2
        if 1.0 - t_sf(mid, df) < p:
            lo = mid
        else:
            hi = mid
    return (lo + hi) / 2


def mean_ci(values: list[float], level: float = 0.95) -> tuple[float, float, float]:
    """Mean and its Student-t confidence interval (NaN bounds from fewer than 2 values)."""
    xs = [v for v in values if not math.isnan(v)]
    if not xs:
        return math.nan, math.nan, math.nan
    m = sum(xs) / len(xs)
    if len(xs) < 2:
        return m, math.nan, math.nan
    sd = math.sqrt(sum((x - m) ** 2 for x in xs) / (len(xs) - 1))
    half = t_quantile(1 - (1 - level) / 2, len(xs) - 1) * sd / math.sqrt(len(xs))
    return m, m - half, m + half


def overdispersion(batches: list[tuple[int, int]]) -> float:
    """Quasi-binomial dispersion φ of exceedance counts over time batches, floored at 1.

    Exceedances in a queue come in clusters (one congested spell makes several requests in a
    row slow), so k of n are not n independent trials. Pearson's χ² of the per-batch counts
    over its degrees of freedom estimates how much more they vary than a binomial would; the
    binomial tests then run on n/φ and k/φ "effective" samples (quasi-likelihood, McCullagh &
    Nelder). Fewer than 3 batches with samples say nothing about clustering: 1.
    """
    used = [(n, k) for n, k in batches if n > 0]
    if len(used) < 3:
        return 1.0
    n_all = sum(n for n, _ in used)
    k_all = sum(k for _, k in used)
    p = k_all / n_all
    if p <= 0.0 or p >= 1.0:
        return 1.0
    chi2 = sum((k - n * p) ** 2 / (n * p * (1 - p)) for n, k in used)
    return max(chi2 / (len(used) - 1), 1.0)


def upward_trend_p(first: list[float], second: list[float]) -> float:
    """One-sided Welch test p-value that the mean of `second` is above that of `first`.

    Used on batch means (each batch spans at least a request lifetime, so batch means are
    close to independent where single requests are not). 1.0 when either side has fewer than
    two batches: no evidence of a trend.
    """
    a = [v for v in first if not math.isnan(v)]
    b = [v for v in second if not math.isnan(v)]
    if len(a) < 2 or len(b) < 2:
        return 1.0
    ma, mb = sum(a) / len(a), sum(b) / len(b)
    va = sum((x - ma) ** 2 for x in a) / (len(a) - 1) / len(a)
    vb = sum((x - mb) ** 2 for x in b) / (len(b) - 1) / len(b)
    se2 = va + vb
    if se2 <= 0.0:
        return 0.0 if mb > ma else 1.0
    df = se2**2 / ((va**2 / (len(a) - 1) if va else 0.0) + (vb**2 / (len(b) - 1) if vb else 0.0))
    return t_sf((mb - ma) / math.sqrt(se2), max(df, 1.0))


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
    mean: float = math.nan  # mean of the measured samples (ms; NaN for rates): trend tests
    censored: int = 0  # in `n` and `exceed`: requests still waiting, already past the limit

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


def effective(n: int, k: int, phi: float) -> tuple[int, int]:
    """Samples and exceedances as independent evidence, given the dispersion φ (>= 1)."""
    if phi <= 1.0:
        return n, k
    return max(int(n / phi), 1 if n else 0), min(int(k / phi + 0.5), max(int(n / phi), 1))


def judge_limit(lo: LimitObs, alpha: float, min_requests: int, phi: float = 1.0) -> Verdict:
    """Confident breach / confident pass / undecided, for one limit on the data so far.

    `phi` (>= 1) is the clustering of exceedances over time (`overdispersion`): the binomial
    tests count n/φ and k/φ independent samples.
    """
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
        n, k = effective(lo.n, lo.exceed, phi)
        p_breach = binom_sf(k, n, p0)
        if p_breach <= alpha:
            return Verdict("breach", True, p_breach)
        p_pass = binom_cdf(k, n, p0)
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


def shown_within(lo: LimitObs, alpha: float, min_requests: int, phi: float = 1.0) -> bool:
    """The limit's upper confidence bound (level 1 − alpha) is within it, on n/φ samples.

    For `pQ <= L` that is `P(Bin(n/φ, 1 − Q) <= k/φ) <= alpha`: the order statistic that
    bounds the quantile from above lies below L. Read over a window of a correlated queue, the
    point estimate of a tail quantile is usually too low (the window misses the rare long
    congestion spells that make the tail), so a good verdict asks for this bound instead.
    """
    if lo.n <= 0 or math.isnan(lo.value):
        return False
    if not lo.upper:
        return lo.point_ok
    if lo.kind in ("quantile", "rate") and lo.q is not None:
        p0 = (1.0 - lo.q) if lo.kind == "quantile" else lo.q
        p0 = min(max(p0, 0.0), 1.0)
        if p0 <= 0.0:
            return lo.exceed == 0 and lo.n >= min_requests
        n, k = effective(lo.n, lo.exceed, phi)
        return lo.point_ok and binom_cdf(k, n, p0) <= alpha
    if lo.kind == "max":
        return lo.point_ok and lo.n >= min_requests
    if lo.kind == "mean" and not math.isnan(lo.stddev) and lo.n >= 2:
        se = lo.stddev / math.sqrt(max(lo.n / max(phi, 1.0), 1.0))
        return lo.value + _z(1 - alpha) * se <= lo.threshold if alpha < 0.5 else lo.point_ok
    return lo.point_ok and lo.n >= min_requests


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
