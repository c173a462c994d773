"""Plain data the UI renders, and the pure arithmetic behind it (no Textual imports).

`RunInfo` describes the run once (for the header); `StepPoint` is one rate step of the
latency–throughput curve; `next_rate` / `next_concurrency` are the arrow-key arithmetic;
`colour_for` is the green / amber / red rule against the SLO.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from llmtop.errors import redact
from llmtop.metrics import catalog
from llmtop.metrics.collector import Step
from llmtop.metrics.figures import step_figures
from llmtop.slo import LimitResult, Slo

AMBER_AT = 0.8  # a gauge turns amber at 80 % of its limit, red past it
GREEN, AMBER, RED, NEUTRAL = "green", "amber", "red", "neutral"
# (name, label, definition) of each UI gauge, read from the metric catalog
GAUGE_METRICS = tuple((m.name, m.label, m.definition) for m in catalog.rows(catalog.GAUGE_METRICS))


@dataclass(frozen=True)
class RunInfo:
    """What the header shows and the keys need: fixed for the whole run."""

    url: str
    engine: str  # "vLLM 0.32", "simulated: vllm on a100-80g" or "engine not detected"
    model: str
    mode: str  # LoadPlan.describe()
    closed_loop: bool
    start_rate: float  # req/s, or the concurrency in closed loop
    slo: Slo = field(default_factory=Slo)
    rate_step: float = 0.10  # fraction per up/down press
    save_path: str | None = None
    snapshot_dir: str = "."
    knee: bool = True  # the `a` key runs the knee search (llmtop.knee.search)

    @classmethod
    def from_extra(
        cls, extra: dict[str, Any], plan: Any, slo: Slo | None = None, **kw: Any
    ) -> RunInfo:
        """Build from `PreparedRun.extra` (the target and load descriptions) and the plan."""
        extra = redact(extra)  # the model id and engine label come from the server
        target = extra.get("target") or {}
        sim = target.get("sim")
        engine_info = extra.get("engine") or {}
        if sim:
            engine = f"simulated: {sim.get('engine', '?')} on {sim.get('gpu', '?')}"
        elif engine_info:
            engine = engine_info.get("label") or (
                f"{engine_info.get('name', 'engine')} {engine_info.get('version') or ''}".strip()
            )
        else:
            engine = "engine not detected"
        closed = plan.concurrency is not None
        return cls(
            url=target.get("url", ""),
            engine=engine,
            model=target.get("model", ""),
            mode=describe_mode(plan),
            closed_loop=closed,
            start_rate=float(plan.concurrency) if closed else plan.request_rate,
            slo=slo or Slo(),
            **kw,
        )


def describe_mode(plan: Any) -> str:
    """The load mode without its starting rate (the rate panel shows the live one)."""
    if plan.concurrency is not None:
        return "closed loop"
    shape = "Poisson" if plan.burstiness == 1.0 else f"gamma burstiness {plan.burstiness:g}"
    cap = f", max {plan.max_concurrency} in flight" if plan.max_concurrency else ""
    return f"open loop, {shape}{cap}"


@dataclass(frozen=True)
class StepPoint:
    """One rate step the operator held: what was offered, achieved, and its p99 latencies."""

    index: int
    offered: float
    duration_s: float
    completed: int
    failed: int
    achieved_rps: float
    output_tps: float
    ttft_p99_ms: float
    tpot_p99_ms: float
    itl_p99_ms: float
    e2el_p99_ms: float
    slo_ok: bool | None  # None: no SLO, or nothing measured yet

    def latency(self, metric: str) -> float:
        return getattr(self, f"{metric}_p99_ms")


def step_point(step: Step, slo: Slo, now_ns: int) -> StepPoint:
    """A `StepPoint` from a collector `Step` (cheap: a few percentile look-ups)."""
    f = step_figures(step, now_ns)  # old steps' packed histograms come back decoded
    c = f.counts
    ok = all(r.ok for r in f.judge(slo)) if slo and f.done else None
    return StepPoint(
        index=step.index,
        offered=step.offered,
        duration_s=f.duration_s,
        completed=c.completed,
        failed=c.failed,
        achieved_rps=f.request_throughput,
        output_tps=f.output_throughput,
        ttft_p99_ms=f.value_ms("ttft", "p99"),
        tpot_p99_ms=f.value_ms("tpot", "p99"),
        itl_p99_ms=f.value_ms("itl", "p99"),
        e2el_p99_ms=f.value_ms("e2el", "p99"),
        slo_ok=ok,
    )


def held_steps(
    points: Iterable[StepPoint], min_s: float = 2.0, min_completed: int = 3
) -> list[StepPoint]:
    """The steps worth a point on the curve: held long enough to have measured something."""
    return [p for p in points if p.duration_s >= min_s and p.completed >= min_completed]


def round_rate(rate: float) -> float:
    """Three significant figures: 10 % steps from 1 req/s read 1.1, 1.21 → 1.21, not 1.2100001."""
    if rate <= 0 or math.isinf(rate):
        return rate
    digits = 2 - math.floor(math.log10(rate))
    return round(rate, max(digits, 0))


def next_rate(rate: float, step: float, direction: int) -> float:
    """Up multiplies by (1 + step), down divides by it, so up-then-down comes back."""
    if math.isinf(rate):
        return rate
    factor = (1 + step) ** direction
    return max(round_rate(rate * factor), 0.01)


def next_concurrency(c: int, step: float, direction: int) -> int:
    """Closed loop: at least one request more or less per press."""
    delta = max(1, round(c * step))
    return max(1, c + direction * delta)


def parse_rate(text: str) -> float:
    """A rate typed by the operator: a positive finite number of req/s."""
    try:
        rate = float(text.strip().removesuffix("/s").removesuffix("req").strip())
    except ValueError:
        raise ValueError(f"{text!r} is not a number of requests per second") from None
    if not rate > 0 or math.isinf(rate) or math.isnan(rate):
        raise ValueError("the rate must be a positive number of requests per second")
    return rate


def results_for(results: Sequence[LimitResult], metric: str) -> list[LimitResult]:
    return [r for r in results if r.limit.metric == metric]


def colour_for(results: Sequence[LimitResult]) -> str:
    """Green below 80 % of every limit, amber from 80 %, red past any limit; neutral: no SLO."""
    judged = [r for r in results if not math.isnan(r.value)]
    if not results:
        return NEUTRAL
    if not judged:
        return GREEN
    if any(not r.ok for r in judged):
        return RED
    if any(r.limit.op in ("<=", "<") and r.ratio >= AMBER_AT for r in judged):
        return AMBER
    return GREEN


def format_ms(ms: float) -> str:
    """A latency for a narrow gauge: 0.42ms, 12.3ms, 456ms, 1.23s."""
    if ms is None or math.isnan(ms):
        return "–"
    if ms >= 10_000:
        return f"{ms / 1000:.1f}s"
    if ms >= 1000:
        return f"{ms / 1000:.2f}s"
    if ms >= 100:
        return f"{ms:.0f}ms"
    if ms >= 10:
        return f"{ms:.1f}ms"
    return f"{ms:.2f}ms"


def format_rate(rate: float) -> str:
    if math.isinf(rate):
        return "inf"
    if rate >= 100:
        return f"{rate:,.0f}"
    if rate >= 10:
        return f"{rate:.1f}"
    return f"{rate:.2f}"


def format_elapsed(seconds: float) -> str:
    s = int(max(seconds, 0))
    return f"{s // 3600:02d}:{s % 3600 // 60:02d}:{s % 60:02d}"
