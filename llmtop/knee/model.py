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
