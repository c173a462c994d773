"""The knee search's data: what it observes, what it decides, its plan, steps and result.

Plain dataclasses shared by the state machine (`search`), its runner and the documents it
leaves; nothing here decides anything.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Literal

from llmtop.knee.stats import LimitObs

Mode = Literal["rate", "concurrency"]


@dataclass(frozen=True)
class StepObs:
    """What the runner saw of the judged step (and of the load right now)."""

    completed: int = 0
    failed: int = 0
    limits: tuple[LimitObs, ...] = ()
    e2e_p99_s: float = math.nan
    e2e_max_s: float = math.nan
    e2e_p50_s: float = math.nan
    send_slip_p99_ms: float = math.nan
    slot_wait_p99_ms: float = math.nan
    client_cpu: float = math.nan  # load-process CPU seconds per wall second
    in_flight: int = 0  # requests in flight or queued for a slot now, all steps together
    sent: int = -1  # requests sent so far, all steps together (-1: unknown)
    request_throughput: float = math.nan
    output_throughput: float = math.nan
    goodput: float = math.nan

    @property
    def error_rate(self) -> float:
        done = self.completed + self.failed
        return self.failed / done if done else 0.0


# -- the plan and the decisions -----------------------------------------------------------
@dataclass(frozen=True)
class Tier:
    """One named SLO of a tiered search: which of the observed limits are its own."""

    name: str | None
    limits: tuple[int, ...]  # indices into StepObs.limits


@dataclass(frozen=True)
class KneePlan:
    mode: Mode = "rate"
    start: float = 1.0
    factor: float = 2.0
    max_value: float = 1000.0
    min_value: float | None = None  # lowest value tried when the start breaches already
    resolution: float = 0.05
    min_step_s: float = 6.0  # measured part of a step, at least
    max_step_s: float = 180.0  # ... at most (--max-step)
    min_requests: int = 20  # completed requests before a pass (and a point verdict) counts
    min_breach_requests: int = 5
    alpha: float = 0.05  # 1 - confidence of the binomial verdicts
    probe_margin: float = 0.5  # ramp steps pass early when every value <= margin × limit...
    probe_min_s: float = 3.0  # ...after this long
    probe_min_requests: int = 5  # ...and this many samples
    warmup_first_s: float = 3.0
    warmup_min_s: float = 2.0
    warmup_max_s: float = 60.0
    drain_timeout_s: float = 60.0
    error_surge: float = 0.2  # a step with this error rate ends the search
    slip_warn_ms: float = 10.0  # client-limited warning: send slip p99 above this...
    slip_warn_frac: float = 0.05  # ...or above this fraction of the tightest latency limit
    slot_warn_ms: float = 10.0
    cpu_warn: float = 0.9
    verify: bool = False  # kept for old callers: the knee is always confirmed now
    backlog_ok: float = 1.5  # in flight <= this × rate × E2E p99 (+ slack) keeps a pass open
    backlog_breach: float = 3.0  # ...and a step with more than this is over capacity
    backlog_slack: int = 4
    retry_client_limited: bool = True  # a breach while the client lagged is measured again
    # steady state (docs/knee.md): holds scale with what is observed
    hold_e2e: float = 10.0  # a verdict waits for at least this many request lifetimes (E2E p50)
    hold_tau: float = 4.0  # ...and this many relaxation times of the implied utilisation
    point_samples: float = 3.0  # a point verdict on pQ needs >= this / (1 - Q) samples
    point_alpha: float = 0.5  # a good point verdict: the limit's upper bound at 1 − this
    trend_alpha: float = 0.05  # one-sided level of the trend tests
    trend_material: float = 0.05  # a latency trend counts when the mean rises > this × limit
    batch_min_s: float = 1.0  # batches of the stationarity tests are at least this long
    min_batches: int = 4
    arrival_cv2: float = 1.0  # squared coefficient of variation of the inter-arrival times
    # confirmation at the knee
    confirm_s: float | None = None  # None: max(confirm_min_s, confirm_e2e × E2E p50)
    confirm_min_s: float = 60.0
    confirm_e2e: float = 20.0
    confirm_alpha: float = 0.6  # the confirmation: the upper bound at 1 − this, within
    confirm_step_down: float = 0.05  # after a failed confirmation, try this much lower
    budget_s: float | None = None  # the whole search, at most (--budget)
    # an SLO no load can meet: the breach persists where requests barely overlap...
    unattainable_in_flight: float = 1.0
    unattainable_gain: float = 0.9  # ...or halving the load improved the figure < 10 %
    tiers: tuple[Tier, ...] = ()  # () = one tier with every limit

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
        if self.confirm_s is not None and not self.confirm_s > 0:
            raise ValueError("the confirmation hold must be > 0 s")
        if self.budget_s is not None and not self.budget_s > 0:
            raise ValueError("the budget must be > 0 s")

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
    phase: str  # "warmup" | "measure" | "settle"


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
    phase: str  # "ramp" | "bisect" | "down" | "confirm" | "retry"
    label: str
    started_s: float
    measure_from_s: float | None = None
    ended_s: float | None = None
    verdict: str | None = None  # "good" | "bad" | None while running / when interrupted
    basis: str = ""  # "confident" | "point" | "probe" | "max hold" | "backlog" | "unsteady"...
    p_value: float | None = None  # of the verdict's test (smallest over limits)
    rechecked: bool = False
    flipped: bool = False
    obs: StepObs | None = None
    warnings: list[str] = field(default_factory=list)  # client-limited indicators only
    note: str = ""
    tier: int = 0  # the tier this step was planned for
    verdicts: dict[int, tuple[str, str]] = field(default_factory=dict)  # tier -> (verdict, basis)
    hold_s: float = 0.0  # the least judged time a good verdict needed here
    steady: dict[str, Any] | None = None  # the stationarity analysis at the verdict
    at_verdict: StepObs | None = None  # the observation the verdict was made on

    @property
    def measured_s(self) -> float:
        if self.measure_from_s is None:
            return 0.0
        return max((self.ended_s or self.measure_from_s) - self.measure_from_s, 0.0)

    def as_dict(self, tier_names: list[str | None] | None = None) -> dict[str, Any]:
        o = self.obs or StepObs()
        v = self.at_verdict or o
        names = tier_names or []
        d: dict[str, Any] = {
            "index": self.index,
            "value": self.value,
            "phase": self.phase,
            "label": self.label,
            "verdict": self.verdict,
            "basis": self.basis,
            "p_value": self.p_value,
            "flipped": self.flipped,
            "measured_s": self.measured_s,
            "hold_s": self.hold_s,
            "completed": o.completed,
            "failed": o.failed,
            "completed_at_verdict": v.completed,
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
                    "censored": lo.censored,
                    "ok": lo.point_ok,
                }
                for lo in v.limits
            ],
            "steady": self.steady,
            "warnings": list(self.warnings),
            "note": self.note,
        }
        if len(names) > 1:
            d["tiers"] = {
                (names[t] or str(t)): {"verdict": vb[0], "basis": vb[1]}
                for t, vb in sorted(self.verdicts.items())
            }
        return d


@dataclass
class TierKnee:
    """The answer for one SLO tier."""

    tier: int
    name: str | None
    knee: float | None  # the sustained (confirmed) knee, or the best good value unconfirmed
    first_bad: float | None
    sustained: bool  # held for the confirmation and still within the SLO
    knee_step: KneeStep | None  # the confirmation step (or the good step when unconfirmed)
    reason: str
    confidence: str
    confidence_notes: list[str]
    unattainable: bool = False

    def as_dict(self, mode: Mode) -> dict[str, Any]:
        o = self.knee_step.obs if self.knee_step and self.knee_step.obs else None
        step = self.knee_step
        return {
            "tier": self.name,
            "mode": mode,
            "unit": "req/s" if mode == "rate" else "concurrent requests",
            "value": self.knee,
            "rate": self.knee if mode == "rate" else None,
            "concurrency": self.knee if mode == "concurrency" else None,
            "first_bad": self.first_bad,
            "sustained": self.sustained,
            "unattainable": self.unattainable,
            "held_s": step.measured_s if step is not None else None,
            "held_value": step.value if step is not None else None,
            "request_throughput": o.request_throughput if o else None,
            "output_throughput": o.output_throughput if o else None,
            "goodput": o.goodput if o else None,
            "reason": self.reason,
            "confidence": self.confidence,
            "confidence_notes": list(self.confidence_notes),
            "knee_step": step.index if step else None,
        }


@dataclass
class KneeResult:
    mode: Mode
    knee: float | None  # the first tier's knee (None: not even the lowest load met it)
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
    knees: list[TierKnee] = field(default_factory=list)
    sustained: bool = False
    unattainable: bool = False
    budget_s: float | None = None

    @property
    def met(self) -> bool:
        """Some step met every tier's SLO (the CLI exits 3 when not)."""
        if self.knees:
            return all(k.knee is not None for k in self.knees)
        return self.knee is not None

    def as_dict(self) -> dict[str, Any]:
        o = self.knee_step.obs if self.knee_step and self.knee_step.obs else None
        unit = "req/s" if self.mode == "rate" else "concurrent requests"
        first = self.knees[0] if self.knees else None
        return {
            "tier": first.name if first else None,
            "mode": self.mode,
            "unit": unit,
            "value": self.knee,
            "rate": self.knee if self.mode == "rate" else None,
            "concurrency": self.knee if self.mode == "concurrency" else None,
            "first_bad": self.first_bad,
            "sustained": self.sustained,
            "unattainable": self.unattainable,
            "held_s": self.knee_step.measured_s if self.knee_step else None,
            "held_value": self.knee_step.value if self.knee_step else None,
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
            "budget_s": self.budget_s,
            "knee_step": self.knee_step.index if self.knee_step else None,
        }


@dataclass(frozen=True)
class Done:
    result: KneeResult


Decision = SetLoad | Drain | Hold | Done
