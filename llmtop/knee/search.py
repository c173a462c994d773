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
  until the next `SetLoad(measure=True)`. Warm-up and settle segments (`measure=False`) are
  not judged. If the load was paused by a `Drain`, resume it after setting the new load.
- `Drain(label)`: stop offering load (pause the open-loop arrivals; start a new collector step
  so the judged step does not absorb the pause) until `StepObs.in_flight` reaches 0. Only in
  rate mode, after a breach: the next step then starts from an idle server, not a backlog.
- `Hold(reason)`: keep going.
- `Done(result)`: the search is over.

`observe` is fed `StepObs`: the judged step's completed / failed counts, a `LimitObs` per SLO
limit (samples, samples beyond the threshold including requests still waiting past it, point
value, mean), E2E p50 / p99 / max, client-side indicators, and the requests sent and in flight
right now. The machine keeps the observations of the judged step as a time series and asks
`llmtop.knee.steady` whether the step is stationary; `llmtop.knee.stats` holds the tests.

The rules (docs/knee.md says why):
- A step is judged *bad* as soon as the evidence is clear: a confident binomial breach (on
  samples discounted for clustering, from at least 3 batches), a backlog far beyond Little's
  law, or an error surge. A step is judged *good* only once it was held long enough
  (`hold_e2e` request lifetimes, `hold_tau` relaxation times of the utilisation implied by the
  measured capacity, `min_step_s`) AND is stationary (keeping up, no backlog trend, no
  upward latency trend); then a confident pass, or the point estimate from enough samples
  (`point_samples` / (1 − Q)). At `max_step_s`: the point estimate if stationary, else bad.
- Ramp by `factor` until the first breach (ramp steps far below the limit pass as probes,
  still only when stationary), then bisect between the highest good and the lowest bad value
  until (bad − good) / good <= resolution (concurrency: adjacent integers).
- Confirmation: the candidate knee is held for `confirm_s` (default max(60 s, 20 × E2E p50))
  and must still meet the SLO in a steady state; if not, the search steps down and confirms
  again. Only a confirmed knee is *sustained*.
- `budget_s` bounds the whole search; time for the confirmation is kept back, and when the
  budget ends first the answer is the unconfirmed bracket.
- Tiers: several named SLOs share the steps; each tier has its own bracket and confirmation.
- A breach that persists where requests barely overlap (or that halving the load does not
  improve) is an SLO no load can meet: the search ends at once.
