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
flight right now. `llmtop.knee.stats` holds the statistics (`judge_limit`, `quantile_ci_ranks`).

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
)
from llmtop.knee.stats import LimitObs, judge_limit

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
]


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
