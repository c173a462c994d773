"""How long the knee search holds a load, and what it reads from the held stretch.

A mixin of `llmtop.knee.search.KneeSearch` (split out to keep modules short): durations
that scale with the request lifetime and the relaxation time of the measured utilisation,
the stationarity analysis of a step, the evidence a verdict needs, the client-limited
indicators. docs/knee.md says why each rule is what it is.
"""

from __future__ import annotations

import math
from dataclasses import replace
from typing import Any

from llmtop.knee.model import KneePlan, KneeStep, StepObs
from llmtop.knee.stats import LimitObs, shown_within
from llmtop.knee.steady import Sample, Steady, analyse
from llmtop.knee.tiers import TierState


class Holds:
    """Durations and evidence; needs the attributes `KneeSearch.__init__` sets."""

    plan: KneePlan
    _series: list[Sample]
    _phase_t0: float
    _e2e_p50_s: float
    _mu: float | None
    _max_good_rate: float
    _disp_seen: list[float]
    _steady_last: Steady | None
    _elapsed: Any

    # -- durations ------------------------------------------------------------------------
    def _e2e_ref(self, obs: StepObs | None = None) -> float:
        """A request's lifetime (E2E p50): this step's when measured, else the last one's."""
        cur = obs.e2e_p50_s if obs is not None else math.nan
        known = [x for x in (cur, self._e2e_p50_s) if not math.isnan(x)]
        return max(known) if known else math.nan

    def _tau_s(self, value: float) -> float:
        """Relaxation time of the queue at `value` req/s, from the measured capacity.

        Heavy-traffic approximation (a reflected Brownian motion with drift μ − λ and variance
        λ(c_a² + c_s²)): τ ≈ λ(c_a² + c_s²) / (μ − λ)², with c_s² = 1 (a conservative choice
        for service times that vary). 0 until an overloaded step has shown the capacity μ.
        """
        p = self.plan
        if p.mode != "rate" or self._mu is None:
            return 0.0
        mu = max(self._mu, self._max_good_rate)
        gap = max(mu - value, 0.02 * mu)
        return value * (p.arrival_cv2 + 1.0) / (gap * gap)

    def _hold_s(self, step: KneeStep, obs: StepObs | None) -> float:
        p = self.plan
        if step.phase == "confirm":
            return step.hold_s
        e2e = self._e2e_ref(obs)
        hold = max(
            p.min_step_s,
            p.hold_e2e * e2e if not math.isnan(e2e) else 0.0,
            p.hold_tau * self._tau_s(step.value),
        )
        return min(hold, p.max_step_s)

    def _confirm_hold_s(self) -> float:
        p = self.plan
        if p.confirm_s is not None:
            return p.confirm_s
        e2e = self._e2e_ref()
        return max(p.confirm_min_s, p.confirm_e2e * e2e if not math.isnan(e2e) else 0.0)

    def _warmup_for(self, e2e_s: float, value: float) -> float:
        p = self.plan
        if math.isnan(e2e_s):
            return p.warmup_first_s
        return min(max(e2e_s, 2 * self._tau_s(value), p.warmup_min_s), p.warmup_max_s)

    def _limits_of(self, t: TierState, obs: StepObs) -> list[int]:
        return list(t.limits) if t.limits else list(range(len(obs.limits)))

    def _steady(self, step: KneeStep, obs: StepObs, elapsed: float) -> Steady:
        p = self.plan
        thresholds = [
            lo.threshold if lo.kind in ("quantile", "mean", "max") and lo.upper else None
            for lo in obs.limits
        ]
        e2e = self._e2e_ref(obs)
        # batches of a request lifetime at least, and a second (shorter when --max-step is:
        # a step must fit its batches)
        floor = min(p.batch_min_s, p.max_step_s / (2 * p.min_batches))
        width = max(floor, e2e if not math.isnan(e2e) else 0.0, elapsed / 16)
        offered = step.value if p.mode == "rate" else None
        st = analyse(
            self._series,
            self._phase_t0,
            offered,
            thresholds,
            width,
            alpha=p.trend_alpha,
            material=p.trend_material,
            min_batches=p.min_batches,
            stddevs=[lo.stddev for lo in obs.limits],
        )
        self._steady_last = st
        return st

    def _disp_prior(self) -> float:
        """Clustering seen on earlier steps: a breach early in a step, before its own batches
        can show how clustered its slow requests are, is discounted at least this much."""
        seen = sorted(self._disp_seen[-3:])
        return seen[len(seen) // 2] if seen else 1.0

    def _n_point(self, lo: LimitObs) -> int:
        p = self.plan
        if lo.kind == "quantile" and lo.q is not None and lo.q < 1:
            return max(math.ceil(p.point_samples / (1 - lo.q)), p.min_requests)
        return p.min_requests

    def _shown(self, lims: list[LimitObs], disp: list[float], alpha: float) -> bool:
        """Every limit's upper confidence bound (level 1 − alpha) within it."""
        p = self.plan
        return bool(lims) and all(
            shown_within(lo, alpha, p.min_requests, d) for lo, d in zip(lims, disp, strict=True)
        )

    def _too_few(self, lims: list[LimitObs], disp: list[float], alpha: float) -> bool:
        """Even with no sample past a limit its bound could not be shown: the hold was too
        short for the evidence asked, which says nothing against the server."""
        p = self.plan
        return any(
            not shown_within(
                replace(lo, exceed=0, value=min(lo.value, lo.threshold)), alpha, p.min_requests, d
            )
            for lo, d in zip(lims, disp, strict=True)
            if lo.upper
        )

    def _backlog(self, step: KneeStep, obs: StepObs, elapsed: float) -> float:
        """In flight / (rate × E2E p99 of the completed): Little's law says <= ~1 when stable.

        Records arrive when a request ends, so in overload the completed ones are the early,
        fast ones and their percentiles look fine while a queue grows behind them; the count
        in flight gives that away. Open loop only (a closed loop bounds what is in flight).
        A sparse step (a request or two in flight) is never a backlog.
        """
        p = self.plan
        if p.mode != "rate":
            return 0.0
        if obs.completed == 0:
            ref = self._good_e2e_max_s
            if (
                not math.isnan(ref)
                and elapsed > 3 * ref
                and obs.in_flight > 3 * step.value * ref + p.backlog_slack
            ):
                return math.inf
            return 0.0
        if math.isnan(obs.e2e_p99_s):
            return 0.0
        expected = step.value * obs.e2e_p99_s
        return max(obs.in_flight - p.backlog_slack, 0) / max(expected, 1.0)

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
