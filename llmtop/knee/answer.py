"""The knee search's answer: each tier's knee, why the search ended, how sure it is.

A mixin of `llmtop.knee.search.KneeSearch`.
"""

from __future__ import annotations

import math

from llmtop.knee.model import Done, KneePlan, KneeResult, KneeStep, TierKnee
from llmtop.knee.stats import LimitObs
from llmtop.knee.tiers import TierState


class Answers:
    """The result; needs the attributes `KneeSearch.__init__` sets."""

    plan: KneePlan
    tiers: list[TierState]
    steps: list[KneeStep]
    state: str
    result: KneeResult | None
    _t0: float
    _notes: list[str]
    _untested: str

    # -- the answer -----------------------------------------------------------------------
    def _end_reason(self) -> str:
        return self._tier_reason(self.tiers[0])

    def _tier_reason(self, tier: TierState) -> str:
        lo, hi = tier.bracket()
        if tier.unattainable:
            return f"unattainable: {tier.resolved}"
        if tier.confirmed is not None:
            step = tier.confirm_step
            held = f" held {step.measured_s:.0f} s" if step is not None else ""
            return f"sustained: {self._fmt(tier.confirmed)}{held} within the SLO"
        if lo is None:
            if tier.resolved:
                return tier.resolved
            return f"even {self._fmt(min(tier.bad))} breaks the SLO" if tier.bad else "no answer"
        why = f" ({tier.gave_up})" if tier.gave_up else ""
        if hi is None:
            top = " (the maximum tried)" if lo >= self.plan.max_value else ""
            return f"at least {self._fmt(lo)}{top}, unconfirmed{why}"
        return f"between {self._fmt(lo)} and {self._fmt(hi)}, unconfirmed{why}"

    def _tier_knee(self, tier: TierState, complete: bool) -> TierKnee:
        lo, hi = tier.bracket()
        notes: list[str] = []
        knee_step: KneeStep | None = None
        if tier.confirmed is not None:
            knee = tier.confirmed
            knee_step = tier.confirm_step
            above = [b for b in tier.bad if b > knee]
            first_bad = min(above) if above else None
        else:
            knee = lo
            first_bad = hi
            if lo is not None:
                judged = [
                    s
                    for s in self.steps
                    if s.value == lo and s.verdicts.get(tier.index, ("", ""))[0] == "good"
                ]
                knee_step = judged[-1] if judged else None
        score = 2
        if knee is None:
            score = -1
        else:
            if tier.confirmed is not None and knee_step is not None:
                n = knee_step.obs.completed if knee_step.obs else 0
                notes.append(
                    f"{self._fmt(knee)} held {knee_step.measured_s:.0f} s ({n} requests) in a"
                    " steady state within the SLO: sustained"
                )
            else:
                score = 0
                why = tier.gave_up or "not confirmed"
                notes.append(f"{self._fmt(knee)} is not confirmed ({why})")
            if first_bad is not None:
                bad_step = next(
                    (
                        s
                        for s in reversed(self.steps)
                        if s.value == first_bad and s.verdicts.get(tier.index, ("", ""))[0] == "bad"
                    ),
                    None,
                )
                if bad_step is not None and bad_step.verdicts[tier.index][1] in (
                    "confident",
                    "recheck",
                    "error surge",
                    "backlog",
                ):
                    notes.append(f"{self._fmt(first_bad)} broke the SLO beyond doubt")
                else:
                    score -= 1
                    notes.append(f"{self._fmt(first_bad)} broke the SLO on its point estimate")
                gap = (first_bad - knee) / knee
                notes.append(f"the knee lies in [{knee:g}, {first_bad:g}) ({gap:.1%} wide)")
                if gap > 2 * self.plan.resolution + 1e-9:
                    score -= 1
            else:
                score -= 1
                notes.append("no breach seen: the knee is at least this value")
        if not complete or self._untested:  # or judged without a steady-state test
            score = min(score, 0)
        confidence = {2: "high", 1: "medium", 0: "low"}.get(score, "none")
        return TierKnee(
            tier=tier.index,
            name=tier.name,
            knee=knee,
            first_bad=first_bad,
            sustained=tier.confirmed is not None,
            knee_step=knee_step,
            reason=self._tier_reason(tier),
            confidence=confidence,
            confidence_notes=notes,
            unattainable=tier.unattainable,
        )

    def _finish(self, now_s: float, reason: str, complete: bool) -> Done:
        self.state = "done"
        knees = [self._tier_knee(t, complete) for t in self.tiers]
        first = knees[0]
        warnings: list[str] = []
        hi_all = max((k.first_bad for k in knees if k.first_bad is not None), default=None)
        relevant = [
            s
            for s in self.steps
            if s.verdict in ("good", "bad") and (hi_all is None or s.value <= hi_all)
        ]
        for s in relevant:
            for w in s.warnings:
                warnings.append(f"{self._fmt(s.value)}: {w}")
        client_limited = bool(warnings)
        notes = list(first.confidence_notes) + list(dict.fromkeys(self._notes))
        if self._untested:
            notes.append(self._untested)
        confidence = first.confidence
        if client_limited:
            notes.append("the client, not the server, may have limited the run (see warnings)")
            for k in knees:
                if k.confidence in ("high", "medium"):
                    k.confidence = "low"
            if confidence in ("high", "medium"):
                confidence = "low"
        self.result = KneeResult(
            mode=self.plan.mode,
            knee=first.knee,
            first_bad=first.first_bad,
            reason=reason,
            confidence=confidence,
            confidence_notes=notes,
            client_limited=client_limited,
            warnings=warnings,
            steps=list(self.steps),
            knee_step=first.knee_step,
            duration_s=now_s - self._t0,
            complete=complete,
            knees=knees,
            sustained=first.sustained,
            unattainable=first.unattainable,
            budget_s=self.plan.budget_s,
        )
        return Done(self.result)


def _ms(lo: LimitObs) -> str:
    if math.isnan(lo.value):
        return "-"
    if lo.kind == "rate":
        return f"{lo.value:.1%}"
    return f"{lo.value:,.1f} ms" if lo.value < 1000 else f"{lo.value / 1000:,.2f} s"
