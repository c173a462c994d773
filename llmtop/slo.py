"""Service-level objectives: parse `ttft_p99<=1s,tpot_p99<=20ms,error_rate<=1%` and judge.

Pure logic, at the bottom of the layers: it imports nothing from llmtop (the figures an SLO
is judged on come in through `evaluate`'s `value_of`). The metric names below are the SLO
language's vocabulary; `llmtop.metrics.catalog` reads which metrics are SLO-able from them.
A latency limit names a metric and a statistic (any percentile, mean or max);
`error_rate` is failed / (completed + failed). Each latency limit also acts per request for
goodput, as in `vllm bench serve --goodput`: a request is good when it completed and its own
TTFT / TPOT / E2E (and ITL: its worst gap) are within every limit on that metric.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from dataclasses import dataclass

LATENCY_METRICS = (
    "ttft",
    "tpot",
    "itl",
    "e2el",
    "ttft_from_intended",
    "ttft_reasoning",
    "ttft_answer",
    "e2el_from_intended",
    "send_slip",
    "queue_wait",
)
RATE_METRICS = ("error_rate",)
_UNITS_MS = {"us": 0.001, "µs": 0.001, "ms": 1.0, "s": 1000.0}
_LIMIT = re.compile(
    r"^(?P<metric>[a-z][a-z0-9_]*?)(?:_(?P<stat>p\d+(?:\.\d+)?|mean|max|avg))?\s*(?P<op><=|<|>=|>)\s*"
    r"(?P<value>\d+(?:\.\d+)?)\s*(?P<unit>us|µs|ms|s|%)?$"
)


class SloError(ValueError):
    """A limit that cannot be parsed; the message says what is allowed."""


@dataclass(frozen=True)
class Limit:
    metric: str  # one of LATENCY_METRICS or RATE_METRICS
    stat: str  # "p99", "p99.9", "mean", "max"; "" for rates
    op: str  # "<=" or "<" (upper bounds), ">=" or ">" would be lower bounds
    threshold: float  # milliseconds for latencies, a fraction for rates
    text: str

    @property
    def percentile(self) -> float | None:
        return float(self.stat[1:]) if self.stat.startswith("p") else None

    def ok(self, value: float) -> bool:
        if math.isnan(value):
            return True  # nothing measured breaks nothing; callers check sample counts
        return {
            "<=": value <= self.threshold,
            "<": value < self.threshold,
            ">=": value >= self.threshold,
            ">": value > self.threshold,
        }[self.op]

    @property
    def label(self) -> str:
        if self.metric in RATE_METRICS:
            return f"{self.metric} {self.op} {self.threshold * 100:g}%"
        return f"{self.metric} {self.stat} {self.op} {format_ms(self.threshold)}"


@dataclass(frozen=True)
class LimitResult:
    limit: Limit
    value: float  # ms, or a fraction for rates
    ok: bool

    @property
    def ratio(self) -> float:
        """value / threshold: above 1 is a breach for an upper bound."""
        return self.value / self.limit.threshold if self.limit.threshold else math.inf


def format_ms(ms: float) -> str:
    if ms >= 1000:
        return f"{ms / 1000:g}s"
    if ms < 1:
        return f"{ms * 1000:g}us"
    return f"{ms:g}ms"


def parse_limit(text: str) -> Limit:
    t = text.strip().replace(" ", "")
    m = _LIMIT.match(t)
    allowed = ", ".join(LATENCY_METRICS + RATE_METRICS)
    if not m:
        raise SloError(
            f"bad SLO {text!r}: expected METRIC_STAT<=VALUE, e.g. ttft_p99<=1s, tpot_mean<20ms,"
            " error_rate<=1%"
        )
    metric, stat, op, value, unit = m.group("metric", "stat", "op", "value", "unit")
    stat = "mean" if stat == "avg" else stat or ""
    if metric in RATE_METRICS:
        if stat:
            raise SloError(f"bad SLO {text!r}: {metric} takes no statistic")
        if unit not in ("%", None):
            raise SloError(f"bad SLO {text!r}: {metric} is a fraction: write e.g. 1% or 0.01")
        v = float(value) / 100 if unit == "%" else float(value)
        if v > 1:
            raise SloError(f"bad SLO {text!r}: {metric} is at most 100% (a share of requests)")
        return Limit(metric, "", op, v, text.strip())
    if metric not in LATENCY_METRICS:
        raise SloError(f"bad SLO {text!r}: unknown metric {metric!r}; allowed: {allowed}")
    if not stat:
        raise SloError(f"bad SLO {text!r}: say which statistic, e.g. {metric}_p99 or {metric}_mean")
    if stat.startswith("p") and not 0 < float(stat[1:]) < 100:
        raise SloError(f"bad SLO {text!r}: a percentile is between p0 and p100")
    if unit is None or unit == "%":
        raise SloError(f"bad SLO {text!r}: give a unit: us, ms or s")
    return Limit(metric, stat, op, float(value) * _UNITS_MS[unit], text.strip())


@dataclass(frozen=True)
class Slo:
    limits: tuple[Limit, ...] = ()

    @classmethod
    def parse(cls, text: str | None) -> Slo:
        if not text or not text.strip():
            return cls()
        return cls(tuple(parse_limit(part) for part in text.split(",") if part.strip()))

    def __bool__(self) -> bool:
        return bool(self.limits)

    @property
    def text(self) -> str:
        return ",".join(limit.text for limit in self.limits)

    def per_request_limits_ms(self) -> dict[str, float]:
        """The tightest upper bound on each latency metric, applied to every request."""
        out: dict[str, float] = {}
        for limit in self.limits:
            if limit.metric in LATENCY_METRICS and limit.op in ("<=", "<"):
                out[limit.metric] = min(out.get(limit.metric, math.inf), limit.threshold)
        return out

    def limit_for(self, metric: str) -> Limit | None:
        for limit in self.limits:
            if limit.metric == metric:
                return limit
        return None

    def evaluate(
        self, value_of: Callable[[str, str], float], error_rate: float
    ) -> list[LimitResult]:
        """Judge every limit; `value_of(metric, stat)` gives a latency in ms (NaN if unknown)."""
        results = []
        for limit in self.limits:
            v = error_rate if limit.metric == "error_rate" else value_of(limit.metric, limit.stat)
            results.append(LimitResult(limit, v, limit.ok(v)))
        return results
