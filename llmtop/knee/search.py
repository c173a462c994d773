"""The knee search as a pure state machine: no asyncio, no sleeps, no clock of its own.

Usage (the headless runner `llmtop.knee.runner` and the live UI's `a` key both do this)::

    search = KneeSearch(KneePlan(mode="rate", start=1.0, factor=2.0, max_value=64.0))
    decision = search.start(now_s)            # always a SetLoad
    while not isinstance(decision, Done):
        ...apply the decision to the load...  # SetLoad / Drain / Hold (see below)
        decision = search.observe(now_s, obs) # call it every ~0.25 s (a UI timer is fine)
    result = decision.result                  # KneeResult: knee value, confidence, step table

    search.stop(now_s, "interrupted")         # any time: a Done with the steps so far

Decisions:
- `SetLoad(value, label, measure, phase)`: offer `value` (req/s, or an integer concurrency
  when `plan.mode == "concurrency"`) *from now on and start a new collector step* labelled
  `label` (`session.set_rate(value, label)` / `set_concurrency`). When `measure` is true that
  step is the one being judged: from then on every `StepObs` passed to `observe` describes it,
  until the next `SetLoad(measure=True)`. Warm-up segments (`measure=False`) are not judged.
  If the load was paused by a `Drain`, resume it after setting the new load.
- `Drain(label)`: stop offering load (pause the open-loop arrivals; start a new collector step
  so the judged step does not absorb the pause) until `StepObs.in_flight` reaches 0. Only in
  rate mode, after a breach: the next step then starts from an idle server, not a backlog.
- `Hold(reason)`: keep going.
- `Done(result)`: the search is over.

`observe` is fed `StepObs`: the judged step's completed / failed counts, a `LimitObs` per SLO
limit (sample count, samples beyond the threshold, point value), the step's E2E p99 and max,
client-side indicators (send slip p99, slot wait p99, load-process CPU) and the requests in
flight right now. `limit_obs_from_counts` and `quantile_ci_ranks` help build and explain them.

The rules (docs/knee.md says why):
- Every step starts with a warm-up segment that is not judged: `warmup_s = clamp(E2E max of
  the previous judged step, warmup_min_s, warmup_max_s)` (first step: `warmup_first_s`).
  That is also the time the previous step's stragglers need to come back, so the previous
  verdict is re-checked with its complete data at the end of this warm-up.
- A percentile limit `pQ <= L` is a binomial question about k = samples above L out of n:
  breach is *confident* when P(Bin(n, 1-Q) >= k) <= alpha, pass is confident when
  P(Bin(n, 1-Q) <= k) <= alpha (p99, alpha 5 %: at least 299 samples with none above L).
  `error_rate <= r` is the same test with failures. A step ends at the first confident
  verdict (after `min_step_s` and `min_requests` for a pass), or at `max_step_s` with the
  point estimate and low confidence.
- Ramp steps (before the first breach) are probes: they pass early, after `min_step_s` and
  `min_requests`, when every point value is at most `probe_margin` of its limit.
- Ramp by `factor` until the first breach, then bisect between the highest good and the
  lowest bad value until (bad - good) / good <= resolution (concurrency: until they are
  adjacent integers). Stop early on an error surge or at `max_value`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import Any, Literal

Mode = Literal["rate", "concurrency"]


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


def limit_obs_from_counts(
    text: str,
    kind: str,
    threshold: float,
    value: float,
    n: int,
    exceed: int,
    q: float | None = None,
    stddev: float = math.nan,
    upper: bool = True,
) -> LimitObs:
    return LimitObs(text, kind, threshold, value, n, exceed, q, stddev, upper)  # type: ignore[arg-type]


@dataclass(frozen=True)
class StepObs:
    """What the runner saw of the judged step (and of the load right now)."""

    completed: int = 0
    failed: int = 0
    limits: tuple[LimitObs, ...] = ()
    e2e_p99_s: float = math.nan
    e2e_max_s: float = math.nan
    send_slip_p99_ms: float = math.nan
    slot_wait_p99_ms: float = math.nan
    client_cpu: float = math.nan  # load-process CPU seconds per wall second
    in_flight: int = 0  # requests in flight or queued for a slot now, all steps together
    request_throughput: float = math.nan
    output_throughput: float = math.nan
    goodput: float = math.nan

    @property
    def error_rate(self) -> float:
        done = self.completed + self.failed
        return self.failed / done if done else 0.0


# -- the plan and the decisions -----------------------------------------------------------
@dataclass(frozen=True)
class KneePlan:
    mode: Mode = "rate"
    start: float = 1.0
    factor: float = 2.0
    max_value: float = 1000.0
    min_value: float | None = None  # lowest value tried when the start breaches already
    resolution: float = 0.05
    min_step_s: float = 6.0  # measured part of a step, at least
    max_step_s: float = 20.0  # ... at most
    min_requests: int = 20  # completed requests before a pass (and a point verdict) counts
    min_breach_requests: int = 5
    alpha: float = 0.05  # 1 - confidence of the binomial verdicts
    probe_margin: float = 0.5  # ramp steps pass early when every value <= margin × limit...
    probe_min_s: float = 3.0  # ...after this long
    probe_min_requests: int = 5  # ...and this many completed requests
    warmup_first_s: float = 3.0
    warmup_min_s: float = 2.0
    warmup_max_s: float = 20.0
    drain_timeout_s: float = 60.0
    error_surge: float = 0.2  # a step with this error rate ends the search
    slip_warn_ms: float = 10.0  # client-limited warning: send slip p99 above this...
    slip_warn_frac: float = 0.05  # ...or above this fraction of the tightest latency limit
    slot_warn_ms: float = 10.0
    cpu_warn: float = 0.9
    verify: bool = False  # repeat the knee step once before answering
    backlog_ok: float = 1.5  # a pass needs in flight <= this × rate × E2E p99 (+ slack)...
    backlog_breach: float = 3.0  # ...and a step with more than this is over capacity
    backlog_slack: int = 4
    retry_client_limited: bool = True  # a breach while the client lagged is measured again

    def __post_init__(self) -> None:
        if self.mode not in ("rate", "concurrency"):
            raise ValueError(f"mode must be 'rate' or 'concurrency', not {self.mode!r}")
        if not self.start > 0:
            raise ValueError("the start value must be > 0")
        if not self.factor > 1:
            raise ValueError("the step factor must be > 1")
        if not self.max_value >= self.start:
            raise ValueError("the maximum must be at least the start value")
        if not 0 < self.resolution < 1:
            raise ValueError("the resolution must be between 0 and 1 (e.g. 0.05)")
        if not 0 < self.min_step_s <= self.max_step_s:
            raise ValueError("need 0 < min step time <= max step time")
        if self.mode == "concurrency" and (self.start != int(self.start)):
            raise ValueError("a concurrency search starts at an integer")

    @property
    def floor(self) -> float:
        if self.min_value is not None:
            return self.min_value
        return 1.0 if self.mode == "concurrency" else self.start / self.factor**6


@dataclass(frozen=True)
class SetLoad:
    value: float
    label: str
    measure: bool
    phase: str  # "warmup" | "measure"


@dataclass(frozen=True)
class Drain:
    label: str


@dataclass(frozen=True)
class Hold:
    reason: str = ""


@dataclass
class KneeStep:
    """One step of the search (a value held for a warm-up and a judged stretch)."""

    index: int
    value: float
    phase: str  # "ramp" | "bisect" | "down" | "verify" | "retry"
    label: str
    started_s: float
    measure_from_s: float | None = None
    ended_s: float | None = None
    verdict: str | None = None  # "good" | "bad" | None while running / when interrupted
    basis: str = ""  # "confident" | "probe" | "max hold" | "error surge" | "no data"
    p_value: float | None = None  # of the verdict's test (smallest over limits)
    rechecked: bool = False
    flipped: bool = False
    obs: StepObs | None = None
    warnings: list[str] = field(default_factory=list)  # client-limited indicators only
    note: str = ""

    @property
    def measured_s(self) -> float:
        if self.measure_from_s is None:
            return 0.0
        return max((self.ended_s or self.measure_from_s) - self.measure_from_s, 0.0)

    def as_dict(self) -> dict[str, Any]:
        o = self.obs or StepObs()
        return {
            "index": self.index,
            "value": self.value,
            "phase": self.phase,
            "label": self.label,
            "verdict": self.verdict,
            "basis": self.basis,
            "p_value": self.p_value,
            "flipped": self.flipped,
            "measured_s": self.measured_s,
            "completed": o.completed,
            "failed": o.failed,
            "error_rate": o.error_rate,
            "request_throughput": o.request_throughput,
            "output_throughput": o.output_throughput,
            "goodput": o.goodput,
            "e2e_p99_s": o.e2e_p99_s,
            "send_slip_p99_ms": o.send_slip_p99_ms,
            "slot_wait_p99_ms": o.slot_wait_p99_ms,
            "client_cpu": o.client_cpu,
            "limits": [
                {
                    "limit": lo.text,
                    "value": lo.value,
                    "n": lo.n,
                    "exceed": lo.exceed,
                    "ok": lo.point_ok,
                }
                for lo in o.limits
            ],
            "warnings": list(self.warnings),
            "note": self.note,
        }


@dataclass
class KneeResult:
    mode: Mode
    knee: float | None  # highest value that met the SLO (None: not even the lowest did)
    first_bad: float | None  # lowest value that broke it (None: never broke)
    reason: str  # why the search ended
    confidence: str  # "high" | "medium" | "low" | "none"
    confidence_notes: list[str]
    client_limited: bool
    warnings: list[str]
    steps: list[KneeStep]
    knee_step: KneeStep | None
    duration_s: float
    complete: bool  # False when stopped before the search converged

    def as_dict(self) -> dict[str, Any]:
        o = self.knee_step.obs if self.knee_step and self.knee_step.obs else None
        unit = "req/s" if self.mode == "rate" else "concurrent requests"
        return {
            "mode": self.mode,
            "unit": unit,
            "value": self.knee,
            "rate": self.knee if self.mode == "rate" else None,
            "concurrency": self.knee if self.mode == "concurrency" else None,
            "first_bad": self.first_bad,
            "request_throughput": o.request_throughput if o else None,
            "output_throughput": o.output_throughput if o else None,
            "goodput": o.goodput if o else None,
            "reason": self.reason,
            "complete": self.complete,
            "confidence": self.confidence,
            "confidence_notes": list(self.confidence_notes),
            "client_limited": self.client_limited,
            "warnings": list(self.warnings),
            "duration_s": self.duration_s,
            "knee_step": self.knee_step.index if self.knee_step else None,
        }


@dataclass(frozen=True)
class Done:
    result: KneeResult


Decision = SetLoad | Drain | Hold | Done


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


# -- the machine --------------------------------------------------------------------------
class KneeSearch:
    """Ramp, then bisect; one decision per `observe` call. See the module docstring."""

    def __init__(self, plan: KneePlan) -> None:
        self.plan = plan
        self.steps: list[KneeStep] = []
        self.good: list[float] = []  # values judged good (final verdicts)
        self.bad: list[float] = []
        self.state = "idle"  # idle | warmup | measure | drain | done
        self.result: KneeResult | None = None
        self._t0 = 0.0
        self._phase_t0 = 0.0
        self._warmup_s = 0.0
        self._pending: KneeStep | None = None  # a provisionally good step awaiting re-check
        self._last_e2e_max_s = math.nan
        self._good_e2e_max_s = math.nan
        self._verified: set[float] = set()
        self._breached = False
        self._next: tuple[float, str] | None = None
        self._warnings: list[str] = []
        self._probe_only: set[float] = set()
        self._retried: set[float] = set()
        self._elapsed = 0.0

    # -- public ---------------------------------------------------------------------------
    @property
    def current(self) -> KneeStep | None:
        return self.steps[-1] if self.steps else None

    @property
    def done(self) -> bool:
        return self.state == "done"

    def start(self, now_s: float) -> SetLoad:
        if self.state != "idle":
            raise RuntimeError("the search has already started")
        self._t0 = now_s
        return self._begin_step(now_s, self._norm(self.plan.start), "ramp")

    def observe(self, now_s: float, obs: StepObs) -> Decision:
        if self.state == "done":
            assert self.result is not None
            return Done(self.result)
        if self.state == "idle":
            raise RuntimeError("call start() first")
        step = self.current
        assert step is not None
        if self.state == "drain":
            if obs.in_flight <= 0 or now_s - self._phase_t0 >= self.plan.drain_timeout_s:
                return self._after_drain(now_s)
            return Hold("draining")
        if self.state in ("warmup", "settle"):
            # `obs` still describes the previous judged step: its stragglers come in now.
            if self._pending is not None:
                self._pending.obs = obs
            if now_s - self._phase_t0 < self._warmup_s:
                return Hold(self.state)
            if self.state == "settle":
                assert self._pending is not None
                flipped = self._recheck(now_s, self._pending)
                if flipped is not None:
                    return flipped
                return self._finish(now_s, self._end_reason(), complete=True)
            if self._pending is not None:
                flipped = self._recheck(now_s, self._pending)
                if flipped is not None:
                    return flipped
            self.state = "measure"
            self._phase_t0 = now_s
            step.measure_from_s = now_s
            return SetLoad(step.value, step.label, True, "measure")
        # measuring
        step.obs = obs
        if not math.isnan(obs.e2e_max_s):
            self._last_e2e_max_s = obs.e2e_max_s
        elapsed = now_s - self._phase_t0
        return self._judge_running(now_s, step, obs, elapsed)

    def stop(self, now_s: float, reason: str = "interrupted") -> Done:
        """End the search now (Ctrl-C, the operator took over): the answer so far."""
        if self.state != "done":
            step = self.current
            if step is not None and step.ended_s is None:
                step.ended_s = now_s
            self._finish(now_s, reason, complete=False)
        assert self.result is not None
        return Done(self.result)

    # -- steps ----------------------------------------------------------------------------
    def _norm(self, v: float) -> float:
        if self.plan.mode == "concurrency":
            return float(max(round(v), 1))
        return float(f"{v:.4g}")

    def _fmt(self, v: float) -> str:
        return f"{v:g} req/s" if self.plan.mode == "rate" else f"{int(v)} concurrent"

    def _begin_step(
        self, now_s: float, value: float, phase: str, after_drain: bool = False
    ) -> SetLoad:
        label = f"knee {self._fmt(value)}"
        step = KneeStep(len(self.steps), value, phase, label, now_s)
        self.steps.append(step)
        self.state = "warmup"
        self._phase_t0 = now_s
        # after a drain the server starts idle: a good step's E2E tells how long it takes to
        # fill; otherwise the last judged step's stragglers must come back first
        e2e = self._good_e2e_max_s if after_drain else self._last_e2e_max_s
        self._warmup_s = self._warmup_for(e2e)
        return SetLoad(value, label + " warm-up", False, "warmup")

    def _judge_running(
        self, now_s: float, step: KneeStep, obs: StepObs, elapsed: float
    ) -> Decision:
        p = self.plan
        done = obs.completed + obs.failed
        if done >= p.min_breach_requests and obs.error_rate >= p.error_surge:
            self._close(now_s, step, "bad", "error surge", None)
            return self._finish(
                now_s,
                f"error surge: {obs.error_rate:.0%} of requests failed at {self._fmt(step.value)}",
                complete=False,
            )
        verdicts = [judge_limit(lo, p.alpha, p.min_requests) for lo in obs.limits]
        breaches = [v for v in verdicts if v.state == "breach" and v.confident]
        if breaches and done >= p.min_breach_requests:
            pv = min((v.p_value for v in breaches if v.p_value is not None), default=None)
            self._close(now_s, step, "bad", "confident", pv)
            return self._after_bad(now_s, step)
        self._elapsed = elapsed
        backlog = self._backlog(step, obs)
        if backlog >= p.backlog_breach and elapsed >= p.min_step_s:
            self._close(now_s, step, "bad", "backlog", None)
            step.note = f"{obs.in_flight} in flight: the server is not keeping up"
            return self._after_bad(now_s, step)
        # completions must keep pace with the schedule (open loop): in overload the few that
        # came back are the early, fast ones
        # (a good step's E2E is the reference when known: this step's own is biased low)
        ref = obs.e2e_p99_s
        if not math.isnan(self._good_e2e_max_s):
            ref = self._good_e2e_max_s if math.isnan(ref) else min(ref, self._good_e2e_max_s)
        pace = (
            p.mode != "rate"
            or math.isnan(ref)
            or obs.completed + obs.failed >= 0.5 * step.value * max(elapsed - 1.5 * ref, 0.0)
        )
        keeping_up = backlog <= p.backlog_ok and pace
        enough = elapsed >= p.min_step_s and obs.completed >= p.min_requests and keeping_up
        if enough and all(v.state == "pass" and v.confident for v in verdicts):
            pvs = [v.p_value for v in verdicts if v.p_value is not None]
            self._close(now_s, step, "good", "confident", max(pvs) if pvs else None)
            return self._after_good(now_s, step)
        probe_enough = (
            elapsed >= min(p.probe_min_s, p.min_step_s)
            and obs.completed >= p.probe_min_requests
            and keeping_up
        )
        if (
            probe_enough
            and step.phase == "ramp"
            and all(lo.point_ok and lo.ratio <= p.probe_margin for lo in obs.limits)
        ):
            self._close(now_s, step, "good", "probe", None)
            self._probe_only.add(step.value)
            return self._after_good(now_s, step)
        if elapsed >= p.max_step_s:
            if obs.completed == 0:
                self._close(now_s, step, "bad", "no data", None)
                return self._after_bad(now_s, step)
            ok = obs.completed > 0 and all(lo.point_ok for lo in obs.limits) and keeping_up
            pvs = [v.p_value for v in verdicts if v.p_value is not None]
            self._close(now_s, step, "good" if ok else "bad", "max hold", min(pvs) if pvs else None)
            return self._after_good(now_s, step) if ok else self._after_bad(now_s, step)
        return Hold("measuring")

    def _backlog(self, step: KneeStep, obs: StepObs) -> float:
        """In flight / (rate × E2E p99 of the completed): Little's law says <= ~1 when stable.

        Records arrive when a request ends, so in overload the completed ones are the early,
        fast ones and their percentiles look fine while a queue grows behind them; the count
        in flight gives that away. Open loop only (a closed loop bounds what is in flight).
        """
        if self.plan.mode != "rate":
            return 0.0
        if obs.completed == 0:
            # nothing came back in twice the time a good step's requests take: overload
            ref = self._good_e2e_max_s
            elapsed = self._elapsed
            if not math.isnan(ref) and elapsed > 2 * ref and obs.in_flight > step.value * ref:
                return math.inf
            return 0.0
        if math.isnan(obs.e2e_p99_s):
            return 0.0
        expected = step.value * obs.e2e_p99_s
        return max(obs.in_flight - self.plan.backlog_slack, 0) / max(expected, 1.0)

    def _close(
        self, now_s: float, step: KneeStep, verdict: str, basis: str, pv: float | None
    ) -> None:
        step.ended_s = now_s
        step.verdict = verdict
        step.basis = basis
        step.p_value = pv
        step.warnings.extend(self._client_warnings(step.obs))

    def _client_warnings(self, obs: StepObs | None) -> list[str]:
        if obs is None:
            return []
        p = self.plan
        tight = min(
            (lo.threshold for lo in obs.limits if lo.kind != "rate" and lo.threshold > 0),
            default=math.inf,
        )
        slip_limit = (
            max(p.slip_warn_ms, p.slip_warn_frac * tight) if tight < math.inf else p.slip_warn_ms
        )
        out = []
        if not math.isnan(obs.send_slip_p99_ms) and obs.send_slip_p99_ms > slip_limit:
            out.append(
                f"send slip p99 {obs.send_slip_p99_ms:.1f} ms: the client fell behind its schedule"
            )
        if not math.isnan(obs.slot_wait_p99_ms) and obs.slot_wait_p99_ms > p.slot_warn_ms:
            out.append(
                f"slot wait p99 {obs.slot_wait_p99_ms:.1f} ms: requests waited for a client slot"
            )
        if not math.isnan(obs.client_cpu) and obs.client_cpu >= p.cpu_warn:
            out.append(
                f"load process CPU {obs.client_cpu:.0%} of a core: the client may be the limit"
            )
        return out

    # -- moving on ------------------------------------------------------------------------
    def _after_good(self, now_s: float, step: KneeStep) -> Decision:
        # Provisional: the step's stragglers come back during the next warm-up (re-checked).
        self._pending = step if step.basis != "probe" else None
        self._record(step)
        if not math.isnan(self._e2e(step)):
            self._good_e2e_max_s = self._e2e(step)
        if self._pending is not None and self._next_value(peek=True) is None:
            # the answer would rest on this step: let its stragglers come back first
            self.state = "settle"
            self._phase_t0 = now_s
            self._warmup_s = self._warmup_for(self._e2e(step))
            return SetLoad(step.value, step.label + " settle", False, "settle")
        return self._advance(now_s)

    @staticmethod
    def _e2e(step: KneeStep) -> float:
        return step.obs.e2e_max_s if step.obs is not None else math.nan

    def _warmup_for(self, e2e_s: float) -> float:
        p = self.plan
        if math.isnan(e2e_s):
            return p.warmup_first_s
        return min(max(e2e_s, p.warmup_min_s), p.warmup_max_s)

    def _after_bad(self, now_s: float, step: KneeStep) -> Decision:
        self._pending = None
        retry = (
            self.plan.retry_client_limited
            and step.warnings
            and step.basis != "error surge"
            and step.value not in self._retried
        )
        if retry:
            # the client fell behind during a breach: that verdict may be ours, not the
            # server's; measure this value once more (after a drain) before believing it
            self._retried.add(step.value)
            step.verdict = "void"
            step.basis += ", client-limited: retried"
            nxt: tuple[float, str] | None = (step.value, "retry")
        else:
            self._breached = True
            self._record(step)
            nxt = None
        if self.plan.mode == "rate":
            nxt = nxt or self._next_value()
            if nxt is None:
                return self._finish(now_s, self._end_reason(), complete=True)
            self.state = "drain"
            self._phase_t0 = now_s
            self._next = nxt
            return Drain(f"knee drain after {self._fmt(step.value)}")
        if nxt is not None:
            return self._begin_step(now_s, nxt[0], nxt[1])
        return self._advance(now_s)

    def _record(self, step: KneeStep) -> None:
        if step.verdict == "good":
            self.good.append(step.value)
            if step.value in self.bad:
                self.bad.remove(step.value)
        elif step.verdict == "bad":
            self.bad.append(step.value)
            if step.value in self.good:
                self.good = [g for g in self.good if g != step.value]

    def _recheck(self, now_s: float, step: KneeStep) -> Decision | None:
        """Re-judge a provisionally good step with its stragglers in; a breach reopens."""
        self._pending = None
        step.rechecked = True
        obs = step.obs
        if obs is None:
            return None
        p = self.plan
        verdicts = [judge_limit(lo, p.alpha, p.min_requests) for lo in obs.limits]
        broke = any(v.state == "breach" and v.confident for v in verdicts) or (
            step.basis == "max hold" and not all(lo.point_ok for lo in obs.limits)
        )
        if step.basis == "confident" and not all(
            v.state == "pass" and v.confident for v in verdicts
        ):
            # no longer confidently good: keep the point verdict, lower the basis
            if all(lo.point_ok for lo in obs.limits) and not broke:
                step.basis = "max hold"
            else:
                broke = True
        if not broke:
            return None
        step.flipped = True
        step.verdict = "bad"
        step.basis = "recheck"
        self._record(step)
        self._breached = True
        # the step running now (in warm-up) was planned on a wrong premise: drop it
        cur = self.current
        if cur is not None and cur is not step and cur.verdict is None:
            self.steps.pop()
        nxt = self._next_value()
        if nxt is None:
            return self._finish(now_s, self._end_reason(), complete=True)
        if self.plan.mode == "rate":
            self.state = "drain"
            self._phase_t0 = now_s
            self._next = nxt
            return Drain(f"knee drain after {self._fmt(step.value)}")
        return self._begin_step(now_s, nxt[0], nxt[1])

    def _after_drain(self, now_s: float) -> Decision:
        nxt = self._next
        self._next = None
        if nxt is None:
            return self._finish(now_s, self._end_reason(), complete=True)
        return self._begin_step(now_s, nxt[0], nxt[1], after_drain=True)

    def _advance(self, now_s: float) -> Decision:
        nxt = self._next_value()
        if nxt is None:
            return self._finish(now_s, self._end_reason(), complete=True)
        return self._begin_step(now_s, nxt[0], nxt[1])

    def _bracket(self) -> tuple[float | None, float | None]:
        lo = max(self.good) if self.good else None
        above = [b for b in self.bad if lo is None or b > lo]
        hi = min(above) if above else None
        return lo, hi

    def _next_value(self, peek: bool = False) -> tuple[float, str] | None:
        """The next value to try, or None when the search has its answer."""
        p = self.plan
        lo, hi = self._bracket()
        conc = p.mode == "concurrency"
        if hi is None:  # no breach above the best good value yet: ramp
            base = lo if lo is not None else self._norm(p.start)
            if lo is not None and lo >= p.max_value:
                return self._maybe_verify(lo, peek)
            nxt = base * p.factor
            if conc:
                nxt = max(base + 1, round(nxt))
            return self._norm(min(nxt, p.max_value)), "ramp"
        if lo is None:  # even the lowest tried breaks: go down
            nxt = hi / p.factor
            if conc:
                nxt = min(hi - 1, math.floor(nxt))
            if nxt < p.floor - 1e-12 or (conc and nxt < 1):
                return None
            return self._norm(nxt), "down"
        # bisect
        if conc:
            if hi - lo <= 1 or (hi - lo) / lo <= p.resolution:
                return self._maybe_verify(lo, peek)
            return self._norm((lo + hi) // 2), "bisect"
        if (hi - lo) / lo <= p.resolution:
            return self._maybe_verify(lo, peek)
        return self._norm((lo + hi) / 2), "bisect"

    def _maybe_verify(self, lo: float, peek: bool = False) -> tuple[float, str] | None:
        needs = (lo in self._probe_only or self.plan.verify) and lo not in self._verified
        if peek:
            return (lo, "verify") if needs else None
        if lo in self._probe_only and lo not in self._verified:
            # the answer rests on a probe (a quick ramp pass): measure it properly once
            self._verified.add(lo)
            self._probe_only.discard(lo)
            self.good = [g for g in self.good if g != lo]
            return lo, "verify"
        if self.plan.verify and lo not in self._verified:
            self._verified.add(lo)
            self.good = [g for g in self.good if g != lo]
            return lo, "verify"
        return None

    def _end_reason(self) -> str:
        lo, hi = self._bracket()
        if lo is None:
            return f"even {self._fmt(min(self.bad))} breaks the SLO" if self.bad else "no answer"
        if hi is None:
            return f"reached the maximum ({self._fmt(self.plan.max_value)}) within the SLO"
        return f"bracketed: {self._fmt(lo)} meets the SLO, {self._fmt(hi)} does not"

    # -- the answer -----------------------------------------------------------------------
    def _finish(self, now_s: float, reason: str, complete: bool) -> Done:
        self.state = "done"
        lo, hi = self._bracket()
        knee_step = None
        if lo is not None:
            judged = [s for s in self.steps if s.value == lo and s.verdict == "good"]
            knee_step = judged[-1] if judged else None
        bad_step = None
        if hi is not None:
            judged = [s for s in self.steps if s.value == hi and s.verdict == "bad"]
            bad_step = judged[-1] if judged else None
        notes: list[str] = []
        score = 2
        if knee_step is None:
            score = -1
        else:
            if knee_step.basis == "confident":
                notes.append(
                    f"{self._fmt(lo)} passed a binomial test at {1 - self.plan.alpha:.0%}"
                    f" ({knee_step.obs.completed if knee_step.obs else 0} requests)"
                )
            else:
                score -= 1
                notes.append(
                    f"{self._fmt(lo)} met the SLO on its point estimate only ({knee_step.basis}):"
                    " too few samples to be sure"
                )
            if bad_step is not None:
                if bad_step.basis in ("confident", "recheck", "error surge"):
                    notes.append(f"{self._fmt(hi)} broke the SLO beyond doubt")
                else:
                    score -= 1
                    notes.append(f"{self._fmt(hi)} broke the SLO on its point estimate only")
                gap = (hi - lo) / lo
                notes.append(f"the knee lies in [{lo:g}, {hi:g}) ({gap:.1%} wide)")
            else:
                score -= 1
                notes.append("no breach seen: the knee is at least this value")
        warnings: list[str] = []
        relevant = [
            s for s in self.steps if s.verdict in ("good", "bad") and (hi is None or s.value <= hi)
        ]
        for s in relevant:
            for w in s.warnings:
                warnings.append(f"{self._fmt(s.value)}: {w}")
        client_limited = bool(warnings)
        if client_limited:
            score = min(score, 0)
            notes.append("the client, not the server, may have limited the run (see warnings)")
        if not complete:
            score = min(score, 0)
        confidence = {2: "high", 1: "medium", 0: "low"}.get(score, "none")
        self.result = KneeResult(
            mode=self.plan.mode,
            knee=lo,
            first_bad=hi,
            reason=reason,
            confidence=confidence,
            confidence_notes=notes,
            client_limited=client_limited,
            warnings=warnings,
            steps=list(self.steps),
            knee_step=knee_step,
            duration_s=now_s - self._t0,
            complete=complete,
        )
        return Done(self.result)


def with_plan(search: KneeSearch, **changes: Any) -> KneePlan:
    """A copy of the search's plan with changes (for UIs that let the operator tweak it)."""
    return replace(search.plan, **changes)


