"""Where the knee search goes next, and what its time budget allows.

A mixin of `llmtop.knee.search.KneeSearch`: the next value of each tier (ramp, bisect, down,
or an SLO no load can meet), the confirmations, and the budget (time kept back for them).
"""

from __future__ import annotations

import math

from llmtop.knee.answer import _ms
from llmtop.knee.model import Decision, Done, KneePlan, KneeStep, SetLoad
from llmtop.knee.tiers import TierState


class Planning:
    """Next steps and the budget; needs the attributes `KneeSearch.__init__` sets."""

    plan: KneePlan
    tiers: list[TierState]
    steps: list[KneeStep]
    events: list[str]
    state: str
    _t0: float
    _phase_t0: float
    _warmup_s: float
    _notes: list[str]
    _retry: tuple[float, str, int] | None
    _pending: tuple[KneeStep, list[int]] | None
    _last_e2e_max_s: float

    # -- planning -------------------------------------------------------------------------
    def _plan_next(self, now_s: float) -> Decision:
        retry, self._retry = self._retry, None
        if retry is not None:
            return self._begin(now_s, retry[0], retry[1], retry[2])
        p = self.plan
        # 1. narrow each tier's bracket, in order, while the budget leaves room to confirm
        _ = p
        for tier in self.tiers:
            nxt = self._tier_next(tier)
            if nxt is None:
                continue
            if not self._room_to_search(now_s, nxt[0]):
                self._notes.append(
                    "the budget stopped the bisection early to keep time for the confirmation"
                )
                break
            return self._begin(now_s, nxt[0], nxt[1], tier.index)
        # 2. confirm each tier's candidate knee
        for tier in self.tiers:
            if tier.confirmed is not None or tier.gave_up is not None:
                continue
            if tier.candidate is None:
                lo, _ = tier.bracket()
                if lo is None:
                    continue
                tier.candidate = lo
            tier.confirming = True
            if not self._room_to_confirm(now_s):
                tier.gave_up = "the budget ended before the confirmation"
                continue
            return self._begin(now_s, tier.candidate, "confirm", tier.index)
        # 3. the last good verdict's stragglers come back before the answer
        if self._pending is not None:
            step = self._pending[0]
            self.state = "settle"
            self._phase_t0 = now_s
            e2e = step.obs.e2e_max_s if step.obs is not None else math.nan
            self._warmup_s = self._warmup_for(e2e, step.value)
            return SetLoad(step.value, step.label + " settle", False, "settle")
        complete = all(
            t.confirmed is not None or t.unattainable or t.bracket()[0] is None for t in self.tiers
        )
        return self._finish(now_s, self._end_reason(), complete=complete)

    def _tier_next(self, tier: TierState) -> tuple[float, str] | None:
        """The next value to try for one tier, or None when its bracket is narrow enough."""
        if tier.resolved is not None or tier.confirming:
            return None
        p = self.plan
        lo, hi = tier.bracket()
        conc = p.mode == "concurrency"
        if lo is None and hi is None:
            return self._norm(p.start), "ramp"
        if hi is None:  # no breach above the best good value yet: ramp
            assert lo is not None
            if lo >= p.max_value:
                return None
            nxt = lo * p.factor
            if conc:
                nxt = max(lo + 1, round(nxt))
            return self._norm(min(nxt, p.max_value)), "ramp"
        if lo is None:  # even the lowest tried breaks: go down, unless no load can help
            why = self._unattainable(tier)
            if why is not None:
                tier.resolved = why
                tier.unattainable = True
                self.events.append(f"SLO{self._tier_label(tier)} unattainable: {why}")
                return None
            nxt = hi / p.factor
            if conc:
                nxt = min(hi - 1, math.floor(nxt))
            if nxt < p.floor - 1e-12 or (conc and nxt < 1):
                tier.resolved = f"even {self._fmt(hi)} breaks the SLO (the lowest load tried)"
                return None
            return self._norm(nxt), "down"
        if conc:
            if hi - lo <= 1 or (hi - lo) / lo <= p.resolution:
                return None
            return self._norm((lo + hi) // 2), "bisect"
        if (hi - lo) / lo <= p.resolution:
            return None
        return self._norm((lo + hi) / 2), "bisect"

    def _unattainable(self, tier: TierState) -> str | None:
        """Why no lower load can meet this tier's SLO, or None while one might."""
        p = self.plan
        bad_steps = [
            s
            for s in self.steps
            if s.verdicts.get(tier.index, ("", ""))[0] == "bad" and s.obs is not None
        ]
        if not bad_steps:
            return None
        last = bad_steps[-1]
        obs = last.at_verdict or last.obs
        assert obs is not None
        idx = self._limits_of(tier, obs)
        broken = [i for i in idx if not obs.limits[i].point_ok]
        what = ", ".join(
            f"{obs.limits[i].text.split('<')[0].split('>')[0]} {_ms(obs.limits[i])}" for i in broken
        )
        if p.mode == "concurrency":
            return None  # the floor (1 in flight) ends it
        n_mean = (last.steady or {}).get("in_flight_mean")
        if broken and n_mean is not None and n_mean <= p.unattainable_in_flight:
            return (
                f"{what} at {self._fmt(last.value)} with {n_mean:.1f} requests in flight on"
                " average: requests barely overlap, so no lower load can meet it"
            )
        if len(bad_steps) >= 2 and broken:
            prev = bad_steps[-2]
            prev_obs = prev.at_verdict or prev.obs
            if prev_obs is not None and last.value <= prev.value / 1.5:
                gains = []
                for i in broken:
                    a, b = prev_obs.limits[i].value, obs.limits[i].value
                    if not math.isnan(a) and a > 0 and not math.isnan(b):
                        gains.append(b / a)
                if gains and min(gains) >= p.unattainable_gain:
                    return (
                        f"{what} at {self._fmt(last.value)}, no better than at"
                        f" {self._fmt(prev.value)}: lowering the load does not help"
                    )
        return None

    # -- the budget -----------------------------------------------------------------------
    def _left_s(self, now_s: float) -> float:
        b = self.plan.budget_s
        return math.inf if b is None else self._t0 + b - now_s

    def _overhead_s(self) -> float:
        """Warm-up (or drain) plus settle around a step, at the last known E2E."""
        e = self._last_e2e_max_s
        w = self.plan.warmup_first_s if math.isnan(e) else self._warmup_for(e, 0.0)
        return 2 * w

    def _confirm_reserve_s(self) -> float:
        total = 0.0
        for t in self.tiers:
            if t.confirmed is None and t.gave_up is None:
                lo, _ = t.bracket()
                value = t.candidate or lo or self.plan.start
                total += self._confirm_estimate_s(value) + self._overhead_s()
        return total

    def _confirm_estimate_s(self, value: float) -> float:
        """A confirmation's likely length: its hold, its warm-up, and the time the samples
        take to show a p99 within the limit at the clustering seen so far."""
        p = self.plan
        hold = self._confirm_hold_s()
        need = hold
        if p.mode == "rate" and value > 0:
            n_eff = math.log(p.confirm_alpha) / math.log(0.99)
            need = max(hold, n_eff * self._disp_prior() / value)
        return min(need, max(2 * hold, p.max_step_s)) + 0.25 * hold

    def _capacity_hold_s(self) -> float:
        p = self.plan
        e2e = self._e2e_ref()
        return max(p.min_step_s, 20.0, 0.0 if math.isnan(e2e) else 2 * p.hold_e2e * e2e)

    def _cap_s(self, step: KneeStep) -> float:
        """A search step's longest judged stretch: --max-step, and what the budget leaves
        once the confirmations are kept back."""
        p = self.plan
        cap = p.max_step_s
        if p.budget_s is not None and step.measure_from_s is not None:
            end = self._t0 + p.budget_s - self._confirm_reserve_s() - self._overhead_s()
            cap = min(cap, max(end - step.measure_from_s, p.min_step_s))
        return cap

    def _step_estimate_s(self, value: float) -> float:
        """How long a step near the knee takes: its hold, or the time to gather the samples
        a point verdict needs at this load, whichever is longer."""
        p = self.plan
        e2e = self._e2e_ref()
        hold = max(p.min_step_s, p.hold_e2e * e2e if not math.isnan(e2e) else 0.0)
        if p.mode == "rate" and value > 0:
            need = max((self._n_point_any() / value), 0.0)
            hold = max(hold, need)
        return min(hold, p.max_step_s)

    def _n_point_any(self) -> int:
        p = self.plan
        return max(math.ceil(p.point_samples / 0.01), p.min_requests)

    def _room_to_search(self, now_s: float, value: float | None = None) -> bool:
        left = self._left_s(now_s)
        if math.isinf(left):
            return True
        step_s = self._step_estimate_s(value if value is not None else self.plan.start)
        return left - self._confirm_reserve_s() >= step_s + self._overhead_s()

    def _room_to_confirm(self, now_s: float) -> bool:
        left = self._left_s(now_s)
        return left >= 0.75 * self._confirm_hold_s() + self._overhead_s()

    def _confirm_budgeted(self, now_s: float) -> float:
        hold = self._confirm_hold_s()
        left = self._left_s(now_s) - self._overhead_s()
        if left < hold:
            self._notes.append(f"the budget shortened the confirmation to {max(left, 0):.0f} s")
            return max(left, 0.0)
        return hold

    def _out_of_budget(self, now_s: float) -> Done:
        step = self.current
        if step is not None and step.ended_s is None:
            step.ended_s = now_s
            if step.verdict is None:
                step.note = step.note or "cut short by the budget"
        for t in self.tiers:
            if t.confirmed is None and t.gave_up is None:
                t.gave_up = "the budget ended before the confirmation"
        done = all(t.confirmed is not None for t in self.tiers)
        return self._finish(now_s, f"the budget ({self.plan.budget_s:g} s) ended", complete=done)