"""

from __future__ import annotations

import math

from llmtop.knee.answer import Answers
from llmtop.knee.holds import Holds
from llmtop.knee.model import (
    Decision,
    Done,
    Drain,
    Hold,
    KneePlan,
    KneeResult,
    KneeStep,
    Mode,
    SetLoad,
    StepObs,
    Tier,
    TierKnee,
)
from llmtop.knee.planning import Planning
from llmtop.knee.stats import LimitObs, judge_limit
from llmtop.knee.steady import Sample, Steady
from llmtop.knee.tiers import TierState

__all__ = [
    "Decision",
    "Done",
    "Drain",
    "Hold",
    "KneePlan",
    "KneeResult",
    "KneeSearch",
    "KneeStep",
    "LimitObs",
    "Mode",
    "SetLoad",
    "StepObs",
    "Tier",
    "TierKnee",
]


class KneeSearch(Holds, Planning, Answers):
    """Ramp, bisect, confirm; one decision per `observe` call. See the module docstring."""

    def __init__(self, plan: KneePlan) -> None:
        self.plan = plan
        tiers = plan.tiers or (Tier(None, ()),)
        self.tiers = [TierState(i, t.name, t.limits) for i, t in enumerate(tiers)]
        self.steps: list[KneeStep] = []
        self.events: list[str] = []  # notable moments (re-check flips, failed confirmations)
        self.state = "idle"  # idle | warmup | measure | drain | settle | done
        self.result: KneeResult | None = None
        self._t0 = 0.0
        self._phase_t0 = 0.0
        self._warmup_s = 0.0
        self._series: list[Sample] = []
        self._judged: dict[int, list[int]] = {}  # step index -> tiers it is judged for
        self._pending: tuple[KneeStep, list[int]] | None = None  # good verdicts to re-check
        self._last_e2e_max_s = math.nan
        self._good_e2e_max_s = math.nan
        self._e2e_p50_s = math.nan
        self._mu: float | None = None  # capacity (req/s) measured on an overloaded step
        self._max_good_rate = 0.0
        self._retried: set[float] = set()
        self._next_after_drain = False
        self._notes: list[str] = []
        self._untested = ""  # the note when a verdict was a point estimate, steady state untested
        self._steady_last: Steady | None = None
        self._retry: tuple[float, str, int] | None = None
        self._drain_to = 0
        self._disp_seen: list[float] = []  # dispersion of recent well-batched steps

    # -- public ---------------------------------------------------------------------------
    @property
    def current(self) -> KneeStep | None:
        return self.steps[-1] if self.steps else None

    @property
    def done(self) -> bool:
        return self.state == "done"

    @property
    def good(self) -> list[float]:
        """Values the first tier found good (final verdicts)."""
        return list(self.tiers[0].good)

    @property
    def bad(self) -> list[float]:
        return list(self.tiers[0].bad)

    def tier_names(self) -> list[str | None]:
        return [t.name for t in self.tiers]

    def start(self, now_s: float) -> SetLoad:
        if self.state != "idle":
            raise RuntimeError("the search has already started")
        self._t0 = now_s
        return self._begin(now_s, self._norm(self.plan.start), "ramp", 0)

    def observe(self, now_s: float, obs: StepObs) -> Decision:
        if self.state == "done":
            assert self.result is not None
            return Done(self.result)
        if self.state == "idle":
            raise RuntimeError("call start() first")
        budget = self.plan.budget_s
        if budget is not None and now_s - self._t0 >= budget:
            return self._out_of_budget(now_s)
        step = self.current
        assert step is not None
        if self.state == "drain":
            if self._pending is not None:
                self._pending[0].obs = obs
            e2e = self._last_e2e_max_s
            limit = max(self.plan.drain_timeout_s, 3 * e2e if not math.isnan(e2e) else 0.0)
            if obs.in_flight <= self._drain_to or now_s - self._phase_t0 >= limit:
                self._next_after_drain = True
                return self._plan_next(now_s)
            return Hold("draining")
        if self.state in ("warmup", "settle"):
            # `obs` still describes the previous judged step: its stragglers come in now.
            if self._pending is not None:
                self._pending[0].obs = obs
            if now_s - self._phase_t0 < self._warmup_s:
                return Hold(self.state)
            if self._pending is not None:
                flipped = self._recheck(now_s)
                if flipped is not None:
                    return flipped
            if self.state == "settle":
                return self._plan_next(now_s)
            self.state = "measure"
            self._phase_t0 = now_s
            self._series = []
            step.measure_from_s = now_s
            return SetLoad(step.value, step.label, True, "measure")
        # measuring
        step.obs = obs
        self._series.append(
            Sample(
                now_s,
                obs.sent,
                obs.in_flight,
                tuple(
                    (
                        lo.n,
                        lo.exceed,
                        (lo.mean if not math.isnan(lo.mean) else 0.0) * (lo.n - lo.censored),
                        lo.n - lo.censored if not math.isnan(lo.mean) else 0,
                    )
                    for lo in obs.limits
                ),
            )
        )
        if not math.isnan(obs.e2e_max_s):
            self._last_e2e_max_s = obs.e2e_max_s
        return self._judge(now_s, step, obs, now_s - self._phase_t0)

    def stop(self, now_s: float, reason: str = "interrupted") -> Done:
        """End the search now (Ctrl-C, the operator took over): the answer so far."""
        if self.state != "done":
            step = self.current
            if step is not None and step.ended_s is None:
                step.ended_s = now_s
            self._finish(now_s, reason, complete=False)
        assert self.result is not None
        return Done(self.result)

    # -- formatting -----------------------------------------------------------------------
    def _norm(self, v: float) -> float:
        if self.plan.mode == "concurrency":
            return float(max(round(v), 1))
        return float(f"{v:.4g}")

    def _fmt(self, v: float) -> str:
        return f"{v:g} req/s" if self.plan.mode == "rate" else f"{int(v)} concurrent"

    def _tier_label(self, t: TierState) -> str:
        return f" [{t.name}]" if t.name and len(self.tiers) > 1 else ""

    # -- steps ----------------------------------------------------------------------------
    def _begin(self, now_s: float, value: float, phase: str, tier: int) -> SetLoad:
        label = f"knee {self._fmt(value)}" + (" confirm" if phase == "confirm" else "")
        step = KneeStep(len(self.steps), value, phase, label, now_s, tier=tier)
        if phase == "confirm":
            judged = [
                t.index
                for t in self.tiers
                if t.confirmed is None and t.gave_up is None and t.candidate == value
            ]
            step.hold_s = self._confirm_budgeted(now_s)
        else:
            judged = [t.index for t in self.tiers if t.interested(value)]
        self._judged[step.index] = judged or [tier]
        self.steps.append(step)
        self.state = "warmup"
        self._phase_t0 = now_s
        # after a drain the server starts idle: a good step's E2E tells how long it takes to
        # fill; otherwise the last judged step's stragglers must come back first
        after_drain, self._next_after_drain = self._next_after_drain, False
        e2e = self._good_e2e_max_s if after_drain else self._last_e2e_max_s
        self._warmup_s = self._warmup_for(e2e, value)
        p = self.plan
        if phase == "confirm":
            # the confirmation must not start on a transient: a quarter of its hold first
            self._warmup_s = min(max(self._warmup_s, 0.25 * step.hold_s), p.warmup_max_s)
        elif after_drain and not math.isnan(self._e2e_p50_s):
            self._warmup_s = min(
                max(self._warmup_s, 0.5 * p.hold_e2e * self._e2e_p50_s), p.warmup_max_s
            )
        return SetLoad(value, label + " warm-up", False, "warmup")

    def _judge(self, now_s: float, step: KneeStep, obs: StepObs, elapsed: float) -> Decision:
        p = self.plan
        judged = self._judged[step.index]
        done = obs.completed + obs.failed
        if done >= p.min_breach_requests and obs.error_rate >= p.error_surge:
            for t in judged:
                step.verdicts.setdefault(t, ("bad", "error surge"))
            self._close(now_s, step, obs, None)
            self._record_step(step)
            return self._finish(
                now_s,
                f"error surge: {obs.error_rate:.0%} of requests failed at {self._fmt(step.value)}",
                complete=False,
            )
        st = self._steady(step, obs, elapsed)
        open_ = [t for t in judged if t not in step.verdicts]
        # -- fast bad verdicts: clear overload needs no steady state
        backlog = self._backlog(step, obs, elapsed)
        if open_ and backlog >= p.backlog_breach and elapsed >= p.min_step_s:
            for t in open_:
                step.verdicts[t] = ("bad", "backlog")
            step.note = f"{obs.in_flight} in flight: the server is not keeping up"
        pvals: dict[int, float | None] = {}
        prior = self._disp_prior()
        for t in [t for t in judged if t not in step.verdicts]:
            idx = self._limits_of(self.tiers[t], obs)
            vs = [
                judge_limit(obs.limits[i], p.alpha, p.min_requests, max(st.dispersion(i), prior))
                for i in idx
            ]
            breaches = [v for v in vs if v.state == "breach" and v.confident]
            samples = min((obs.limits[i].n for i in idx), default=0)
            if breaches and samples >= p.min_breach_requests and st.batches >= 3:
                step.verdicts[t] = ("bad", "confident")
                pvals[t] = min((v.p_value for v in breaches if v.p_value is not None), default=None)
        # -- good verdicts (and point verdicts) need a long enough, stationary step
        confirm = step.phase == "confirm"
        hold = self._hold_s(step, obs)
        step.hold_s = hold
        e2e = self._e2e_ref(obs)
        probe_hold = max(p.probe_min_s, p.hold_e2e * e2e if not math.isnan(e2e) else 0.0)
        for t in [t for t in judged if t not in step.verdicts]:
            tier = self.tiers[t]
            idx = self._limits_of(tier, obs)
            lims = [obs.limits[i] for i in idx]
            disp = [st.dispersion(i) for i in idx]
            vs = [
                judge_limit(lo, p.alpha, p.min_requests, d)
                for lo, d in zip(lims, disp, strict=True)
            ]
            enough = bool(lims) and all(lo.n >= self._n_point(lo) for lo in lims)
            point_ok = all(lo.point_ok for lo in lims)
            if confirm:
                if elapsed >= hold and st.ok:
                    if self._shown(lims, disp, p.confirm_alpha):
                        step.verdicts[t] = ("good", "confirmed")
                    elif enough and not point_ok:
                        step.verdicts[t] = ("bad", "confirm")
                continue
            probe = (
                step.phase == "ramp"
                and not tier.bad
                and elapsed >= probe_hold
                and st.ok
                and bool(lims)
                and all(
                    lo.n >= p.probe_min_requests and lo.point_ok and lo.ratio <= p.probe_margin
                    for lo in lims
                )
            )
            if probe:
                step.verdicts[t] = ("good", "probe")
            elif elapsed >= hold and st.ok:
                passed = (
                    all(v.state == "pass" and v.confident for v in vs)
                    and obs.completed >= p.min_requests
                )
                if passed:
                    step.verdicts[t] = ("good", "confident")
                    pvs = [v.p_value for v in vs if v.p_value is not None]
                    pvals[t] = max(pvs) if pvs else None
                elif enough and self._shown(lims, disp, p.point_alpha):
                    step.verdicts[t] = ("good", "point")
                elif enough and not point_ok:
                    step.verdicts[t] = ("bad", "point")
            elif enough and not point_ok and elapsed >= p.min_step_s and st.batches >= 3:
                # a breach needs no steady state: a queue still filling only gets worse
                step.verdicts[t] = ("bad", "point")
        cap = max(2 * hold, p.max_step_s) if confirm else self._cap_s(step)
        if elapsed >= cap and not confirm and cap < self._hold_s(step, obs) and cap < p.max_step_s:
            # the budget, not the evidence, ends this step: no verdict rather than a guess
            for t in [t for t in judged if t not in step.verdicts]:
                step.verdicts[t] = ("undecided", "budget")
            step.note = step.note or "cut short by the budget"
        if elapsed >= cap:
            for t in [t for t in judged if t not in step.verdicts]:
                idx = self._limits_of(self.tiers[t], obs)
                lims = [obs.limits[i] for i in idx]
                if not lims or all(lo.n == 0 for lo in lims):
                    step.verdicts[t] = ("bad", "no data")
                elif not st.ok and not st.untested:
                    step.verdicts[t] = ("bad", "unsteady")
                    step.note = step.note or "; ".join(st.reasons)
                elif st.untested and confirm:
                    # too short a hold to test the steady state: that says nothing against
                    # the server, and nothing for it either (as too few samples)
                    step.verdicts[t] = ("undecided", "steady state untested")
                    self._note_untested(st, cap)
                else:
                    if st.untested:  # judged on its point estimates, and said so
                        self._note_untested(st, cap)
                        step.note = step.note or "steady state untested (" + st.reasons[0] + ")"
                    disp = [st.dispersion(i) for i in idx]
                    if confirm:
                        ok = self._shown(lims, disp, p.confirm_alpha)
                        if (
                            not ok
                            and all(lo.point_ok for lo in lims)
                            and self._too_few(lims, disp, p.confirm_alpha)
                        ):
                            # no breach, only too little evidence: stepping down would hold
                            # even fewer requests; the knee stays unconfirmed instead
                            step.verdicts[t] = ("undecided", "too few samples")
                            step.note = step.note or "too few samples to confirm (--confirm-s)"
                            continue
                    else:
                        ok = all(lo.point_ok for lo in lims)
                    step.verdicts[t] = ("good" if ok else "bad", "max hold")
        if any(t not in step.verdicts for t in judged):
            return Hold("measuring")
        if (
            p.mode == "rate"
            and self._mu is None
            and step.basis != "error surge"
            and any(v == "bad" for v, _ in step.verdicts.values())
            and elapsed < min(self._capacity_hold_s(), cap)
        ):
            # the first breach: keep the load a little longer to read the capacity from the
            # departures (every later hold scales with the utilisation it implies)
            return Hold("measuring the capacity")
        if confirm:
            self._share_confirmation(step, obs, st)
        primary = step.tier if step.tier in judged else judged[0]
        self._close(now_s, step, obs, pvals.get(primary))
        return self._after_step(now_s, step)

    def _note_untested(self, st: Steady, cap_s: float) -> None:
        """A step ended at its longest hold before its batches (each a request's lifetime)
        could test a steady state: its verdict is a point estimate, the knee's confidence at
        most low, and the note (the latest such step's) says how long a step would need to be."""
        need = math.ceil(st.width_s * self.plan.min_batches + 1)
        self._untested = (
            f"steps of {cap_s:.0f} s were too short to test a steady state ({st.batches} of "
            f"{self.plan.min_batches} batches of a request's lifetime, {st.width_s:.1f} s): "
            f"raise --max-step to at least {need} s"
        )

    def _share_confirmation(self, step: KneeStep, obs: StepObs, st: Steady) -> None:
        """A confirmation's long hold also speaks for the other tiers whose bracket holds its
        value: judge it for them by the bisection's rules, so that a loose tier's knee never
        ends below a tight tier's for want of a step judged for it."""
        p = self.plan
        for tier in self.tiers:
            t = tier.index
            if t in step.verdicts or t in self._judged[step.index] or not st.ok:
                continue
            if tier.confirmed is not None or tier.gave_up or tier.resolved:
                continue
            if not tier.interested(step.value):
                continue
            idx = self._limits_of(tier, obs)
            lims = [obs.limits[i] for i in idx]
            disp = [st.dispersion(i) for i in idx]
            if not lims or not all(lo.n >= self._n_point(lo) for lo in lims):
                continue
            if self._shown(lims, disp, p.point_alpha):
                step.verdicts[t] = ("good", "shared")
            elif not all(lo.point_ok for lo in lims):
                step.verdicts[t] = ("bad", "shared")

    def _close(self, now_s: float, step: KneeStep, obs: StepObs, pv: float | None) -> None:
        step.ended_s = now_s
        judged = self._judged[step.index]
        primary = step.tier if step.tier in step.verdicts else judged[0]
        step.verdict, step.basis = step.verdicts.get(primary, (None, ""))
        step.p_value = pv
        step.at_verdict = obs
        st = self._steady_last
        step.steady = st.as_dict() if st is not None else None
        steady_good = (
            st is not None and st.ok and all(v == "good" for v, _ in step.verdicts.values())
        )
        if steady_good and st is not None and st.batches >= 8 and st.phi:
            # how clustered slow requests are where the server keeps up (overloaded steps,
            # one long congestion, would overstate it)
            self._disp_seen.append(max(st.dispersion(i) for i in range(len(st.phi))))
        step.warnings.extend(self._client_warnings(obs))
        p = self.plan
        bad = any(v == "bad" for v, _ in step.verdicts.values())
        e2e50 = obs.e2e_p50_s
        if not bad and not math.isnan(e2e50):
            self._e2e_p50_s = e2e50  # a request's lifetime where the server keeps up
        if p.mode == "rate" and st is not None:
            saturated = (
                step.basis == "backlog"
                or not st.keeping_up
                or st.backlog_rise > max(2.0, 0.25 * st.in_flight_mean)
            )
            rate = st.late_departure_rate
            clear = not math.isnan(rate) and rate <= 0.9 * step.value
            long_enough = step.measured_s >= self._capacity_hold_s() - 1e-9
            if (
                bad
                and not math.isnan(rate)
                and ((self._mu is None and long_enough) or (saturated and clear))
            ):
                # departures past the filling: the capacity when the server was overloaded,
                # a lower bound of it when it kept up (then holds err on the long side)
                self._mu = max(self._mu or 0.0, min(rate, step.value))
            if not bad and st.ok:
                self._max_good_rate = max(self._max_good_rate, step.value)

    # -- moving on ------------------------------------------------------------------------
    def _record_step(self, step: KneeStep) -> None:
        for t, (verdict, _) in step.verdicts.items():
            self.tiers[t].record(step.value, verdict)

    def _after_step(self, now_s: float, step: KneeStep) -> Decision:
        bad = [t for t, (v, _) in step.verdicts.items() if v == "bad"]
        retry = (
            self.plan.retry_client_limited
            and bad
            and step.warnings
            and step.basis != "error surge"
            and step.value not in self._retried
            and step.phase != "confirm"
        )
        if retry:
            # the client fell behind during a breach: that verdict may be ours, not the
            # server's; measure this value once more (after a drain) before believing it
            self._retried.add(step.value)
            step.verdict = "void"
            step.basis += ", client-limited: retried"
            step.verdicts = {}
            self._pending = None
            return self._drain_then(now_s, step, (step.value, "retry", step.tier))
        self._record_step(step)
        good = [t for t, (v, b) in step.verdicts.items() if v == "good" and b != "probe"]
        if step.phase == "confirm":
            for t in self._judged[step.index]:
                tier = self.tiers[t]
                verdict, basis = step.verdicts.get(t, ("bad", ""))
                if verdict == "good":
                    tier.confirmed = step.value
                    tier.confirm_step = step
                elif basis in ("too few samples", "steady state untested"):
                    tier.record(step.value, "good")  # within the SLO on every point estimate
                    tier.candidate = None
                    what = "requests" if basis == "too few samples" else "batches"
                    tier.gave_up = (
                        f"{self._fmt(step.value)} held {step.measured_s:.0f} s within the SLO,"
                        f" too few {what} to confirm it: hold longer (--confirm-s)"
                    )
                else:
                    self._confirm_failed(tier, step, basis)
        if not bad:
            e2e = step.obs.e2e_max_s if step.obs is not None else math.nan
            if not math.isnan(e2e):
                self._good_e2e_max_s = e2e
        # provisional: the step's stragglers come back during the next warm-up (re-checked)
        self._pending = (step, good) if good else None
        if bad:
            return self._drain_then(now_s, step, None)
        return self._plan_next(now_s)

    def _drain_then(
        self, now_s: float, step: KneeStep, retry: tuple[float, str, int] | None
    ) -> Decision:
        self._retry = retry
        if self.plan.mode == "rate":
            self.state = "drain"
            self._phase_t0 = now_s
            self._drain_to = self._drain_target()
            return Drain(f"knee drain after {self._fmt(step.value)}")
        return self._plan_next(now_s)

    def _drain_target(self) -> int:
        """Drain the queue, not the server: stop at what the next load keeps busy.

        Little's law with a good step's E2E p50 gives the requests in flight at the next load
        without queueing; starting from an idle server instead would make the next step's
        first stretch look better than its steady state.
        """
        e2e = self._e2e_p50_s
        nxt = self._retry[0] if self._retry is not None else self._peek_value()
        if nxt is None or math.isnan(e2e):
            return 0
        return int(nxt * e2e)

    def _peek_value(self) -> float | None:
        for tier in self.tiers:
            nxt = self._tier_next(tier)
            if nxt is not None:
                return nxt[0]
        for tier in self.tiers:
            if tier.confirmed is None and tier.gave_up is None:
                if tier.candidate is not None:
                    return tier.candidate
                lo, _ = tier.bracket()
                if lo is not None:
                    return lo
        return None

    def _confirm_failed(self, tier: TierState, step: KneeStep, basis: str) -> None:
        """The candidate did not hold: step down and confirm again (budget permitting).

        One step down is `confirm_step_down` (5 %) below the failed value, or the highest
        value found good below it when that is closer: a confirmation that fails at the knee
        usually fails by little, and a bisection over again would cost more than it tells.
        """
        tier.confirmed = None
        tier.confirm_step = None
        tier.confirm_failures += 1
        value = step.value
        self.events.append(
            f"{self._fmt(value)}{self._tier_label(tier)} did not hold for the confirmation"
            f" ({basis}): stepping down"
        )
        p = self.plan
        lo, _ = tier.bracket()
        step_down = 1.0 if p.mode == "concurrency" else value * p.confirm_step_down
        nxt = self._norm(value - step_down)
        if lo is not None and nxt <= lo < value:
            nxt = lo
        low = 1.0 if p.mode == "concurrency" else p.floor
        if nxt < low - 1e-12 or nxt >= value:
            tier.candidate = None
            tier.gave_up = f"nothing down to {self._fmt(low)} held for the confirmation"
        elif tier.confirm_failures >= 5:
            tier.candidate = None
            tier.gave_up = "five confirmations failed"
        else:
            tier.candidate = nxt

    def _recheck(self, now_s: float) -> Decision | None:
        """Re-judge good verdicts with the step's stragglers in; a breach reopens the search."""
        assert self._pending is not None
        step, tiers = self._pending
        self._pending = None
        step.rechecked = True
        obs = step.obs
        if obs is None:
            return None
        p = self.plan
        phis = (step.steady or {}).get("dispersion") or []
        flipped = []
        for t in tiers:
            idx = self._limits_of(self.tiers[t], obs)
            lims = [obs.limits[i] for i in idx]
            vs = [
                judge_limit(
                    obs.limits[i], p.alpha, p.min_requests, phis[i] if i < len(phis) else 1.0
                )
                for i in idx
            ]
            breach = any(v.state == "breach" and v.confident for v in vs)
            point_ok = all(lo.point_ok for lo in lims)
            basis = step.verdicts.get(t, ("good", ""))[1]
            if basis == "confident" and not all(v.state == "pass" and v.confident for v in vs):
                if point_ok and not breach:
                    step.verdicts[t] = ("good", "point")  # no longer confidently good
                else:
                    breach = True
            if breach or not point_ok:
                flipped.append(t)
        if not flipped:
            if step.tier in step.verdicts:
                step.verdict, step.basis = step.verdicts[step.tier]
            return None
        step.flipped = True
        for t in flipped:
            step.verdicts[t] = ("bad", "recheck")
            tier = self.tiers[t]
            tier.record(step.value, "bad")
            if step.phase == "confirm" and t in self._judged[step.index]:
                self._confirm_failed(tier, step, "re-checked with its late requests")
            elif tier.candidate == step.value:
                tier.candidate = None  # the candidate it rested on is gone: search below it
                tier.confirming = False
        if step.tier in step.verdicts:
            step.verdict, step.basis = step.verdicts[step.tier]
        self.events.append(
            f"step {step.index} {self._fmt(step.value)} re-checked with its late requests -> bad"
        )
        # the step running now (in warm-up) was planned on a wrong premise: drop it
        cur = self.current
        if cur is not None and cur is not step and cur.verdict is None:
            self.steps.pop()
        return self._drain_then(now_s, step, None)