def steps_table(steps: Sequence[KneeStep], mode: Mode = "rate") -> list[str]:
    """Plain-text table of the steps (headless output and logs)."""
    unit = "req/s" if mode == "rate" else "conc"
    head = (
        f"{'#':>3} {unit:>8} {'phase':<7} {'verdict':<8} {'basis':<11} {'done':>6}"
        f" {'fail':>5} {'req/s':>8} {'tok/s':>9} {'good/s':>8}  limits"
    )
    lines = [head]
    for s in steps:
        o = s.obs or StepObs()
        lim = "  ".join(
            f"{lo.text.split('<')[0].split('>')[0]}={_fmt_val(lo)}{'' if lo.point_ok else '!'}"
            for lo in o.limits
        )
        lines.append(
            f"{s.index:>3} {s.value:>8g} {s.phase:<7} {s.verdict or '-':<8} {s.basis or '-':<11}"
            f" {o.completed:>6} {o.failed:>5} {_num(o.request_throughput):>8}"
            f" {_num(o.output_throughput, 0):>9} {_num(o.goodput):>8}  {lim}"
        )
    return lines


def _num(v: float, digits: int = 2) -> str:
    return "-" if v is None or math.isnan(v) else f"{v:,.{digits}f}"


def _fmt_val(lo: LimitObs) -> str:
    if math.isnan(lo.value):
        return "-"
    if lo.kind == "rate":
        return f"{lo.value:.1%}"
    return f"{lo.value:,.1f}ms" if lo.value < 1000 else f"{lo.value / 1000:,.2f}s"
